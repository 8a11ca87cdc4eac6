"""Soft sort and soft rank by isotonic regression, in pure PyTorch.

Blondel, Teboul, Berthet and Djolonga, "Fast Differentiable Sorting and Ranking" (ICML 2020)
write the soft sort and the soft rank of ``x`` as the projection of a fixed vector onto the
permutahedron of another one, and reduce that projection to an isotonic regression solved by
pool adjacent violators (PAV). This module follows the conventions of torchsort (the reference
implementation the results must equal in float64). With ``a`` the ascending sort of ``x``,
0-based positions ``i`` and strength ``s``, the solution is a partition of the positions into
blocks ``B = [lo, hi)`` and, per block:

* sort, l2: ``out_i = mean_B(a) + (i - mean_B(i)) / s``;
* rank, l2: ``r_i = mean_B(i) + 1 + (a_i - mean_B(a)) / s``;
* sort, kl: ``out_i = -logsumexp_B(-a) + (i - lo) / s + G(|B|) - G(1)``,
  ``G(L) = log(1 - exp(-L / s))``;
* rank, kl: ``r_i = softmax_B(a / s)_i * sum_B(i + 1)``.

Every block carries a fitted value ``v_B = D_B + Pos_B`` (a data part and a closed-form position
part); the blocks are the maximal runs of the isotonic regression, so ``v_B`` strictly decreases
from block to block, and two adjacent blocks are pooled when the right one is ``>=`` the left one
(torchsort pools ties too). The two parts are compared separately (``D_2 - D_1`` plus an exact
closed form for ``Pos_2 - Pos_1``) and never added: ``Pos`` grows like ``n / s``, and adding it
to the data in float32 is what loses torchsort its precision at large ``n``.

The block structure is found in two stages, both vectorized over the batch and the positions:

1. parallel PAV: each pass pools every run of adjacent violating blocks at once (one segment
   reduction per pass); typical inputs settle in a few passes;
2. if ``_MAX_MERGE_PASSES`` passes did not settle it (heavy tails and outliers can need a
   number of passes growing like ``sqrt(n)`` or ``n``), the current blocks are merged pairwise
   up a binary tree: two solved neighbouring chunks merge into the left one's blocks up to
   ``u*``, one pooled block ``[u*, v*)`` and the right one's blocks from ``v*``, where
   ``[u*, v*)`` is the bridge between the concave majorants of their cumulative-sum diagrams.
   It is found by a binary search over the left chunk's hull, each step evaluating the
   tangent to the right chunk's hull in one vectorized comparison; the range statistics come
   from within-chunk prefix and suffix scans (stable for the log-sum-exp statistics of
   ``kl``). ``O(log(n)^2)`` sequential steps, ``O(n log(n)^2)`` work, whatever the input.

The Jacobian is block structured (sort: a block-averaging matrix times the sorting permutation)
and the backward pass uses it directly, in ``O(n)`` memory.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor

Regularization = Literal["l2", "kl"]

#: Passes of parallel PAV tried before the bounded divide-and-conquer stage.
_MAX_MERGE_PASSES = 32
#: Passes of parallel PAV after it, to pool blocks whose values are equal up to rounding.
_TIE_PASSES = 8
#: Adjacent blocks whose fitted values agree to this relative tolerance count as tied and are
#: pooled (torchsort pools ties too, and its backward merges blocks equal within 1e-9): exact
#: ties, common with integer inputs, would otherwise be decided by rounding. Pooling tied blocks
#: does not change the values, only which subgradient the backward returns.
_TIE_RTOL = 1e-12


@dataclass(frozen=True)
class _Problem:
    """One isotonic problem: what is reduced over a block and how blocks are valued."""

    kind: str  # "sort" or "rank"
    regularization: str  # "l2" or "kl"
    strength: float

    @property
    def lse(self) -> bool:
        """Whether the block statistic is a log-sum-exp (``kl``) rather than a sum (``l2``)."""
        return self.regularization == "kl"

    def data(self, a: Tensor) -> Tensor:
        """Per-position values whose block statistic (sum or log-sum-exp) is needed."""
        if not self.lse:
            return a
        return -a if self.kind == "sort" else a / self.strength

    def value(self, stat: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
        """Data part ``D`` of the fitted value of the blocks ``[lo, hi)`` of statistic ``stat``
        (``lo`` and ``hi`` None: blocks of one position)."""
        if self.lse:
            return -stat
        mean = stat if lo is None or hi is None else stat / (hi - lo)
        return mean if self.kind == "sort" else -mean / self.strength

    def pos_diff(self, lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
        """``Pos[lo1, hi1) - Pos[lo2, hi2)`` for integer positions held in float64."""
        diff = self.linear_diff(lo1, hi1, lo2, hi2)
        bounded1, bounded2 = self.bounded(lo1, hi1), self.bounded(lo2, hi2)
        return diff if bounded1 is None or bounded2 is None else diff + (bounded1 - bounded2)

    def linear_diff(self, lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
        """The part of ``pos_diff`` linear in the positions (it grows like ``n / s``), formed
        from exact differences of positions before any division."""
        s = self.strength  # one division by an exact scale: the same bits as -((...) / 2) / s
        if self.regularization == "l2":
            return ((lo1 + hi1) - (lo2 + hi2)) / (-2 * s if self.kind == "sort" else 2)
        return (lo1 - lo2) / -s if self.kind == "sort" else torch.zeros_like(lo1 - lo2)

    def bounded(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        """The rest of ``Pos[lo, hi)``, of magnitude ``O(log(n / s))`` (None: zero)."""
        if self.regularization == "l2":
            return None
        if self.kind == "sort":  # log(1 - exp(-L / s)): absolute accuracy is what matters
            return torch.log(-torch.expm1((lo - hi) / self.strength))
        return torch.log((hi - lo) * (lo + hi + 1))

    def combine(self, s1: Tensor, s2: Tensor) -> Tensor:
        """Statistic of the union of two disjoint ranges."""
        return torch.logaddexp(s1, s2) if self.lse else s1 + s2

    @property
    def identity(self) -> float:
        """Statistic of an empty range."""
        return -math.inf if self.lse else 0.0

    def scan(self, z: Tensor) -> Tensor:
        """Inclusive prefix statistic along the last dimension."""
        return torch.logcumsumexp(z, -1) if self.lse else torch.cumsum(z, -1)

    def segment(self, z: Tensor, ids: Tensor, size: int) -> Tensor:
        """Statistic of each segment: ``out[k]`` reduces ``z`` where ``ids == k`` (flat)."""
        z, ids = z.reshape(-1), ids.reshape(-1)
        if not self.lse:
            return z.new_zeros(size).index_add(0, ids, z)
        top = _segment_max(z, ids, size)
        return top + torch.log(z.new_zeros(size).index_add(0, ids, torch.exp(z - top[ids])))


@dataclass
class _Blocks:
    """A partition of each row of ``n`` positions into blocks, with the block statistics.

    ``stat``, ``lo``, ``hi`` (B, n): per block slot ``k`` of each row, the statistic and the
    range ``[lo, hi)`` (float64 positions); slots past the row's number of blocks have
    ``lo == hi == n``. ``ids`` (B, n): flat block slot of each position (row ``r`` owns slots
    ``r n .. r n + n - 1``), or ``None`` when every position is its own block
    (:func:`_singletons`); then ``lo`` and ``hi`` are 1-D (n,) and broadcast over the rows.
    """

    stat: Tensor
    lo: Tensor
    hi: Tensor
    ids: Tensor | None = None

    def per_position(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``stat``, ``lo``, ``hi`` of the block of every position (B, n), and the row-local
        index of that block (blocks made by :func:`_blocks`)."""
        ids = cast(Tensor, self.ids)
        stat, lo, hi = (
            t.reshape(-1).index_select(0, ids.view(-1)).view(ids.shape)
            for t in (self.stat, self.lo, self.hi)
        )
        return stat, lo, hi, ids - ids[:, :1]


