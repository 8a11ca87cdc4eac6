"""Tests of aot_losses.sorting: hard_sort, soft_sort, soft_rank and their backends.

The pure-PyTorch backend is checked against an independent pure-Python PAV written from
torchsort's conventions (``aot_losses.testing.reference_soft_sort`` / ``reference_soft_rank``),
against torchsort itself (float64, values and gradients), and for every soft-sort invariant
listed in DESIGN.md. Both stages of its solver are exercised: the parallel
PAV passes (default) and the divide-and-conquer hull merge (forced by a schedule without passes:
``_soft(rank, "hull")``).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import random
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from aot_losses import _validation, aot_paired_loss, ot_1d
from aot_losses.sorting import hard_sort, soft_rank, soft_sort
from aot_losses.sorting._isotonic import ACCELERATOR_SCHEDULE, ReadSchedule, isotonic_soft_sort
from aot_losses.testing import reference_soft_rank, reference_soft_sort

from ..helpers import TOLERANCES, assert_close

#: The solver's stages: its schedule of host reads by device (parallel PAV passes, the hull merge
#: when they do not settle), the hull merge alone (no pass before it) and the accelerator's
#: schedule (forced on the CPU too).
STAGES: dict[str, ReadSchedule | None] = {
    "passes": None,
    "hull": ReadSchedule((), cheap=True),
    "accelerator": ACCELERATOR_SCHEDULE,
}
REGS = ("l2", "kl")
SoftFn = Callable[..., torch.Tensor]


def _inputs(kind: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(shape, generator=g, dtype=torch.float64) * 2
    if kind == "ties":
        return torch.randint(-3, 4, shape, generator=g).double()
    # heavy tails: the case that needs many PAV passes
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    return torch.tan(math.pi * (u - 0.5)).clamp(-20, 20)


def _soft(rank: bool, stage: str = "passes") -> SoftFn:
    """:func:`soft_rank` or :func:`soft_sort`; for another stage than ``"passes"``, the solver
    itself with that stage's schedule, on the rows along the last dimension."""
    schedule = STAGES[stage]
    if schedule is None:
        return soft_rank if rank else soft_sort

    def solver(
        x: torch.Tensor, *, regularization: str = "l2", regularization_strength: float = 1.0
    ) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = isotonic_soft_sort(
            rows, regularization_strength, regularization, rank=rank, schedule=schedule
        )
        return out.reshape(x.shape)

    return solver


# --------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("rank", [False, True])
@pytest.mark.parametrize("data", ["random", "ties", "heavy"])
def test_matches_reference_pav(
    stage: str, reg: str, rank: bool, data: str, device: torch.device
) -> None:
    for n, s in [(1, 1.0), (2, 0.3), (5, 1.0), (33, 0.3), (33, 4.0)]:
        x = _inputs(data, (3, n), seed=n).to(device)
        out = _soft(rank, stage)(x, regularization=reg, regularization_strength=s)
        reference = reference_soft_rank if rank else reference_soft_sort
        expected = [reference(row, s, reg).tolist() for row in x.cpu()]
        assert out.device == x.device
        assert_close(out.cpu(), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("rank", [False, True])
@pytest.mark.parametrize("data", ["random", "ties", "heavy"])
def test_matches_torchsort_float64(
    stage: str, reg: str, rank: bool, data: str, device: torch.device
) -> None:
    """On CUDA, against torchsort's CUDA kernel."""
    torchsort = pytest.importorskip("torchsort")
    reference = torchsort.soft_rank if rank else torchsort.soft_sort
    for n, s in [(1, 1.0), (7, 1.0), (300, 0.1), (300, 1.0), (300, 10.0)]:
        x = _inputs(data, (4, n), seed=n + int(s * 10)).to(device)
        mine, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = _soft(rank, stage)(mine, regularization=reg, regularization_strength=s)
        expected = reference(theirs, regularization=reg, regularization_strength=s)
        gen = torch.Generator().manual_seed(n)
        upstream = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(device)
        (out * upstream).sum().backward()
        (expected * upstream).sum().backward()
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- invariants

_rows = st.lists(
    st.floats(-100, 100, allow_nan=False, allow_subnormal=False), min_size=1, max_size=40
)
_strengths = st.floats(0.01, 100)
_stages = st.sampled_from(list(STAGES))


@settings(max_examples=60, deadline=None)
@given(_rows, _strengths, _stages)
def test_l2_sort_monotone_sum_majorization(row: list[float], s: float, stage: str) -> None:
    x = torch.tensor(row, dtype=torch.float64)
    out = _soft(False, stage)(x, regularization_strength=s)
    hard = torch.sort(x).values
    tol = 1e-9 * (1 + x.abs().max().item()) * len(row)
    assert bool((out[1:] - out[:-1] >= -tol).all())
    assert abs(out.sum().item() - x.sum().item()) <= tol
    gap = out.cumsum(0) - hard.cumsum(0)
    assert bool((gap >= -tol).all())
    assert abs(gap[-1].item()) <= tol


@settings(max_examples=60, deadline=None)
@given(_rows, _strengths, _stages)
def test_l2_sort_is_hard_sort_iff_strength_below_inverse_largest_gap(
    row: list[float], s: float, stage: str
) -> None:
    x = torch.tensor(row, dtype=torch.float64)
    hard = torch.sort(x).values
    largest_gap = (hard[1:] - hard[:-1]).max().item() if len(row) > 1 else 0.0
    out = _soft(False, stage)(x, regularization_strength=s)
    if s * largest_gap <= 1 - 1e-9:
        torch.testing.assert_close(out, hard, rtol=0, atol=1e-9 * (1 + x.abs().max().item()))
    elif s * largest_gap > 1 + 1e-6:
        assert not torch.equal(out, hard)


@settings(max_examples=40, deadline=None)
@given(_rows.filter(lambda r: len(set(r)) > 1), _stages)
def test_l2_sort_closed_form_for_large_strength(row: list[float], stage: str) -> None:
    x = torch.tensor(row, dtype=torch.float64)
    n, a = len(row), torch.sort(x).values
    k = torch.arange(1, n, dtype=torch.float64)
    # full pooling iff every prefix of the closed form dominates the sorted prefix sums
    slack = k * x.mean() - a.cumsum(0)[:-1]
    s = 2 * float((k * (n - k) / (2 * slack.clamp_min(1e-300))).max())
    out = _soft(False, stage)(x, regularization_strength=s)
    expected = x.mean() + (torch.arange(1, n + 1, dtype=torch.float64) - (n + 1) / 2) / s
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9 * (1 + x.abs().max().item()))


