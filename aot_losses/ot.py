"""Exact optimal transport between two 1-D empirical measures with a convex cost h(u - v).

For convex h the monotone (north-west-corner) coupling of the two quantile functions is optimal,
so (Melnyk et al. 2024, arXiv 2406.05882, Section 3)

    OT_h(mu_U, mu_V) = integral_0^1 h(Q_U(t) - Q_V(t)) dt.

* n = m atoms of equal weight: the integral is the mean of h(u_(i) - v_(i)) over order
  statistics (one sort of the two stacked samples);
* otherwise: the cumulative-weight grids of both samples are merged (by binary search, no sort;
  cached for equal weights), and the integral is the sum over merged intervals of (interval
  length) x h(Q_U - Q_V). The grid bookkeeping runs in float64 (it is O(n + m), and float32
  cumulative sums cancel); intervals of length zero (zero weights, coinciding grid points)
  contribute exactly zero to the value and the gradient.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import Tensor

from ._validation import (
    Reduction,
    check_choice,
    check_finite,
    check_reduction,
    check_same_device,
    check_same_dtype,
    check_tensor,
    check_weights,
    describe,
    reduce,
)
from .distributed import gather_concat_many, local_checks
from .penalties import Penalty, PenaltyLike, get_penalty
from .sorting import Backend, Regularization, SoftSort

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = [
    "SortKind",
    "SortLike",
    "ot_1d",
]

SortKind = Literal["hard", "soft"]
#: A sort: ``"hard"``, ``"soft"`` (:class:`~aot_losses.sorting.SoftSort` of the soft-sort
#: keywords), a :class:`~aot_losses.sorting.SoftSort`, or any callable that returns its input
#: sorted ascending along the last dimension (same shape and dtype).
SortLike = SortKind | Callable[[Tensor], Tensor]


def ot_1d(
    u: Tensor,
    v: Tensor,
    penalty: PenaltyLike = "logistic",
    *,
    beta: float = 0.01,
    label_smoothing: float = 0.0,
    u_weights: Tensor | None = None,
    v_weights: Tensor | None = None,
    sort: SortLike = "hard",
    regularization: Regularization = "l2",
    regularization_strength: float = 0.1,
    sort_backend: Backend = "torch",
    process_group: ProcessGroup | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Exact 1-D optimal transport cost OT_h(mu_u, mu_v) = integral_0^1 h(Q_u(t) - Q_v(t)) dt.

    Args:
        u: samples of the first measure, shape ``(..., n)``.
        v: samples of the second measure, shape ``(..., m)``, same leading shape, dtype and
            device as ``u``; ``m`` may differ from ``n``.
        penalty: the convex cost h, a name from :mod:`aot_losses.penalties` or an elementwise
            callable (it must return a floating tensor of its argument's shape).
        beta: scale (logistic) or margin (other named penalties).
        label_smoothing: eps in [0, 0.5) for the logistic penalty.
        u_weights: nonnegative weights of ``u``'s atoms, shape ``(..., n)`` or broadcastable to
            it; need not sum to 1 (any scale); zeros allowed. ``None``: uniform.
        v_weights: the same for ``v``.
        sort: ``"hard"`` (exact order statistics; gradient through the values, permutation held
            fixed); ``"soft"`` (:class:`~aot_losses.sorting.SoftSort` of ``regularization``,
            ``regularization_strength`` and ``sort_backend``); or a sort object carrying its
            own options: a :class:`~aot_losses.sorting.SoftSort` (every backend's options, e.g.
            Sinkhorn's ``epsilon``) or any callable returning its input sorted ascending along
            the last dimension. A soft sort replaces the sorted values; weights stay attached
            to the hard-sorted positions.
        regularization: ``"l2"`` or ``"kl"``, for ``sort="soft"``.
        regularization_strength: soft-sort strength (the paper used 0.1), for ``sort="soft"``.
        sort_backend: :func:`aot_losses.soft_sort` backend, for ``sort="soft"``. These three
            are checked whatever ``sort`` is, and must keep their defaults when ``sort`` is an
            object (it carries its own options).
        process_group: ``None`` transports the local samples; a ``torch.distributed`` group
            (e.g. ``torch.distributed.group.WORLD``) transports the samples of all its ranks,
            concatenated in rank order (local sizes may differ, and may be 0). Every rank gets
            the same value; the gradient averaged over ranks equals the gradient of the loss on
            the concatenated samples. All ranks must pass weights, or none.
        reduction: ``"mean"`` returns the OT cost, shape ``(...)``; ``"none"`` returns the cost
            of each quantile interval scaled by the number of intervals K, shape ``(..., K)``
            (K = n for n = m without weights: ``h(u_(i) - v_(i))``; K = n + m otherwise), whose
            mean is the OT cost; ``"sum"`` returns the sum of that.

    Returns:
        The OT cost in ``u``'s dtype, on ``u``'s device.

    Raises:
        TypeError: non-tensor or non-floating inputs, dtypes that differ, a penalty or sort
            that returns a non-floating tensor, an option of the wrong type.
        ValueError: wrong dimensions, empty inputs, devices that differ, mismatched leading
            shapes, negative / non-finite / all-zero weights, non-finite samples (value checks,
            see :func:`aot_losses.set_value_checks`), bad option values, a penalty or sort
            that changes the shape.

    Example:
        >>> import torch
        >>> u, v = torch.tensor([3.0, 1.0]), torch.tensor([0.0, 2.0, 4.0])
        >>> # quantile pairs (1, 0), (1, 2), (3, 2), (3, 4) on intervals of 1/3, 1/6, 1/6, 1/3
        >>> ot_1d(u, v, "least_squares", beta=1.0)
        tensor(2.)
    """
    options = TransportOptions.of(locals())
    distributed = process_group is not None
    with local_checks(process_group, gathered=2, like=u):  # raised on every rank alike
        u = check_tensor(u, "u", min_ndim=1, allow_empty=distributed)
        v = check_tensor(v, "v", min_ndim=1, allow_empty=distributed)
        check_same_device({"u": u, "v": v})
        check_same_dtype({"u": u, "v": v})
        if u.shape[:-1] != v.shape[:-1]:
            raise ValueError(
                f"u and v must have the same leading shape; got u of shape {tuple(u.shape)} and "
                f"v of shape {tuple(v.shape)}"
            )
        check_finite(u, "u")
        check_finite(v, "v")
        if u_weights is not None:
            u_weights = check_weights(u_weights, "u_weights", u, "u", allow_zero_sum=distributed)
        if v_weights is not None:
            v_weights = check_weights(v_weights, "v_weights", v, "v", allow_zero_sum=distributed)
    return transport(u, v, u_weights, v_weights, options, process_group)