def _singletons(z: Tensor) -> _Blocks:
    return _Blocks(z, *_unit_ranges(z.shape[1], z.device))


@functools.lru_cache(maxsize=64)
def _unit_ranges(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``lo``, ``hi`` of the blocks of one position: ``[k, k + 1)`` for ``k < n``."""
    lo = torch.arange(n, device=device, dtype=torch.float64)
    return lo, lo + 1


def _blocks(problem: _Problem, z: Tensor, start: Tensor) -> _Blocks:
    rows, n = z.shape
    ids = start.cumsum(1) - 1 + torch.arange(0, rows * n, n, device=z.device)[:, None]
    stat = problem.segment(z, ids, rows * n).view(rows, n)
    firsts = torch.where(start, ids, rows * n).view(-1)
    positions = torch.arange(n, device=z.device, dtype=torch.float64).expand(rows, n)
    lo = torch.full((rows * n + 1,), n, device=z.device, dtype=torch.float64)
    lo = lo.scatter_(0, firsts, positions.reshape(-1))[:-1].view(rows, n)
    hi = torch.cat([lo[:, 1:], lo.new_full((rows, 1), n)], 1)
    return _Blocks(stat, lo, hi, ids)


def _violations(problem: _Problem, blk: _Blocks) -> Tensor | None:
    """(B, n - 1): whether block slot ``k + 1`` is ``>=`` slot ``k`` (up to rounding, see
    ``_TIE_RTOL``), both being real blocks; None when no pair violates."""
    first, second = (..., slice(None, -1)), (..., slice(1, None))
    if blk.ids is None:
        d = problem.value(blk.stat, None, None)
        pos, pos_tol = _singleton_gaps(problem, d.shape[1], d.device)
        valid = None
    else:
        d = problem.value(blk.stat, blk.lo, blk.hi)
        lo, hi = blk.lo, blk.hi
        pos = problem.linear_diff(lo[second], hi[second], lo[first], hi[first])
        bounded = problem.bounded(lo, hi)
        if bounded is not None:
            pos = pos + (bounded[second] - bounded[first])
        pos_tol = _TIE_RTOL * pos.abs()
        valid = lo[second] < lo.shape[-1]
    size = d.abs()
    viol = d[second] - d[first] + pos + (_TIE_RTOL * (size[second] + size[first]) + pos_tol) >= 0
    if valid is not None:
        viol = viol & valid
    return viol if bool(viol.any()) else None


@functools.lru_cache(maxsize=64)
def _singleton_gaps(problem: _Problem, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``Pos[k + 1, k + 2) - Pos[k, k + 1)`` for ``k < n - 1``, and its tie tolerance."""
    lo = torch.arange(n, device=device, dtype=torch.float64)
    pos = problem.pos_diff(lo[1:], lo[1:] + 1, lo[:-1], lo[:-1] + 1)
    return pos, _TIE_RTOL * pos.abs()


def _merge_passes(
    problem: _Problem, z: Tensor, max_passes: int, start: Tensor
) -> tuple[Tensor, _Blocks, bool]:
    """Parallel PAV: each pass pools every run of adjacent violating blocks.

    Starts from the blocks starting where ``start`` (B, n) is true. Returns the block starts,
    their blocks and whether they are final. Pooling any adjacent violators is valid (they
    share a value in the solution), so every pass only coarsens towards it.
    """
    blk = _blocks(problem, z, start)
    for _ in range(max_passes):
        viol = _violations(problem, blk)
        if viol is None:
            return start, blk, True
        pooled = torch.cat([viol.new_zeros(viol.shape[0], 1), viol], 1)
        start = start & ~pooled.view(-1)[cast(Tensor, blk.ids)]
        blk = _blocks(problem, z, start)
    return start, blk, False


def _hull_boundaries(problem: _Problem, z: Tensor, start: Tensor) -> Tensor:
    """Final block starts from any partition finer than the solution, in O(log(m)^2) steps.

    The current blocks become units ``0 .. m - 1`` (m padded to a power of two) with points
    ``0 .. m`` between them; a point is a *vertex* when it bounds a block of the solution. The
    units are merged pairwise up a binary tree. Two adjacent chunks, each solved, merge into
    their left part up to a vertex ``u*``, one pooled block ``[u*, v*)`` and their right part
    from a vertex ``v*`` (PAV started on the right chunk can only pool the left chunk's last
    blocks with its first ones). In the cumulative-sum diagram ``[u*, v*)`` is the bridge
    between the two chunks' concave majorants, found by a binary search over the left hull
    whose every step finds the tangent from a point to the right hull (one vectorized
    comparison against all of the right hull's blocks).
    Only ranges that cross the middle of the pair are ever evaluated, from within-chunk prefix
    and suffix statistics.
    """
    rows, n = z.shape
    blk = _blocks(problem, z, start)
    count = start.sum(1)
    m = 1 << max(int(count.max()) - 1, 0).bit_length()
    pts = torch.arange(m + 1, device=z.device)
    pair = _Pair(problem, _fit(blk.stat, m, problem.identity), _fit(blk.lo, m + 1, n))
    vertex = pts <= count[:, None]
    for level in range((m - 1).bit_length()):
        vertex = pair.merge(vertex, count, 1 << level)
    first = vertex[:, :-1] & (pts[:-1] < count[:, None])
    out = torch.zeros(rows, n + 1, dtype=torch.bool, device=z.device)
    out.scatter_(1, torch.where(first, pair.pos[:, :-1], n).long(), first)
    return out[:, :n]


class _Pair:
    """Bridges between sibling chunks of units for :func:`_hull_boundaries`.

    ``unit`` (B, m): statistic of every unit; ``pos`` (B, m + 1): element position of every
    point (the first position of the unit that starts there; ``n`` past the last unit).
    Values are compared as keys, the fitted value minus the position part of the range
    ``[b, b + 1)`` at the middle ``b`` of the pair, and always as a block of a chunk's hull
    against a range that excludes it: by the mediant property (the value of a union lies
    between the values of its parts) that decides the same as comparing two ranges that differ
    by the block, but stays well conditioned when the block weighs little against the rest.
    """

    def __init__(self, problem: _Problem, unit: Tensor, pos: Tensor) -> None:
        self.problem, self.unit, self.pos = problem, unit, pos

    def merge(self, vertex: Tensor, count: Tensor, h: int) -> Tensor:
        """Merge every pair of sibling chunks of ``h`` units; return the new vertices."""
        problem, (rows, m), dev = self.problem, self.unit.shape, self.unit.device
        pairs, chunks = m // (2 * h), m // h
        pre = problem.scan(self.unit.view(rows, chunks, h)).view(rows, m)
        suf = problem.scan(self.unit.view(rows, chunks, h).flip(-1)).flip(-1).view(rows, m)
        # hull point list of every chunk (padded with a spare slot) and the blocks between
        cidx = torch.arange(chunks, device=dev)[:, None] * h + torch.arange(h + 1, device=dev)
        cmask = vertex.index_select(1, cidx.view(-1)).view(rows, chunks, h + 1)
        rank = cmask.cumsum(-1) - 1
        lists = torch.zeros(rows, chunks, h + 2, dtype=torch.long, device=dev)
        lists.scatter_(-1, torch.where(cmask, rank, h + 1), cidx.expand_as(rank))
        seg = rank[..., :h] + torch.arange(0, rows * chunks * (h + 1), h + 1, device=dev).view(
            rows, chunks, 1
        )
        blocks = problem.segment(self.unit, seg, rows * chunks * (h + 1))
        lists = lists.view(rows, pairs, 2, h + 2)
        self.edges = (cmask.sum(-1) - 1).view(rows, pairs, 2)
        b = (2 * torch.arange(pairs, device=dev) + 1) * h  # pair middles
        self.ref = _take(self.pos, b.expand(rows, pairs))[..., None, None]
        self.lists, self.point_pos = lists, _take(self.pos, lists)
        # statistic of the part of a crossing range on each side of the middle
        self.part = torch.stack(
            [
                torch.where(
                    lists[:, :, 0] < b[:, None],
                    _take(suf, lists[:, :, 0].clamp(max=m - 1)),
                    problem.identity,
                ),
                torch.where(
                    lists[:, :, 1] > b[:, None],
                    _take(pre, (lists[:, :, 1] - 1).clamp(min=0)),
                    problem.identity,
                ),
            ],
            2,
        )
        self.block_key = self._key(
            blocks.view(rows, pairs, 2, h + 1), self.point_pos[..., :-1], self.point_pos[..., 1:]
        )
        # bridge: the first left-hull point whose tangent to the right hull leaves the next
        # left-hull point below (strictly: ties pool, as PAV does)
        lo, hi = torch.zeros_like(self.edges[..., 0]), self.edges[..., 0].clamp(min=0)
        for _ in range(h.bit_length()):
            mid = (lo + hi) // 2
            nxt = self._range_key(mid + 1, self._tangent(mid))
            move = (lo < hi) & (self._slot(self.block_key[:, :, 0], mid) > nxt)
            lo, hi = torch.where(move, mid + 1, lo), torch.where((lo < hi) & ~move, mid, hi)
        u_star = self._slot(lists[:, :, 0], lo)
        v_star = self._slot(lists[:, :, 1], self._tangent(lo))
        # points strictly inside a bridge stop being vertices
        q = torch.arange(m + 1, device=dev)
        which = (q // (2 * h)).clamp(max=pairs - 1)
        inside = (u_star.index_select(1, which) < q) & (q < v_star.index_select(1, which))
        return vertex & ~(inside & (b < count[:, None]).index_select(1, which))

    def _tangent(self, i: Tensor) -> Tensor:
        """Right-hull slot ``j >= 1`` maximizing the value of ``[U_i, W_j)`` for left-hull slot
        ``i`` (rows, pairs): the first ``j`` whose block is below the range ``[U_i, W_j)``
        (the last of equal maxima)."""
        keys = self._range_key(i, None)[..., :-1]
        j = torch.arange(keys.shape[-1], device=keys.device)
        move = (self.block_key[:, :, 1] >= keys) & (j < self.edges[..., 1:])
        return torch.where(j == 0, True, move).cumprod(-1).sum(-1)

    def _range_key(self, i: Tensor, j: Tensor | None) -> Tensor:
        """Key of ``[U_i, W_j)`` for slots ``i``, ``j`` (rows, pairs); (rows, pairs, h + 2)
        for every ``j`` if ``j`` is None."""
        part_l = self._slot(self.part[:, :, 0], i)[..., None]
        pos_l = self._slot(self.point_pos[:, :, 0], i)[..., None]
        part_r, pos_r = self.part[:, :, 1], self.point_pos[:, :, 1]
        if j is not None:
            part_r, pos_r = self._slot(part_r, j)[..., None], self._slot(pos_r, j)[..., None]
        key = self._key(self.problem.combine(part_l, part_r), pos_l, pos_r, self.ref[..., 0])
        return key if j is None else key[..., 0]

    def _key(self, stat: Tensor, lo_p: Tensor, hi_p: Tensor, ref: Tensor | None = None) -> Tensor:
        """Fitted value of ranges of positions ``[lo_p, hi_p)`` of statistic ``stat``, minus the
        position part of ``[ref, ref + 1)`` (default: the pair middles, broadcast to 4-D)."""
        ref = self.ref if ref is None else ref
        pos = self.problem.pos_diff(lo_p, hi_p, ref, ref + 1)
        return self.problem.value(stat, lo_p, hi_p) + pos

    @staticmethod
    def _slot(t: Tensor, i: Tensor) -> Tensor:
        """``t[r, p, i[r, p]]`` for ``t`` (rows, pairs, slots), clamped to the last slot."""
        return torch.gather(t, 2, i.clamp(max=t.shape[-1] - 1)[..., None])[..., 0]


def _fit(t: Tensor, width: int, fill: float) -> Tensor:
    """The first ``width`` columns of ``t``, padded with ``fill`` when ``t`` is narrower."""
    if t.shape[1] >= width:
        return t[:, :width].contiguous()
    return torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), fill)], 1)


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """``t[r, idx[r, ...]]`` for a 2-D ``t`` and an index with the same leading dimension."""
    return torch.gather(t, 1, idx.reshape(idx.shape[0], -1)).view(idx.shape)


