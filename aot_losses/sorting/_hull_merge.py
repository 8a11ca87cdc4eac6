"""The bounded stage of the isotonic solver: merging solved chunks pairwise up a binary tree.

When parallel PAV (:mod:`._parallel_pav`) needs too many passes, the current blocks become units
``0 .. m - 1`` (m padded to a power of two) with points ``0 .. m`` between them; a point is a
*vertex* when it bounds a block of the solution. The units are merged pairwise up a binary tree.
Two neighbouring chunks, each solved, merge into the left one's blocks up to a vertex ``u*``,
one pooled block ``[u*, v*)`` and the right one's blocks from a vertex ``v*`` (PAV started on the
right chunk can only pool the left chunk's last blocks with its first ones). In the
cumulative-sum diagram ``[u*, v*)`` is the bridge between the concave majorants (hulls) of the
two chunks, found by a binary search over the left hull whose every step finds the tangent from
a point to the right hull in one vectorized comparison. Only ranges that cross the middle of the
pair are evaluated, from within-chunk prefix and suffix statistics (stable for the log-sum-exp
statistics of ``kl``). ``O(log(n)^2)`` sequential steps, ``O(n log(n)^2)`` work, whatever the
input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._block_problem import IsotonicProblem, blocks_from_starts

__all__ = [
    "hull_block_starts",
]


def hull_block_starts(problem: IsotonicProblem, a: Tensor, starts: Tensor) -> Tensor:
    """The solution's block starts (B, n) of the ascending float64 rows ``a`` from any
    partition finer than the solution (the blocks that begin where ``starts`` is true), in
    ``O(log(m)^2)`` steps."""
    rows, n = a.shape
    blocks = blocks_from_starts(problem, a, starts)
    count = starts.sum(1)
    m = 1 << max(int(count.max()) - 1, 0).bit_length()
    points = torch.arange(m + 1, device=a.device)
    pairs = _ChunkPairs(
        problem,
        _pad_columns(blocks.statistic, m, problem.empty_statistic),
        _pad_columns(blocks.lo, m + 1, n),
        _pad_columns(blocks.reference, m, 0.0),
    )
    vertex = points <= count[:, None]
    for level in range((m - 1).bit_length()):
        vertex = pairs.merge(vertex, count, 1 << level)
    first = vertex[:, :-1] & (points[:-1] < count[:, None])
    out = torch.zeros(rows, n + 1, dtype=torch.bool, device=a.device)
    out = out.scatter(1, torch.where(first, pairs.unit_start[:, :-1], n).long(), first)
    return out[:, :n]


class _ChunkPairs:
    """Bridges between sibling chunks of units for :func:`hull_block_starts`.

    ``unit_statistic`` (B, m): statistic of every unit, relative to its reference
    ``unit_reference`` (B, m); ``unit_start`` (B, m + 1): the position of every point (the first
    position of the unit that starts there; ``n`` past the last). Values are compared as
    *keys*, the fitted value minus the position part of the range ``[c, c + 1)`` at the middle
    ``c`` of the pair and the data part of the reference of the unit there (the statistics are
    rebased to it), and always as a block of a chunk's hull against a range that excludes it:
    by the mediant property (the value of a union lies between the values of its parts) that
    decides the same as comparing two ranges that differ by the block, but stays well
    conditioned when the block weighs little against the rest.
    """

    def __init__(
        self,
        problem: IsotonicProblem,
        unit_statistic: Tensor,
        unit_start: Tensor,
        unit_reference: Tensor,
    ):
        self.problem, self.unit_statistic, self.unit_start = problem, unit_statistic, unit_start
        self.unit_reference = unit_reference

    def merge(self, vertex: Tensor, count: Tensor, chunk: int) -> Tensor:
        """Merge every pair of sibling chunks of ``chunk`` units; return the new vertices."""
        problem, (rows, m), dev = (
            self.problem,
            self.unit_statistic.shape,
            self.unit_statistic.device,
        )
        pairs, chunks = m // (2 * chunk), m // chunk
        middles = (2 * torch.arange(pairs, device=dev) + 1) * chunk
        # every unit's statistic relative to the reference of its pair's middle unit
        middle_reference = self.unit_reference.index_select(1, middles)
        statistic = problem.rebase(
            self.unit_statistic,
            self.unit_start[:, 1:] - self.unit_start[:, :-1],
            self.unit_reference - middle_reference.repeat_interleave(2 * chunk, 1),
        )
        by_chunk = statistic.view(rows, chunks, chunk)
        prefix = problem.prefix_statistic(by_chunk).view(rows, m)
        suffix = problem.prefix_statistic(by_chunk.flip(-1)).flip(-1).view(rows, m)
        # the hull points of every chunk, listed (padded with a spare slot), and their blocks
        chunk_points = torch.arange(chunks, device=dev)[:, None] * chunk + torch.arange(
            chunk + 1, device=dev
        )
        on_hull = vertex.index_select(1, chunk_points.view(-1)).view(rows, chunks, chunk + 1)
        hull_rank = on_hull.cumsum(-1) - 1
        hull_points = torch.zeros(rows, chunks, chunk + 2, dtype=torch.long, device=dev)
        hull_points = hull_points.scatter(
            -1, torch.where(on_hull, hull_rank, chunk + 1), chunk_points.expand_as(hull_rank)
        )
        chunk_offsets = torch.arange(0, rows * chunks * (chunk + 1), chunk + 1, device=dev)
        hull_block = hull_rank[..., :chunk] + chunk_offsets.view(rows, chunks, 1)
        hull_statistic = problem.segment_statistic(
            statistic, hull_block, rows * chunks * (chunk + 1)
        )
        hull_points = hull_points.view(rows, pairs, 2, chunk + 2)
        self.hull_blocks = (on_hull.sum(-1) - 1).view(rows, pairs, 2)
        self.middle = _gather_rows(self.unit_start, middles.expand(rows, pairs))[..., None, None]
        self.hull_points = hull_points
        self.point_position = _gather_rows(self.unit_start, hull_points)
        # the statistic of the part of a crossing range on each side of the middle
        left_points, right_points = hull_points[:, :, 0], hull_points[:, :, 1]
        self.half_statistic = torch.stack(
            [
                torch.where(
                    left_points < middles[:, None],
                    _gather_rows(suffix, left_points.clamp(max=m - 1)),
                    problem.empty_statistic,
                ),
                torch.where(
                    right_points > middles[:, None],
                    _gather_rows(prefix, (right_points - 1).clamp(min=0)),
                    problem.empty_statistic,
                ),
            ],
            2,
        )
        self.block_key = self._key(
            hull_statistic.view(rows, pairs, 2, chunk + 1),
            self.point_position[..., :-1],
            self.point_position[..., 1:],
        )
        # the bridge: the first left-hull point whose tangent to the right hull leaves the next
        # left-hull point below (strictly: ties pool, as PAV does)
        lo, hi = torch.zeros_like(self.hull_blocks[..., 0]), self.hull_blocks[..., 0].clamp(min=0)
        for _ in range(chunk.bit_length()):
            mid = (lo + hi) // 2
            next_key = self._range_key(mid + 1, self._tangent(mid))
            move = (lo < hi) & (_slot(self.block_key[:, :, 0], mid) > next_key)
            lo, hi = torch.where(move, mid + 1, lo), torch.where((lo < hi) & ~move, mid, hi)
        u_star = _slot(left_points, lo)
        v_star = _slot(right_points, self._tangent(lo))
        # points strictly inside a bridge stop being vertices
        points = torch.arange(m + 1, device=dev)
        pair_of_point = (points // (2 * chunk)).clamp(max=pairs - 1)
        inside = (u_star.index_select(1, pair_of_point) < points) & (
            points < v_star.index_select(1, pair_of_point)
        )
        merging = (middles < count[:, None]).index_select(1, pair_of_point)
        return vertex & ~(inside & merging)

    def _tangent(self, i: Tensor) -> Tensor:
        """Right-hull slot ``j >= 1`` maximizing the value of ``[U_i, W_j)`` for left-hull slot
        ``i`` (rows, pairs): the first ``j`` whose block is below the range ``[U_i, W_j)``
        (the last of equal maxima)."""
        keys = self._range_key(i, None)[..., :-1]
        j = torch.arange(keys.shape[-1], device=keys.device)
        move = (self.block_key[:, :, 1] >= keys) & (j < self.hull_blocks[..., 1:])
        return torch.where(j == 0, True, move).cumprod(-1).sum(-1)

    def _range_key(self, i: Tensor, j: Tensor | None) -> Tensor:
        """Key of ``[U_i, W_j)`` for slots ``i``, ``j`` (rows, pairs); (rows, pairs, chunk + 2)
        for every ``j`` if ``j`` is None."""
        left_half = _slot(self.half_statistic[:, :, 0], i)[..., None]
        left_position = _slot(self.point_position[:, :, 0], i)[..., None]
        right_half, right_position = self.half_statistic[:, :, 1], self.point_position[:, :, 1]
        if j is not None:
            right_half = _slot(right_half, j)[..., None]
            right_position = _slot(right_position, j)[..., None]
        statistic = self.problem.combine(left_half, right_half)
        key = self._key(statistic, left_position, right_position, self.middle[..., 0])
        return key if j is None else key[..., 0]

    def _key(
        self, statistic: Tensor, lo: Tensor, hi: Tensor, middle: Tensor | None = None
    ) -> Tensor:
        """Fitted value of the ranges ``[lo, hi)`` of ``statistic``, minus the position part of
        ``[middle, middle + 1)`` (default: the pair middles, broadcast to 4-D)."""
        middle = self.middle if middle is None else middle
        position_gap = self.problem.position_gap(lo, hi, middle, middle + 1)
        return self.problem.data_value(statistic, lo, hi) + position_gap


def _slot(t: Tensor, i: Tensor) -> Tensor:
    """``t[r, p, i[r, p]]`` for ``t`` (rows, pairs, slots), clamped to the last slot."""
    return torch.gather(t, 2, i.clamp(max=t.shape[-1] - 1)[..., None])[..., 0]


def _pad_columns(t: Tensor, width: int, fill: float) -> Tensor:
    """The first ``width`` columns of ``t``, padded with ``fill`` when ``t`` is narrower."""
    if t.shape[1] >= width:
        return t[:, :width].contiguous()
    return torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), fill)], 1)


def _gather_rows(t: Tensor, index: Tensor) -> Tensor:
    """``t[r, index[r, ...]]`` for a 2-D ``t`` and an index with the same leading dimension."""
    return torch.gather(t, 1, index.reshape(index.shape[0], -1)).view(index.shape)
