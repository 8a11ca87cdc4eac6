"""Baselines against transcriptions of their papers' formulas."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aot_losses.baselines import dpo_loss, ipo_loss, kto_loss, slic_loss

from ..helpers import assert_close, random_logps


def test_dpo_is_logsigmoid_of_the_scaled_margin():
    pc, pr, rc, rr = random_logps([16] * 4, 0)
    logits = (pc - pr) - (rc - rr)
    expected = -0.9 * F.logsigmoid(0.5 * logits) - 0.1 * F.logsigmoid(-0.5 * logits)
    assert_close(dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1), expected.mean())


def test_ipo_is_the_squared_distance_to_half_inverse_beta():
    pc, pr, rc, rr = random_logps([16] * 4, 1)
    logits = (pc - pr) - (rc - rr)
    expected = (logits - 1 / (2 * 0.3)) ** 2
    assert_close(ipo_loss(pc, pr, rc, rr, beta=0.3, reduction="none"), expected)


def test_slic_reference_free_form_is_the_papers_calibration_hinge():
    pc, pr, _, _ = random_logps([16] * 4, 2)
    zero = torch.zeros(16, dtype=torch.float64)
    expected = torch.clamp(2.0 - pc + pr, min=0)
    assert_close(slic_loss(pc, pr, zero, zero, margin=2.0, reduction="sum"), expected.sum())


def test_kto_uses_a_detached_clamped_batch_kl_reference_point():
    gen = torch.Generator().manual_seed(3)
    pc = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    pr = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    rc, rr = torch.randn(5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    chosen, rejected = pc - rc, pr - rr
    z0 = max(0.0, torch.cat((chosen, rejected)).mean().item())
    expected = torch.cat(
        (
            2.0 * (1 - torch.sigmoid(0.2 * (chosen - z0))),
            1.5 * (1 - torch.sigmoid(0.2 * (z0 - rejected))),
        )
    )
    got = kto_loss(
        pc, pr, rc, rr, beta=0.2, desirable_weight=2.0, undesirable_weight=1.5, reduction="none"
    )
    assert_close(got, expected)
    # z0 carries no gradient: the gradient is that of the expression with z0 a constant
    (g_got,) = torch.autograd.grad(got.sum(), pc)
    (g_expected,) = torch.autograd.grad(expected.sum(), pc)
    assert_close(g_got, g_expected)


def test_kto_given_kl_and_negative_estimate_clamps_to_zero():
    pc, pr, rc, rr = random_logps([4] * 4, 4)
    assert_close(kto_loss(pc, pr, rc, rr, kl=-3.0), kto_loss(pc, pr, rc, rr, kl=0.0))
    assert_close(
        kto_loss(pc, pr, rc, rr, kl=torch.tensor(0.7, dtype=torch.float64)),
        kto_loss(pc, pr, rc, rr, kl=0.7),
    )


def test_dpo_at_zero_margin_is_log_two():
    zero = torch.zeros(3, dtype=torch.float64)
    assert math.isclose(float(dpo_loss(zero, zero, zero, zero)), math.log(2), rel_tol=1e-12)
