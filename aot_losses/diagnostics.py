"""Stochastic-dominance diagnostics: quantile curves, FSD violation, OT violation, almost-FSD.

All quantiles are the left-continuous inverse CDF Q(t) = inf{x : F(x) >= t} of the (weighted)
empirical measure, the same Q that :func:`aot_losses.ot_1d` integrates. The functions take
tensors of shape ``(n,)`` and ``(m,)`` (any n, m), read no gradients, and return tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._validation import check_same_device, check_tensor, check_weights
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


def quantiles(x: Tensor, levels: Tensor, weights: Tensor | None = None) -> Tensor:
    """Q_x(t) = inf{y : F_x(y) >= t} at each level t in (0, 1].

    Args:
        x: samples, shape ``(n,)``.
        levels: levels t, shape ``(L,)``, in (0, 1].
        weights: nonnegative weights of ``x``, shape ``(n,)``; ``None``: uniform.

    Returns:
        Shape ``(L,)``, in ``x``'s dtype.

    Example:
        >>> import torch
        >>> quantiles(torch.tensor([3.0, 1.0, 2.0, 4.0]), torch.tensor([0.25, 0.5, 0.51, 1.0]))
        tensor([1., 2., 3., 4.])
    """
    x = check_tensor(x, "x", ndim=1).detach()
    check_same_device({"x": x, "levels": levels})
    values, order = torch.sort(x)
    if weights is None:
        cumulative = torch.arange(1, len(x) + 1, dtype=torch.float64, device=x.device) / len(x)
    else:
        weights = check_weights(weights, "weights", x, "x").detach().to(torch.float64)
        cumulative = torch.cumsum(weights[order], 0)
        cumulative = cumulative / cumulative[-1]
    index = torch.searchsorted(cumulative, levels.to(torch.float64) - 1e-12)
    return values[index.clamp_(max=len(x) - 1)]


def quantile_levels(levels: int | Tensor, device: torch.device | None = None) -> Tensor:
    """``levels`` evenly spaced interior levels i / (levels + 1), or a given tensor checked to
    lie in (0, 1]."""
    if isinstance(levels, int) and not isinstance(levels, bool):
        if levels < 1:
            raise ValueError(f"levels must be a positive number of levels; got {levels}")
        return torch.arange(1, levels + 1, dtype=torch.float64, device=device) / (levels + 1)
    levels = check_tensor(levels, "levels", ndim=1)
    if not bool(((levels > 0) & (levels <= 1)).all()):
        raise ValueError("levels must lie in (0, 1]")
    return levels


def quantile_curves(
    u: Tensor, v: Tensor, levels: int | Tensor = 99
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
    t = quantile_levels(levels, u.device)
    return t, quantiles(u, t), quantiles(v, t)


def fsd_violation(u: Tensor, v: Tensor, levels: int | Tensor = 99) -> Tensor:
    """Share of quantile levels t where Q_u(t) < Q_v(t): 0 when u dominates v (first order)
    at those levels, 1 when v dominates u everywhere.

    Example:
        >>> import torch
        >>> fsd_violation(torch.tensor([1.0, 5.0]), torch.tensor([2.0, 3.0]), levels=4)
        tensor(0.5000, dtype=torch.float64)
    """
    _, qu, qv = quantile_curves(u, v, levels)
    return (qu < qv).to(torch.float64).mean()


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