@dataclass(frozen=True)
class TransportOptions:
    """Checked options of :func:`ot_1d` and the losses: the penalty ``h``, the sort (``None``:
    hard) and the reduction."""

    h: Penalty
    sort: Callable[[Tensor], Tensor] | None
    reduction: Reduction

    @staticmethod
    def of(arguments: dict[str, Any]) -> TransportOptions:
        """:func:`resolve_options` of the options among a call's ``arguments`` (its
        ``locals()``, taken before anything else is assigned): the one place where the keywords
        of :func:`ot_1d` and the losses become options."""
        return resolve_options(**{name: arguments[name] for name in _OPTION_NAMES})


#: The soft-sort keywords' defaults: with a sort object they must keep them.
_SOFT_KEYWORDS: dict[str, object] = {
    "regularization": "l2",
    "regularization_strength": 0.1,
    "sort_backend": "torch",
}


def resolve_options(
    *,
    penalty: PenaltyLike,
    beta: float,
    label_smoothing: float,
    sort: SortLike,
    regularization: Regularization,
    regularization_strength: float,
    sort_backend: Backend,
    reduction: Reduction,
) -> TransportOptions:
    """Check every option of :func:`ot_1d` and the losses (also those that do not apply, such as
    the soft-sort keywords with ``sort="hard"``) and resolve the penalty and the sort."""
    h = get_penalty(penalty, beta=beta, label_smoothing=label_smoothing)
    soft = SoftSort(regularization, regularization_strength, sort_backend)
    reduction = check_reduction(reduction)
    if isinstance(sort, str):
        check_choice(sort, "sort", get_args(SortKind))
        return TransportOptions(h, None if sort == "hard" else soft, reduction)
    if not callable(sort):
        raise TypeError(
            "sort must be 'hard', 'soft', a SoftSort or a callable that sorts its input along "
            f"the last dimension; got {describe(sort)}"
        )
    given = {
        "regularization": regularization,
        "regularization_strength": regularization_strength,
        "sort_backend": sort_backend,
    }
    for name, value in given.items():
        if value != _SOFT_KEYWORDS[name]:
            raise ValueError(
                f"{name}={value!r} applies to sort='soft' only; sort={sort!r} carries its own "
                f"options (for example SoftSort({name.removeprefix('sort_')}=...))"
            )
    return TransportOptions(h, sort, reduction)