@settings(max_examples=60, deadline=None)
@given(
    _rows,
    _strengths,
    st.floats(-50, 50),
    st.floats(0.1, 10),
    st.sampled_from(REGS),
    st.booleans(),
    st.randoms(use_true_random=False),
    _stages,
)
def test_shift_scale_and_permutation(
    row: list[float],
    s: float,
    c: float,
    scale: float,
    reg: str,
    rank: bool,
    rnd: random.Random,
    stage: str,
) -> None:
    """Permutation invariance (sort) or equivariance (rank); ``ss(x + c) = ss(x) + c`` and
    shift-invariant ranks (l2 and kl); ``ss(a x, s / a) = a ss(x, s)`` and
    ``rank(a x, a s) = rank(x, s)`` (l2)."""
    x = torch.tensor(row, dtype=torch.float64)
    if reg == "kl":
        x = x / 10  # keep exp(x / s) in range
    fn = _soft(rank, stage)
    perm = list(range(len(row)))
    rnd.shuffle(perm)
    out = fn(x, regularization=reg, regularization_strength=s)
    shuffled = fn(x[perm], regularization=reg, regularization_strength=s)
    shifted = fn(x + c, regularization=reg, regularization_strength=s)
    scaled = fn(scale * x, regularization_strength=s * scale if rank else s / scale)
    plain = fn(x, regularization_strength=s)
    atol = 1e-9 * (1 + abs(c) + scale) * (1 + x.abs().max().item() + len(row) / s) * len(row)
    close = {"rtol": 1e-9, "atol": atol}
    torch.testing.assert_close(shuffled, out[perm] if rank else out, **close)
    torch.testing.assert_close(shifted, out if rank else out + c, **close)
    torch.testing.assert_close(scaled, plain if rank else scale * plain, **close)


@settings(max_examples=40, deadline=None)
@given(_rows.filter(lambda r: len(r) <= 12), _strengths, _stages)
def test_l2_sort_jacobian_is_block_averaging_times_permutation(
    row: list[float], s: float, stage: str
) -> None:
    x = torch.tensor(row, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda t: _soft(False, stage)(t, regularization_strength=s), x
    )
    ones = torch.ones(len(row), dtype=torch.float64)
    torch.testing.assert_close(jac @ ones, ones)  # rows sum to 1
    torch.testing.assert_close(ones @ jac, ones)  # columns sum to 1
    perm = torch.sort(-x, descending=True).indices  # the sorting permutation, as used
    blocks = jac[:, perm]  # = block-averaging matrix: block diagonal with entries 1 / |B|
    nonzero = blocks > 0
    sizes = nonzero.sum(1, keepdim=True).double()
    torch.testing.assert_close(blocks, nonzero / sizes)
    assert bool((nonzero == nonzero.T).all())


@settings(max_examples=60, deadline=None)
@given(_rows, _strengths, st.sampled_from(REGS), _stages)
def test_rank_properties(row: list[float], s: float, reg: str, stage: str) -> None:
    """Ranks sum to n (n + 1) / 2, preserve the order, and are the hard ranks when the
    strength is far below the smallest gap."""
    x = torch.tensor(row, dtype=torch.float64)
    if reg == "kl":
        x = x / 10
    n = len(row)
    order = torch.argsort(x)
    gaps = x[order][1:] - x[order][:-1]
    r = _soft(True, stage)(x, regularization=reg, regularization_strength=s)
    if n == 1 or gaps.min() > 0:
        fine = 1e-3 * (gaps.min().item() if n > 1 else 1.0)
        hard = _soft(True, stage)(x, regularization=reg, regularization_strength=fine)
        expected = torch.empty(n, dtype=torch.float64)
        expected[order] = torch.arange(1, n + 1, dtype=torch.float64)
        torch.testing.assert_close(hard, expected)
    assert abs(r.sum().item() - n * (n + 1) / 2) <= 1e-9 * n * n
    assert bool((r[order][1:] - r[order][:-1] >= -1e-9 * n).all())


