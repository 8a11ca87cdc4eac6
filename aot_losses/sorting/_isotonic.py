"""Soft sort and soft rank by isotonic regression, in pure PyTorch: the solver and its autograd.

Blondel, Teboul, Berthet and Djolonga, "Fast Differentiable Sorting and Ranking" (ICML 2020)
write the soft sort and the soft rank of ``x`` as the projection of a fixed vector onto the
permutahedron of another one, and reduce that projection to an isotonic regression solved by
pool adjacent violators (PAV). This follows the conventions of torchsort (the reference
implementation the results must equal in float64). With ``a`` the ascending sort of ``x``,
0-based positions ``i`` and strength ``s``, the solution is a partition of the positions into
blocks ``B = [lo, hi)`` (:mod:`._block_problem`) and, per block:

* sort, l2: ``out_i = mean_B(a) + (i - mean_B(i)) / s``;
* rank, l2: ``r_i = mean_B(i) + 1 + (a_i - mean_B(a)) / s``;
* sort, kl: ``out_i = -logsumexp_B(-a) + (i - lo) / s + G(|B|) - G(1)``,
  ``G(L) = log(1 - exp(-L / s))``;
* rank, kl: ``r_i = softmax_B(a / s)_i * sum_B(i + 1)``.

The blocks are found in two stages, both vectorized over the batch and the positions: parallel
PAV passes (:mod:`._parallel_pav`), then, if 30 or 31 passes did not settle them, the bounded
hull merge (:mod:`._hull_merge`). The Jacobian is block structured (sort: a
block-averaging matrix times the sorting permutation); the backward and forward-mode passes use
it directly, in ``O(n)`` memory, as differentiable functions of ``x`` (exact second derivatives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor

from ._block_problem import (
    Blocks,
    IsotonicProblem,
    segment_max,
    singleton_blocks,
    unit_ranges,
)
from ._hull_merge import hull_block_starts
from ._parallel_pav import pool_violators, violating_pairs

__all__ = [
    "ACCELERATOR_SCHEDULE",
    "CHEAP_READ_SCHEDULE",
    "TIE_PASSES",
    "ReadSchedule",
    "Regularization",
    "default_schedule",
    "isotonic_soft_sort",
    "solve",
]

Regularization = Literal["l2", "kl"]


@dataclass(frozen=True)
class ReadSchedule:
    """When the solver reads "settled?" on the host (a device synchronization on an
    accelerator).

    ``passes[k]`` passes of parallel PAV run before the ``k``-th read; when the reads are over
    and the blocks are not settled, the bounded hull merge takes over. ``cheap``: a read costs
    nothing much (no device to wait for), so the solver reads before the first pass, returns
    at once when nothing pools and works on the rows that pool only.
    """

    passes: tuple[int, ...]
    cheap: bool


#: Where reads are cheap (CPU): a read before every pass, 31 passes in all.
CHEAP_READ_SCHEDULE = ReadSchedule((0,) + (1,) * 31, cheap=True)
#: On an accelerator: reads before any pass (nothing pools: the common case), then after 2, 6,
#: 14 and 30 passes; at most 5 reads instead of one per pass.
ACCELERATOR_SCHEDULE = ReadSchedule((0, 2, 4, 8, 16), cheap=False)
#: Passes of parallel PAV after the hull merge, without reads, to pool blocks whose values are
#: equal up to rounding.
TIE_PASSES = 8


def default_schedule(device: torch.device) -> ReadSchedule:
    """The schedule of host reads for ``device``: :data:`CHEAP_READ_SCHEDULE` on the CPU,
    :data:`ACCELERATOR_SCHEDULE` elsewhere."""
    return CHEAP_READ_SCHEDULE if device.type == "cpu" else ACCELERATOR_SCHEDULE


def solve(
    problem: IsotonicProblem, a: Tensor, schedule: ReadSchedule
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Soft sort or soft rank of the ascending rows ``a`` (B, n): ``(values, weight, block)``.

    ``values`` are in sorted position order (ranks included); ``weight`` is the per-position
    factor of the block-structured Jacobian (``1 / |B|`` for l2, the block softmax for kl);
    ``block`` is the row-local index of the block of every position (``None``: singletons).
    Block statistics are accumulated in float64, whatever the input precision.

    Host reads, by ``schedule``: with :data:`CHEAP_READ_SCHEDULE` (CPU), after every pass, and
    only the rows where something pools are worked on. With :data:`ACCELERATOR_SCHEDULE`: 1
    read when nothing pools, 2 when two passes settle the blocks, at most 5 for the passes,
    plus 1 (the number of blocks) when the hull merge runs; nothing else reads.
    """
    exact = a.to(torch.float64)
    violating = violating_pairs(problem, singleton_blocks(exact))
    if schedule.cheap and not bool(violating.any()):  # no pooling: the hard sort, or 1 .. n
        return _hard(problem, a), torch.ones_like(a), None
    starts = torch.cat([violating.new_ones(violating.shape[0], 1), ~violating], 1)
    if not schedule.cheap:
        return _solve_rows(problem, exact, starts, schedule.passes, a.dtype)
    pooling = violating.any(1).nonzero()[:, 0]
    if len(pooling) == len(a):
        return _solve_rows(problem, exact, starts, schedule.passes, a.dtype)
    exact_rows, starts_rows = (t.index_select(0, pooling) for t in (exact, starts))
    values, weight, block = _solve_rows(problem, exact_rows, starts_rows, schedule.passes, a.dtype)
    every = torch.arange(a.shape[1], device=a.device).expand(a.shape)
    return (
        _hard(problem, a).index_copy(0, pooling, values),
        torch.ones_like(a).index_copy(0, pooling, weight),
        every.index_copy(0, pooling, block),
    )


