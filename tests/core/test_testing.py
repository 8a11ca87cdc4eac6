"""aot_losses.testing: its oracles agree with each other and with calculus, its checkers pass
correct implementations (this library's, scipy's, POT's) and catch the mistakes people make."""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from aot_losses import aot_paired_loss, aot_unpaired_loss, get_penalty, ot_1d, soft_sort
from aot_losses.penalties import PENALTIES as LIBRARY_PENALTIES
from aot_losses.testing import (
    OTCase,
    check_aot_loss,
    check_ot_1d,
    check_soft_sort,
    ot_cases,
    reference_aot_loss,
    reference_ot_1d,
    reference_ot_grad,
    reference_ot_plan,
    reference_penalty,
    reference_penalty_derivative,
    reference_soft_sort,
    trl_aot_loss,
)

SEED = 0  # the checkers are deterministic in the tests; each mistake is caught at any seed

# ------------------------------------------------------------------------ the gallery


def least_squares(x: np.ndarray) -> np.ndarray:
    return (1.0 - x) ** 2  # check_ot_1d's default penalty: least squares with beta = 1


def textbook(u, v, u_weights, v_weights, mistake: str | None = None) -> float:
    """1-D OT with h(x) = (1 - x)^2 as people write it: sort both samples with their weights,
    merge the two cumulative-weight grids, sum (interval length) x h(Q_u - Q_v). ``mistake``
    injects one classic error; without one it is correct."""
    dtype = np.float32 if mistake == "float32 accumulation" else np.float64
    u, v = np.asarray(u, dtype), np.asarray(v, dtype)
    ignore = mistake == "weights ignored"
    a = np.ones(len(u), dtype) if u_weights is None or ignore else np.asarray(u_weights, dtype)
    b = np.ones(len(v), dtype) if v_weights is None or ignore else np.asarray(v_weights, dtype)
    if mistake == "truncation to min(n, m)":
        k = min(len(u), len(v))
        return float(np.mean(least_squares(np.sort(u)[:k] - np.sort(v)[:k])))
    if mistake == "quantiles linearly interpolated":
        t = (np.arange(4096) + 0.5) / 4096

        def quantile(x: np.ndarray, w: np.ndarray) -> np.ndarray:
            order = np.argsort(x)
            cumulative = np.cumsum(w[order])
            return np.interp(t, (cumulative - w[order] / 2) / cumulative[-1], x[order])

        return float(np.mean(least_squares(quantile(u, a) - quantile(v, b))))
    order_u = np.argsort(u)
    order_v = np.argsort(v)[::-1] if mistake == "anti-monotone coupling" else np.argsort(v)
    u, v = u[order_u], v[order_v]
    if mistake != "weights not sorted with the samples":
        a, b = a[order_u], b[order_v]
    cum_a, cum_b = np.cumsum(a), np.cumsum(b)
    grid_u, grid_v = cum_a * cum_b[-1], cum_b * cum_a[-1]  # one scale: both end at A B
    grid = np.union1d(grid_u, grid_v)
    lengths = np.diff(grid, prepend=0.0) / grid[-1]
    if mistake == "equal-length intervals":
        lengths = np.full(len(grid), 1.0 / len(grid), dtype)
    side = "right" if mistake == "off-by-one on the merged grid" else "left"
    i = np.minimum(np.searchsorted(grid_u, grid, side), len(u) - 1)
    j = np.minimum(np.searchsorted(grid_v, grid, side), len(v) - 1)
    d = v[j] - u[i] if mistake == "h applied to v - u" else u[i] - v[j]
    return float(np.sum(lengths * least_squares(d)))


MISTAKES = [
    "anti-monotone coupling",
    "weights ignored",
    "weights not sorted with the samples",
    "quantiles linearly interpolated",
    "truncation to min(n, m)",
    "off-by-one on the merged grid",
    "equal-length intervals",
    "float32 accumulation",
    "h applied to v - u",
]


def test_the_textbook_implementation_passes():
    """The control: the gallery's implementation without a mistake is exact."""
    check_ot_1d(textbook, seed=SEED)


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_classic_mistake_is_caught(mistake):
    with pytest.raises(AssertionError, match="differs from the exact OT cost"):
        check_ot_1d(functools.partial(textbook, mistake=mistake), seed=SEED)


def test_a_wrong_gradient_with_the_right_value_is_caught():
    def v_detached(u, v, a, b):
        return ot_1d(u, v.detach(), "least_squares", beta=1.0, u_weights=a, v_weights=b)

    check_ot_1d(v_detached, array="torch", seed=SEED)  # the value is right
    with pytest.raises(AssertionError, match=r"gradient w\.r\.t\. v differs"):
        check_ot_1d(v_detached, array="torch", gradients=True, seed=SEED)


