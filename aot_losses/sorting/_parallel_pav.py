"""Parallel pool adjacent violators: every pass pools every run of adjacent violating blocks.

Two adjacent blocks *violate* the isotonic order when the right one's fitted value is ``>=`` the
left one's (ties pool too, as in torchsort). Pooling any adjacent violators is valid (they share
a value in the solution), so every pass only coarsens the partition towards the solution; a pass
without violators leaves it unchanged. Typical inputs settle in a few passes; heavy tails and
outliers can need a number of passes growing like ``sqrt(n)`` or ``n`` (the bounded hull merge
of :mod:`._hull_merge` takes over then).
"""

from __future__ import annotations

import functools
from typing import cast

import torch
from torch import Tensor

from ._block_problem import Blocks, IsotonicProblem, blocks_from_starts

__all__ = [
    "TIE_RTOL",
    "pool_violators",
    "violating_pairs",
]

#: Adjacent blocks whose fitted values agree to this tolerance, relative to the terms of their
#: difference (the gap of the references, the data parts relative to them, the gap of the
#: position parts), count as tied and are pooled: 8 units in the last place of float64, the
#: rounding of those terms (torchsort pools ties too, and its backward merges blocks equal
#: within 1e-9). Exact ties, common with integer inputs, would otherwise be decided by
#: rounding; pooling tied blocks does not change the values, only which subgradient the backward
#: returns. Values that differ by more (0.5 at 1e12, or one unit in the last place of a tie's
#: neighbour) are not tied, whatever their magnitude.
TIE_RTOL = 8 * torch.finfo(torch.float64).eps


def violating_pairs(problem: IsotonicProblem, blocks: Blocks) -> Tensor:
    """(B, n - 1): whether block slot ``k + 1`` is ``>=`` slot ``k`` (up to rounding, see
    :data:`TIE_RTOL`), both being real blocks."""
    left, right = (..., slice(None, -1)), (..., slice(1, None))
    references = problem.reference_gap(blocks.reference[right] - blocks.reference[left])
    if blocks.slot is None:  # singletons: their data parts relative to their references are 0
        gap = _singleton_position_gaps(problem, blocks.reference.shape[1], references.device)
        difference, size = references + gap, references.abs() + gap.abs()
        return difference + TIE_RTOL * size >= 0
    value = problem.data_value(blocks.statistic, blocks.lo, blocks.hi)
    lo, hi = blocks.lo, blocks.hi
    gap = problem.linear_position_gap(lo[right], hi[right], lo[left], hi[left])
    bounded = problem.bounded_position(lo, hi)
    if bounded is not None:
        gap = gap + (bounded[right] - bounded[left])
    gap = problem.in_value_units(gap)
    difference = references + (value[right] - value[left]) + gap
    size = references.abs() + value[right].abs() + value[left].abs() + gap.abs()
    return (difference + TIE_RTOL * size >= 0) & (lo[right] < lo.shape[-1])


@functools.lru_cache(maxsize=64)
def _singleton_position_gaps(problem: IsotonicProblem, n: int, device: torch.device) -> Tensor:
    """``Pos[k + 1, k + 2) - Pos[k, k + 1)`` for ``k < n - 1``."""
    lo = torch.arange(n, device=device, dtype=torch.float64)
    return problem.position_gap(lo[1:], lo[1:] + 1, lo[:-1], lo[:-1] + 1)


def pool_violators(
    problem: IsotonicProblem,
    a: Tensor,
    starts: Tensor,
    schedule: tuple[int, ...],
    *,
    read_last: bool = True,
) -> tuple[Tensor, Blocks, bool]:
    """Passes of parallel PAV on the ascending float64 rows ``a`` (B, n) from the blocks that
    begin where ``starts`` (B, n) is true.

    ``schedule[k]`` passes run before the ``k``-th read of "any violators left?" on the host
    (a device synchronization on an accelerator); a pass without violators changes nothing, so
    passes run between reads cost work, never correctness. Returns the block starts, their
    blocks and whether a read found them final (``read_last=False``: the last group of passes
    runs without a read, and the result is returned as not known to be final).
    """
    blocks = blocks_from_starts(problem, a, starts)
    violating = violating_pairs(problem, blocks)
    for k, passes in enumerate(schedule):
        for _ in range(passes):
            pooled = torch.cat([violating.new_zeros(violating.shape[0], 1), violating], 1)
            starts = starts & ~pooled.view(-1)[cast(Tensor, blocks.slot)]
            blocks = blocks_from_starts(problem, a, starts)
            violating = violating_pairs(problem, blocks)
        if (read_last or k < len(schedule) - 1) and not bool(violating.any()):
            return starts, blocks, True
    return starts, blocks, False
