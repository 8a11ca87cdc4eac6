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

from ..helpers import assert_close, random_logps

PENALTIES = ["logistic", "squared_hinge", "hinge", "least_squares"]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 64),
    seed=st.integers(0, 2**16),
    beta=st.sampled_from([0.01, 0.1, 1.0, 5.0]),
    label_smoothing=st.sampled_from([0.0, 0.1, 0.3]),
    paired=st.booleans(),
)
def test_defaults_equal_the_papers_and_trls_formula(n, seed, beta, label_smoothing, paired):
    tensors = random_logps([n] * 4, seed)
    loss = aot_paired_loss if paired else aot_unpaired_loss
    got = loss(*tensors, beta=beta, label_smoothing=label_smoothing)
    expected = trl_aot_loss(*tensors, beta=beta, label_smoothing=label_smoothing, paired=paired)
    assert_close(got, expected)


def test_default_beta_is_the_papers():
    tensors = random_logps([32] * 4, 0)
    assert_close(aot_paired_loss(*tensors), trl_aot_loss(*tensors))


@pytest.mark.parametrize("penalty", PENALTIES)
def test_paired_is_ot_of_the_margins(penalty):
    pc, pr, rc, rr = random_logps([9] * 4, 1)
    w = torch.rand(9, dtype=torch.float64)
    got = aot_paired_loss(pc, pr, rc, rr, beta=0.5, penalty=penalty, weights=w)
    expected = ot_1d(pc - pr, rc - rr, penalty, beta=0.5, u_weights=w, v_weights=w)
    assert_close(got, expected)


@pytest.mark.parametrize("penalty", PENALTIES)
def test_unpaired_with_unequal_sizes_and_weights_is_ot_of_the_log_ratios(penalty):
    pc, rc = random_logps([7, 7], 2)
    pr, rr = random_logps([4, 4], 3)
    a, b = torch.rand(7, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    got = aot_unpaired_loss(
        pc, pr, rc, rr, beta=0.5, penalty=penalty, chosen_weights=a, rejected_weights=b
    )
    expected = ot_1d(pc - rc, pr - rr, penalty, beta=0.5, u_weights=a, v_weights=b)
    assert_close(got, expected)


def test_uniform_weights_equal_no_weights():
    tensors = random_logps([10] * 4, 4)
    assert_close(
        aot_paired_loss(*tensors, weights=torch.full((10,), 3.0, dtype=torch.float64)),
        aot_paired_loss(*tensors),
    )


def test_integer_weights_equal_repeated_pairs():
    pc, pr, rc, rr = random_logps([5] * 4, 5)
    counts = torch.tensor([1, 3, 0, 2, 1])
    repeated = [t.repeat_interleave(counts) for t in (pc, pr, rc, rr)]
    assert_close(
        aot_paired_loss(pc, pr, rc, rr, weights=counts.double(), penalty="squared_hinge"),
        aot_paired_loss(*repeated, penalty="squared_hinge"),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reduction_matches_torch_semantics(reduction):
    tensors = random_logps([6] * 4, 6)
    none = aot_paired_loss(*tensors, beta=1.0, reduction="none")
    got = aot_paired_loss(*tensors, beta=1.0, reduction=reduction)
    expected = {"mean": none.mean(), "sum": none.sum(), "none": none}[reduction]
    assert_close(got, expected)


def test_gradient_flows_to_policy_only_through_sorted_positions():
    pc = torch.tensor([-1.0, -3.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-2.0, -2.0], dtype=torch.float64)
    rc = rr = torch.zeros(2, dtype=torch.float64)
    aot_paired_loss(pc, pr, rc, rr, beta=1.0, penalty="least_squares").backward()
    # margins u = (1, -1), v = (0, 0); d/du_i (1/2) sum (1 - u_(i))^2 = -(1 - u_i)
    assert_close(pc.grad, torch.tensor([0.0, -2.0], dtype=torch.float64))


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
    tensors = random_logps([9] * 4, 13)
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