@settings(max_examples=40, deadline=None)
@given(_rows, _strengths, _stages)
def test_kl_sort_is_monotone(row: list[float], s: float, stage: str) -> None:
    x = torch.tensor(row, dtype=torch.float64) / 10
    out = _soft(False, stage)(x, regularization="kl", regularization_strength=s)
    assert bool((out[1:] - out[:-1] >= -1e-9).all())


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("stage", ["hull", "accelerator"])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("rank", [False, True])
def test_gradcheck_of_the_other_stages(
    stage: str, reg: str, rank: bool, device: torch.device
) -> None:
    """The default stage is under tests/core/test_contract.py (soft_sort and soft_rank, l2 and
    kl: gradcheck and gradgradcheck)."""
    x = _inputs("random", (2, 7), seed=3).to(device).requires_grad_()
    for s in (0.3, 1.0, 5.0):
        assert torch.autograd.gradcheck(
            lambda t, s=s: _soft(rank, stage)(t, regularization=reg, regularization_strength=s),
            (x,),
        )


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("rank", [False, True])
def test_second_derivatives_are_exact(
    stage: str, reg: str, rank: bool, device: torch.device
) -> None:
    """gradgradcheck (double backward), and forward mode: ``jacfwd`` equals ``jacrev`` and
    ``torch.func.hessian`` (forward over reverse) equals the double-backward Hessian."""
    x = _inputs("random", (2, 7), seed=3).to(device).requires_grad_()
    weights = torch.arange(7, dtype=torch.float64, device=device)
    for s in (0.3, 1.0, 5.0):

        def fn(t: torch.Tensor, s: float = s) -> torch.Tensor:
            return _soft(rank, stage)(t, regularization=reg, regularization_strength=s)

        def scalar(t: torch.Tensor, fn: SoftFn = fn) -> torch.Tensor:
            return (fn(t) * weights).sum()

        assert torch.autograd.gradgradcheck(fn, (x,))
        torch.testing.assert_close(torch.func.jacfwd(fn)(x), torch.func.jacrev(fn)(x))
        row = x[0].detach()
        torch.testing.assert_close(
            torch.func.hessian(scalar)(row), torch.autograd.functional.hessian(scalar, row)
        )


def test_kl_hessian_row_matches_finite_differences() -> None:
    """The case that used to give zeros: the Hessian of ``soft_sort(x, "kl")[0]`` at (0, 3, 5)
    against central differences of the gradient."""
    x = torch.tensor([0.0, 3.0, 5.0], dtype=torch.float64)

    def first(t: torch.Tensor) -> torch.Tensor:
        return soft_sort(t, regularization="kl")[0]

    def grad(t: torch.Tensor) -> torch.Tensor:
        t = t.clone().requires_grad_()
        return torch.autograd.grad(first(t), t)[0]

    eps, eye = 1e-5, torch.eye(3, dtype=torch.float64)
    numeric = torch.stack([(grad(x + eps * e) - grad(x - eps * e)) / (2 * eps) for e in eye])
    hessian = torch.autograd.functional.hessian(first, x)
    torch.testing.assert_close(hessian, numeric, rtol=1e-6, atol=1e-8)
    assert hessian[0].abs().max() > 0.04  # about (-0.051, 0.045, 0.006)


@pytest.mark.parametrize(
    ("backend", "reg"), [("torchsort", "kl"), ("sinkhorn", "l2")], ids=["torchsort", "sinkhorn"]
)
def test_first_order_backends_refuse_double_backward(backend: str, reg: str) -> None:
    """Their backward is first order only: differentiating it again raises, never zeros."""
    if backend == "torchsort":
        pytest.importorskip("torchsort")
    x = torch.tensor([0.0, 3.0, 5.0], dtype=torch.float64, requires_grad=True)
    out = soft_sort(x, regularization=reg, backend=backend, regularization_strength=2.0)
    (grad,) = torch.autograd.grad(out[0], x)  # first order works
    assert torch.isfinite(grad).all()
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(
            soft_sort(x, regularization=reg, backend=backend, regularization_strength=2.0)[0],
            x,
            create_graph=True,
        )


def test_hard_sort_values_and_gradient() -> None:
    x = torch.tensor([[3.0, 1.0, 2.0], [0.0, -1.0, 5.0]], requires_grad=True)
    out = hard_sort(x, descending=True)
    torch.testing.assert_close(out, torch.tensor([[3.0, 2.0, 1.0], [5.0, 0.0, -1.0]]))
    (out * torch.tensor([1.0, 10.0, 100.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[1.0, 100.0, 10.0], [10.0, 100.0, 1.0]]))
    torch.testing.assert_close(hard_sort(x.detach().T, dim=0), torch.sort(x.detach().T, 0).values)


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("n", [65536, pytest.param(1 << 20, marks=pytest.mark.slow)])
@pytest.mark.parametrize("rank", [False, True])
def test_float32_matches_float64_at_large_n(
    one_thread: None, n: int, rank: bool, device: torch.device
) -> None:
    """Gaps around 1/s give blocks of every size; torchsort's float32 error is 3e-2 at n=65536
    and 0.5 at 1M here (DESIGN.md). The float64 reference is fed the float32-rounded input, so
    only the algorithm's error is measured."""
    s, g = 0.1, torch.Generator().manual_seed(n)
    x = (torch.empty(n, dtype=torch.float64).exponential_(generator=g) / s).cumsum(0)
    x = x[torch.randperm(n, generator=g)].float().to(device)
    for reg in REGS:
        xr = x if reg == "l2" else x * (s / 30)  # kl: keep exp(x / s) in range
        out = _soft(rank)(xr, regularization=reg, regularization_strength=s)
        ref = _soft(rank)(xr.double(), regularization=reg, regularization_strength=s)
        assert out.dtype == torch.float32
        scale = n if rank else 1 + xr.abs().max().item()
        assert (out.double() - ref).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize("data", ["heavy", "outlier"])
