"""Baseline preference losses over the same four log-prob tensors as the AOT losses.

With margins m = (log pi(y+|x) - log pi(y-|x)) - (log pi_ref(y+|x) - log pi_ref(y-|x)):

* DPO (Rafailov et al. 2023; label smoothing as in cDPO): -(1-eps) log sigma(beta m)
  - eps log sigma(-beta m);
* IPO (Azar et al. 2023): (m - 1 / (2 beta))^2;
* SLiC (Zhao et al. 2023, calibration hinge): max(0, delta - m); pass zero reference log-probs
  for the paper's reference-free form;
* KTO (Ethayarajh et al. 2024): per sample, with r = log pi(y|x) - log pi_ref(y|x) and the
  reference point z0 = max(0, KL(pi || pi_ref)) (held constant),
  lambda_D (1 - sigma(beta (r - z0))) for desirable and lambda_U (1 - sigma(beta (z0 - r))) for
  undesirable samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validation import (
    Reduction,
    check_finite,
    check_label_smoothing,
    check_logps,
    check_positive,
    check_real,
    check_reduction,
    check_same_device,
    check_tensor,
    reduce,
)

__all__ = [
    "dpo_loss",
    "dpo_options",
    "ipo_loss",
    "ipo_options",
    "kto_loss",
    "kto_options",
    "preference_margins",
    "slic_loss",
    "slic_options",
]


def preference_margins(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
) -> Tensor:
    """Checked paired margins m = (pc - pr) - (rc - rr), shape ``(B,)``."""
    tensors = check_logps(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        paired=True,
    )
    margins = (policy_chosen_logps - policy_rejected_logps) - (
        reference_chosen_logps - reference_rejected_logps
    )
    check_finite(margins, "margins", tensors)
    return margins


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """DPO: -(1 - eps) log sigma(beta m) - eps log sigma(-beta m), per pair.

    Args:
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
        reference_rejected_logps: sequence log-probs, shape ``(B,)`` each.
        beta: inverse temperature (> 0).
        label_smoothing: eps in [0, 0.5) (conservative DPO).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Raises:
        TypeError, ValueError: as :func:`aot_losses.aot_paired_loss`.

    Example:
        >>> import torch
        >>> zero = torch.zeros(3)
        >>> dpo_loss(zero, zero, zero, zero)
        tensor(0.6931)
    """
    beta, eps, reduction = dpo_options(
        beta=beta, label_smoothing=label_smoothing, reduction=reduction
    )
    margins = preference_margins(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    logits = beta * margins
    losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return reduce(losses, reduction)


def dpo_options(
    *, beta: object, label_smoothing: object, reduction: object
) -> tuple[float, float, Reduction]:
    """The checked options of :func:`dpo_loss` (also run by :class:`aot_losses.nn.DPOLoss` at
    construction)."""
    return (
        check_positive(beta, "beta"),
        check_label_smoothing(label_smoothing),
        check_reduction(reduction),
    )


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    reduction: Reduction = "mean",
) -> Tensor:
    """IPO: (m - 1 / (2 beta))^2 per pair (Azar et al. 2023, eq. 17; beta is their tau).

    Example:
        >>> import torch
        >>> zero = torch.zeros(2)
        >>> ipo_loss(zero, zero, zero, zero, beta=0.5)
        tensor(1.)
    """
    beta, reduction = ipo_options(beta=beta, reduction=reduction)
    margins = preference_margins(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    return reduce((margins - 1 / (2 * beta)).square(), reduction)


def ipo_options(*, beta: object, reduction: object) -> tuple[float, Reduction]:
    """The checked options of :func:`ipo_loss`."""
    return check_positive(beta, "beta"), check_reduction(reduction)


def slic_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    margin: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """SLiC calibration hinge: max(0, delta - m) per pair, delta = ``margin``.

    Example:
        >>> import torch
        >>> zero = torch.zeros(2)
        >>> slic_loss(torch.tensor([0.0, 3.0]), zero, zero, zero)
        tensor(0.5000)
    """
    margin, reduction = slic_options(margin=margin, reduction=reduction)
    margins = preference_margins(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    return reduce(F.relu(margin - margins), reduction)


def slic_options(*, margin: object, reduction: object) -> tuple[float, Reduction]:
    """The checked options of :func:`slic_loss`."""
    return check_positive(margin, "margin"), check_reduction(reduction)


def kto_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl: Tensor | float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """KTO (Kahneman-Tversky optimization) over n desirable and m undesirable samples.

    loss_i = lambda_D (1 - sigma(beta (r_i - z0)))  for chosen (desirable) samples,
    loss_j = lambda_U (1 - sigma(beta (z0 - r_j)))  for rejected (undesirable) samples,
    r = log pi(y|x) - log pi_ref(y|x), z0 = max(0, kl), held constant (no gradient).

    Args:
        policy_chosen_logps, reference_chosen_logps: shape ``(n,)``.
        policy_rejected_logps, reference_rejected_logps: shape ``(m,)``; ``m`` may differ.
        beta: > 0.
        desirable_weight, undesirable_weight: lambda_D, lambda_U > 0.
        kl: estimate of KL(pi || pi_ref) for the reference point (the paper uses mismatched
            prompt/completion pairs of the batch). ``None``: the batch mean of r over all n + m
            samples.
        reduction: ``"mean"`` / ``"sum"`` over the n + m losses, or ``"none"`` for the losses,
            chosen first, shape ``(n + m,)``.

    Example:
        >>> import torch
        >>> kto_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(3))
        tensor(0.5000)
    """
    beta, desirable_weight, undesirable_weight, kl, reduction = kto_options(
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        kl=kl,
        reduction=reduction,
    )
    tensors = check_logps(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        paired=False,
    )
    chosen = policy_chosen_logps - reference_chosen_logps
    rejected = policy_rejected_logps - reference_rejected_logps
    check_finite(torch.cat((chosen, rejected)), "log-ratios", tensors)
    if kl is None:
        reference_point = torch.cat((chosen, rejected)).mean()
    elif isinstance(kl, Tensor):
        check_same_device({"policy_chosen_logps": policy_chosen_logps, "kl": kl})
        reference_point = kl.to(chosen.dtype)
    else:
        reference_point = torch.tensor(kl, dtype=chosen.dtype, device=chosen.device)
    z0 = reference_point.detach().clamp(min=0)
    losses = torch.cat(
        (
            desirable_weight * (1 - torch.sigmoid(beta * (chosen - z0))),
            undesirable_weight * (1 - torch.sigmoid(beta * (z0 - rejected))),
        )
    )
    return reduce(losses, reduction)


def kto_options(
    *,
    beta: object,
    desirable_weight: object,
    undesirable_weight: object,
    kl: object,
    reduction: object,
) -> tuple[float, float, float, Tensor | float | None, Reduction]:
    """The checked options of :func:`kto_loss`: ``kl`` is ``None``, a finite real number or a
    0-D floating tensor (finite: a value check)."""
    if kl is not None:
        if isinstance(kl, Tensor):
            kl = check_tensor(kl, "kl", ndim=0)
            check_finite(kl, "kl")
        else:
            kl = check_real(kl, "kl", "None, a real number or a 0-D tensor")
            if not math.isfinite(kl):
                raise ValueError(f"kl must be finite; got {kl!r}")
    return (
        check_positive(beta, "beta"),
        check_positive(desirable_weight, "desirable_weight"),
        check_positive(undesirable_weight, "undesirable_weight"),
        kl,
        check_reduction(reduction),
    )
