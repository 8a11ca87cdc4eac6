"""The preference losses the loop trains with, over the four log-prob tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

import aot_losses
from aot_losses import baselines

from .data import Example, PairedExample

if TYPE_CHECKING:
    from .config import AlignConfig

LOSSES = ("aot_paired", "aot_unpaired", "dpo", "ipo", "kto")
PAIRED_LOSSES = ("aot_paired", "dpo", "ipo")  # the others also take paired data, as unpaired
DEFAULT_BETA = {"aot_paired": 0.01, "aot_unpaired": 0.01, "dpo": 0.1, "ipo": 0.1, "kto": 0.1}


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
    cfg: AlignConfig, logps: PreferenceLogps, process_group: dist.ProcessGroup | None = None
) -> Tensor:
    """``cfg.loss`` from aot_losses on the four log-prob tensors; AOT losses sort over
    ``process_group`` (``None``: the local batch). With ``cfg.pair_within_batch``, an unpaired
    batch is paired first (:func:`within_batch_pairs`)."""
    if cfg.pair_within_batch and not logps.paired:
        logps = within_batch_pairs(logps)
    args = (
        logps.policy_chosen,
        logps.policy_rejected,
        logps.reference_chosen,
        logps.reference_rejected,
    )
    beta = cfg.loss_beta
    if cfg.loss in ("aot_paired", "aot_unpaired"):
        loss_fn = (
            aot_losses.aot_paired_loss if cfg.loss == "aot_paired" else aot_losses.aot_unpaired_loss
        )
        return loss_fn(
            *args,
            beta=beta,
            penalty=cfg.penalty,
            label_smoothing=cfg.label_smoothing,
            sort=cfg.sort,
            regularization_strength=cfg.regularization_strength,
            process_group=process_group,
        )
    if cfg.loss == "dpo":
        return baselines.dpo_loss(*args, beta=beta, label_smoothing=cfg.label_smoothing)
    if cfg.loss == "ipo":
        return baselines.ipo_loss(*args, beta=beta)
    return baselines.kto_loss(
        *args,
        beta=beta,
        desirable_weight=cfg.desirable_weight,
        undesirable_weight=cfg.undesirable_weight,
    )