def test_hull_merge_at_scale_is_bounded_and_accurate(one_thread: None, data: str) -> None:
    """Inputs that need ~sqrt(n) PAV passes go to the bounded hull merge (~0.3 s here)."""
    n = 65536
    if data == "outlier":
        x = torch.zeros(1, n)
        x[0, 7] = 1e6
    else:
        x = _inputs("heavy", (1, n), seed=1).float()
    start = time.perf_counter()
    out = soft_sort(x, regularization_strength=0.1)
    elapsed = time.perf_counter() - start
    ref = soft_sort(x.double(), regularization_strength=0.1)
    assert elapsed < 120
    assert (out.double() - ref).abs().max().item() <= 1e-5 * (1 + x.abs().max().item())
    torch.testing.assert_close(_soft(False, "hull")(x.double(), regularization_strength=0.1), ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("rank", [False, True])
def test_half_precision_n3000(
    dtype: torch.dtype, reg: str, rank: bool, device: torch.device
) -> None:
    """torchsort loops forever on float16 at n = 3000; the torch backend computes in float32."""
    x = _inputs("random", (2, 3000), seed=5).to(dtype).to(device).requires_grad_()
    out = _soft(rank)(x, regularization=reg, regularization_strength=1.0)
    assert out.dtype == dtype and out.shape == x.shape
    ref = _soft(rank)(x.detach().float(), regularization=reg, regularization_strength=1.0)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out.float(), ref, rtol=tol["rtol"], atol=tol["atol"] * 3000)
    if not rank:
        assert bool((out[:, 1:] >= out[:, :-1]).all())
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype


