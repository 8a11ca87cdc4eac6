"""Convex surrogates h of the step 1[x < 0] used as transport costs c(u, v) = h(u - v).

Conventions follow Melnyk et al. 2024 (arXiv 2406.05882): for the logistic penalty ``beta`` is a
scale; for the hinge-type penalties and least squares it is a margin.

=================  ==========================================================
name               h(x)
=================  ==========================================================
``logistic``       -(1 - eps) log sigma(beta x) - eps log sigma(-beta x)
``squared_hinge``  max(beta - x, 0)^2
``hinge``          max(beta - x, 0)
``least_squares``  (beta - x)^2
=================  ==========================================================

Every named penalty is convex, so the sorted (monotone) coupling is an optimal transport plan and
:func:`aot_losses.ot_1d` is exact. A user callable must be elementwise and convex for the same to
hold (a non-convex h makes the sorted value an upper bound of the true OT cost, not the cost).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from ._validation import check_choice, check_label_smoothing, check_positive, describe

__all__ = [
    "PENALTIES",
    "Penalty",
    "PenaltyLike",
    "PenaltyName",
    "get_penalty",
    "hinge",
    "least_squares",
    "logistic",
    "squared_hinge",
]

PenaltyName = Literal["logistic", "squared_hinge", "hinge", "least_squares"]
Penalty = Callable[[Tensor], Tensor]
PenaltyLike = PenaltyName | Penalty


def logistic(x: Tensor, beta: float = 0.01, label_smoothing: float = 0.0) -> Tensor:
    """Logistic penalty with label smoothing eps:

    h(x) = -(1 - eps) log sigma(beta x) - eps log sigma(-beta x)
         = (1 - eps) log(1 + exp(-beta x)) + eps log(1 + exp(beta x)).

    Computed as ``-logsigmoid``, which neither overflows nor switches to an approximation: exact
    in float64 over the whole range, value and gradient (``F.softplus`` with its default
    ``threshold=20`` returns its argument above 20, off by up to 2e-9 per term).

    Example:
        >>> import torch
        >>> logistic(torch.tensor([-2.0, 0.0, 3.0]), beta=1.0)
        tensor([2.1269, 0.6931, 0.0486])
        >>> logistic(torch.tensor([-1e4]), beta=1.0)  # no overflow
        tensor([10000.])
    """
    loss = -F.logsigmoid(beta * x)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-beta * x)
    return loss


def squared_hinge(x: Tensor, beta: float = 0.01) -> Tensor:
    """Squared hinge with margin beta: h(x) = max(beta - x, 0)^2.

    Example:
        >>> import torch
        >>> squared_hinge(torch.tensor([-1.0, 0.5, 2.0]), beta=1.0)
        tensor([4.0000, 0.2500, 0.0000])
    """
    return F.relu(beta - x).square()


def hinge(x: Tensor, beta: float = 0.01) -> Tensor:
    """Hinge with margin beta: h(x) = max(beta - x, 0).

    Example:
        >>> import torch
        >>> hinge(torch.tensor([-1.0, 2.0]), beta=1.0)
        tensor([2., 0.])
    """
    return F.relu(beta - x)


def least_squares(x: Tensor, beta: float = 0.01) -> Tensor:
    """Least squares around margin beta: h(x) = (beta - x)^2 (penalizes overshoot too).

    Example:
        >>> import torch
        >>> least_squares(torch.tensor([0.0, 3.0]), beta=1.0)
        tensor([1., 4.])
    """
    return (beta - x).square()


PENALTIES: dict[str, Callable[..., Tensor]] = {
    "logistic": logistic,
    "squared_hinge": squared_hinge,
    "hinge": hinge,
    "least_squares": least_squares,
}


def get_penalty(
    penalty: PenaltyLike, *, beta: float = 0.01, label_smoothing: float = 0.0
) -> Penalty:
    """Resolve a penalty name (with its ``beta`` and ``label_smoothing``) or a callable into an
    elementwise function h: Tensor -> Tensor.

    Args:
        penalty: one of ``"logistic"``, ``"squared_hinge"``, ``"hinge"``, ``"least_squares"``, or
            an elementwise convex callable (then ``beta`` is not applied; bind it yourself).
        beta: scale (logistic) or margin (the others); a finite number > 0.
        label_smoothing: eps in [0, 0.5); only the logistic penalty has it.

    Returns:
        The elementwise penalty h.

    Raises:
        ValueError: unknown name, beta <= 0, label_smoothing outside [0, 0.5) or given for a
            penalty other than logistic.
        TypeError: ``penalty`` is neither a string nor a callable.

    Example:
        >>> import torch
        >>> h = get_penalty("hinge", beta=0.5)
        >>> h(torch.tensor([0.0, 1.0]))
        tensor([0.5000, 0.0000])
    """
    beta = check_positive(beta, "beta")
    label_smoothing = check_label_smoothing(label_smoothing)
    if callable(penalty):
        if label_smoothing:
            raise ValueError(
                "label_smoothing applies to the 'logistic' penalty only; got "
                f"label_smoothing={label_smoothing} with a callable penalty"
            )
        return penalty
    if not isinstance(penalty, str):
        raise TypeError(
            f"penalty must be a name or an elementwise callable; got {describe(penalty)}"
        )
    check_choice(penalty, "penalty", PENALTIES)
    if penalty == "logistic":
        return partial(logistic, beta=beta, label_smoothing=label_smoothing)
    if label_smoothing:
        raise ValueError(
            f"label_smoothing applies to the 'logistic' penalty only; got "
            f"label_smoothing={label_smoothing} with penalty={penalty!r}"
        )
    return partial(PENALTIES[penalty], beta=beta)
