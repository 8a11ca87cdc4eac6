"""Stochastic-dominance diagnostics: quantile curves, FSD violation, OT violation, almost-FSD.

All quantiles are the left-continuous inverse CDF Q(t) = inf{x : F(x) >= t} of the (weighted)
empirical measure, the same Q that :func:`aot_losses.ot_1d` integrates. The functions take
tensors of shape ``(n,)`` and ``(m,)`` (any n, m), read no gradients, and return tensors.

NaN and infinity: one policy, the losses' (``docs/errors.md``). Non-finite samples raise
``ValueError`` naming the argument when value checks run (on CPU by default); when they do not,
a NaN sample makes the result NaN, never a verdict of dominance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._validation import (
    check_finite,
    check_same_device,
    check_tensor,
    check_weights,
    describe,
    values_checked,
)
from .ot import ot_1d
from .penalties import PenaltyLike

if TYPE_CHECKING:
    from matplotlib.axes import Axes


__all__ = [
    "almost_fsd_ratio",
    "fsd_violation",
    "ot_violation",
    "plot_quantile_curves",
    "quantile_curves",
    "quantile_levels",
    "quantiles",
]


def quantiles(x: Tensor, levels: Tensor | Sequence[float], weights: Tensor | None = None) -> Tensor:
    """Q_x(t) = inf{y : F_x(y) >= t} at each level t in [0, 1] (t = 0 gives the smallest sample).

    Args:
        x: samples, shape ``(n,)``.
        levels: levels t, shape ``(L,)``: a tensor or a sequence of floats, in [0, 1].
        weights: nonnegative weights of ``x``, shape ``(n,)``; ``None``: uniform.

    Returns:
        Shape ``(L,)``, in ``x``'s dtype; all NaN if ``x`` holds NaN and value checks are off.

    Raises:
        ValueError: ``x`` is not 1-D or empty, levels outside [0, 1], bad weights; non-finite
            samples (a value check: see :func:`aot_losses.set_value_checks`).
        TypeError: non-floating ``x``, levels neither a tensor nor a sequence of numbers.

    Example:
        >>> import torch
        >>> quantiles(torch.tensor([3.0, 1.0, 2.0, 4.0]), [0.25, 0.5, 0.51, 1.0])
        tensor([1., 2., 3., 4.])
    """
    x = _samples(x, "x")
    levels = quantile_levels(levels, x.device)
    values, order = torch.sort(x)
    if weights is None:
        cumulative = torch.arange(1, len(x) + 1, dtype=torch.float64, device=x.device) / len(x)
    else:
        weights = check_weights(weights, "weights", x, "x").detach().to(torch.float64)
        cumulative = torch.cumsum(weights[order], 0)
        cumulative = cumulative / cumulative[-1]
    index = torch.searchsorted(cumulative, levels.to(torch.float64) - 1e-12)
    q = values[index.clamp_(max=len(x) - 1)]
    return torch.where(x.isnan().any(), math.nan, q)  # unchecked NaN: NaN, never a verdict


def quantile_levels(
    levels: int | Tensor | Sequence[float], device: torch.device | None = None
) -> Tensor:
    """``levels`` evenly spaced interior levels i / (levels + 1) in float64, or the given levels
    (a tensor or a sequence of floats) checked to lie in [0, 1], on ``device``.

    Raises:
        ValueError: fewer than one level, levels not 1-D, outside [0, 1] or NaN.
        TypeError: levels neither an int, a tensor nor a sequence of numbers.

    Example:
        >>> quantile_levels(3)
        tensor([0.2500, 0.5000, 0.7500], dtype=torch.float64)
    """
    if isinstance(levels, int) and not isinstance(levels, bool):
        if levels < 1:
            raise ValueError(f"levels must be a positive number of levels; got {levels}")
        return torch.arange(1, levels + 1, dtype=torch.float64, device=device) / (levels + 1)
    if not isinstance(levels, Tensor):
        try:
            levels = torch.tensor(levels, dtype=torch.float64, device=device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"levels must be a number of levels, a tensor or a sequence of floats; got "
                f"{describe(levels)}"
            ) from error
    levels = check_tensor(levels, "levels", ndim=1).to(device)
    if values_checked(levels) and not bool(((levels >= 0) & (levels <= 1)).all()):
        raise ValueError(
            f"levels must lie in [0, 1]; got minimum {float(levels.min())} and maximum "
            f"{float(levels.max())}"
        )
    return levels


def quantile_curves(
    u: Tensor, v: Tensor, levels: int | Tensor | Sequence[float] = 99
) -> tuple[Tensor, Tensor, Tensor]:
    """Quantile curves of two samples at common levels.

    Returns:
        ``(levels, Q_u(levels), Q_v(levels))``, each of shape ``(L,)``.

    Example:
        >>> import torch
        >>> t, qu, qv = quantile_curves(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 5.0]), 3)
        >>> qu, qv
        (tensor([1., 1., 2.]), tensor([0., 0., 5.]))
    """
    u, v = _samples(u, "u"), _samples(v, "v")
    check_same_device({"u": u, "v": v})
    t = quantile_levels(levels, u.device)
    return t, quantiles(u, t), quantiles(v, t)


def fsd_violation(u: Tensor, v: Tensor, levels: int | Tensor | Sequence[float] = 99) -> Tensor:
    """Share of quantile levels t where Q_u(t) < Q_v(t): 0 when u dominates v (first order)
    at those levels, 1 when v dominates u everywhere; NaN (never 0) for unchecked NaN samples.

    Example:
        >>> import torch
        >>> fsd_violation(torch.tensor([1.0, 5.0]), torch.tensor([2.0, 3.0]), levels=4)
        tensor(0.5000, dtype=torch.float64)
    """
    _, qu, qv = quantile_curves(u, v, levels)
    share = (qu < qv).to(torch.float64).mean()
    return torch.where(qu.isnan().any() | qv.isnan().any(), math.nan, share)


def _samples(x: Tensor, name: str) -> Tensor:
    """A diagnostic's 1-D samples, detached; non-finite values raise when value checks run
    (the same policy as the losses: see :func:`aot_losses.set_value_checks`)."""
    x = check_tensor(x, name, ndim=1).detach()
    check_finite(x, name)
    return x


def _violation_area(x: Tensor) -> Tensor:
    return torch.relu(-x)


def _violation_squared(x: Tensor) -> Tensor:
    return torch.relu(-x).square()


def _squared(x: Tensor) -> Tensor:
    return x.square()


def ot_violation(
    u: Tensor, v: Tensor, penalty: PenaltyLike = _violation_area, *, beta: float = 0.01
) -> Tensor:
    """OT_h(mu_u, mu_v) = integral_0^1 h(Q_u(t) - Q_v(t)) dt for a violation penalty h; by
    default h(x) = max(-x, 0), the area where Q_v exceeds Q_u (0 iff u dominates v).

    Example:
        >>> import torch
        >>> ot_violation(torch.tensor([1.0, 5.0]), torch.tensor([2.0, 3.0]))
        tensor(0.5000)
    """
    return ot_1d(u.detach(), v.detach(), penalty, beta=beta)


def almost_fsd_ratio(u: Tensor, v: Tensor) -> Tensor:
    """The almost-FSD ratio of del Barrio et al. (2018),

    eps(u, v) = integral (Q_v - Q_u)_+^2 dt / integral (Q_u - Q_v)^2 dt,

    in [0, 1]: 0 when u dominates v, 1 when v dominates u; NaN when Q_u = Q_v.

    Example:
        >>> import torch
        >>> almost_fsd_ratio(torch.tensor([1.0, 5.0]), torch.tensor([2.0, 3.0]))
        tensor(0.2000)
    """
    u, v = u.detach(), v.detach()
    return ot_1d(u, v, _violation_squared) / ot_1d(u, v, _squared)


def plot_quantile_curves(
    u: Tensor,
    v: Tensor,
    *,
    levels: int | Tensor = 99,
    ax: Axes | None = None,
    labels: tuple[str, str] = ("chosen", "rejected"),
    title: str | None = None,
    **plot_kwargs: Any,
) -> Axes:
    """Plot Q_u and Q_v against the level t (the paper's Figure 1) on ``ax`` (a new figure if
    ``None``); shade where Q_u < Q_v (violations of u dominating v).

    Raises:
        ImportError: matplotlib is missing (``pip install aot-losses[examples]``).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plot_quantile_curves needs matplotlib: pip install 'aot-losses[examples]'"
        ) from error
    t, qu, qv = (x.cpu().double().numpy() for x in quantile_curves(u, v, levels))
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(t, qu, label=labels[0], **plot_kwargs)
    ax.plot(t, qv, label=labels[1], linestyle="--", **plot_kwargs)
    ax.fill_between(t, qu, qv, where=qu < qv, color="red", alpha=0.2, label="violation")
    ax.set_xlabel("quantile level t")
    ax.set_ylabel("quantile")
    if title is not None:
        ax.set_title(title)
    ax.legend()
    return ax