#: The keywords that :func:`resolve_options` checks, shared by :func:`ot_1d` and the losses.
_OPTION_NAMES = tuple(inspect.signature(resolve_options).parameters)


def transport(
    u: Tensor,
    v: Tensor,
    u_weights: Tensor | None,
    v_weights: Tensor | None,
    options: TransportOptions,
    process_group: ProcessGroup | None,
) -> Tensor:
    """:func:`ot_1d` on inputs and options its callers have checked."""
    if process_group is not None:
        u, v, u_weights, v_weights = _gather(process_group, u, v, u_weights, v_weights)
    if u_weights is None and v_weights is None and u.shape == v.shape:
        sorted_uv = _sorted(torch.stack((u, v)), options.sort)
        costs = _penalty(options.h, sorted_uv[0] - sorted_uv[1])
        return reduce(costs, options.reduction)
    return _ot_merged(u, v, u_weights, v_weights, options)


def _penalty(h: Penalty, x: Tensor) -> Tensor:
    """``h(x)``, checked to be a floating tensor of ``x``'s shape (a callable penalty that is
    not elementwise would otherwise be broadcast or reduced into a wrong cost)."""
    out = h(x)
    if not isinstance(out, Tensor) or not out.is_floating_point():
        raise TypeError(
            f"penalty must return a floating-point tensor of its argument's shape; got "
            f"{describe(out)}"
        )
    if out.shape != x.shape:
        raise ValueError(
            f"penalty must be elementwise: it got shape {tuple(x.shape)} and returned shape "
            f"{tuple(out.shape)}"
        )
    return out


