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
rank, l2   ``-mean_B(a)``                     ``s (lo + hi) / 2``
sort, kl   ``-logsumexp_B(-a)``               ``-lo / s + log(1 - exp(-|B| / s))``
rank, kl   ``-s logsumexp_B(a / s)``          ``s log(|B| (lo + hi + 1))``
=========  =================================  =======================================

(The rank's fitted values are Blondel et al.'s times ``s``, in the units of the data: the same
comparisons, and no ``a / s`` to overflow at small ``s``.) The solution's blocks are the maximal
runs of the isotonic regression: ``v_B`` strictly decreases from block to block.

Fitted values are never formed, only their differences, to the working precision of each part:

* the two parts are compared separately (``D_2 - D_1`` plus an exact closed form for
  ``Pos_2 - Pos_1``) and never added: ``Pos`` grows like ``n / s``, and adding it to the data in
  float32 is what loses torchsort its precision at large ``n``;
* the statistic of a block is taken relative to a *reference*, the value at its first position
  (the sum of ``a - r``, the log-sum-exp of the data of ``a - r``), so that
  ``D_2 - D_1 = (r_2 - r_1) (sign: + sort, - rank) + d_2 - d_1`` with ``d`` the data part of the
  offsets: values of magnitude ``1e12`` that are ``0.5`` apart, or ties at any magnitude, are
  compared by their differences, not by the rounding of their magnitudes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

__all__ = [
    "LARGEST_GAP",
    "Blocks",
    "IsotonicProblem",
    "blocks_from_starts",
    "segment_max",
    "singleton_blocks",
    "unit_ranges",
]

