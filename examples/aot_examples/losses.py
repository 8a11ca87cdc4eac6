"""The preference losses the loop trains with, over the four log-prob tensors: a loss and its
options (:class:`LossSpec`), and :func:`preference_loss`, which calls ``aot_losses``.

Besides AOT's ``hard`` and ``soft`` sorts, ``sort="shuffled"`` replaces the sort by a seeded
random permutation (:class:`Shuffle`): the same loss on a random coupling of the two sides, the
control that tells what the sorting itself contributes (docs/preregistration_2.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, get_args

import torch
import torch.distributed as dist
from torch import Tensor

import aot_losses
from aot_losses import baselines
from aot_losses.penalties import PenaltyName

from .data import Example, PairedExample

__all__ = [
    "DEFAULT_BETA",
    "LOSSES",
    "PAIRED_LOSSES",
    "SORTS",
    "LossSpec",
    "PreferenceLogps",
    "Shuffle",
    "SortChoice",
    "check_data_format",
    "preference_loss",
    "within_batch_pairs",
]

LOSSES = ("aot_paired", "aot_unpaired", "dpo", "ipo", "kto")
PAIRED_LOSSES = ("aot_paired", "dpo", "ipo")  # the others also take paired data, as unpaired
DEFAULT_BETA = {"aot_paired": 0.01, "aot_unpaired": 0.01, "dpo": 0.1, "ipo": 0.1, "kto": 0.1}
#: AOT's couplings: its sorts (``aot_losses.ot.SortKind``) and the random control.
SortChoice: TypeAlias = Literal["hard", "soft", "shuffled"]
SORTS: tuple[SortChoice, ...] = get_args(SortChoice)


class Shuffle:
    """Seeded random permutations along the last dimension, passed as the AOT losses' ``sort``
    in place of sorting: the margins u and v are then coupled at random
    (u_pi(i) against v_sigma(i)) instead of by rank.

    Every row (index of the leading dimensions) gets its own permutation: the losses sort u and
    v stacked as two rows when their sizes are equal, and in two calls otherwise. Call ``k`` of
    an instance draws from ``torch.Generator`` seeded with ``(seed, key, k)``; a key per
    micro-batch (the loop's micro-step) gives fresh permutations at every micro-batch, the same
    again when a run is resumed, and on every process that holds the same gathered batch.
    """

    def __init__(self, seed: int, key: int) -> None:
        self.seed, self.key, self.calls = seed, key, 0

    def __call__(self, x: Tensor) -> Tensor:
        generator = torch.Generator().manual_seed(
            hash((self.seed, self.key, self.calls)) & (2**63 - 1)
        )
        self.calls += 1
        keys = torch.rand(x.shape, generator=generator, dtype=torch.float64)
        return x.gather(-1, keys.argsort(dim=-1).to(x.device))


@dataclass(frozen=True)
class LossSpec:
    """A preference loss and its options, checked on construction (errors name the flag of
    ``align.py``, which has one per field).

    Attributes:
        loss: one of :data:`LOSSES`.
        beta: the loss's scale or margin; ``None``: :data:`DEFAULT_BETA` (:attr:`loss_beta`).
        penalty, sort, regularization_strength: AOT's penalty h and sorting (``shuffled``:
            a :class:`Shuffle` in place of the sort).
        label_smoothing: AOT (logistic) and DPO.
        desirable_weight, undesirable_weight: KTO's lambda_D and lambda_U.
        pair_within_batch: a paired loss on unpaired batches (:func:`within_batch_pairs`).
    """

    loss: str = "aot_paired"
    beta: float | None = None
    penalty: PenaltyName = "logistic"
    sort: SortChoice = "hard"
    regularization_strength: float = 0.1
    label_smoothing: float = 0.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    pair_within_batch: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {LOSSES}, got {self.loss!r}")
        if self.sort not in SORTS:
            raise ValueError(f"--sort must be one of {SORTS}, got {self.sort!r}")
        if self.beta is not None and not self.beta > 0:
            raise ValueError(f"--beta must be positive, got {self.beta}")
        for name in ("desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
            if value != 1 and self.loss != "kto":
                raise ValueError(f"--{name.replace('_', '-')} applies to --loss kto only")
        if self.pair_within_batch and self.loss not in PAIRED_LOSSES:
            raise ValueError(
                f"--pair-within-batch applies to the paired losses {PAIRED_LOSSES}, not "
                f"--loss {self.loss} (which takes unpaired data as it is)"
            )

    @property
    def loss_beta(self) -> float:
        """``beta``, or the loss's default."""
        return DEFAULT_BETA[self.loss] if self.beta is None else self.beta


