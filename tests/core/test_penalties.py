"""Penalties: the paper's formulas, numerical stability, convexity, resolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from aot_losses.penalties import PENALTIES, get_penalty

from ..helpers import assert_close

settings.register_profile("penalties", max_examples=50, deadline=None, derandomize=True)
settings.load_profile("penalties")

FORMULAS = {
    "logistic": lambda x, b: -F.logsigmoid(b * x),
    "squared_hinge": lambda x, b: torch.clamp(b - x, min=0) ** 2,
    "hinge": lambda x, b: torch.clamp(b - x, min=0),
    "least_squares": lambda x, b: (b - x) ** 2,
}


@pytest.mark.parametrize("name", list(PENALTIES))
def test_named_penalties_follow_the_paper(name):
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert_close(get_penalty(name, beta=0.7)(x), FORMULAS[name](x, 0.7))


def test_logistic_label_smoothing_is_the_cdpo_mixture():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    h = get_penalty("logistic", beta=2.0, label_smoothing=0.2)
    expected = -0.8 * F.logsigmoid(2 * x) - 0.2 * F.logsigmoid(-2 * x)
    assert_close(h(x), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_logistic_does_not_overflow(dtype):
    x = torch.tensor([-1e4, 0.0, 1e4], dtype=dtype, requires_grad=True)
    h = get_penalty("logistic", beta=1.0, label_smoothing=0.1)  # |beta x| fits float16
    y = h(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", list(PENALTIES))
@given(
    x=st.floats(-20, 20),
    gap=st.floats(1e-3, 5),
    t=st.floats(0, 1),
    beta=st.sampled_from([0.01, 0.5, 3.0]),
)
def test_named_penalties_are_convex(name, x, gap, t, beta):
    h = get_penalty(name, beta=beta)
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(x + gap, dtype=torch.float64)
    mix = h(t * a + (1 - t) * b)
    assert float(mix) <= float(t * h(a) + (1 - t) * h(b)) + 1e-12


def test_callable_passes_through():
    def h(x: torch.Tensor) -> torch.Tensor:
        return x.abs()

    assert get_penalty(h) is h


@pytest.mark.parametrize("name", list(PENALTIES))
def test_gradcheck_float64(name):
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).add_(0.01).requires_grad_()
    h = get_penalty(name, beta=0.5, label_smoothing=0.1 if name == "logistic" else 0.0)
    assert torch.autograd.gradcheck(h, (x,))


def _arguments() -> list[float]:
    """[-60, 60] on a grid, plus just above and below the 20 where softplus' default threshold
    switches to its linear approximation (and its mirror images)."""
    near = [20.0, 20.0 + 1e-9, 20.001, 20.5, 21.0, 25.0, 30.0, 36.0, 37.0, 40.0]
    grid = [k / 4 + 0.01 for k in range(-240, 240)]
    return sorted({*grid, *near, *(-x for x in near), -60.0, 60.0})


@pytest.mark.parametrize(
    ("name", "beta", "eps"),
    [
        ("logistic", 1.0, 0.0),
        ("logistic", 1.0, 0.25),
        ("logistic", 0.7, 0.1),
        ("squared_hinge", 1.0, 0.0),
        ("hinge", 0.5, 0.0),
        ("least_squares", 2.0, 0.0),
    ],
)
def test_named_penalties_are_exact_in_float64(name, beta, eps):
    """Value and gradient against a 50-digit mpmath evaluation at the float64 arguments: within
    2e-15 of the size of the terms (relative where the terms do not cancel)."""
    mpmath = pytest.importorskip("mpmath")
    mp = mpmath.mp
    mp.dps = 50
    b, e = mp.mpf(beta), mp.mpf(eps)

    def softplus(t):
        return mpmath.log1p(mpmath.exp(t))

    # each penalty as the sum of its terms, exactly (beta and eps as the floats they are)
    terms = {
        "logistic": lambda t: ((1 - e) * softplus(-b * t), e * softplus(b * t)),
        "squared_hinge": lambda t: (max(b - t, 0) ** 2,),
        "hinge": lambda t: (max(b - t, 0),),
        "least_squares": lambda t: ((b - t) ** 2,),
    }[name]
    xs = [x for x in _arguments() if x != beta]  # the hinges' kink has no derivative
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    h = get_penalty(name, beta=beta, label_smoothing=eps)
    value = h(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    for i, t in enumerate(xs):
        t = mp.mpf(t)
        parts = terms(t)
        slopes = [mpmath.diff(lambda s, k=k: terms(s)[k], t) for k in range(len(parts))]
        for got, exact, size in (
            (value[i].item(), sum(parts), sum(abs(p) for p in parts)),
            (grad[i].item(), sum(slopes), sum(abs(p) for p in slopes)),
        ):
            assert abs(mp.mpf(got) - exact) <= 2e-15 * size, (t, got, exact)