def _exact_l2(a: list[Fraction], s: Fraction, rank: bool) -> tuple[list[Fraction], list[int]]:
    """The l2 soft sort (or the soft ranks, in sorted order) of the ascending ``a`` in exact
    rational arithmetic, by a sequential PAV that pools ties (``>=``), and the block of every
    position: the oracle for inputs that floats hold exactly."""

    def fitted(lo: int, hi: int) -> Fraction:
        mean = sum(a[lo:hi], Fraction(0)) / (hi - lo)
        center = Fraction(lo + hi - 1, 2)
        return (mean - center / s) if not rank else (center - mean / s)

    blocks: list[tuple[int, int]] = []
    for i in range(len(a)):
        blocks.append((i, i + 1))
        while len(blocks) > 1 and fitted(*blocks[-1]) >= fitted(*blocks[-2]):
            (_, hi), (lo, _) = blocks.pop(), blocks.pop()
            blocks.append((lo, hi))
    out, block = [], []
    for k, (lo, hi) in enumerate(blocks):
        mean, center = sum(a[lo:hi], Fraction(0)) / (hi - lo), Fraction(lo + hi - 1, 2)
        for i in range(lo, hi):
            out.append(mean + (i - center) / s if not rank else center + 1 + (a[i] - mean) / s)
            block.append(k)
    return out, block


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(-12, 12), min_size=1, max_size=12),
    st.sampled_from(
        [
            (2.0**40, 0.5, torch.float64),
            (-(2.0**45), 4.0, torch.float64),
            (1e12, 0.25, torch.float64),
            (2.0**30, 256.0, torch.float32),
        ]
    ),
    st.sampled_from([0.125, 0.5, 1.0, 2.0, 4.0]),
    st.booleans(),
)
def test_l2_ties_are_told_apart_at_the_working_precision_at_any_magnitude(
    ks: list[int],
    case: tuple[float, float, torch.dtype],
    s_step: float,
    rank: bool,
) -> None:
    """Values ``M + q k`` (``M`` up to 3.5e13, steps ``q`` from 0.25 to 256: float64 holds them
    exactly, and float32 those at ``M = 2^30``) at strengths ``s = s_step / q``, against exact
    rational PAV and the kit's reference: the values and the Jacobian (its blocks). A
    tolerance relative to the magnitude pooled ``1e12`` and ``1e12 + 0.5`` at ``s = 1`` (their
    fitted values differ by 0.5, a relative 5e-13), where this oracle, the kit and torchsort
    give the identity."""
    magnitude, step, dtype = case
    x = torch.tensor([magnitude + step * k for k in ks], dtype=torch.float64)
    assert x.to(dtype).double().tolist() == x.tolist()  # held exactly
    s = s_step / step
    a = sorted(Fraction(v) for v in x.tolist())
    exact, block = _exact_l2(a, Fraction(s), rank)
    order = torch.sort(-x, descending=True).indices  # the permutation the solver uses
    expected = torch.empty(len(ks), dtype=torch.float64)
    expected[order if rank else torch.arange(len(ks))] = torch.tensor(
        [float(v) for v in exact], dtype=torch.float64
    )
    xt = x.to(dtype).requires_grad_()
    jacobian = torch.autograd.functional.jacobian(
        lambda t: _soft(rank)(t, regularization_strength=s), xt
    )
    out = _soft(rank)(xt.detach(), regularization_strength=s)
    ulp = torch.finfo(dtype).eps * abs(magnitude)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=4 * ulp if not rank else 1e-6)
    if not rank:  # the kit's reference too (its rank divides the values by s before it pools)
        kit = torch.tensor(reference_soft_sort(x, s), dtype=torch.float64)
        torch.testing.assert_close(out.double(), kit, rtol=0, atol=4 * ulp)
    # the Jacobian in sorted order: block averaging (sort) or (identity - averaging) / s (rank)
    sizes = torch.bincount(torch.tensor(block))[torch.tensor(block)].double()
    same = torch.tensor(block)[:, None] == torch.tensor(block)[None, :]
    averaging = same / sizes[:, None]
    want = averaging if not rank else (torch.eye(len(ks), dtype=torch.float64) - averaging) / s
    have = jacobian.double()[:, order][order] if rank else jacobian.double()[:, order]
    torch.testing.assert_close(have, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("scale", [1.0, 300.0])
@pytest.mark.parametrize("s", [1e-12, 1e-14, 1e-16, 1e-308])
@pytest.mark.parametrize("reg", REGS)
def test_ranks_of_ties_at_small_strengths(reg: str, s: float, scale: float) -> None:
    """``[3, 1, 2, 2]`` (times 300: values near 900) gives ``[4, 1, 2.5, 2.5]`` at any small
    strength, as the l2 rank and the kit's reference: the kl rank gave ``[4, 1, 5, 5]`` at
    1e-16 (its softmax lost ``log 2`` against ``a / s ~ 2e16``), 8e-5 off at 1e-12; the l2 rank
    gave ``[4, 1, 2, 3]`` at 1e-308 (``a / s`` overflowed)."""
    x = torch.tensor([[3.0, 1.0, 2.0, 2.0]], dtype=torch.float64) * scale
    expected = torch.tensor([[4.0, 1.0, 2.5, 2.5]], dtype=torch.float64)
    for stage in STAGES:
        out = _soft(True, stage)(x, regularization=reg, regularization_strength=s)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    if s >= 1e-16:  # the kit's reference divides by s first: a / s overflows at 1e-308
        torch.testing.assert_close(
            out[0], torch.tensor(reference_soft_rank(x[0], s, reg)), rtol=0, atol=1e-12
        )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(-4, 4), min_size=1, max_size=12),
    st.sampled_from([0.0, 0.1, -900.0, 1e12, 2.0**-1000]),
    st.floats(-320, -3),
    st.sampled_from(REGS),
    st.sampled_from(list(STAGES)),
)
def test_small_strengths_give_the_exact_limit(
    ks: list[int], offset: float, log10_s: float, reg: str, stage: str
) -> None:
    """Values ``c + q k`` with ties (any magnitude ``c``, steps ``q`` of 10^3 n ``s`` or more,
    ``s`` from 1e-3 down to 1e-320, so that ``q / s`` is large and ``q s`` small): the soft
    ranks are the hard ranks with ties averaged (``scipy.stats.rankdata``), the soft sort is
    the hard sort. The mean of a tied block is not
    its value in floating point (three 0.1 average to 0.10000000000000002), and at small ``s``
    the rank divided that rounding by ``s`` (-1385 at 1e-20)."""
    stats = pytest.importorskip("scipy.stats")
    s = 10.0**log10_s
    step = max(abs(offset) * 2.0**-40, s * 1e3 * len(ks))
    x = torch.tensor([offset + step * k for k in ks], dtype=torch.float64)
    expected = torch.tensor(stats.rankdata(x.numpy(), method="average"))
    ranks = _soft(True, stage)(x, regularization=reg, regularization_strength=s)
    torch.testing.assert_close(ranks, expected, rtol=0, atol=1e-9)
    sort = _soft(False, stage)(x, regularization=reg, regularization_strength=s)
    torch.testing.assert_close(sort, torch.sort(x).values, rtol=0, atol=0)


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("reg", REGS)
def test_dim_descending_and_leading_shapes(reg: str) -> None:
    x = _inputs("random", (3, 4, 6), seed=11) / 4
    for rank in (False, True):
        fn = _soft(rank)
        out = fn(x, regularization=reg, dim=1)
        manual = fn(x.movedim(1, -1).reshape(-1, 4), regularization=reg)
        torch.testing.assert_close(out, manual.reshape(3, 6, 4).movedim(-1, 1))
        torch.testing.assert_close(fn(x[0, 0], regularization=reg), fn(x, regularization=reg)[0, 0])
        torch.testing.assert_close(
            fn(x.transpose(0, 2), regularization=reg, dim=0),  # non-contiguous input
            fn(x, regularization=reg).transpose(0, 2),
        )
    desc = soft_sort(x, regularization=reg, descending=True)
    torch.testing.assert_close(desc, -soft_sort(-x, regularization=reg))
    assert bool((desc[..., 1:] <= desc[..., :-1]).all())
    if reg == "l2":  # for l2 the descending soft sort is the ascending one reversed
        torch.testing.assert_close(desc, soft_sort(x).flip(-1))
    ranks = soft_rank(x, regularization=reg, descending=True)
    torch.testing.assert_close(ranks, soft_rank(-x, regularization=reg))


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("rank", [False, True])
def test_vmap_and_func_grad(rank: bool) -> None:
    fn = _soft(rank)
    x = _inputs("heavy", (5, 9), seed=4)
    torch.testing.assert_close(
        torch.vmap(lambda r: fn(r, regularization_strength=2.0))(x),
        fn(x, regularization_strength=2.0),
    )
    weights = torch.linspace(-1, 1, 9, dtype=x.dtype)

    def scalar(r: torch.Tensor) -> torch.Tensor:
        return (fn(r, regularization_strength=2.0) * weights).sum()

    per_row = torch.vmap(torch.func.grad(scalar))(x)
    rows = x.clone().requires_grad_()
    (fn(rows, regularization_strength=2.0) * weights).sum().backward()
    torch.testing.assert_close(per_row, rows.grad)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda x: soft_sort(x, regularization_strength=0.0),
            ValueError,
            "regularization_strength",
        ),
        (
            lambda x: soft_sort(x, regularization_strength=-1.0),
            ValueError,
            "regularization_strength",
        ),
        (
            lambda x: soft_sort(x, regularization_strength=math.nan),
            ValueError,
            "regularization_strength",
        ),
        (
            lambda x: soft_rank(x, regularization_strength=math.inf),
            ValueError,
            "regularization_strength",
        ),
        (lambda x: soft_sort(x, regularization_strength="1"), TypeError, "regularization_strength"),
        (lambda x: soft_sort(x, regularization="l1"), ValueError, "regularization must be one of"),
        (lambda x: soft_rank(x, regularization="entropic"), ValueError, "regularization"),
        (lambda x: soft_sort(x, backend="cuda"), ValueError, "backend must be one of"),
        (lambda x: soft_rank(x, backend="sinkhorn"), ValueError, "backend must be one of"),
        (lambda x: soft_sort(x[0, 0]), ValueError, "at least 1 dimension"),
        (lambda x: soft_sort(x[:, :0]), ValueError, "must not be empty"),
        (lambda x: soft_sort(x, dim=2), ValueError, "dim must be in"),
        (lambda x: soft_rank(x, dim=-3), ValueError, "dim must be in"),
        (lambda x: soft_sort(x, dim=1.0), TypeError, "dim must be an int"),
        (lambda x: hard_sort(x, dim=5), ValueError, "dim must be in"),
        (lambda x: soft_sort(x, descending=1), TypeError, "descending must be a bool"),
        (
            lambda x: soft_sort(x, epsilon=0.1),
            TypeError,
            "options are accepted by backend='sinkhorn'",
        ),
        (lambda x: soft_sort(x, backend="sinkhorn", eps=0.1), TypeError, "unexpected option"),
        (
            lambda x: soft_sort(x, backend="sinkhorn", regularization="kl"),
            ValueError,
            "regularization='l2' only",
        ),
        (lambda x: soft_sort(x, backend="sinkhorn", epsilon=0.0), ValueError, "epsilon"),
        (lambda x: soft_sort(x, backend="sinkhorn", max_iter=0), ValueError, "max_iter"),
        (lambda x: soft_sort(x, backend="sinkhorn", tol=-1.0), ValueError, "tol"),
        (
            lambda x: soft_sort(x, backend="sinkhorn", targets="uniform"),
            ValueError,
            "targets must be one of",
        ),
        (lambda x: soft_sort(x.half(), backend="torchsort"), TypeError, "float32 and float64 only"),
        (
            lambda x: soft_rank(x.bfloat16(), backend="torchsort"),
            TypeError,
            "float32 and float64 only",
        ),
    ],
)
def test_bad_arguments(call: Callable[[torch.Tensor], object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call(torch.randn(2, 4))


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("rank", [False, True])
def test_non_finite_rows_give_nan_rows_when_unchecked(
    value_checks: None, reg: str, rank: bool
) -> None:
    _validation.set_value_checks("never")
    x = _inputs("random", (3, 6), seed=9)
    x[1, 2], x[2, 0] = math.nan, math.inf
    x.requires_grad_()
    out = _soft(rank)(x, regularization=reg)
    assert bool(out[1:].isnan().all())
    torch.testing.assert_close(out[0], _soft(rank)(x[0].detach(), regularization=reg))
    out[0].sum().backward()
    assert bool(x.grad[0].isfinite().all())


def test_torchsort_missing_gives_a_working_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchsort", None)
    with pytest.raises(ImportError, match="`pip install --no-build-isolation torchsort`"):
        soft_sort(torch.randn(2, 4), backend="torchsort")


# --------------------------------------------------------------------------- torchsort backend


@pytest.mark.parametrize("reg", REGS)
def test_torchsort_backend_matches_torch_backend(reg: str) -> None:
    pytest.importorskip("torchsort")
    x = _inputs("random", (2, 50, 3), seed=8) / 4
    for rank in (False, True):
        for descending in (False, True):
            kwargs = {"regularization": reg, "dim": 1, "descending": descending}
            torch.testing.assert_close(
                _soft(rank)(x, backend="torchsort", **kwargs), _soft(rank)(x, **kwargs)
            )


# --------------------------------------------------------------------------- sinkhorn


def _sinkhorn(x: torch.Tensor, **options: Any) -> torch.Tensor:
    return soft_sort(x, backend="sinkhorn", **options)


@pytest.mark.parametrize("targets", ["sorted", "grid"])
def test_sinkhorn_tends_to_hard_sort(targets: str) -> None:
    x = torch.tensor([[0.3, -1.2, 2.0, 0.9, -0.4, 1.5]], dtype=torch.float64)
    hard = torch.sort(x).values
    errors = [
        (_sinkhorn(x, epsilon=eps, max_iter=20000, tol=1e-9, targets=targets) - hard).abs().max()
        for eps in (1.0, 1e-1, 1e-2, 1e-3)
    ]
    assert all(later < earlier for earlier, later in itertools.pairwise(errors))
    assert errors[-1] < 1e-2


@pytest.mark.parametrize("targets", ["sorted", "grid"])
def test_sinkhorn_permutation_invariance_and_mass(targets: str) -> None:
    x = _inputs("random", (3, 12), seed=6)
    out = _sinkhorn(x, epsilon=0.5, tol=1e-10, targets=targets)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_sinkhorn(x[:, perm], epsilon=0.5, tol=1e-10, targets=targets), out)
    torch.testing.assert_close(out.sum(-1), x.sum(-1))  # barycenters keep the total mass
    assert bool((out[:, 1:] >= out[:, :-1]).all())


@pytest.mark.parametrize("targets", ["sorted", "grid"])
def test_sinkhorn_gradcheck(targets: str) -> None:
    x = _inputs("random", (2, 5), seed=7).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: _sinkhorn(t, epsilon=1.0, max_iter=100000, tol=1e-13, targets=targets), (x,)
    )