def _solve_rows(
    problem: IsotonicProblem,
    a: Tensor,
    starts: Tensor,
    schedule: tuple[int, ...],
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`solve` of the float64 rows ``a`` from the blocks beginning at ``starts``: parallel
    PAV by ``schedule``, then, if that did not settle them, the hull merge and the tie passes;
    values and weights in ``dtype``."""
    starts, blocks, settled = pool_violators(problem, a, starts, schedule)
    if not settled:
        starts = hull_block_starts(problem, a, starts)
        _, blocks, _ = pool_violators(problem, a, starts, (TIE_PASSES,), read_last=False)
    values, weight, block = _closed_form(problem, a, blocks)
    return values.to(dtype), weight.to(dtype), block


def _hard(problem: IsotonicProblem, a: Tensor) -> Tensor:
    """The limit without pooling: the sorted values, or the ranks 1 .. n."""
    if problem.kind == "sort":
        return a
    return torch.arange(1, a.shape[1] + 1, device=a.device, dtype=a.dtype).expand(a.shape)


def _closed_form(
    problem: IsotonicProblem, a: Tensor, blocks: Blocks
) -> tuple[Tensor, Tensor, Tensor]:
    """``(values, weight, block)`` of :func:`solve` from the final blocks of the float64 rows
    ``a``, by the closed form of each block, from the offsets ``a - r`` of the values from
    their block's reference (exact for ties: the mean of three 0.1 is not 0.1 in floating
    point, and at small ``s`` the rank divides that rounding by ``s``)."""
    statistic, lo, hi, reference, block = blocks.per_position()
    size = hi - lo
    i = unit_ranges(a.shape[1], a.device)[0]  # the positions 0 .. n - 1
    s = problem.strength
    if not problem.log_sum_exp:
        mean = statistic / size  # of the offsets
        center = (lo + hi - 1) / 2
        if problem.kind == "sort":
            values = reference + mean + (i - center) / s
        else:
            values = center + 1 + ((a - reference) - mean) / s
        return values, 1 / size, block
    weight = torch.exp(problem.block_data(a - reference) - statistic)  # the block's softmax
    if problem.kind == "rank":
        return weight * size * (lo + hi + 1) / 2, weight, block
    one = lo.new_ones(1)
    offset = cast(Tensor, problem.bounded_position(lo, hi)) - cast(
        Tensor, problem.bounded_position(one, 2 * one)
    )
    return reference - statistic + (i - lo) / s + offset, weight, block


def _forward(
    x: Tensor,
    strength: float,
    regularization: str,
    rank: bool,
    finite: bool,
    schedule: ReadSchedule | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``(out, perm, block, weight)`` for a 2-D float32/float64 ``x``; see :func:`solve`
    (``schedule``: None, the device's :func:`default_schedule`).

    Ties are broken as torchsort breaks them (``torch.sort(-x, descending=True)``), so the
    gradients agree with it on tied inputs too. Rows holding NaN or infinity give NaN rows
    (``finite``: the caller has checked that there are none), without a host read.
    """
    values, perm = torch.sort(-x, dim=1, descending=True)
    finite_rows = None  # None: every row is finite
    if not finite:  # NaN sorts first and infinities to the ends: the end columns tell
        finite_rows = torch.isfinite(values[:, :: max(x.shape[1] - 1, 1)]).all(1, keepdim=True)
        values = torch.where(finite_rows, values, 0)  # solved as zeros, then set to NaN
    problem = IsotonicProblem("rank" if rank else "sort", regularization, strength)
    out, weight, block = solve(problem, -values, schedule or default_schedule(x.device))
    if finite_rows is not None:
        out = torch.where(finite_rows, out, math.nan)
        weight = torch.where(finite_rows, weight, math.nan)
    if rank:
        out = torch.empty_like(out).scatter(1, perm, out)
    return out, perm, block, weight


