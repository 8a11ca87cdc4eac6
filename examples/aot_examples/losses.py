"""The preference losses the loop trains with, over the four log-prob tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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


def check_data_format(loss: str, examples: Sequence[Example]) -> bool:
    """Whether ``examples`` are paired; ValueError if ``loss`` needs pairs and they are not."""
    paired = isinstance(examples[0], PairedExample)
    if loss in PAIRED_LOSSES and not paired:
        raise ValueError(
            f"--loss {loss} needs paired data (prompt/chosen/rejected); {examples[0].source} "
            "is unpaired (prompt/completion/label)"
        )
    return paired


def preference_loss(
    cfg: AlignConfig, logps: PreferenceLogps, process_group: dist.ProcessGroup | None = None
) -> Tensor:
    """``cfg.loss`` from aot_losses on the four log-prob tensors; AOT losses sort over
    ``process_group`` (``None``: the local batch)."""
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
    return baselines.kto_loss(*args, beta=beta)