def test_a_candidate_that_raises_fails_with_the_case():
    def only_equal_sizes(u, v, a, b):
        if len(u) != len(v):
            raise ValueError("u and v must have the same size")
        return float(np.mean(least_squares(np.sort(u) - np.sort(v))))

    with pytest.raises(AssertionError, match=r"raised ValueError: u and v .*\n  case: OTCase"):
        check_ot_1d(only_equal_sizes, weights=False, seed=SEED)
    check_ot_1d(only_equal_sizes, unequal_sizes=False, weights=False, seed=SEED)


# ------------------------------------------------------------------------ correct peers

NAMED = [
    ("logistic", 1.0, 0.0),
    ("logistic", 0.7, 0.25),
    ("squared_hinge", 1.0, 0.0),
    ("hinge", 1.0, 0.0),
    ("least_squares", 0.5, 0.0),
]


@pytest.mark.parametrize(("penalty", "beta", "eps"), [NAMED[1], NAMED[3]])
def test_ot_1d_passes_with_gradients(penalty, beta, eps):
    """Smooth and kinked h (the value alone, with least squares, passes above)."""

    def candidate(u, v, a, b):
        return ot_1d(u, v, penalty, beta=beta, label_smoothing=eps, u_weights=a, v_weights=b)

    check_ot_1d(
        candidate, penalty, beta=beta, label_smoothing=eps, array="torch", gradients=True, seed=SEED
    )


def test_scipy_wasserstein_distance_passes_as_w1():
    scipy_stats = pytest.importorskip("scipy.stats")

    def w1(u, v, a, b):
        return scipy_stats.wasserstein_distance(u, v, a, b)

    check_ot_1d(w1, np.abs, seed=SEED)


def _normalized(w: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, 1.0 / n) if w is None else w / w.sum()


def test_pot_wasserstein_1d_passes_with_normalized_weights():
    ot = pytest.importorskip("ot")

    def pot(u, v, a, b):  # POT wants weights that sum to 1 (see docs/testing.md)
        return ot.wasserstein_1d(u, v, _normalized(a, len(u)), _normalized(b, len(v)), p=1)

    check_ot_1d(pot, np.abs, seed=SEED)


# ------------------------------------------------------------------------ the oracles


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
        np.testing.assert_allclose(plan.sum(1), _normalized(case.u_weights, len(case.u)), atol=1e-9)
        np.testing.assert_allclose(plan.sum(0), _normalized(case.v_weights, len(case.v)), atol=1e-9)
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


# ------------------------------------------------------------------------ soft sort


@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_check_soft_sort_passes_the_torch_backend(regularization):
    def candidate(x, s):
        return soft_sort(x, regularization=regularization, regularization_strength=s)

    check_soft_sort(candidate, regularization=regularization, gradients=True, seed=SEED)


def test_check_soft_sort_catches_broken_soft_sorts():
    def inverted_strength(x, s):  # strength read as its inverse (a convention mix-up)
        return soft_sort(x, regularization_strength=1 / s)

    def detached_ramp(x, s):  # right values, gradient of the hard sort
        hard = torch.sort(x).values
        return hard + (soft_sort(x, regularization_strength=s) - hard).detach()

    with pytest.raises(AssertionError, match="check_soft_sort"):
        check_soft_sort(inverted_strength, seed=SEED)
    check_soft_sort(detached_ramp, seed=SEED)
    with pytest.raises(AssertionError, match="the Jacobian differs"):
        check_soft_sort(detached_ramp, gradients=True, seed=SEED)


def test_reference_soft_sort_closed_forms():
    x = [0.3, -1.0, 2.0, 0.5]
    # below 1 / largest gap (1.3): the hard sort; far above it: the ramp around the mean
    np.testing.assert_array_equal(reference_soft_sort(x, 0.5), sorted(x))
    ramp = np.mean(x) + (np.arange(1, 5) - 2.5) / 1e3
    np.testing.assert_allclose(reference_soft_sort(x, 1e3), ramp, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------ AOT losses


def trl_copy(paired: bool, beta: float = 0.01, label_smoothing: float = 0.0):
    """TRL 1.16's ``DPOTrainer`` branches ``"aot"`` / ``"aot_unpaired"``, by hand, in torch."""

    def loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps):
        if paired:
            first = chosen_logps - rejected_logps
            second = ref_chosen_logps - ref_rejected_logps
        else:
            first = chosen_logps - ref_chosen_logps
            second = rejected_logps - ref_rejected_logps
        delta = torch.sort(first, dim=0)[0] - torch.sort(second, dim=0)[0]
        per_sequence_loss = (
            -F.logsigmoid(beta * delta) * (1 - label_smoothing)
            - F.logsigmoid(-beta * delta) * label_smoothing
        )
        return per_sequence_loss.mean()

    return loss


