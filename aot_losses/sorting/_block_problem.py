"""The isotonic problems of the soft sort and soft rank, and partitions of positions into blocks.

With ``a`` the ascending sort of ``x``, 0-based positions ``i`` and strength ``s``, the soft sort
and the soft rank (Blondel et al. 2020, with torchsort's conventions) are a partition of the
positions into blocks ``B = [lo, hi)`` and, per block, a closed form. Every block carries a fitted
value ``v_B = D_B + Pos_B``: a *data part* ``D_B``, a function of one statistic of the block's
data (a sum for l2, a log-sum-exp for kl), and a *position part* ``Pos_B`` in closed form:

=========  =================================  =======================================
problem    data part ``D_B``                  position part ``Pos_B``
=========  =================================  =======================================
sort, l2   ``mean_B(a)``                      ``-(lo + hi) / (2 s)``
rank, l2   ``-mean_B(a) / s``                 ``(lo + hi) / 2``
sort, kl   ``-logsumexp_B(-a)``               ``-lo / s + log(1 - exp(-|B| / s))``
rank, kl   ``-logsumexp_B(a / s)``            ``log(|B| (lo + hi + 1))``
=========  =================================  =======================================

The solution's blocks are the maximal runs of the isotonic regression: ``v_B`` strictly decreases
from block to block. The two parts are compared separately (``D_2 - D_1`` plus an exact closed
form for ``Pos_2 - Pos_1``) and never added: ``Pos`` grows like ``n / s``, and adding it to the
data in float32 is what loses torchsort its precision at large ``n``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

__all__ = [
    "Blocks",
    "IsotonicProblem",
    "blocks_from_starts",
    "segment_max",
    "singleton_blocks",
    "unit_ranges",
]


@dataclass(frozen=True)
class IsotonicProblem:
    """One isotonic problem: what is reduced over a block and how a block is valued."""

    kind: str  # "sort" or "rank"
    regularization: str  # "l2" or "kl"
    strength: float

    @property
    def log_sum_exp(self) -> bool:
        """Whether the block statistic is a log-sum-exp (``kl``) rather than a sum (``l2``)."""
        return self.regularization == "kl"

    def block_data(self, a: Tensor) -> Tensor:
        """Per-position values whose block statistic (sum or log-sum-exp) is needed."""
        if not self.log_sum_exp:
            return a
        return -a if self.kind == "sort" else a / self.strength

    def data_value(self, statistic: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
        """Data part ``D`` of the fitted value of the blocks ``[lo, hi)`` of ``statistic``
        (``lo`` and ``hi`` None: blocks of one position)."""
        if self.log_sum_exp:
            return -statistic
        mean = statistic if lo is None or hi is None else statistic / (hi - lo)
        return mean if self.kind == "sort" else -mean / self.strength

    def position_gap(self, lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
        """``Pos[lo1, hi1) - Pos[lo2, hi2)`` for integer positions held in float64."""
        gap = self.linear_position_gap(lo1, hi1, lo2, hi2)
        rest1, rest2 = self.bounded_position(lo1, hi1), self.bounded_position(lo2, hi2)
        return gap if rest1 is None or rest2 is None else gap + (rest1 - rest2)

    def linear_position_gap(self, lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
        """The part of :meth:`position_gap` linear in the positions (it grows like ``n / s``),
        formed from exact differences of positions before any division."""
        s = self.strength  # one division by an exact scale: the same bits as -((...) / 2) / s
        if self.regularization == "l2":
            return ((lo1 + hi1) - (lo2 + hi2)) / (-2 * s if self.kind == "sort" else 2)
        return (lo1 - lo2) / -s if self.kind == "sort" else torch.zeros_like(lo1 - lo2)

    def bounded_position(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        """The rest of ``Pos[lo, hi)``, of magnitude ``O(log(n / s))`` (None: zero)."""
        if self.regularization == "l2":
            return None
        if self.kind == "sort":  # log(1 - exp(-L / s)): absolute accuracy is what matters
            return torch.log(-torch.expm1((lo - hi) / self.strength))
        return torch.log((hi - lo) * (lo + hi + 1))

    def combine(self, statistic1: Tensor, statistic2: Tensor) -> Tensor:
        """Statistic of the union of two disjoint ranges."""
        if self.log_sum_exp:
            return torch.logaddexp(statistic1, statistic2)
        return statistic1 + statistic2

    @property
    def empty_statistic(self) -> float:
        """Statistic of an empty range."""
        return -math.inf if self.log_sum_exp else 0.0

    def prefix_statistic(self, data: Tensor) -> Tensor:
        """Inclusive prefix statistic along the last dimension."""
        return torch.logcumsumexp(data, -1) if self.log_sum_exp else torch.cumsum(data, -1)

    def segment_statistic(self, data: Tensor, segment: Tensor, size: int) -> Tensor:
        """Statistic of each segment: ``out[k]`` reduces ``data`` where ``segment == k``
        (both flattened; ``size`` segments)."""
        data, segment = data.reshape(-1), segment.reshape(-1)
        total = data.new_zeros(size)
        if not self.log_sum_exp:
            return total.index_add(0, segment, data)
        top = segment_max(data, segment, size)
        return top + torch.log(total.index_add(0, segment, torch.exp(data - top[segment])))


def segment_max(data: Tensor, segment: Tensor, size: int) -> Tensor:
    """Largest ``data`` of each segment (flat ``data`` and ``segment``), without a gradient: a
    shift that keeps ``exp`` in range and cancels from every log-sum-exp and softmax."""
    empty = data.new_full((size,), -math.inf)
    return empty.scatter_reduce(0, segment, data.detach(), "amax")


@dataclass
class Blocks:
    """A partition of each row of ``n`` positions into blocks, with the block statistics.

    ``statistic``, ``lo``, ``hi`` (B, n): per block slot ``k`` of each row, the statistic and
    the range ``[lo, hi)`` (float64 positions); slots past the row's number of blocks have
    ``lo == hi == n``. ``slot`` (B, n): the flat block slot of each position (row ``r`` owns
    slots ``r n .. r n + n - 1``), or ``None`` when every position is its own block
    (:func:`singleton_blocks`); then ``lo`` and ``hi`` are 1-D (n,) and broadcast over the rows.
    """

    statistic: Tensor
    lo: Tensor
    hi: Tensor
    slot: Tensor | None = None

    def per_position(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``statistic``, ``lo``, ``hi`` of the block of every position (B, n), and the
        row-local index of that block (blocks made by :func:`blocks_from_starts`)."""
        slot = cast(Tensor, self.slot)
        statistic, lo, hi = (
            t.reshape(-1).index_select(0, slot.view(-1)).view(slot.shape)
            for t in (self.statistic, self.lo, self.hi)
        )
        return statistic, lo, hi, slot - slot[:, :1]


