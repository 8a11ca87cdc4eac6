"""The AOT losses: equality with the paper's Appendix-B / TRL formulas, weights, unequal sizes,
every penalty, reductions, gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aot_losses import (
    AOTPairedLoss,
    AOTUnpairedLoss,
    SoftSort,
    aot_paired_loss,
    aot_unpaired_loss,
    ot_1d,
    soft_sort,
)
from aot_losses.testing import trl_aot_loss

from .tolerances import assert_close

PENALTIES = ["logistic", "squared_hinge", "hinge", "least_squares"]


def logps(n: int, seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [-10 * torch.rand(n, generator=gen, dtype=dtype) - 5 for _ in range(4)]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 64),
    seed=st.integers(0, 2**16),
    beta=st.sampled_from([0.01, 0.1, 1.0, 5.0]),
    label_smoothing=st.sampled_from([0.0, 0.1, 0.3]),
    paired=st.booleans(),
)
def test_defaults_equal_the_papers_and_trls_formula(n, seed, beta, label_smoothing, paired):
    tensors = logps(n, seed)
    loss = aot_paired_loss if paired else aot_unpaired_loss
    got = loss(*tensors, beta=beta, label_smoothing=label_smoothing)
    expected = trl_aot_loss(*tensors, beta=beta, label_smoothing=label_smoothing, paired=paired)
    assert_close(got, expected)


def test_default_beta_is_the_papers():
    tensors = logps(32, 0)
    assert_close(aot_paired_loss(*tensors), trl_aot_loss(*tensors))


@pytest.mark.parametrize("penalty", PENALTIES)
def test_paired_is_ot_of_the_margins(penalty):
    pc, pr, rc, rr = logps(9, 1)
    w = torch.rand(9, dtype=torch.float64)
    got = aot_paired_loss(pc, pr, rc, rr, beta=0.5, penalty=penalty, weights=w)
    expected = ot_1d(pc - pr, rc - rr, penalty, beta=0.5, u_weights=w, v_weights=w)
    assert_close(got, expected)


@pytest.mark.parametrize("penalty", PENALTIES)
def test_unpaired_with_unequal_sizes_and_weights_is_ot_of_the_log_ratios(penalty):
    pc, rc = logps(7, 2)[:2]
    pr, rr = logps(4, 3)[:2]
    a, b = torch.rand(7, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    got = aot_unpaired_loss(
        pc, pr, rc, rr, beta=0.5, penalty=penalty, chosen_weights=a, rejected_weights=b
    )
    expected = ot_1d(pc - rc, pr - rr, penalty, beta=0.5, u_weights=a, v_weights=b)
    assert_close(got, expected)


def test_uniform_weights_equal_no_weights():
    tensors = logps(10, 4)
    assert_close(
        aot_paired_loss(*tensors, weights=torch.full((10,), 3.0, dtype=torch.float64)),
        aot_paired_loss(*tensors),
    )


def test_integer_weights_equal_repeated_pairs():
    pc, pr, rc, rr = logps(5, 5)
    counts = torch.tensor([1, 3, 0, 2, 1])
    repeated = [t.repeat_interleave(counts) for t in (pc, pr, rc, rr)]
    assert_close(
        aot_paired_loss(pc, pr, rc, rr, weights=counts.double(), penalty="squared_hinge"),
        aot_paired_loss(*repeated, penalty="squared_hinge"),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reduction_matches_torch_semantics(reduction):
    tensors = logps(6, 6)
    none = aot_paired_loss(*tensors, beta=1.0, reduction="none")
    got = aot_paired_loss(*tensors, beta=1.0, reduction=reduction)
    expected = {"mean": none.mean(), "sum": none.sum(), "none": none}[reduction]
    assert_close(got, expected)


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("paired", [True, False])
def test_gradcheck_float64(penalty, paired):
    gen = torch.Generator().manual_seed(7)
    n, m = 6, 6 if paired else 4
    pc = torch.randn(n, dtype=torch.float64, generator=gen, requires_grad=True)
    pr = torch.randn(m, dtype=torch.float64, generator=gen, requires_grad=True)
    rc, rr = torch.randn(n, dtype=torch.float64), torch.randn(m, dtype=torch.float64)
    loss = aot_paired_loss if paired else aot_unpaired_loss
    assert torch.autograd.gradcheck(
        lambda a, b: loss(a, b, rc, rr, beta=0.7, penalty=penalty), (pc, pr)
    )


@pytest.mark.parametrize(
    "options",
    [{}, {"sort": "soft"}, {"sort": "soft", "regularization": "kl"}],
    ids=["hard", "soft l2", "soft kl"],
)
@pytest.mark.parametrize("paired", [True, False])
def test_second_derivatives_are_exact(options, paired):
    gen = torch.Generator().manual_seed(11)
    n, m = 6, 6 if paired else 4
    pc = torch.randn(n, dtype=torch.float64, generator=gen, requires_grad=True)
    pr = torch.randn(m, dtype=torch.float64, generator=gen, requires_grad=True)
    rc, rr = torch.randn(n, dtype=torch.float64), torch.randn(m, dtype=torch.float64)
    loss = aot_paired_loss if paired else aot_unpaired_loss
    assert torch.autograd.gradgradcheck(
        lambda a, b: loss(a, b, rc, rr, beta=0.7, regularization_strength=0.5, **options),
        (pc, pr),
    )


def test_gradient_flows_to_policy_only_through_sorted_positions():
    pc = torch.tensor([-1.0, -3.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-2.0, -2.0], dtype=torch.float64)
    rc = rr = torch.zeros(2, dtype=torch.float64)
    aot_paired_loss(pc, pr, rc, rr, beta=1.0, penalty="least_squares").backward()
    # margins u = (1, -1), v = (0, 0); d/du_i (1/2) sum (1 - u_(i))^2 = -(1 - u_i)
    assert_close(pc.grad, torch.tensor([0.0, -2.0], dtype=torch.float64))


def test_modules_equal_functions():
    tensors = logps(8, 8)
    w = torch.rand(8, dtype=torch.float64)
    paired = AOTPairedLoss(beta=0.3, penalty="hinge")
    assert_close(
        paired(*tensors, weights=w), aot_paired_loss(*tensors, beta=0.3, penalty="hinge", weights=w)
    )
    unpaired = AOTUnpairedLoss(label_smoothing=0.1, reduction="none")
    assert_close(
        unpaired(*tensors), aot_unpaired_loss(*tensors, label_smoothing=0.1, reduction="none")
    )


def test_module_rejects_unknown_options():
    with pytest.raises(TypeError, match="unexpected option 'betta'"):
        AOTPairedLoss(betta=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_close_to_float64(dtype):
    tensors = logps(64, 9)
    exact = aot_unpaired_loss(*tensors, beta=1.0)
    got = aot_unpaired_loss(*[t.to(dtype) for t in tensors], beta=1.0)
    assert got.dtype == dtype
    # the inputs themselves are rounded to dtype: compare against float64 on rounded inputs
    rounded = aot_unpaired_loss(*[t.to(dtype).double() for t in tensors], beta=1.0)
    assert_close(got, rounded, dtype)
    assert abs(float(got) - float(exact)) < 0.1


@pytest.mark.parametrize("sort", ["hard", "soft"])
@pytest.mark.parametrize("paired", [True, False])
def test_vmap_with_weights_equals_a_loop_over_rows(sort, paired):
    """The weighted path is functional (it once scattered in place, which vmap refuses)."""
    gen = torch.Generator().manual_seed(12)
    pc, pr, rc, rr = (torch.randn(3, 5, dtype=torch.float64, generator=gen) for _ in range(4))
    w = torch.rand(3, 5, dtype=torch.float64, generator=gen)

    def loss(a, b, c, d, weights):
        if paired:
            return aot_paired_loss(a, b, c, d, weights=weights, sort=sort)
        return aot_unpaired_loss(a, b[:3], c, d[:3], chosen_weights=weights, sort=sort)

    rows = [loss(pc[i], pr[i], rc[i], rr[i], w[i]) for i in range(3)]
    assert_close(torch.vmap(loss)(pc, pr, rc, rr, w), torch.stack(rows))
    grads = [torch.func.grad(loss)(pc[i], pr[i], rc[i], rr[i], w[i]) for i in range(3)]
    assert_close(torch.vmap(torch.func.grad(loss))(pc, pr, rc, rr, w), torch.stack(grads))


@pytest.mark.parametrize("paired", [True, False])
def test_sort_objects_carry_their_options(paired):
    """``sort`` takes "hard", "soft" (with the soft-sort keywords), a SoftSort carrying every
    backend's options, or any callable that sorts along the last dimension."""
    tensors = logps(9, 13)
    loss = aot_paired_loss if paired else aot_unpaired_loss
    kw = {"beta": 0.5, "penalty": "squared_hinge"}
    assert_close(
        loss(*tensors, sort=SoftSort(regularization="kl", regularization_strength=0.3), **kw),
        loss(*tensors, sort="soft", regularization="kl", regularization_strength=0.3, **kw),
    )
    assert_close(loss(*tensors, sort=lambda x: torch.sort(x).values, **kw), loss(*tensors, **kw))
    sinkhorn = SoftSort(backend="sinkhorn", epsilon=0.05, max_iter=200, targets="grid")
    u, v = (
        (tensors[0] - tensors[1], tensors[2] - tensors[3])
        if paired
        else (tensors[0] - tensors[2], tensors[1] - tensors[3])
    )
    expected = ot_1d(
        u,
        v,
        "squared_hinge",
        beta=0.5,
        sort=lambda x: soft_sort(
            x, regularization_strength=0.1, backend="sinkhorn", epsilon=0.05, max_iter=200,
            targets="grid",
        ),
    )  # fmt: skip
    assert_close(loss(*tensors, sort=sinkhorn, **kw), expected)
    assert not torch.allclose(expected, loss(*tensors, **kw))  # the options made a difference
    module = (AOTPairedLoss if paired else AOTUnpairedLoss)(sort=sinkhorn, **kw)
    assert "SoftSort(regularization='l2', regularization_strength=0.1, backend='sinkhorn'" in repr(
        module
    )
    assert_close(module(*tensors), expected)
