"""Penalties: the paper's formulas, numerical stability, convexity, resolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from aot_losses.penalties import PENALTIES, get_penalty

from .tolerances import assert_close

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