def _jacobian_weight(
    problem: IsotonicProblem, x: Tensor, perm: Tensor, block: Tensor, weight: Tensor
) -> Tensor:
    """The per-position factor ``w`` of the block-structured Jacobian, as a differentiable
    function of ``x`` so that the backward and forward-mode passes differentiate again.

    l2: ``w = 1 / |B|``, constant (the saved ``weight``). kl: the softmax over the block of the
    statistic's data ``z`` (``-a`` for sort, ``a / s`` for rank), recomputed from ``x``; rows
    that were not finite keep their NaN weight. An empty ``block`` (singletons) has ``w = 1``.
    """
    if not problem.log_sum_exp or block.numel() == 0:
        return weight
    rows, n = x.shape
    ids = (block + torch.arange(0, rows * n, n, device=x.device)[:, None]).view(-1)
    a = x.gather(1, perm).to(torch.float64).reshape(-1)
    # the data of the offsets from the block's smallest value: exact differences before any
    # division by s (a / s itself loses them, or overflows, when |a| is large against s)
    data = problem.block_data(a + segment_max(-a, ids, rows * n)[ids])
    shifted = torch.exp(data - segment_max(data, ids, rows * n)[ids])
    total = shifted.new_zeros(rows * n).index_add(0, ids, shifted)
    w = (shifted / total[ids]).view(rows, n).to(weight.dtype)
    return torch.where(weight.isnan(), weight, w)


def _backward(
    grad: Tensor, saved: tuple[Tensor, ...], strength: float, regularization: str, rank: bool
) -> Tensor:
    """Vector-Jacobian product through the block structure, in O(n) memory.

    Sort: ``d out_i / d a_j = w_j`` when ``i, j`` share a block (else 0), so
    ``grad_a = w * sum_B(g)``. Rank: ``d r_i / d a_j = (delta_ij - w_j) / s`` (l2; times
    ``r_i`` for kl), so ``grad_a = (h - w * sum_B(h)) / s`` with ``h = g`` (l2) or ``g * r``.
    The sorting permutation maps ``grad_a`` back to the input's positions. Every step is a
    differentiable function of ``grad``, ``x`` and ``out``, so second derivatives are exact.
    """
    x, out, perm, block, weight = saved
    problem = IsotonicProblem("rank" if rank else "sort", regularization, strength)
    w = _jacobian_weight(problem, x, perm, block, weight)
    if rank:
        h = grad.gather(1, perm)
        if regularization == "kl":
            h = h * out.gather(1, perm)
        grad_a = (h - w * _block_sums(h, block)) / strength
    else:
        grad_a = w * _block_sums(grad, block)
    return torch.empty_like(grad_a).scatter(1, perm, grad_a)


def _jvp(
    tangent: Tensor, saved: tuple[Tensor, ...], strength: float, regularization: str, rank: bool
) -> Tensor:
    """Jacobian-vector product, the transpose of :func:`_backward`: with ``t`` the tangent of
    the sorted input, sort ``out_t = sum_B(w * t)``; rank ``r_t = (t - sum_B(w * t)) / s``
    (times ``r`` for kl), scattered back to the input's positions."""
    x, out, perm, block, weight = saved
    problem = IsotonicProblem("rank" if rank else "sort", regularization, strength)
    w = _jacobian_weight(problem, x, perm, block, weight)
    t = tangent.gather(1, perm)
    if not rank:
        return _block_sums(w * t, block)
    r_t = (t - _block_sums(w * t, block)) / strength
    if regularization == "kl":
        r_t = r_t * out.gather(1, perm)
    return torch.empty_like(r_t).scatter(1, perm, r_t)


def _block_sums(g: Tensor, block: Tensor) -> Tensor:
    """Sum of ``g`` over each block, broadcast back to the block's positions (an empty
    ``block`` means that every position is its own block)."""
    if block.numel() == 0:
        return g
    rows, n = g.shape
    ids = (block + torch.arange(0, rows * n, n, device=g.device)[:, None]).view(-1)
    sums = g.new_zeros(rows * n).index_add(0, ids, g.reshape(-1))
    return sums.index_select(0, ids).view(rows, n)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, strength, regularization, rank = inputs[:4]
    out, perm, block, weight = output
    ctx.mark_non_differentiable(perm, block, weight)
    ctx.save_for_backward(x, out, perm, block, weight)
    ctx.save_for_forward(x, out, perm, block, weight)
    ctx.params = (strength, regularization, rank)
    ctx.options = len(inputs) - 1  # the inputs after x: they get no gradient
    ctx.set_materialize_grads(False)  # perm, block and weight get no gradient: no zeros for them


