"""The kit's checkers pass correct implementations (this library's, scipy's, POT's, TRL's) and
catch the mistakes people make: a gallery of them, each caught at every seed."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aot_losses import aot_paired_loss, aot_unpaired_loss, ot_1d, soft_sort
from aot_losses.testing import (
    check_aot_loss,
    check_ot_1d,
    check_soft_sort,
    ot_cases,
)

SEED = 0  # the checkers are deterministic in the tests; each mistake is caught at any seed
SEEDS = range(10)

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


@pytest.mark.parametrize(("penalty", "beta", "eps"), [("logistic", 0.7, 0.25), ("hinge", 1.0, 0.0)])
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


# ------------------------------------------------------------------------ kinks


def clamp_hinge(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(1 - x, min=0)  # subgradient -1 at the kink x = 1


def maximum_hinge(x: torch.Tensor) -> torch.Tensor:
    return torch.maximum(1 - x, torch.zeros_like(x))  # subgradient -1/2 at the kink


@pytest.mark.parametrize("h", [clamp_hinge, maximum_hinge])
def test_any_subgradient_at_a_kink_passes(h):
    """The hinge written as people write it: its subgradient at the kink is not torch.relu's
    0, yet any value between the left and right derivatives is right."""

    def candidate(u, v, a, b):
        return ot_1d(u, v, h, u_weights=a, v_weights=b)

    check_ot_1d(candidate, "hinge", array="torch", gradients=True, seed=SEED)


def test_a_wrong_subgradient_at_a_kink_is_caught():
    def outside(x: torch.Tensor) -> torch.Tensor:  # slope -2 at the kink: outside [-1, 0]
        return clamp_hinge(x) - torch.where(x == 1, x - x.detach(), torch.zeros_like(x))

    def candidate(u, v, a, b):
        return ot_1d(u, v, outside, u_weights=a, v_weights=b)

    check_ot_1d(candidate, "hinge", array="torch", seed=SEED)  # the value is right
    # u = [1, 0] against v = [0]: half the mass on the kink, slope in [-1/2, 0]; got -2 / 2
    case = r"u=\[1\.0, 0\.0\], v=\[0\.0\].*\n"
    wrong = case + r"  expected: \[\[-0\.5, 0\.0\], -0\.5\]\n  got:      \[-1\.0,"
    with pytest.raises(AssertionError, match=wrong):
        check_ot_1d(candidate, "hinge", array="torch", gradients=True, seed=SEED)


def test_a_hinge_with_the_gradient_of_least_squares_is_caught():
    def candidate(u, v, a, b):
        hinge = ot_1d(u, v, "hinge", beta=1.0, u_weights=a, v_weights=b)
        squares = ot_1d(u, v, "least_squares", beta=1.0, u_weights=a, v_weights=b)
        return hinge + (squares - squares.detach())

    with pytest.raises(AssertionError, match=r"gradient w\.r\.t\. u differs"):
        check_ot_1d(candidate, "hinge", array="torch", gradients=True, seed=SEED)


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


# ------------------------------------------------------------------------ the smallest sizes


def soft_sort_but_hard_below_3(x: torch.Tensor, s: float) -> torch.Tensor:
    """Skips the projection where it looks pointless: at n <= 2."""
    return torch.sort(x).values if len(x) <= 2 else soft_sort(x, regularization_strength=s)


def aot_loss_unsorted_at_2(pc, pr, rc, rr):
    """Skips the sort at B == 2 (a shortcut for a tiny batch): DPO's pairing there."""
    if len(pc) == 2:
        return -F.logsigmoid(0.01 * ((pc - pr) - (rc - rr))).mean()
    return aot_paired_loss(pc, pr, rc, rr)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_soft_sort_that_is_hard_below_3_is_caught_at_every_seed(seed):
    with pytest.raises(AssertionError, match="differs from the reference soft sort"):
        check_soft_sort(soft_sort_but_hard_below_3, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_an_aot_loss_unsorted_at_2_is_caught_at_every_seed(seed):
    with pytest.raises(AssertionError, match="differs from the paper's formula"):
        check_aot_loss(aot_loss_unsorted_at_2, seed=seed)


# ------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
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
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
