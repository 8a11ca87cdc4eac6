"""The kit's oracles agree with each other, with calculus, with the library's penalties and
with closed forms, down to the extremes of float64."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aot_losses import get_penalty
from aot_losses.penalties import PENALTIES as LIBRARY_PENALTIES
from aot_losses.testing import (
    OTCase,
    ot_cases,
    reference_aot_loss,
    reference_ot_1d,
    reference_ot_grad,
    reference_ot_plan,
    reference_penalty,
    reference_penalty_derivative,
    reference_soft_rank,
    reference_soft_sort,
    trl_aot_loss,
)

NAMED = [
    ("logistic", 1.0, 0.0),
    ("logistic", 0.7, 0.25),
    ("squared_hinge", 1.0, 0.0),
    ("hinge", 1.0, 0.0),
    ("least_squares", 0.5, 0.0),
]

# ------------------------------------------------------------------------ 1-D OT


def normalized(w: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, 1.0 / n) if w is None else w / w.sum()


def _options(case: OTCase) -> dict[str, Any]:
    return {"u_weights": case.u_weights, "v_weights": case.v_weights}


PENALTIES = [*NAMED, (np.exp, 1.0, 0.0), (lambda x: np.abs(x) ** 3, 1.0, 0.0)]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    case=ot_cases(max_size=8, min_value=-1e3, max_value=1e3),
    which=st.sampled_from(range(len(PENALTIES))),
)
def test_quantile_and_lp_methods_agree(case, which):
    """On costs within about 12 orders of magnitude (HiGHS' working range)."""
    penalty, beta, eps = PENALTIES[which]
    if penalty is np.exp:
        case = case._replace(u=np.clip(case.u, -10, 10), v=np.clip(case.v, -10, 10))
    kw = {"beta": beta, "label_smoothing": eps, **_options(case)}
    exact = reference_ot_1d(case.u, case.v, penalty, **kw)
    lp = reference_ot_1d(case.u, case.v, penalty, **kw, method="lp")
    assert math.isclose(lp, exact, rel_tol=1e-9, abs_tol=1e-12)
    for method in ("quantile", "lp"):
        plan = reference_ot_plan(case.u, case.v, penalty, **kw, method=method)
        np.testing.assert_allclose(plan.sum(1), normalized(case.u_weights, len(case.u)), atol=1e-9)
        np.testing.assert_allclose(plan.sum(0), normalized(case.v_weights, len(case.v)), atol=1e-9)
        h = reference_penalty(penalty, beta=beta, label_smoothing=eps)
        cost = h(case.u[:, None] - case.v[None, :])
        assert math.isclose(float((plan * cost).sum()), exact, rel_tol=1e-9, abs_tol=1e-12)


def test_the_quantile_reference_on_hand_computed_cases():
    # 2 against 3 atoms: quantile pairs (1, 0), (1, 2), (3, 2), (3, 4) on 1/3, 1/6, 1/6, 1/3
    assert reference_ot_1d([3.0, 1.0], [0.0, 2.0, 4.0], "least_squares", beta=1.0) == 2.0
    # a zero weight removes an atom, however far away
    assert reference_ot_1d([0.0, 1e300], [1.0], np.abs, u_weights=[1.0, 0.0]) == 1.0
    # weights 1 : 3 against 1 : 1: intervals 1/4 (0 vs 0), 1/4 (1 vs 0), 1/2 (1 vs 2)
    got = reference_ot_1d([0.0, 1.0], [0.0, 2.0], np.abs, u_weights=[1.0, 3.0])
    assert got == 0.25 * 1 + 0.5 * 1
    # coinciding cut points at 1/3 and 2/3 with weights that do not sum exactly in floats
    third = [0.1, 0.1, 0.1]
    assert reference_ot_1d([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], np.abs, u_weights=third) == 0.0


STRICTLY_CONVEX = [NAMED[0], NAMED[1], NAMED[4]]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), which=st.sampled_from(range(len(STRICTLY_CONVEX))))
def test_reference_gradient_matches_finite_differences(data, which):
    """Distinct atoms and a strictly convex h: the plan is unique, so the cost is
    differentiable and Danskin's formula is its gradient."""
    penalty, beta, eps = STRICTLY_CONVEX[which]
    n, m = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    grid = st.lists(st.integers(-40, 40), min_size=n + m, max_size=n + m, unique=True)
    points = np.array(data.draw(grid)) / 10
    u, v = points[:n] + 0.0123, points[n:]
    a = np.array(data.draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=n, max_size=n)))
    kw = {"beta": beta, "label_smoothing": eps, "u_weights": a}
    grad_u, grad_v = reference_ot_grad(u, v, penalty, **kw)
    step = 1e-6
    for x, grad in ((u, grad_u), (v, grad_v)):
        for i in range(len(x)):
            x[i] += step
            up = reference_ot_1d(u, v, penalty, **kw)
            x[i] -= 2 * step
            down = reference_ot_1d(u, v, penalty, **kw)
            x[i] += step
            assert math.isclose((up - down) / (2 * step), grad[i], rel_tol=1e-6, abs_tol=1e-7)