#: Small inputs whose Sinkhorn iterations converge (the implicit gradient is that of the fixed
#: point). At small epsilon the plans of most are permutations up to rounding: the implicit
#: system is singular in float64, and the backward raised ``linalg.solve: singular`` on the 10
#: marked ``singular`` before it solved it by a pseudo-inverse.
SINKHORN_SMALL = [
    *[([0.0, 1.0], eps, "sorted") for eps in (1.0, 0.1, 0.01, 1e-3)],  # singular below 1
    *[([1.0, 0.0], eps, "sorted") for eps in (0.1, 0.03, 0.01, 1e-3)],  # singular
    ([0.0, 1.0], 0.03, "sorted"),  # singular
    ([0.0, 1.0], 1e-3, "grid"),  # singular
    ([1.0, 0.0], 1e-3, "grid"),  # singular
    ([0.0, 1.0], 1.0, "grid"),
    ([0.0, 1.0, 3.0], 1.0, "sorted"),
    ([0.0, 1.0, 3.0], 0.01, "sorted"),
    ([3.0, 0.0, 1.0], 0.1, "grid"),
    ([0.0, 1.0, 2.0], 0.03, "sorted"),
    ([-1.0, 0.0, 5.0], 0.1, "grid"),
    ([0.3, -1.2, 2.0, 0.9], 1.0, "sorted"),
    ([0.3, -1.2, 2.0, 0.9], 0.03, "grid"),
    ([2.0, -1.0, 0.0, 7.0], 1e-3, "sorted"),
    ([5.0, -3.0, 0.5, 0.0, 1.0], 0.03, "sorted"),
    ([5.0, -3.0, 0.5, 0.0, 1.0], 1.0, "grid"),
]