#: Gaps between fitted values are held within +-LARGEST_GAP (about 1e307): a larger one decides
#: its comparison by its sign alone, and the sum of a few of them stays finite (the position
#: part of the sort grows like ``n / s``; the data of the kl rank are ``(a - r) / s``).
LARGEST_GAP = torch.finfo(torch.float64).max / 16


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

    def block_data(self, offsets: Tensor) -> Tensor:
        """Per-position values whose block statistic (sum or log-sum-exp) is needed, for the
        offsets ``a - r`` of the values from their block's reference (linear in the offsets)."""
        if not self.log_sum_exp:
            return offsets
        return -offsets if self.kind == "sort" else offsets / self.strength

    def data_value(self, statistic: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
        """``d``: the data part of the fitted value of the blocks ``[lo, hi)`` of ``statistic``
        (taken relative to a reference ``r``) less that of ``r`` alone (``lo`` and ``hi``
        None: blocks of one position)."""
        if self.log_sum_exp:
            return -statistic if self.kind == "sort" else -self.strength * statistic
        mean = statistic if lo is None or hi is None else statistic / (hi - lo)
        return mean if self.kind == "sort" else -mean

    def reference_gap(self, delta: Tensor) -> Tensor:
        """How the data part moves with the reference: ``D(r + delta) - D(r)``."""
        return delta if self.kind == "sort" else -delta

    def rebase(self, statistic: Tensor, size: Tensor, delta: Tensor) -> Tensor:
        """The statistic of blocks of ``size`` positions taken relative to ``r`` (``statistic``),
        taken relative to ``r - delta`` instead (the data of the kl rank held in range)."""
        if not self.log_sum_exp:
            return statistic + size * delta
        return statistic + self.block_data(delta).clamp(-LARGEST_GAP, LARGEST_GAP)

    def position_gap(self, lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
        """``Pos[lo1, hi1) - Pos[lo2, hi2)`` for integer positions held in float64."""
        gap = self.linear_position_gap(lo1, hi1, lo2, hi2)
        rest1, rest2 = self.bounded_position(lo1, hi1), self.bounded_position(lo2, hi2)
        return self.in_value_units(gap if rest1 is None or rest2 is None else gap + (rest1 - rest2))

    def in_value_units(self, position_gap: Tensor) -> Tensor:
        """A gap of the position parts below (the rank's without its factor ``s``) in the units
        of the fitted values, within +-:data:`LARGEST_GAP`."""
        gap = position_gap * self.strength if self.kind == "rank" else position_gap
        return gap.clamp(-LARGEST_GAP, LARGEST_GAP)

    def linear_position_gap(self, lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
        """The part of the position gap linear in the positions (it grows like ``n / s`` for the
        sort), formed from exact differences of positions before any division (the rank's
        without its factor ``s``: see :meth:`in_value_units`)."""
        s = self.strength  # one division by an exact scale: the same bits as -((...) / 2) / s
        if self.regularization == "l2":
            return ((lo1 + hi1) - (lo2 + hi2)) / (-2 * s if self.kind == "sort" else 2)
        return (lo1 - lo2) / -s if self.kind == "sort" else torch.zeros_like(lo1 - lo2)

    def bounded_position(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        """The rest of ``Pos[lo, hi)``, of magnitude ``O(log(n / s))`` (the rank's without its
        factor ``s``; None: zero)."""
        if self.regularization == "l2":
            return None
        if self.kind == "sort":  # log(1 - exp(-L / s)): absolute accuracy is what matters
            return torch.log(-torch.expm1((lo - hi) / self.strength))
        return torch.log((hi - lo) * (lo + hi + 1))

    def combine(self, statistic1: Tensor, statistic2: Tensor) -> Tensor:
        """Statistic of the union of two disjoint ranges (relative to the same reference)."""
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

    ``statistic``, ``lo``, ``hi``, ``reference`` (B, n): per block slot ``k`` of each row, the
    statistic of the offsets ``a - reference`` of the block, the range ``[lo, hi)`` (float64
    positions) and the reference, the value at ``lo``; slots past the row's number of blocks
    have ``lo == hi == n`` and reference 0. ``slot`` (B, n): the flat block slot of each
    position (row ``r`` owns slots ``r n .. r n + n - 1``), or ``None`` when every position is
    its own block (:func:`singleton_blocks`); then ``lo`` and ``hi`` are 1-D (n,) and broadcast
    over the rows.
    """

    statistic: Tensor
    lo: Tensor
    hi: Tensor
    reference: Tensor
    slot: Tensor | None = None

    def per_position(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``statistic``, ``lo``, ``hi``, ``reference`` of the block of every position (B, n),
        and the row-local index of that block (blocks made by :func:`blocks_from_starts`)."""
        slot = cast(Tensor, self.slot)
        statistic, lo, hi, reference = (
            t.reshape(-1).index_select(0, slot.view(-1)).view(slot.shape)
            for t in (self.statistic, self.lo, self.hi, self.reference)
        )
        return statistic, lo, hi, reference, slot - slot[:, :1]


def singleton_blocks(a: Tensor) -> Blocks:
    """Every position of the rows ``a`` (B, n) a block of its own (its offsets are zero, and
    so is the statistic of zero, a sum or a log-sum-exp of one term)."""
    return Blocks(torch.zeros_like(a), *unit_ranges(a.shape[1], a.device), a)


@functools.lru_cache(maxsize=64)
def unit_ranges(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``lo``, ``hi`` of the blocks of one position: ``[k, k + 1)`` for ``k < n``."""
    lo = torch.arange(n, device=device, dtype=torch.float64)
    return lo, lo + 1


def blocks_from_starts(problem: IsotonicProblem, a: Tensor, starts: Tensor) -> Blocks:
    """The blocks of the ascending float64 rows ``a`` (B, n) that begin where ``starts`` (B, n)
    is true (``starts[:, 0]`` must be), with their statistics (one segment reduction)."""
    rows, n = a.shape
    slot = starts.cumsum(1) - 1 + torch.arange(0, rows * n, n, device=a.device)[:, None]
    first_slots = torch.where(starts, slot, rows * n).view(-1)

    def per_slot(values: Tensor, fill: float) -> Tensor:
        out = values.new_full((rows * n + 1,), fill)
        return out.scatter(0, first_slots, values.reshape(-1))[:-1].view(rows, n)

    reference = per_slot(a, 0.0)
    offsets = a - reference.view(-1)[slot]
    statistic = problem.segment_statistic(problem.block_data(offsets), slot, rows * n)
    positions = torch.arange(n, device=a.device, dtype=torch.float64).expand(rows, n)
    lo = per_slot(positions, n)
    hi = torch.cat([lo[:, 1:], lo.new_full((rows, 1), n)], 1)
    return Blocks(statistic.view(rows, n), lo, hi, reference, slot)