def _saved_backward(ctx: Any, grad: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
    grad_x = None if grad is None else _backward(grad, ctx.saved_tensors, *ctx.params)
    options: int = ctx.options
    return (grad_x,) + (None,) * options


def _saved_jvp(ctx: Any, tangent: Tensor, *_: Any) -> tuple[Tensor, None, None, None]:
    return _jvp(tangent, ctx.saved_tensors, *ctx.params), None, None, None


def _vmap_rows(
    fn: Any, in_dims: tuple[int | None, ...], x: Tensor, *args: Any
) -> tuple[tuple[Tensor, ...], tuple[int | None, ...]]:
    """Batching rule: the vmapped dimension of ``x`` joins its rows."""
    if in_dims[0] is None:
        outs = fn(x, *args)
        return outs, (None,) * len(outs)
    x = x.movedim(in_dims[0], 0)
    outs = fn(x.reshape(-1, x.shape[-1]), *args)
    return (
        tuple(t.view(x.shape) if t.numel() else t for t in outs),
        tuple(0 if t.numel() else None for t in outs),
    )


class _IsotonicFunction(torch.autograd.Function):
    """Eager entry: an ``autograd.Function`` costs far less per call than a custom op, and
    with ``setup_context`` and ``vmap`` it composes with ``torch.func`` transforms.

    Returns ``(out, perm, block, weight)`` (see :func:`_forward`; an empty ``block`` stands
    for singletons)."""

    @staticmethod
    def forward(
        x: Tensor,
        strength: float,
        regularization: str,
        rank: bool,
        finite: bool,
        schedule: ReadSchedule | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out, perm, block, weight = _forward(x, strength, regularization, rank, finite, schedule)
        return out, perm, perm.new_empty(0) if block is None else block, weight

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_saved_backward)
    jvp = staticmethod(_saved_jvp)

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[int | None, ...], x: Tensor, *args: Any
    ) -> tuple[tuple[Tensor, ...], tuple[int | None, ...]]:
        return _vmap_rows(_IsotonicFunction.apply, in_dims, x, *args)


@torch.library.custom_op("aot_losses::isotonic_soft_sort", mutates_args=())
def _isotonic_op(
    x: Tensor, strength: float, regularization: str, rank: bool, finite: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Entry for ``torch.compile`` (no graph break): ``(out, perm, block, weight)``."""
    out, perm, block, weight = _forward(x, strength, regularization, rank, finite)
    if block is None:
        block = torch.arange(x.shape[1], device=x.device).expand(x.shape).contiguous()
    return out, perm, block, weight


@_isotonic_op.register_fake
def _isotonic_fake(
    x: Tensor, strength: float, regularization: str, rank: bool, finite: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    index = torch.empty(x.shape, dtype=torch.long, device=x.device)
    return torch.empty_like(x), index, torch.empty_like(index), torch.empty_like(x)


_isotonic_op.register_autograd(_saved_backward, setup_context=_setup_context)


@_isotonic_op.register_vmap
def _isotonic_vmap(
    info: Any, in_dims: tuple[int | None, ...], x: Tensor, *args: Any
) -> tuple[tuple[Tensor, ...], tuple[int | None, ...]]:
    return _vmap_rows(_isotonic_op, in_dims, x, *args)


def isotonic_soft_sort(
    x: Tensor,
    strength: float,
    regularization: str,
    *,
    rank: bool,
    finite: bool = False,
    schedule: ReadSchedule | None = None,
) -> Tensor:
    """Ascending soft sort (or soft rank) of the rows of a 2-D floating tensor ``x``.

    float16 and bfloat16 are computed in float32 and cast back. No argument checks: the public
    :func:`aot_losses.soft_sort` and :func:`aot_losses.soft_rank` do them (``finite``: they
    have checked that ``x`` holds no NaN or infinity). ``schedule``: the host reads of the
    solver (:class:`ReadSchedule`); None, or under ``torch.compile``, the device's
    :func:`default_schedule`. A meta tensor gives a meta tensor of the right shape (no values
    are computed: shape propagation, as torch's own ops on meta).
    """
    compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
    # the custom op has a fake (shape-only) kernel: it also serves meta tensors
    if torch.compiler.is_compiling() or x.device.type == "meta":
        outs = _isotonic_op(compute, strength, regularization, rank, finite)
    else:
        outs = _IsotonicFunction.apply(compute, strength, regularization, rank, finite, schedule)  # type: ignore[no-untyped-call]
    out: Tensor = outs[0]
    return out.to(x.dtype)