def singleton_blocks(data: Tensor) -> Blocks:
    """Every position of the rows of ``data`` (B, n) a block of its own."""
    return Blocks(data, *unit_ranges(data.shape[1], data.device))


@functools.lru_cache(maxsize=64)
def unit_ranges(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``lo``, ``hi`` of the blocks of one position: ``[k, k + 1)`` for ``k < n``."""
    lo = torch.arange(n, device=device, dtype=torch.float64)
    return lo, lo + 1


def blocks_from_starts(problem: IsotonicProblem, data: Tensor, starts: Tensor) -> Blocks:
    """The blocks of the rows of ``data`` (B, n) that begin where ``starts`` (B, n) is true
    (``starts[:, 0]`` must be), with their statistics (one segment reduction)."""
    rows, n = data.shape
    slot = starts.cumsum(1) - 1 + torch.arange(0, rows * n, n, device=data.device)[:, None]
    statistic = problem.segment_statistic(data, slot, rows * n).view(rows, n)
    first_slots = torch.where(starts, slot, rows * n).view(-1)
    positions = torch.arange(n, device=data.device, dtype=torch.float64).expand(rows, n)
    lo = torch.full((rows * n + 1,), n, device=data.device, dtype=torch.float64)
    lo = lo.scatter(0, first_slots, positions.reshape(-1))[:-1].view(rows, n)
    hi = torch.cat([lo[:, 1:], lo.new_full((rows, 1), n)], 1)
    return Blocks(statistic, lo, hi, slot)