@dataclass
class PreferenceLogps:
    """Sequence log-probs of chosen and rejected completions under the policy and the
    reference; for paired data, chosen ``i`` and rejected ``i`` share a prompt."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    reference_chosen: Tensor
    reference_rejected: Tensor
    paired: bool

    @property
    def rewards(self) -> tuple[Tensor, Tensor]:
        """Implicit rewards log pi(y|x) - log pi_ref(y|x) (TRL reports beta times these)."""
        return (
            self.policy_chosen - self.reference_chosen,
            self.policy_rejected - self.reference_rejected,
        )


def within_batch_pairs(logps: PreferenceLogps) -> PreferenceLogps:
    """The pairs a user forms from an unpaired batch of n desirable and m undesirable
    completions: undesirable completion ``j`` with desirable completion ``j mod n``, the
    desirable ones taken in turn in the batch's order (each used about m / n times; with
    m < n, the last n - m go unused). The m pairs are usually of different prompts, and a
    paired loss on them sees the margins
    (log pi(y+|x+) - log pi(y-|x-)) - (log pi_ref(y+|x+) - log pi_ref(y-|x-)).

    Raises:
        ValueError: ``logps`` already paired, or without a desirable or an undesirable
            completion.
    """
    n, m = len(logps.policy_chosen), len(logps.policy_rejected)
    if logps.paired or n == 0 or m == 0:
        raise ValueError(
            "within_batch_pairs needs an unpaired batch with desirable and undesirable "
            f"completions; got paired={logps.paired}, {n} desirable, {m} undesirable"
        )
    turn = torch.arange(m, device=logps.policy_chosen.device) % n
    return PreferenceLogps(
        logps.policy_chosen[turn],
        logps.policy_rejected,
        logps.reference_chosen[turn],
        logps.reference_rejected,
        paired=True,
    )


def check_data_format(
    loss: str, examples: Sequence[Example], *, pair_within_batch: bool = False
) -> bool:
    """Whether ``examples`` are paired. ValueError if ``loss`` needs pairs and they are not,
    unless ``pair_within_batch`` (then pairs are formed in each batch, :func:`within_batch_pairs`),
    which in turn needs unpaired data."""
    paired = isinstance(examples[0], PairedExample)
    if pair_within_batch and paired:
        raise ValueError(
            f"--pair-within-batch pairs unpaired data; {examples[0].source} is paired "
            "(prompt/chosen/rejected)"
        )
    if loss in PAIRED_LOSSES and not paired and not pair_within_batch:
        raise ValueError(
            f"--loss {loss} needs paired data (prompt/chosen/rejected); {examples[0].source} "
            "is unpaired (prompt/completion/label); --pair-within-batch pairs the desirable and "
            "undesirable completions of each micro-batch"
        )
    return paired


def preference_loss(
    spec: LossSpec,
    logps: PreferenceLogps,
    process_group: dist.ProcessGroup | None = None,
    *,
    shuffle_seed: tuple[int, int] = (0, -1),
) -> Tensor:
    """``spec.loss`` from aot_losses on the four log-prob tensors; AOT losses sort over
    ``process_group`` (``None``: the local batch). With ``spec.pair_within_batch``, an unpaired
    batch is paired first (:func:`within_batch_pairs`). ``shuffle_seed``: the ``(seed, key)``
    of the :class:`Shuffle` of ``sort="shuffled"`` (the loop: its seed and micro-step)."""
    if spec.pair_within_batch and not logps.paired:
        logps = within_batch_pairs(logps)
    args = (
        logps.policy_chosen,
        logps.policy_rejected,
        logps.reference_chosen,
        logps.reference_rejected,
    )
    beta = spec.loss_beta
    if spec.loss in ("aot_paired", "aot_unpaired"):
        loss_fn = (
            aot_losses.aot_paired_loss
            if spec.loss == "aot_paired"
            else aot_losses.aot_unpaired_loss
        )
        return loss_fn(
            *args,
            beta=beta,
            penalty=spec.penalty,
            label_smoothing=spec.label_smoothing,
            sort=Shuffle(*shuffle_seed) if spec.sort == "shuffled" else spec.sort,
            regularization_strength=spec.regularization_strength,
            process_group=process_group,
        )
    if spec.loss == "dpo":
        return baselines.dpo_loss(*args, beta=beta, label_smoothing=spec.label_smoothing)
    if spec.loss == "ipo":
        return baselines.ipo_loss(*args, beta=beta)
    return baselines.kto_loss(
        *args,
        beta=beta,
        desirable_weight=spec.desirable_weight,
        undesirable_weight=spec.undesirable_weight,
    )