def _gather(
    group: ProcessGroup,
    u: Tensor,
    v: Tensor,
    u_weights: Tensor | None,
    v_weights: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Concatenate every rank's samples and weights in rank order, differentiably, in one
    packed gather (:func:`aot_losses.distributed.gather_concat_many`): two collectives forward
    (the metadata of both sides, then their samples and weights) and one backward (the packed
    gradient of the sides that need one). A rank that passes weights while another does not is
    reported on every rank, from the metadata."""
    weight_names = ("u_weights", "v_weights")
    (u, v), (u_weights, v_weights) = gather_concat_many(
        (u, v), group, names=("u", "v"), weights=(u_weights, v_weights), weight_names=weight_names
    )
    for name, x, weights, weights_name in zip(
        ("u", "v"), (u, v), (u_weights, v_weights), weight_names, strict=True
    ):
        if x.shape[-1] == 0:
            raise ValueError(f"{name} must be non-empty on at least one rank of process_group")
        if weights is not None:
            check_weights(weights, weights_name, x, "the gathered samples")
    return u, v, u_weights, v_weights


def _ot_merged(
    u: Tensor,
    v: Tensor,
    u_weights: Tensor | None,
    v_weights: Tensor | None,
    options: TransportOptions,
) -> Tensor:
    """OT_h on the merged cumulative-weight grid (unequal sizes and/or weights).

    With cumulative weights A_i of u's sorted atoms (total A) and B_j of v's (total B), the grid
    points are A_i B and B_j A on the common scale A B; interval k = (t_{k-1}, t_k] maps u's
    quantile to the first atom i with A_i B >= t_k (likewise for v). Without weights the grid
    depends on n and m only and is cached (up to n + m = 2^16).
    """
    sort_values, reduction = options.sort, options.reduction
    n, m = u.shape[-1], v.shape[-1]
    if u_weights is None and v_weights is None:
        # torch.compile traces the function itself (a cache lookup cannot be traced); large
        # grids are cheap next to their sorts and would hold device memory in the cache
        cached = n + m <= _CACHED_GRID_SIZE and not torch.compiler.is_compiling()
        uniform = _uniform_grid if cached else _uniform_grid.__wrapped__
        lengths, atom_u, atom_v = uniform(n, m, u.device)
        sorted_u, sorted_v = _sorted(u, sort_values), _sorted(v, sort_values)
        lead = u.shape[:-1]
        atom_u, atom_v = atom_u.expand(*lead, -1), atom_v.expand(*lead, -1)
    else:
        (sorted_u, cum_u), (sorted_v, cum_v) = (
            _sorted_atoms(x, w, sort_values) for x, w in ((u, u_weights), (v, v_weights))
        )
        lengths, atom_u, atom_v = _merged_grid(cum_u, cum_v)
    diff = sorted_u.gather(-1, atom_u) - sorted_v.gather(-1, atom_v)
    positive = lengths > 0
    # Zero-length intervals are masked, and their argument zeroed so h cannot produce inf/NaN
    # there (0 * inf = NaN in the value, and in the gradient).
    diff = torch.where(positive, diff, torch.zeros_like(diff))
    acc_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    costs = _penalty(options.h, diff).to(acc_dtype)
    terms = torch.where(positive, costs * lengths.to(acc_dtype), 0.0)
    if reduction == "none":
        return (terms * terms.shape[-1]).to(u.dtype)
    value = terms.sum(-1)
    if reduction == "sum":
        value = value * terms.shape[-1]
    return value.to(u.dtype)


def _sorted(x: Tensor, sort_values: Callable[[Tensor], Tensor] | None) -> Tensor:
    """``x`` sorted along the last dimension: hard (``torch.sort``) when ``sort_values`` is
    None, else by ``sort_values``, whose result is checked to keep ``x``'s shape and dtype."""
    if sort_values is None:
        return torch.sort(x, dim=-1).values
    out = sort_values(x)
    if not isinstance(out, Tensor) or out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(
            f"sort must return its input sorted along the last dimension, with its shape and "
            f"dtype ({tuple(x.shape)}, {x.dtype}); got {describe(out)}"
        )
    return out


def _sorted_atoms(
    x: Tensor, weights: Tensor | None, sort_values: Callable[[Tensor], Tensor] | None
) -> tuple[Tensor, Tensor]:
    """``x`` sorted (hard when ``sort_values`` is None) and the float64 cumulative weights of its
    atoms in sorted order (integers when uniform). Weights are data, not parameters: they are
    not differentiated. They are divided by their largest first, so that their cumulative sums
    lie in [0, n] and the grid products of :func:`_merged_grid` neither overflow nor underflow
    whatever the weights' scale."""
    if weights is None:
        n = x.shape[-1]
        cumulative = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
        return _sorted(x, sort_values), cumulative.expand(*x.shape[:-1], n)
    values, order = torch.sort(x, dim=-1)
    if sort_values is not None:
        values = _sorted(x, sort_values)
    sorted_weights = weights.detach().to(torch.float64).expand_as(x).gather(-1, order)
    sorted_weights = sorted_weights / sorted_weights.amax(-1, keepdim=True)
    return values, torch.cumsum(sorted_weights, dim=-1)


def _merged_grid(cum_u: Tensor, cum_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Lengths (summing to 1) of the intervals of the merged grid, and for each interval the
    atom of u and of v that covers it.

    The two sorted grids are merged without a sort: a point's slot is its index plus the
    number of the other grid's points before it (u's first at ties); at a point of one grid,
    the other's covering atom is its first point at or above it.
    """
    n, m = cum_u.shape[-1], cum_v.shape[-1]
    total_u, total_v = cum_u[..., -1:], cum_v[..., -1:]
    grid_u, grid_v = cum_u * total_v, cum_v * total_u  # both end at total_u * total_v exactly
    v_below_u = torch.searchsorted(grid_v.contiguous(), grid_u.contiguous())  # v < u_i
    u_upto_v = torch.searchsorted(grid_u.contiguous(), grid_v.contiguous(), right=True)
    index_u = torch.arange(n, device=cum_u.device).expand_as(grid_u)
    index_v = torch.arange(m, device=cum_u.device).expand_as(grid_v)
    slot_u, slot_v = index_u + v_below_u, index_v + u_upto_v
    shape = (*grid_u.shape[:-1], n + m)

    def merge(at_u: Tensor, at_v: Tensor) -> Tensor:
        # zeros, not empty: with value checks off, negative weights (unsorted grids) can leave
        # slots unfilled; the result is then meaningless, but every index stays in range
        # out of place: torch.vmap cannot scatter a batched tensor into an unbatched one
        return at_u.new_zeros(shape).scatter(-1, slot_u, at_u).scatter(-1, slot_v, at_v)

    grid = merge(grid_u, grid_v)
    lengths = torch.diff(grid, dim=-1, prepend=torch.zeros_like(grid[..., :1]))
    atom_u = merge(index_u, u_upto_v.clamp(max=n - 1))  # a tie with u's point has length 0
    atom_v = merge(v_below_u.clamp(max=m - 1), index_v)
    return lengths / (total_u * total_v), atom_u, atom_v


#: Largest n + m whose grid of equal weights is cached (at most 32 grids of 24 bytes a point).
_CACHED_GRID_SIZE = 1 << 16


@functools.lru_cache(maxsize=32)
def _uniform_grid(n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_merged_grid` of n and m equal weights."""
    steps = (torch.arange(1, k + 1, dtype=torch.float64, device=device) for k in (n, m))
    return _merged_grid(*steps)
