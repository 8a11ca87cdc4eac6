"""ot_1d against exact oracles (the kit's LP and Danskin gradients, scipy's assignment and
Wasserstein) and its metamorphic laws."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aot_losses import ot_1d
from aot_losses.penalties import get_penalty
from aot_losses.testing import ot_cases, reference_ot_1d, reference_ot_grad

from ..helpers import TOLERANCES, assert_close

scipy_optimize = pytest.importorskip("scipy.optimize")
scipy_stats = pytest.importorskip("scipy.stats")


def exponential(x):
    """A convex h(x) = exp(-x) for tensors (ot_1d) and arrays (the kit's oracles)."""
    return torch.exp(-x) if torch.is_tensor(x) else np.exp(-x)


# (name or callable, beta, label_smoothing): five convex h, asymmetric ones included.
CONVEX_PENALTIES: dict[str, tuple[str | Callable[[torch.Tensor], torch.Tensor], float, float]] = {
    "logistic": ("logistic", 0.7, 0.0),
    "logistic_smoothed": ("logistic", 1.3, 0.2),
    "squared_hinge": ("squared_hinge", 0.5, 0.0),
    "hinge": ("hinge", 0.3, 0.0),
    "least_squares": ("least_squares", 0.25, 0.0),
    "exponential": (exponential, 1.0, 0.0),
}
DERIVATIVES = {"exponential": lambda x: -np.exp(-x)}  # h' of the callables, for Danskin
STRICTLY_CONVEX = ["logistic", "logistic_smoothed", "least_squares", "exponential"]

settings.register_profile("ot", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("ot")


def penalty_fn(key: str) -> Callable[[torch.Tensor], torch.Tensor]:
    penalty, beta, eps = CONVEX_PENALTIES[key]
    return get_penalty(penalty, beta=beta, label_smoothing=eps)


def ot(u, v, key, **kw) -> torch.Tensor:
    penalty, beta, eps = CONVEX_PENALTIES[key]
    return ot_1d(u, v, penalty, beta=beta, label_smoothing=eps, **kw)


def as64(x, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64)).to(device)


def lp_reference(key: str, u, v, a=None, b=None) -> float:
    """The kit's LP oracle: min <C, P> over the transport polytope, C_ij = h(u_i - v_j)."""
    penalty, beta, eps = CONVEX_PENALTIES[key]
    kw = {"beta": beta, "label_smoothing": eps, "u_weights": a, "v_weights": b}
    return reference_ot_1d(u, v, penalty, **kw, method="lp")


CASES = ot_cases(max_size=7, min_value=-4.0, max_value=4.0)


def optional(x: np.ndarray | None, device: torch.device | str = "cpu") -> torch.Tensor | None:
    return None if x is None else as64(x, device)


@pytest.mark.parametrize("key", list(CONVEX_PENALTIES))
@given(case=CASES)
def test_matches_linear_program_with_weights_ties_and_unequal_sizes(key, case, device):
    u, v, a, b = case
    expected = lp_reference(key, u, v, a, b)
    weights = {"u_weights": optional(a, device), "v_weights": optional(b, device)}
    got = ot(as64(u, device), as64(v, device), key, **weights)
    assert math.isclose(float(got), expected, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("key", list(CONVEX_PENALTIES))
@given(case=ot_cases(max_size=12, weights=False, unequal_sizes=False, min_value=-4, max_value=4))
def test_equal_sizes_match_linear_sum_assignment(key, case):
    u, v = case.u, case.v
    cost = penalty_fn(key)(as64(u)[:, None] - as64(v)[None, :]).numpy()
    rows, cols = scipy_optimize.linear_sum_assignment(cost)
    got = ot(torch.tensor(u, dtype=torch.float64), torch.tensor(v, dtype=torch.float64), key)
    assert math.isclose(float(got), cost[rows, cols].mean(), rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("key", ["squared_hinge", "logistic"])
@given(case=ot_cases(max_size=6, weights=False, min_value=-4, max_value=4))
def test_unequal_uniform_sizes_match_assignment_on_repeated_atoms(key, case):
    u, v = case.u, case.v
    n, m = len(u), len(v)
    size = math.lcm(n, m)
    big_u, big_v = np.repeat(u, size // n), np.repeat(v, size // m)
    cost = penalty_fn(key)(as64(big_u)[:, None] - as64(big_v)[None, :]).numpy()
    rows, cols = scipy_optimize.linear_sum_assignment(cost)
    got = ot(as64(u), as64(v), key)
    assert math.isclose(float(got), cost[rows, cols].mean(), rel_tol=1e-9, abs_tol=1e-12)


@given(case=ot_cases(max_size=10, min_value=-4, max_value=4))
def test_w1_matches_scipy_wasserstein_distance(case):
    u, v, a, b = case
    got = ot_1d(as64(u), as64(v), torch.abs, u_weights=optional(a), v_weights=optional(b))
    expected = scipy_stats.wasserstein_distance(u, v, a, b)
    assert math.isclose(float(got), expected, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("key", STRICTLY_CONVEX)
@given(data=st.data())
def test_gradient_matches_danskin_on_the_lp_plan(key, data, device):
    n, m = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    # well-separated distinct atoms: the optimal plan is unique, so Danskin's formula applies
    atoms = st.lists(st.integers(-40, 40), min_size=n + m, max_size=n + m, unique=True)
    points = [p / 10 for p in data.draw(atoms)]
    u, v = points[:n], points[n:]
    a = data.draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=n, max_size=n))
    b = data.draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=m, max_size=m))
    penalty, beta, eps = CONVEX_PENALTIES[key]
    expected_u, expected_v = reference_ot_grad(
        u, v, penalty, beta=beta, label_smoothing=eps, u_weights=a, v_weights=b,
        derivative=DERIVATIVES.get(key), method="lp",
    )  # fmt: skip

    ut, vt = as64(u, device).requires_grad_(), as64(v, device).requires_grad_()
    value = ot(ut, vt, key, u_weights=as64(a, device), v_weights=as64(b, device))
    grad_u, grad_v = torch.autograd.grad(value, (ut, vt))
    torch.testing.assert_close(grad_u.cpu(), as64(expected_u), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(grad_v.cpu(), as64(expected_v), rtol=1e-7, atol=1e-9)


def test_zero_weight_atoms_at_the_ends_give_no_nan(device):
    kw = {"dtype": torch.float64, "device": device}
    u = torch.tensor([-1e6, 0.0, 1.0, 1e6], **kw, requires_grad=True)
    v = torch.tensor([0.5, 2.0], **kw, requires_grad=True)
    w = torch.tensor([0.0, 1.0, 1.0, 0.0], **kw)
    h = lambda x: torch.exp(-x)  # noqa: E731 - exp(1e6) overflows to inf
    value = ot_1d(u, v, h, u_weights=w)
    value.backward()
    expected = 0.5 * (math.exp(0.5) + math.exp(1.0))
    assert math.isclose(value.item(), expected, rel_tol=1e-12)
    assert torch.isfinite(u.grad).all() and torch.isfinite(v.grad).all()
    assert u.grad[0] == 0 and u.grad[-1] == 0


@pytest.mark.parametrize("weighted", [False, True])
def test_leading_batch_dimensions_match_per_row_results(weighted, device):
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(3, 4, 6, dtype=torch.float64, generator=gen).to(device)
    v = torch.randn(3, 4, 9, dtype=torch.float64, generator=gen).to(device)
    w = torch.rand(6, dtype=torch.float64, generator=gen).to(device) if weighted else None
    batched = ot_1d(u, v, "squared_hinge", beta=0.3, u_weights=w)
    assert batched.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            row = ot_1d(u[i, j], v[i, j], "squared_hinge", beta=0.3, u_weights=w)
            assert_close(batched[i, j], row)


def test_float32_accuracy_bound_against_float64(device):
    gen = torch.Generator().manual_seed(2)
    u = (torch.randn(4096, dtype=torch.float64, generator=gen) * 30 - 100).to(device)
    v = (torch.randn(3001, dtype=torch.float64, generator=gen) * 30 - 110).to(device)
    w = torch.rand(4096, dtype=torch.float64, generator=gen).to(device)
    exact = ot_1d(u, v, "squared_hinge", beta=1.0, u_weights=w)
    approx = ot_1d(u.float(), v.float(), "squared_hinge", beta=1.0, u_weights=w.float())
    # float32 rounds each sample to ~6e-8 relative; the cost moves by at most that much per unit
    # of h's Lipschitz constant on the data, so a 1e-5 relative bound is generous but real.
    assert abs(float(approx) - float(exact)) <= TOLERANCES[torch.float32]["rtol"] * float(exact)


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("m", [6, 4])
def test_reductions_are_consistent_with_mean(reduction, m):
    gen = torch.Generator().manual_seed(3)
    u, v = torch.randn(6, generator=gen).double(), torch.randn(m, generator=gen).double()
    mean = ot_1d(u, v, "hinge", beta=0.5)
    out = ot_1d(u, v, "hinge", beta=0.5, reduction=reduction)
    if reduction == "none":
        assert out.shape == ((6,) if m == 6 else (10,))
        assert_close(out.mean(), mean)
    else:
        assert_close(out, mean * (6 if m == 6 else 10))


# ----------------------------------------------------------------- metamorphic properties


@st.composite
def float64_samples(draw):
    u, v, a, b = draw(CASES)
    a = np.ones(len(u)) if a is None else a
    b = np.ones(len(v)) if b is None else b
    return (torch.tensor(x, dtype=torch.float64) for x in (u, v, a, b))


@given(sample=float64_samples(), seed=st.integers(0, 2**16))
def test_invariant_to_shuffling(sample, seed):
    u, v, a, b = sample
    gen = torch.Generator().manual_seed(seed)
    pu, pv = torch.randperm(len(u), generator=gen), torch.randperm(len(v), generator=gen)
    kw = {"beta": 0.5}
    base = ot_1d(u, v, "squared_hinge", u_weights=a, v_weights=b, **kw)
    shuffled = ot_1d(u[pu], v[pv], "squared_hinge", u_weights=a[pu], v_weights=b[pv], **kw)
    assert_close(shuffled, base)


@given(sample=float64_samples(), shift=st.floats(-50, 50))
def test_invariant_to_a_common_shift(sample, shift):
    u, v, a, b = sample
    base = ot_1d(u, v, "logistic", beta=0.9, u_weights=a, v_weights=b)
    moved = ot_1d(u + shift, v + shift, "logistic", beta=0.9, u_weights=a, v_weights=b)
    torch.testing.assert_close(moved, base, rtol=1e-9, atol=1e-12 * (1 + abs(shift)))


@given(sample=float64_samples(), scale=st.floats(1e-3, 1e3))
def test_invariant_to_scaling_the_weights(sample, scale):
    u, v, a, b = sample
    base = ot_1d(u, v, "least_squares", u_weights=a, v_weights=b)
    assert_close(ot_1d(u, v, "least_squares", u_weights=a * scale, v_weights=b), base)


@given(
    sample=float64_samples(),
    exponents=st.tuples(st.integers(-320, 307), st.integers(-320, 307)),
)
def test_cost_does_not_depend_on_the_weights_scale(sample, exponents):
    """Weights "need not sum to 1": scales across float64's whole range (down to subnormals)
    give the same cost; the grid products once overflowed or underflowed to a cost of 0."""
    u, v, a, b = sample
    scale_a, scale_b = (10.0**e for e in exponents)
    scaled_a, scaled_b = a * scale_a, b * scale_b
    for scaled in (scaled_a, scaled_b):  # representable: not flushed to zero, not overflowed
        assume(bool(scaled.sum() > 0) and bool(torch.isfinite(scaled).all()))
    base = ot_1d(u, v, "least_squares", u_weights=a, v_weights=b)
    got = ot_1d(u, v, "least_squares", u_weights=scaled_a, v_weights=scaled_b)
    # a subnormal weight keeps fewer digits: the cost is that of the rounded weights
    rounded = ot_1d(
        u, v, "least_squares", u_weights=scaled_a / scale_a, v_weights=scaled_b / scale_b
    )
    assert_close(got, rounded)
    if min(exponents) > -300:
        assert_close(got, base)


@given(sample=float64_samples(), share=st.floats(0.0, 1.0))
def test_splitting_an_atom_changes_nothing(sample, share):
    u, v, a, b = sample
    base = ot_1d(u, v, "hinge", beta=0.2, u_weights=a, v_weights=b)
    split_u = torch.cat((u, u[:1]))
    split_a = torch.cat((a[:1] * share, a[1:], a[:1] * (1 - share)))
    assert_close(ot_1d(split_u, v, "hinge", beta=0.2, u_weights=split_a, v_weights=b), base)


@pytest.mark.parametrize("key", list(CONVEX_PENALTIES))
@given(sample=float64_samples())
def test_jensen_lower_bound(key, sample):
    u, v, a, b = sample
    mean_gap = (u * a).sum() / a.sum() - (v * b).sum() / b.sum()
    bound = penalty_fn(key)(mean_gap)
    assert float(ot(u, v, key, u_weights=a, v_weights=b)) >= float(bound) - 1e-12


def test_zero_when_h_vanishes_and_the_samples_coincide():
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(16, dtype=torch.float64, generator=gen)
    h = lambda x: torch.relu(-x).square()  # noqa: E731 - h(0) = 0
    assert float(ot_1d(u, u[torch.randperm(16, generator=gen)], h)) == 0.0


def test_nonconvex_penalty_is_only_an_upper_bound():
    """Why the contract asks for convex h: for a concave cost the sorted coupling is not OT."""
    u, v = [0.0, 1.0], [1.0, 2.0]
    sorted_value = float(ot_1d(as64(u), as64(v), lambda x: x.abs().sqrt()))
    exact = reference_ot_1d(u, v, lambda x: np.sqrt(np.abs(x)), method="lp")
    assert sorted_value == 1.0
    assert math.isclose(exact, math.sqrt(2) / 2, rel_tol=1e-9)