def _solve(problem: _Problem, a: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Soft sort or soft rank of the ascending rows ``a`` (B, n): ``(values, weight, block)``.

    ``values`` are in sorted position order (ranks included); ``weight`` is the per-position
    factor of the block-structured Jacobian (``1 / |B|`` for l2, the block softmax for kl);
    ``block`` is the row-local index of the block of every position (``None``: singletons).
    Block statistics are accumulated in float64, whatever the input precision. After the
    first pass only the rows where something pools are worked on.
    """
    z = problem.data(a.to(torch.float64))
    viol = _violations(problem, _singletons(z))
    if viol is None:  # no pooling at all: the hard sort, or the hard ranks 1 .. n
        return _hard(problem, a), torch.ones_like(a), None
    pooling = viol.any(1).nonzero()[:, 0]
    rows = None if len(pooling) == len(a) else pooling
    sub_a, sub_z, sub_viol = (
        (a, z, viol) if rows is None else (t.index_select(0, rows) for t in (a, z, viol))
    )
    start = torch.cat([sub_viol.new_ones(sub_viol.shape[0], 1), ~sub_viol], 1)
    start, blk, done = _merge_passes(problem, sub_z, max(_MAX_MERGE_PASSES - 1, 0), start)
    if not done:
        hull = _hull_boundaries(problem, sub_z, start)
        _, blk, _ = _merge_passes(problem, sub_z, _TIE_PASSES, hull)
    values, weight, block = _pooled(problem, sub_a, sub_z, blk)
    if rows is None:
        return values, weight, block
    every = torch.arange(a.shape[1], device=a.device).expand(a.shape)
    return (
        _hard(problem, a).index_copy(0, rows, values),
        torch.ones_like(a).index_copy(0, rows, weight),
        every.index_copy(0, rows, block),
    )


def _hard(problem: _Problem, a: Tensor) -> Tensor:
    """The limit without pooling: the sorted values, or the ranks 1 .. n."""
    if problem.kind == "sort":
        return a
    return torch.arange(1, a.shape[1] + 1, device=a.device, dtype=a.dtype).expand(a.shape)


def _pooled(problem: _Problem, a: Tensor, z: Tensor, blk: _Blocks) -> tuple[Tensor, Tensor, Tensor]:
    """``(values, weight, block)`` of :func:`_solve` from the final blocks (made by
    :func:`_blocks`), by the closed form of each block."""
    stat, lo, hi, block = blk.per_position()
    size = hi - lo
    i = _unit_ranges(a.shape[1], a.device)[0]  # the positions 0 .. n - 1
    s = problem.strength
    if not problem.lse:
        mean = stat / size
        center = (lo + hi - 1) / 2
        values = mean + (i - center) / s if problem.kind == "sort" else center + 1 + (a - mean) / s
        weight = 1 / size
    else:
        weight = torch.exp(z - stat)
        if problem.kind == "sort":
            one = lo.new_ones(1)
            offset = cast(Tensor, problem.bounded(lo, hi)) - cast(
                Tensor, problem.bounded(one, 2 * one)
            )
            values = -stat + (i - lo) / s + offset
        else:
            values = weight * size * (lo + hi + 1) / 2
    return values.to(a.dtype), weight.to(a.dtype), block


def _forward(
    x: Tensor, strength: float, regularization: str, rank: bool, finite: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``(out, perm, block, weight)`` for a 2-D float32/float64 ``x``; see :func:`_solve`.

    Ties are broken as torchsort breaks them (``torch.sort(-x, descending=True)``), so the
    gradients agree with it on tied inputs too. Rows holding NaN or infinity give NaN rows
    (``finite``: the caller has checked that there are none).
    """
    values, perm = torch.sort(-x, dim=1, descending=True)
    finite_rows = None  # None: every row is finite
    if not finite:  # NaN sorts first and infinities to the ends: the end columns tell
        ends = torch.isfinite(values[:, :: max(x.shape[1] - 1, 1)]).all(1, keepdim=True)
        if not bool(ends.all()):
            finite_rows = ends
            values, perm = torch.sort(-torch.where(ends, x, 0), dim=1, descending=True)
    problem = _Problem("rank" if rank else "sort", regularization, strength)
    out, weight, block = _solve(problem, -values)
    if finite_rows is not None:
        out = torch.where(finite_rows, out, math.nan)
        weight = torch.where(finite_rows, weight, math.nan)
    if rank:
        out = torch.empty_like(out).scatter(1, perm, out)
    return out, perm, block, weight


def _segment_max(z: Tensor, ids: Tensor, size: int) -> Tensor:
    """Largest ``z`` of each segment (flat ``z`` and ``ids``), without a gradient: a shift that
    keeps ``exp`` in range and cancels from every log-sum-exp and softmax it stabilizes."""
    empty = z.new_full((size,), -math.inf)
    return empty.scatter_reduce(0, ids, z.detach(), "amax")


def _jacobian_weight(
    problem: _Problem, x: Tensor, perm: Tensor, block: Tensor, weight: Tensor
) -> Tensor:
    """The per-position factor ``w`` of the block-structured Jacobian, as a differentiable
    function of ``x`` so that the backward and forward-mode passes differentiate again.

    l2: ``w = 1 / |B|``, constant (the saved ``weight``). kl: the softmax over the block of the
    statistic's data ``z`` (``-a`` for sort, ``a / s`` for rank), recomputed from ``x``; rows
    that were not finite keep their NaN weight. An empty ``block`` (singletons) has ``w = 1``.
    """
    if not problem.lse or block.numel() == 0:
        return weight
    rows, n = x.shape
    ids = (block + torch.arange(0, rows * n, n, device=x.device)[:, None]).view(-1)
    z = problem.data(x.gather(1, perm).to(torch.float64)).reshape(-1)
    shifted = torch.exp(z - _segment_max(z, ids, rows * n)[ids])
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
    problem = _Problem("rank" if rank else "sort", regularization, strength)
    w = _jacobian_weight(problem, x, perm, block, weight)
    if rank:
        h = grad.gather(1, perm)
        if regularization == "kl":
            h = h * out.gather(1, perm)
        grad_a = (h - w * _block_sums(h, block)) / strength
    else:
        grad_a = w * _block_sums(grad, block)
    return torch.zeros_like(grad_a).scatter(1, perm, grad_a)


def _jvp(
    tangent: Tensor, saved: tuple[Tensor, ...], strength: float, regularization: str, rank: bool
) -> Tensor:
    """Jacobian-vector product, the transpose of :func:`_backward`: with ``t`` the tangent of
    the sorted input, sort ``out_t = sum_B(w * t)``; rank ``r_t = (t - sum_B(w * t)) / s``
    (times ``r`` for kl), scattered back to the input's positions."""
    x, out, perm, block, weight = saved
    problem = _Problem("rank" if rank else "sort", regularization, strength)
    w = _jacobian_weight(problem, x, perm, block, weight)
    t = tangent.gather(1, perm)
    if not rank:
        return _block_sums(w * t, block)
    r_t = (t - _block_sums(w * t, block)) / strength
    if regularization == "kl":
        r_t = r_t * out.gather(1, perm)
    return torch.zeros_like(r_t).scatter(1, perm, r_t)


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
    x, strength, regularization, rank, _ = inputs
    out, perm, block, weight = output
    ctx.mark_non_differentiable(perm, block, weight)
    ctx.save_for_backward(x, out, perm, block, weight)
    ctx.save_for_forward(x, out, perm, block, weight)
    ctx.params = (strength, regularization, rank)
    ctx.set_materialize_grads(False)  # perm, block and weight get no gradient: no zeros for them


def _saved_backward(
    ctx: Any, grad: Tensor | None, *_: Any
) -> tuple[Tensor | None, None, None, None, None]:
    if grad is None:
        return None, None, None, None, None
    return _backward(grad, ctx.saved_tensors, *ctx.params), None, None, None, None


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
        x: Tensor, strength: float, regularization: str, rank: bool, finite: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out, perm, block, weight = _forward(x, strength, regularization, rank, finite)
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
    x: Tensor, strength: float, regularization: str, *, rank: bool, finite: bool = False
) -> Tensor:
    """Ascending soft sort (or soft rank) of the rows of a 2-D floating tensor ``x``.

    float16 and bfloat16 are computed in float32 and cast back. No argument checks: the public
    :func:`aot_losses.soft_sort` and :func:`aot_losses.soft_rank` do them (``finite``: they
    have checked that ``x`` holds no NaN or infinity). A meta tensor gives a meta tensor of the
    right shape (no values are computed: shape propagation, as torch's own ops on meta).
    """
    compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
    # the custom op has a fake (shape-only) kernel: it also serves meta tensors
    custom = torch.compiler.is_compiling() or x.device.type == "meta"
    entry = _isotonic_op if custom else _IsotonicFunction.apply
    out: Tensor = entry(compute, strength, regularization, rank, finite)[0]  # type: ignore[no-untyped-call]
    return out.to(x.dtype)
