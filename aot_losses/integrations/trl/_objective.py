"""The AOT objective of the TRL trainers, without TRL: margins in, loss and metrics out.

For each AOT term the trainer hands over two margins ``u``, ``v`` (one scalar per sample) and
gets back ``weight x OT_h(u, v)`` (:func:`aot_losses.ot_1d`), summed over the terms, with the FSD
diagnostics of ``u`` over ``v`` appended to a metrics mapping. With the margins of every
micro-batch of an optimizer step held (:meth:`AOTObjective.begin_step`), the loss of micro-batch
``k`` is that of the step's whole batch, micro-batch ``k`` live and the others held.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.distributed as dist
from torch import Tensor

from ...diagnostics import fsd_violation, quantile_curves
from ...distributed import gather_concat_many
from ...ot import SortKind, ot_1d
from ...penalties import PenaltyName
from ...sorting import Backend, Regularization

__all__ = ["QUANTILE_LEVELS", "AOTObjective", "Margins", "TransportKeywords"]

QUANTILE_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
"""Levels t of the logged quantile margins ``fsd/margin_q{100 t}`` = Q_u(t) - Q_v(t)."""


class TransportKeywords(TypedDict):
    """The keywords of :func:`aot_losses.ot_1d` that a trainer's config sets."""

    penalty: PenaltyName
    beta: float
    label_smoothing: float
    sort: SortKind
    regularization: Regularization
    regularization_strength: float
    sort_backend: Backend


@dataclass(frozen=True)
class Margins:
    """The two samples one AOT term transports: ``u`` onto ``v`` (``ot_1d(u, v)``), shapes
    ``(n,)`` and ``(m,)``."""

    loss_type: str
    u: Tensor
    v: Tensor


class AOTObjective:
    """The AOT terms of one trainer: ``sum_j weights[j] x ot_1d(u_j, v_j, **keywords)``.

    Args:
        keywords: the options of :func:`aot_losses.ot_1d`.
        weights: one weight per AOT term, in the order of the margins passed to :meth:`loss`.
        process_group: ``None`` sorts the local margins; a group sorts those of all its ranks.
        may_be_empty: a side may be empty (unpaired data): the term is then 0.
    """

    def __init__(
        self,
        keywords: TransportKeywords,
        *,
        weights: Sequence[float],
        process_group: dist.ProcessGroup | None,
        may_be_empty: bool,
    ) -> None:
        self.keywords = keywords
        self.weights = list(weights)
        self.process_group = process_group
        self.may_be_empty = may_be_empty
        self._step: list[list[Margins]] | None = None
        self._micro_batch = 0

    def begin_step(self, step: list[list[Margins]] | None) -> None:
        """Hold the margins of every micro-batch of the coming optimizer step (detached), or
        ``None`` to sort each micro-batch on its own."""
        self._step = step
        self._micro_batch = 0

    def loss(
        self, margins: list[Margins], *, training: bool, metrics: MutableMapping[str, list[float]]
    ) -> Tensor:
        """The weighted sum of the AOT terms of one micro-batch; appends ``fsd/violation`` and
        ``fsd/margin_q*`` (``fsd/{loss_type}/...`` with several terms) to ``metrics``."""
        step, k = (self._step, self._micro_batch) if training else (None, 0)
        if step is not None:
            if k >= len(step):
                raise RuntimeError(
                    f"aot_sort_across_accumulation: loss call {k + 1} in an optimizer step of "
                    f"{len(step)} micro-batches"
                )
            self._micro_batch += 1
        terms = []
        for j, (m, weight) in enumerate(zip(margins, self.weights, strict=True)):
            u, v = m.u, m.v
            if step is not None:
                u, v = _with_step(step, k, j, u, v)
            value = self._transport(u, v)
            if step is not None:
                # value: the loss of the step's whole batch; gradient scaled by the number of
                # micro-batches, which the Trainer divides every micro-batch loss by
                value = value.detach() + len(step) * (value - value.detach())
            terms.append(weight * value)
            prefix = "fsd/" if len(margins) == 1 else f"fsd/{m.loss_type}/"
            _log(prefix, u, v, metrics)
        return sum(terms[1:], terms[0])  # the configs require at least one AOT loss type

    def _transport(self, u: Tensor, v: Tensor) -> Tensor:
        """``ot_1d(u, v)`` with the options; 0 (attached to the graph) when a side is empty over
        everything sorted together (unpaired data only)."""
        if self.may_be_empty:
            sizes = torch.tensor([u.numel(), v.numel()], device=u.device)
            if self.process_group is not None:
                dist.all_reduce(sizes, group=self.process_group)
            if int(sizes.min()) == 0:
                return (u.sum() + v.sum()) * 0.0
        return ot_1d(u, v, **self.keywords, process_group=self.process_group)


def _with_step(
    step: list[list[Margins]], k: int, j: int, u: Tensor, v: Tensor
) -> tuple[Tensor, Tensor]:
    """Micro-batch ``k``'s live margins among the step's others (held without gradient)."""
    held = step[k][j]
    if held.u.shape != u.shape or held.v.shape != v.shape:
        raise RuntimeError(
            "aot_sort_across_accumulation: micro-batch "
            f"{k} had margins of shapes {tuple(held.u.shape)}, {tuple(held.v.shape)} in the "
            f"first pass but {tuple(u.shape)}, {tuple(v.shape)} now; the Trainer fed the "
            "micro-batches in another order than get_batch_samples returned them"
        )
    us = [u if i == k else batch[j].u for i, batch in enumerate(step)]
    vs = [v if i == k else batch[j].v for i, batch in enumerate(step)]
    return torch.cat(us), torch.cat(vs)


def _log(prefix: str, u: Tensor, v: Tensor, metrics: MutableMapping[str, list[float]]) -> None:
    """FSD violation and quantile margins of ``u`` over ``v``, over all processes."""
    u, v = u.detach(), v.detach()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        (u, v), _ = gather_concat_many((u, v), dist.group.WORLD, names=("u", "v"))
    if u.numel() == 0 or v.numel() == 0:
        return
    metrics[f"{prefix}violation"].append(float(fsd_violation(u, v)))
    levels = torch.tensor(QUANTILE_LEVELS, dtype=torch.float64, device=u.device)
    _, qu, qv = quantile_curves(u, v, levels)
    for level, gap in zip(QUANTILE_LEVELS, (qu - qv).tolist(), strict=True):
        metrics[f"{prefix}margin_q{round(100 * level)}"].append(gap)