@pytest.mark.parametrize("name", list(LIBRARY_PENALTIES))
def test_the_kits_penalties_are_the_librarys(name):
    """Every named penalty, two independent float64 implementations (NumPy here, torch in
    aot_losses.penalties), value and slope across [-60, 60]: within a few ulps."""
    beta, eps = 0.9, 0.2 if name == "logistic" else 0.0
    x = torch.linspace(-60, 60, 2401, dtype=torch.float64).add(0.0037).requires_grad_()
    value = get_penalty(name, beta=beta, label_smoothing=eps)(x)
    (slope,) = torch.autograd.grad(value.sum(), x)
    xs = x.detach().numpy()
    kw = {"beta": beta, "label_smoothing": eps}
    np.testing.assert_allclose(
        reference_penalty(name, **kw)(xs), value.detach().numpy(), rtol=1e-15, atol=1e-15
    )
    np.testing.assert_allclose(
        reference_penalty_derivative(name, **kw)(xs), slope.numpy(), rtol=1e-15, atol=1e-15
    )


def test_reference_gradient_of_a_callable_needs_its_derivative():
    with pytest.raises(ValueError, match="derivative"):
        reference_ot_grad([0.0], [1.0], np.exp)
    grad_u, grad_v = reference_ot_grad([0.0], [1.0], np.exp, derivative=np.exp)
    assert grad_u.tolist() == [math.exp(-1)] and grad_v.tolist() == [-math.exp(-1)]


def test_tensors_and_array_likes_are_accepted():
    u = torch.tensor([3.0, 1.0], dtype=torch.float32, requires_grad=True)
    assert reference_ot_1d(u, (0.0, 2.0, 4.0), "least_squares", beta=1.0) == 2.0


# ------------------------------------------------------------------------ soft sort and rank


def test_reference_soft_sort_closed_forms():
    x = [0.3, -1.0, 2.0, 0.5]
    # below 1 / largest gap (1.3): the hard sort; far above it: the ramp around the mean
    np.testing.assert_array_equal(reference_soft_sort(x, 0.5), sorted(x))
    ramp = np.mean(x) + (np.arange(1, 5) - 2.5) / 1e3
    np.testing.assert_allclose(reference_soft_sort(x, 1e3), ramp, rtol=0, atol=1e-15)


# 1 / s overflows below 5.6e-309, and 7 / (2 s), the largest position term of n = 4, below
# 1.95e-308: around both, the exact answer is the limit, the hard sort and the tied ranks
TINY = [2.0e-308, 1.9e-308, 1e-308, 5.6e-309, 5.5e-309, 1e-310, 5e-324]


@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("s", TINY)
def test_at_a_tiny_strength_the_references_are_the_exact_limit(s, regularization):
    x = [3.0, 1.0, 2.0, 2.0]
    assert reference_soft_sort(x, s, regularization).tolist() == [1.0, 2.0, 2.0, 3.0]
    assert reference_soft_rank(x, s, regularization).tolist() == [4.0, 1.0, 2.5, 2.5]
    # |x| / s overflows too; three tied 0.1 (their float mean is not 0.1) share one rank
    y = [1e300, 0.1, -1e300, 0.1, 0.1]
    assert reference_soft_sort(y, s, regularization).tolist() == sorted(y)
    assert reference_soft_rank(y, s, regularization).tolist() == [5.0, 3.0, 1.0, 3.0, 3.0]


def test_tied_values_share_their_rank_exactly_at_any_strength():
    for s in (1e-20, 1e-8, 1.0):
        assert reference_soft_rank([0.1, 0.1, 0.1, 5.0], s).tolist()[:3] == [2.0, 2.0, 2.0]


