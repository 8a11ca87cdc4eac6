"""The AOT preference losses (Melnyk et al. 2024, arXiv 2406.05882) over sequence log-probs.

Both are the 1-D OT cost :func:`aot_losses.ot_1d` between two samples of margins:

* paired (pAOT):   u_i = log pi(y+_i|x_i) - log pi(y-_i|x_i),
                   v_i = log pi_ref(y+_i|x_i) - log pi_ref(y-_i|x_i);
* unpaired (uAOT): u_i = log pi(y+_i|x+_i) - log pi_ref(y+_i|x+_i)  over n chosen samples,
                   v_j = log pi(y-_j|x-_j) - log pi_ref(y-_j|x-_j)  over m rejected samples.

Minimizing OT_h(mu_u, mu_v) = integral_0^1 h(Q_u(t) - Q_v(t)) dt pushes the quantiles of u above
those of v: first-order stochastic dominance of u over v. With the defaults (hard sort, logistic,
n = m, no weights) the loss is the paper's Appendix-B code and TRL's ``"aot"`` /
``"aot_unpaired"`` loss: the mean over sorted positions of
-(1 - eps) log sigma(beta d_i) - eps log sigma(-beta d_i), d = sorted(u) - sorted(v).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ._validation import Reduction, check_finite, check_logps, check_weights
from .distributed import local_checks
from .ot import SortLike, TransportOptions, transport
from .penalties import PenaltyLike
from .sorting import Backend, Regularization

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = [
    "aot_paired_loss",
    "aot_unpaired_loss",
]


def aot_paired_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.01,
    penalty: PenaltyLike = "logistic",
    label_smoothing: float = 0.0,
    sort: SortLike = "hard",
    regularization_strength: float = 0.1,
    weights: Tensor | None = None,
    process_group: ProcessGroup | None = None,
    reduction: Reduction = "mean",
    regularization: Regularization = "l2",
    sort_backend: Backend = "torch",
) -> Tensor:
    """Paired AOT: OT_h between the policy's and the reference's chosen-minus-rejected margins.

    loss = integral_0^1 h(Q_u(t) - Q_v(t)) dt with u = policy_chosen_logps - policy_rejected_logps
    and v = reference_chosen_logps - reference_rejected_logps; for B equal-weight pairs,
    (1/B) sum_i h(u_(i) - v_(i)) over order statistics.

    Args:
        policy_chosen_logps: log pi(y+|x) summed over response tokens, shape ``(B,)``.
        policy_rejected_logps: log pi(y-|x), shape ``(B,)``.
        reference_chosen_logps: log pi_ref(y+|x), shape ``(B,)``.
        reference_rejected_logps: log pi_ref(y-|x), shape ``(B,)``.
        beta: scale (logistic; the paper's default 0.01) or margin (other penalties).
        penalty: ``"logistic"``, ``"squared_hinge"``, ``"hinge"``, ``"least_squares"`` or an
            elementwise convex callable.
        label_smoothing: eps in [0, 0.5) (logistic only).
        sort: ``"hard"`` or ``"soft"`` (see :func:`aot_losses.ot_1d`).
        regularization_strength: soft-sort strength (the paper used 0.1).
        weights: nonnegative per-pair weights, shape ``(B,)``, applied to both margins.
        process_group: ``None`` sorts the local batch; a ``torch.distributed`` group sorts the
            global batch of its ranks (local sizes may differ, even be 0) with exact gradients
            under DDP / FSDP averaging. A collective: every rank must call it.
        reduction: ``"mean"`` (the OT cost), ``"sum"`` or ``"none"`` (see
            :func:`aot_losses.ot_1d`).
        regularization: ``"l2"`` or ``"kl"`` soft sort.
        sort_backend: ``"torch"``, ``"torchsort"`` or ``"sinkhorn"`` soft sort.

    Returns:
        A scalar for ``"mean"``/``"sum"``, per-quantile losses for ``"none"``; in the inputs'
        dtype and on their device.

    Raises:
        TypeError: non-tensor or non-floating inputs, dtypes that differ.
        ValueError: tensors that are not 1-D, of different lengths, empty, on different
            devices; bad weights or options (see ``docs/errors.md``).

    Example:
        >>> import torch
        >>> pc, pr = torch.tensor([-5.0, -7.0]), torch.tensor([-9.0, -8.0])
        >>> rc, rr = torch.tensor([-6.0, -7.0]), torch.tensor([-8.0, -8.0])
        >>> # u = (4, 1), v = (2, 1): sorted differences (0, 2)
        >>> aot_paired_loss(pc, pr, rc, rr, beta=1.0)
        tensor(0.4100)
    """
    options = TransportOptions.of(locals())
    return _aot_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        paired=True,
        weights=(weights, weights),
        options=options,
        process_group=process_group,
    )


def aot_unpaired_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.01,
    penalty: PenaltyLike = "logistic",
    label_smoothing: float = 0.0,
    sort: SortLike = "hard",
    regularization_strength: float = 0.1,
    chosen_weights: Tensor | None = None,
    rejected_weights: Tensor | None = None,
    process_group: ProcessGroup | None = None,
    reduction: Reduction = "mean",
    regularization: Regularization = "l2",
    sort_backend: Backend = "torch",
) -> Tensor:
    """Unpaired AOT: OT_h between the chosen and the rejected policy/reference log-ratios.

    loss = integral_0^1 h(Q_u(t) - Q_v(t)) dt with u = policy_chosen_logps -
    reference_chosen_logps over n chosen samples and v = policy_rejected_logps -
    reference_rejected_logps over m rejected samples (n != m allowed: merged quantile grid).

    Args:
        policy_chosen_logps: log pi(y+|x+), shape ``(n,)``.
        policy_rejected_logps: log pi(y-|x-), shape ``(m,)``.
        reference_chosen_logps: log pi_ref(y+|x+), shape ``(n,)``.
        reference_rejected_logps: log pi_ref(y-|x-), shape ``(m,)``.
        chosen_weights: nonnegative weights of the chosen samples, shape ``(n,)``.
        rejected_weights: nonnegative weights of the rejected samples, shape ``(m,)``.
        beta, penalty, label_smoothing, sort, regularization_strength, process_group,
        reduction, regularization, sort_backend: as in :func:`aot_paired_loss`.

    Returns:
        As :func:`aot_paired_loss`.

    Raises:
        TypeError: non-tensor or non-floating inputs, dtypes that differ.
        ValueError: tensors that are not 1-D, a policy and reference tensor of different
            lengths, empty, on different devices; bad weights or options.

    Example:
        >>> import torch
        >>> pc, rc = torch.tensor([-4.0, -6.0]), torch.tensor([-5.0, -6.0])
        >>> pr, rr = torch.tensor([-9.0, -8.0, -7.0]), torch.tensor([-8.0, -8.0, -8.0])
        >>> aot_unpaired_loss(pc, pr, rc, rr, beta=1.0, penalty="hinge")
        tensor(0.5000)
    """
    options = TransportOptions.of(locals())
    return _aot_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        paired=False,
        weights=(chosen_weights, rejected_weights),
        options=options,
        process_group=process_group,
    )


def _aot_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    paired: bool,
    weights: tuple[Tensor | None, Tensor | None],
    options: TransportOptions,
    process_group: ProcessGroup | None,
) -> Tensor:
    """Both AOT losses: check the log-probs and the weights of u and v, form the margins
    (paired: u = pc - pr, v = rc - rr; unpaired: u = pc - rc, v = pr - rr), check them finite
    (naming the tensor at fault) and transport u onto v."""
    with local_checks(process_group, gathered=2, like=policy_chosen_logps):  # on every rank
        tensors = check_logps(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
            paired=paired,
            allow_empty=process_group is not None,
        )
        names = list(tensors)
        sides = (names[:2], names[2:]) if paired else (names[0::2], names[1::2])

        def checked(w: Tensor | None, name: str, like: Tensor, like_name: str) -> Tensor | None:
            if w is None:
                return None
            return check_weights(w, name, like, like_name, allow_zero_sum=process_group is not None)

        if paired:  # one weight per pair, for both margins (weights[0] is weights[1])
            u_weights = v_weights = checked(
                weights[0], "weights", policy_chosen_logps, "the log-probs"
            )
        else:
            u_weights = checked(weights[0], "chosen_weights", policy_chosen_logps, "its log-probs")
            v_weights = checked(
                weights[1], "rejected_weights", policy_rejected_logps, "its log-probs"
            )
        u, v = (tensors[a] - tensors[b] for a, b in sides)
        check_finite(u, "u", {name: tensors[name] for name in sides[0]})
        check_finite(v, "v", {name: tensors[name] for name in sides[1]})
    return transport(u, v, u_weights, v_weights, options, process_group)
