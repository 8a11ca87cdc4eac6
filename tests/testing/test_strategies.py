"""The kit's cases reach what 1-D OT code, soft sorts and AOT losses get wrong, starting with
every pattern of ties of the smallest sizes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from hypothesis import given, settings

from aot_losses import aot_unpaired_loss, soft_sort
from aot_losses.testing import (
    OTCase,
    check_aot_loss,
    check_ot_1d,
    check_soft_sort,
    ot_cases,
    reference_ot_1d,
)


def test_the_strategy_reaches_every_hard_case():
    def weight_of(w: np.ndarray | None, size: int) -> np.ndarray:
        return np.ones(size) if w is None else w

    def coinciding_inner_cut_points(case: OTCase) -> bool:
        a, b = weight_of(case.u_weights, len(case.u)), weight_of(case.v_weights, len(case.v))
        cut_u = set((np.cumsum(a)[:-1] / a.sum()).tolist())
        return bool(cut_u & set((np.cumsum(b)[:-1] / b.sum()).tolist()))

    features: dict[str, Callable[[OTCase], bool]] = {
        "ties within u": lambda c: len(set(c.u.tolist())) < len(c.u),
        "ties across u and v": lambda c: bool(set(c.u.tolist()) & set(c.v.tolist())),
        "a zero weight": lambda c: c.u_weights is not None and 0.0 in c.u_weights,
        "1 against 10, either way": lambda c: sorted((len(c.u), len(c.v))) == [1, 10],
        "coinciding inner cut points": coinciding_inner_cut_points,
        "a difference on the kink x = 1": lambda c: 1.0 in (c.u[:, None] - c.v[None, :]),
        "magnitudes below 1e-6 and above 1e5 in one case": lambda c: bool(
            (np.abs(c.u) < 1e-6).any() and (np.abs(c.v) > 1e5).any()
        ),
    }
    seen = dict.fromkeys(features, 0)

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(ot_cases())
    def record(case: OTCase) -> None:
        for weights in (case.u_weights, case.v_weights):
            assert weights is None or (weights.any() and (weights >= 0).all())
        for name, feature in features.items():
            seen[name] += feature(case)

    record()
    assert min(seen.values()) >= 3, seen


def test_ot_case_repr_is_exact():
    case = OTCase(np.array([0.1, 1 / 3]), np.array([2.0]), None, np.array([1e-300]))
    assert repr(case) == (
        "OTCase(u=[0.1, 0.3333333333333333], v=[2.0], u_weights=None, v_weights=[1e-300])"
    )


def tie_pattern(x: list[float]) -> tuple[int, ...]:
    """The sorted multiplicities of the values: (1, 1) distinct, (2,) tied, ..."""
    return tuple(sorted(np.unique(x, return_counts=True)[1].tolist()))


#: Every pattern of ties of 1, 2 and 3 values.
PATTERNS = {(1,), (1, 1), (2,), (1, 1, 1), (1, 2), (3,)}


def test_every_checker_starts_with_every_pattern_of_ties_of_the_smallest_sizes():
    """With max_examples=1 the candidates still see n = 1, 2, 3 with every pattern of ties, in
    both orders against each other, and a zero weight: at any seed."""
    seen: dict[str, set[tuple[int, ...]]] = {"ot": set(), "sort": set(), "aot": set()}
    opposite_orders = []
    zero_weights = []

    def ot(u, v, a, b):
        seen["ot"].add(tie_pattern(u))
        opposite_orders.append(len(u) == len(v) == 2 and (u[0] - u[1]) * (v[0] - v[1]) < 0)
        zero_weights.append(a is not None and 0.0 in a)
        return reference_ot_1d(u, v, "least_squares", beta=1.0, u_weights=a, v_weights=b)

    def sort(x, s):
        seen["sort"].add(tie_pattern(x.tolist()))
        return soft_sort(x, regularization_strength=s)

    def aot(pc, pr, rc, rr, **weights):
        seen["aot"].add(tie_pattern((pc - rc).tolist()))
        return aot_unpaired_loss(pc, pr, rc, rr, **weights)

    for seed in (0, 1):
        check_ot_1d(ot, max_examples=1, seed=seed)
        check_soft_sort(sort, max_examples=1, seed=seed)
        check_aot_loss(aot, paired=False, weights=True, max_examples=1, seed=seed)
        assert all(patterns >= PATTERNS for patterns in seen.values()), seen
        assert any(opposite_orders) and any(zero_weights)


def test_the_small_cases_follow_the_options():
    sizes: list[tuple[int, int]] = []
    weighted: list[bool] = []

    def ot(u, v, a, b):
        sizes.append((len(u), len(v)))
        weighted.append(a is not None or b is not None)
        return reference_ot_1d(u, v, "least_squares", beta=1.0, u_weights=a, v_weights=b)

    check_ot_1d(ot, unequal_sizes=False, weights=False, max_examples=1)
    assert all(n == m for n, m in sizes) and not any(weighted)

    lengths: list[int] = []

    def sort(x: torch.Tensor, s: float) -> torch.Tensor:
        lengths.append(len(x))
        return soft_sort(x, regularization_strength=s)

    check_soft_sort(sort, max_size=2, max_examples=1)
    assert set(lengths) == {1, 2}