def test_around_the_hard_sort_boundary_at_tiny_scales():
    """Two values pool once s * gap > 1 (l2: mean -+ 1 / (2 s)); ranks once gap < s (l2:
    1.5 -+ gap / (2 s)): exact at the scale of 1e-308 as at the scale of 1."""
    for scale in (1.0, 1e-308):
        s = scale * 1.25
        big = 1.0 / s  # values 1 / s apart: the boundary itself
        assert reference_soft_sort([big, 0.0], s).tolist() == [0.0, big]
        wide = [0.0, 1.5 / s]  # 1.5 times as far: pooled
        half = Fraction(1) / (2 * Fraction(s))
        mean = Fraction(wide[1]) / 2
        want = [float(mean - half), float(mean + half)]
        assert reference_soft_sort(wide, s).tolist() == pytest.approx(want, rel=1e-15)
        gap = 0.5 * s
        ranks = reference_soft_rank([gap, 0.0], s).tolist()
        assert ranks == pytest.approx([1.75, 1.25], rel=1e-15)
        assert reference_soft_rank([s, 0.0], s).tolist() == [2.0, 1.0]


def test_a_result_beyond_float64_is_a_value_error():
    with pytest.raises(ValueError, match=r"soft sort of x with regularization_strength=1e-307 "):
        reference_soft_sort([1e308, 1.7e308], 1e-307)  # pooled: their sum overflows
    with pytest.raises(ValueError, match=r"leaves float64's range: it needs n \* max\|x\|"):
        reference_soft_rank([1e308, 1.7e308, 1.5e308], 1e308)


# ------------------------------------------------------------------------ AOT losses


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), paired=st.booleans(), beta=st.sampled_from([0.01, 1.0]))
def test_trl_transcription_is_the_ot_formula_of_the_margins(data, paired, beta):
    n = data.draw(st.integers(1, 12))
    logps = st.lists(st.floats(-500, 0), min_size=n, max_size=n)
    tensors = [np.array(data.draw(logps)) for _ in range(4)]
    kw = {"beta": beta, "label_smoothing": 0.1, "paired": paired}
    got = trl_aot_loss(*tensors, **kw)
    assert math.isclose(got, reference_aot_loss(*tensors, **kw), rel_tol=1e-12)


# ------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: reference_ot_1d([], [1.0], "hinge"), ValueError, "u must be a non-empty 1-D"),
        (lambda: reference_ot_1d([[0.0]], [1.0], "hinge"), ValueError, "u must be a non-empty"),
        (lambda: reference_ot_1d([0.0], [math.nan], "hinge"), ValueError, "v must be finite"),
        (lambda: reference_ot_1d(["a"], [1.0], "hinge"), TypeError, "u must be a 1-D array"),
        (
            lambda: reference_ot_1d([0.0], [1.0], "hinge", u_weights=[0.0]),
            ValueError,
            "u_weights must be nonnegative and not all zero",
        ),
        (
            lambda: reference_ot_1d([0.0], [1.0], "hinge", v_weights=[1.0, 2.0]),
            ValueError,
            r"v_weights must have one weight per atom of v, shape \(1,\)",
        ),
        (lambda: reference_ot_1d([0.0], [1.0], "huber"), ValueError, "penalty must be one of"),
        (lambda: reference_ot_1d([0.0], [1.0], 3), TypeError, "penalty must be a name"),
        (lambda: reference_ot_1d([0.0], [1.0], "hinge", beta=0), ValueError, "beta"),
        (
            lambda: reference_ot_1d([0.0], [1.0], "hinge", label_smoothing=0.1),
            ValueError,
            "label_smoothing applies to the 'logistic' penalty only",
        ),
        (lambda: reference_ot_1d([0.0], [1.0], "hinge", method="emd"), ValueError, "method"),
        (
            lambda: reference_ot_1d([0.0], [1.0], lambda x: x.sum()),
            TypeError,
            "penalty must be elementwise",
        ),
        (lambda: reference_soft_sort([1.0], 0.0), ValueError, "regularization_strength"),
        (lambda: reference_soft_rank([1.0], 1.0, "l1"), ValueError, "regularization"),
        (
            lambda: reference_aot_loss([0.0], [0.0], [0.0], [0.0], weights=[1.0], paired=False),
            ValueError,
            "weights is for paired=True",
        ),
        (
            lambda: trl_aot_loss([0.0], [0.0, 1.0], [0.0], [0.0, 1.0], paired=False),
            ValueError,
            "as many chosen as rejected",
        ),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