@pytest.mark.parametrize(("x", "epsilon", "targets"), SINKHORN_SMALL)
def test_sinkhorn_gradient_equals_finite_differences_at_small_epsilon(
    x: list[float], epsilon: float, targets: str
) -> None:
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: _sinkhorn(t, epsilon=epsilon, max_iter=3000, tol=1e-12, targets=targets), (t,)
    )


def test_sinkhorn_backward_at_the_default_strength() -> None:
    """The reported cases: the last output of ``[0, 1]`` at epsilon 0.1 (the plan is the
    identity up to 1e-17: the gradient is the hard sort's, ``(0, 1)``), and the paired AOT loss
    of batch 2 through the Sinkhorn soft sort at its default strength 0.1."""
    x = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    _sinkhorn(x, epsilon=0.1)[-1].backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0], dtype=torch.float64))
    logps = [torch.tensor(pair, dtype=torch.float64) for pair in ([-3.0, -5.0], [-6.0, -4.0])]
    policy = [t.clone().requires_grad_() for t in logps]

    def loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        return aot_paired_loss(
            chosen, rejected, logps[0] - 1, logps[1] + 1, sort="soft", sort_backend="sinkhorn"
        )

    assert torch.autograd.gradcheck(loss, policy)


def test_sinkhorn_layout_dtype_and_defaults() -> None:
    x = torch.randn(4, 7, 2)
    out = _sinkhorn(x, dim=1)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, _sinkhorn(x.transpose(1, 2)).transpose(1, 2))
    # the default epsilon is regularization_strength
    torch.testing.assert_close(
        soft_sort(x, backend="sinkhorn", regularization_strength=0.3, dim=1),
        _sinkhorn(x, epsilon=0.3, dim=1),
    )
    torch.testing.assert_close(_sinkhorn(x, descending=True, dim=1), -_sinkhorn(-x, dim=1))
    one = torch.tensor([[2.5]])
    torch.testing.assert_close(_sinkhorn(one), one)
    half = _sinkhorn(x.bfloat16(), dim=1)
    assert half.dtype == torch.bfloat16