def test_check_aot_loss_passes_the_librarys_losses():
    check_aot_loss(aot_paired_loss, weights=True, seed=SEED)
    hinge = functools.partial(aot_unpaired_loss, penalty="hinge", beta=0.5)
    check_aot_loss(hinge, paired=False, penalty="hinge", beta=0.5, weights=True, seed=SEED)


def test_trl_copy_passes_within_its_scope_and_fails_outside_it():
    check_aot_loss(trl_copy(True, 0.1, 0.2), beta=0.1, label_smoothing=0.2, seed=SEED)
    check_aot_loss(trl_copy(False), paired=False, unequal_sizes=False, seed=SEED)
    # n != m: a size mismatch, or a silent broadcast of n = 1 against m
    with pytest.raises(AssertionError, match=r"must match the size|differs from the paper's"):
        check_aot_loss(trl_copy(False), paired=False, seed=SEED)
    with pytest.raises(AssertionError, match="unexpected keyword argument 'weights'"):
        check_aot_loss(trl_copy(True), weights=True, seed=SEED)


def test_check_aot_loss_catches_an_unsorted_loss():
    def unsorted(pc, pr, rc, rr):  # DPO's pairing of u_i with v_i: not a transport cost
        return -F.logsigmoid(0.01 * ((pc - pr) - (rc - rr))).mean()

    with pytest.raises(AssertionError, match="differs from the paper's formula"):
        check_aot_loss(unsorted, seed=SEED)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), paired=st.booleans(), beta=st.sampled_from([0.01, 1.0]))
def test_trl_transcription_is_the_ot_formula_of_the_margins(data, paired, beta):
    n = data.draw(st.integers(1, 12))
    logps = st.lists(st.floats(-500, 0), min_size=n, max_size=n)
    tensors = [np.array(data.draw(logps)) for _ in range(4)]
    kw = {"beta": beta, "label_smoothing": 0.1, "paired": paired}
    got = trl_aot_loss(*tensors, **kw)
    assert math.isclose(got, reference_aot_loss(*tensors, **kw), rel_tol=1e-12)


# ------------------------------------------------------------------------ packaging, errors


def test_the_kit_is_optional_and_names_its_extra(monkeypatch):
    """``import aot_losses`` loads neither the kit nor its dependencies; without them the kit
    says which extra to install."""
    code = (
        "import sys, aot_losses\n"
        "kit = ('aot_losses.testing', 'hypothesis', 'scipy')\n"
        "print(sorted(m for m in kit if m in sys.modules))\n"
        "sys.modules['hypothesis'] = None\n"
        "import aot_losses.testing"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
    assert out.returncode != 0
    assert "pip install 'aot-losses[testing]'" in out.stderr.splitlines()[-1]
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ImportError, match=r"aot-losses\[testing\]"):
        reference_ot_1d([0.0], [1.0], "hinge", method="lp")


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
        (
            lambda: check_ot_1d(textbook, gradients=True),
            ValueError,
            "gradients=True reads u.grad and v.grad: it needs array='torch'",
        ),
        (
            lambda: check_ot_1d(textbook, np.abs, gradients=True, array="torch"),
            ValueError,
            "needs derivative=",
        ),
        (lambda: check_ot_1d(textbook, array="jax"), ValueError, "array must be one of"),
        (lambda: check_ot_1d(textbook, rtol=-1.0), ValueError, "rtol must be a finite number"),
        (lambda: check_ot_1d(textbook, max_examples=0), ValueError, "max_examples"),
        (lambda: check_aot_loss(aot_paired_loss, max_size=0), ValueError, "max_size must be"),
        (lambda: check_ot_1d(textbook, seed=1.5), TypeError, "seed must be an int"),
        (lambda: ot_cases(min_size=0), ValueError, "1 <= min_size <= max_size"),
        (lambda: ot_cases(min_value=1.0, max_value=1.0), ValueError, "min_value < max_value"),
        (lambda: ot_cases(weights=1), TypeError, "weights must be a bool"),
        (lambda: check_soft_sort(soft_sort, regularization="l1"), ValueError, "regularization"),
        (lambda: check_aot_loss(aot_paired_loss, paired=1), TypeError, "paired must be a bool"),
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


def test_tensors_and_array_likes_are_accepted():
    u = torch.tensor([3.0, 1.0], dtype=torch.float32, requires_grad=True)
    assert reference_ot_1d(u, (0.0, 2.0, 4.0), "least_squares", beta=1.0) == 2.0
