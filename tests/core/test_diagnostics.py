"""Diagnostics against numpy's inverted-CDF quantiles and exact integrals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import aot_losses
from aot_losses.diagnostics import (
    almost_fsd_ratio,
    fsd_violation,
    ot_violation,
    plot_quantile_curves,
    quantile_curves,
    quantiles,
)

from ..helpers import assert_close

scipy_stats = pytest.importorskip("scipy.stats")

settings.register_profile("diagnostics", max_examples=50, deadline=None, derandomize=True)
settings.load_profile("diagnostics")

samples = st.lists(st.floats(-10, 10), min_size=1, max_size=20)


@given(x=samples, levels=st.lists(st.floats(0.001, 1.0), min_size=1, max_size=10))
def test_quantiles_are_numpys_inverted_cdf(x, levels):
    got = quantiles(torch.tensor(x, dtype=torch.float64), torch.tensor(levels, dtype=torch.float64))
    expected = np.quantile(np.array(x), np.array(levels), method="inverted_cdf")
    assert_close(got, expected)


@given(
    x=st.lists(st.floats(-10, 10), min_size=2, max_size=10),
    data=st.data(),
)
def test_weighted_quantiles_are_numpys_weighted_inverted_cdf(x, data):
    w = data.draw(st.lists(st.floats(0.1, 5), min_size=len(x), max_size=len(x)))
    levels = np.array([0.05, 0.3, 0.5, 0.77, 1.0])
    got = quantiles(
        torch.tensor(x, dtype=torch.float64),
        torch.tensor(levels),
        torch.tensor(w, dtype=torch.float64),
    )
    expected = np.quantile(np.array(x), levels, method="inverted_cdf", weights=np.array(w))
    assert_close(got, expected)


def test_fsd_violation_zero_under_dominance_and_one_under_reverse_dominance():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(50, generator=gen)
    u = v + torch.rand(50, generator=gen) + 0.01  # each u_i > v_i: u dominates v
    assert float(fsd_violation(u, v)) == 0.0
    assert float(fsd_violation(v, u)) == 1.0
    assert float(ot_violation(u, v)) == 0.0
    assert float(almost_fsd_ratio(u, v)) == 0.0
    assert math.isclose(float(almost_fsd_ratio(v, u)), 1.0, rel_tol=1e-6)


@given(u=samples, v=samples)
def test_ot_violation_under_reverse_dominance_is_w1(u, v):
    shift = max(u) - min(v) + 1.0  # v + shift dominates u: the whole W1 is violation
    v_shifted = [x + shift for x in v]
    got = ot_violation(
        torch.tensor(u, dtype=torch.float64), torch.tensor(v_shifted, dtype=torch.float64)
    )
    assert math.isclose(
        float(got), scipy_stats.wasserstein_distance(u, v_shifted), rel_tol=1e-9, abs_tol=1e-12
    )


def test_almost_fsd_ratio_by_numerical_integration():
    gen = torch.Generator().manual_seed(1)
    u, v = torch.randn(7, generator=gen).double(), torch.randn(5, generator=gen).double() + 0.3
    t = torch.linspace(0, 1, 2_000_001, dtype=torch.float64)[1:]
    gap = quantiles(u, t) - quantiles(v, t)
    expected = (torch.relu(-gap) ** 2).mean() / (gap**2).mean()
    torch.testing.assert_close(almost_fsd_ratio(u, v), expected, rtol=1e-5, atol=0)


def test_quantile_curves_levels_and_errors():
    t, qu, qv = quantile_curves(torch.randn(10), torch.randn(3), levels=9)
    assert_close(t, torch.arange(1, 10, dtype=torch.float64) / 10)
    assert qu.shape == qv.shape == (9,)
    for bad in ([-0.1, 0.5], [0.5, 1.5], [math.nan]):
        with pytest.raises(ValueError, match=r"levels must lie in \[0, 1\]"):
            quantile_curves(torch.randn(3), torch.randn(3), levels=torch.tensor(bad))
        with pytest.raises(ValueError, match=r"levels must lie in \[0, 1\]"):
            quantiles(torch.randn(3), bad)
    with pytest.raises(TypeError, match="levels must be a number of levels, a tensor or"):
        quantiles(torch.randn(3), "median")
    with pytest.raises(ValueError, match="levels must be a positive number of levels; got 0"):
        quantile_curves(torch.randn(3), torch.randn(3), levels=0)


def test_plot_quantile_curves_writes_a_figure(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = plot_quantile_curves(torch.randn(20), torch.randn(15), title="before")
    assert ax.get_title() == "before"
    assert len(ax.get_lines()) == 2
    path = tmp_path / "q.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 0


def test_levels_as_lists_and_the_ends_of_the_unit_interval():
    x = torch.tensor([3.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    levels = [0.0, 0.25, 0.5, 1.0]
    assert_close(quantiles(x, levels), quantiles(x, torch.tensor(levels)))
    assert_close(quantiles(x, levels), torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64))


DIAGNOSTICS = {
    "quantiles": lambda u, v: (quantiles(u, [0.1, 0.9]), quantiles(v, [0.1, 0.9])),
    "quantile_curves": lambda u, v: quantile_curves(u, v, 9)[1:],
    "fsd_violation": fsd_violation,
    "ot_violation": ot_violation,
    "almost_fsd_ratio": almost_fsd_ratio,
}


@pytest.mark.parametrize("name", list(DIAGNOSTICS))
@pytest.mark.parametrize("side", [0, 1])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_one_non_finite_policy_across_the_diagnostics(name, side, bad, value_checks):
    """Checked: a ValueError naming the sample. Unchecked: NaN samples give NaN, never a
    verdict (fsd_violation used to say 0.0, "dominates", for a NaN sample)."""
    samples = [torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-1.0, 0.5])]
    samples[side][1] = bad
    with pytest.raises(ValueError, match="must be finite"):
        DIAGNOSTICS[name](*samples)
    if math.isnan(bad):
        aot_losses.set_value_checks("never")
        result = DIAGNOSTICS[name](*samples)
        curve = result[side] if isinstance(result, tuple) else result  # the NaN side's
        assert bool(torch.isnan(curve).all())