# --------------------------------------------------------------------------- edges of the range


def test_backends_refuse_strengths_outside_the_range_they_resolve() -> None:
    """torchsort divides by the strength in x's dtype (1e-300 flushed to 0 in float32: NaN);
    Sinkhorn's potentials cannot resolve epsilon below sqrt(eps) of the dtype (1e-300 gave
    -inf) and overflow above sqrt(max) (1e300 crashed in float32)."""
    x = torch.tensor([[0.3, -1.2, 2.0, 0.9]])
    if importlib.util.find_spec("torchsort") is not None:
        with pytest.raises(ValueError, match=r"regularization_strength must be at least 1\.18e-38"):
            soft_sort(x, regularization_strength=1e-300, backend="torchsort")
        assert torch.isfinite(
            soft_rank(x, regularization_strength=1e-30, backend="torchsort")
        ).all()
    for strength, dtype in [(1e-300, torch.float64), (1e-5, torch.float32), (1e300, torch.float32)]:
        with pytest.raises(ValueError, match=r"epsilon .* must lie in \["):
            _sinkhorn(x.to(dtype), regularization_strength=strength)
    assert torch.isfinite(_sinkhorn(x.double(), regularization_strength=1e-7)).all()


def test_sinkhorn_keeps_huge_float32_values_apart() -> None:
    """|x| ~ 1e30 in float32: the standardization once squared them to infinity and returned
    the mean everywhere."""
    x = torch.tensor([[3e30, -1e30, 2e30, 5e29]])
    out = _sinkhorn(x, regularization_strength=0.01)
    expected = _sinkhorn(x.double(), regularization_strength=0.01)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=0)
    assert bool((out[:, 1:] > out[:, :-1]).all())


@pytest.mark.parametrize("rank", [False, True])
def test_meta_tensors_give_meta_tensors_or_a_clear_error(rank: bool) -> None:
    """The torch backend propagates shapes on meta tensors (its custom op's fake kernel), as
    ot_1d does; the backends that read values or lack a meta kernel say so."""
    x = torch.empty(3, 5, device="meta")
    out = _soft(rank)(x, regularization_strength=0.5, dim=0)
    assert out.device.type == "meta" and out.shape == x.shape and out.dtype == x.dtype
    assert ot_1d(x, x, sort="soft").shape == (3,)
    if not rank:
        with pytest.raises(ValueError, match="x must not be a meta tensor with backend='sinkhorn'"):
            _sinkhorn(x)
    if importlib.util.find_spec("torchsort") is not None:
        with pytest.raises(
            ValueError, match="x must not be a meta tensor with backend='torchsort'"
        ):
            _soft(rank)(x, backend="torchsort")


# --------------------------------------------------------------------------- host reads


class _HostReads(TorchDispatchMode):
    """Counts the operators that read tensor values on the host (a device synchronization on
    an accelerator): ``item``/``bool``/``int`` (``_local_scalar_dense``) and the operators
    whose output size depends on the values."""

    READS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2")

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += str(func.overloadpacket).removeprefix("aten.") in self.READS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rank", [False, True])
@pytest.mark.parametrize("reg", REGS)
def test_accelerator_schedule_bounds_the_host_reads(
    value_checks: None, reg: str, rank: bool, device: torch.device
) -> None:
    """With the accelerator's schedule (forced on the CPU), a call reads the host once when
    nothing pools, twice when two passes settle the blocks, at most 6 times in all (5 reads
    between passes, 1 for the hull merge); non-finite rows and the backward read nothing.
    (The CPU schedule, a read per pass, read 1, 5 and 35 times on the sort cases.)"""
    _validation.set_value_checks("never")  # value checks read too; on accelerators they are off
    cases = [  # (input, strength, reads of the sort): found by counting the passes needed
        (_inputs("random", (4, 300), seed=1), 0.3, 1),  # nothing pools
        (_inputs("random", (4, 300), seed=0), 3.0, 2),  # two passes settle it
        (_inputs("heavy", (4, 300), seed=0), 10.0, 6),  # the hull merge
        *[(_inputs(kind, (4, 300), seed=2), s, None) for kind in ("random", "heavy")
          for s in (0.1, 10.0)],
    ]  # fmt: skip
    for x, s, reads in cases:
        x = x.clone().to(device)
        x[-1, 0] = math.nan  # a non-finite row costs no read
        x.requires_grad_()
        with _HostReads() as forward:
            out = _soft(rank, "accelerator")(x, regularization=reg, regularization_strength=s)
        assert forward.count <= 6, (s, forward.count)
        if reads is not None and not rank:
            assert forward.count == reads, (s, forward.count)
        with _HostReads() as backward:
            (out[:-1] * torch.arange(x.shape[1], device=device)).sum().backward()
        assert backward.count == 0, (s, "backward", backward.count)
        expected = _soft(rank)(x.detach()[:-1], regularization=reg, regularization_strength=s)
        torch.testing.assert_close(out[:-1], expected)
        assert bool(out[-1].isnan().all())
