"""Every bad input of docs/errors.md raises its documented error, naming the argument."""

from __future__ import annotations

import fractions
import math

import numpy as np
import pytest
import torch

import aot_losses
from aot_losses import aot_paired_loss, aot_unpaired_loss, ot_1d
from aot_losses.baselines import dpo_loss, ipo_loss, kto_loss, slic_loss
from aot_losses.nn import AOTPairedLoss, AOTUnpairedLoss, DPOLoss, KTOLoss, SLiCLoss

from ..helpers import assert_close

x4 = torch.randn(4)
ok = [x4, x4 - 1, x4 + 0.5, x4 - 0.5]


def replace(i: int, value: object) -> list[object]:
    args: list[object] = list(ok)
    args[i] = value
    return args


BAD_INPUTS = [
    # (id, call, error, message fragment)
    (
        "2-D log-probs",
        lambda: aot_paired_loss(*replace(0, torch.randn(4, 2))),
        ValueError,
        "policy_chosen_logps must be 1-D; got 2-D",
    ),
    (
        "0-D log-probs",
        lambda: aot_unpaired_loss(*replace(3, torch.tensor(1.0))),
        ValueError,
        "reference_rejected_logps must be 1-D; got 0-D",
    ),
    (
        "paired lengths differ",
        lambda: aot_paired_loss(*replace(1, torch.randn(5))),
        ValueError,
        "policy_rejected_logps must have the same length as policy_chosen_logps",
    ),
    (
        "unpaired policy/reference lengths differ",
        lambda: aot_unpaired_loss(x4, torch.randn(3), x4, torch.randn(2)),
        ValueError,
        "reference_rejected_logps must have the same length as policy_rejected_logps",
    ),
    (
        "empty",
        lambda: aot_paired_loss(*[torch.empty(0)] * 4),
        ValueError,
        "policy_chosen_logps must not be empty",
    ),
    (
        "integer dtype",
        lambda: aot_paired_loss(*replace(2, torch.arange(4))),
        TypeError,
        "reference_chosen_logps must have a floating-point dtype",
    ),
    (
        "not a tensor",
        lambda: aot_paired_loss(*replace(0, [1.0, 2.0])),
        TypeError,
        "policy_chosen_logps must be a torch.Tensor; got",
    ),
    (
        "dtypes differ",
        lambda: aot_paired_loss(*replace(1, x4.double())),
        TypeError,
        "policy_rejected_logps must have the same dtype as policy_chosen_logps",
    ),
    (
        "devices differ",
        lambda: aot_paired_loss(*replace(1, x4.to("meta"))),
        ValueError,
        "policy_rejected_logps must be on the same device as policy_chosen_logps",
    ),
    (
        "negative weights",
        lambda: aot_paired_loss(*ok, weights=torch.tensor([1.0, -1.0, 1.0, 1.0])),
        ValueError,
        "weights must be nonnegative; got minimum -1.0",
    ),
    (
        "all-zero weights",
        lambda: aot_unpaired_loss(*ok, rejected_weights=torch.zeros(4)),
        ValueError,
        "rejected_weights must not be all zero",
    ),
    (
        "non-finite weights",
        lambda: aot_unpaired_loss(*ok, chosen_weights=torch.tensor([1, math.nan, 1, 1])),
        ValueError,
        "chosen_weights must be finite",
    ),
    (
        "weights of the wrong length",
        lambda: aot_paired_loss(*ok, weights=torch.ones(3)),
        ValueError,
        r"weights must have one weight per element of the log-probs \(last dimension 4\)",
    ),
    (
        "integer weights",
        lambda: aot_paired_loss(*ok, weights=torch.ones(4, dtype=torch.int64)),
        TypeError,
        "weights must have a floating-point dtype",
    ),
    (
        "unknown penalty",
        lambda: aot_paired_loss(*ok, penalty="hingee"),
        ValueError,
        "penalty must be one of 'logistic', 'squared_hinge', 'hinge', 'least_squares'; "
        "got 'hingee'",
    ),
    (
        "penalty of the wrong type",
        lambda: aot_paired_loss(*ok, penalty=3),
        TypeError,
        "penalty must be a name or an elementwise callable; got 3",
    ),
    (
        "unknown reduction",
        lambda: aot_paired_loss(*ok, reduction="avg"),
        ValueError,
        "reduction must be one of 'mean', 'sum', 'none'; got 'avg'",
    ),
    (
        "unknown sort",
        lambda: aot_unpaired_loss(*ok, sort="quick"),
        ValueError,
        "sort must be one of 'hard', 'soft'; got 'quick'",
    ),
    (
        "beta = 0",
        lambda: aot_paired_loss(*ok, beta=0.0),
        ValueError,
        "beta must be a finite number > 0; got 0.0",
    ),
    ("beta < 0", lambda: dpo_loss(*ok, beta=-1), ValueError, "beta must be a finite number > 0"),
    (
        "beta infinite",
        lambda: ipo_loss(*ok, beta=math.inf),
        ValueError,
        "beta must be a finite number > 0; got inf",
    ),
    (
        "beta not a number",
        lambda: aot_paired_loss(*ok, beta="0.1"),
        TypeError,
        "beta must be a positive real number",
    ),
    (
        "label smoothing = 0.5",
        lambda: aot_paired_loss(*ok, label_smoothing=0.5),
        ValueError,
        r"label_smoothing must be in \[0, 0.5\); got 0.5",
    ),
    (
        "label smoothing < 0",
        lambda: dpo_loss(*ok, label_smoothing=-0.1),
        ValueError,
        r"label_smoothing must be in \[0, 0.5\)",
    ),
    (
        "label smoothing without logistic",
        lambda: aot_paired_loss(*ok, penalty="hinge", label_smoothing=0.1),
        ValueError,
        "label_smoothing applies to the 'logistic' penalty only",
    ),
    (
        "NaN log-probs",
        lambda: aot_paired_loss(*replace(0, torch.tensor([0, math.nan, 0, 0]))),
        ValueError,
        r"policy_chosen_logps must be finite; got 1 NaN or infinite value\(s\) of 4",
    ),
    (
        "infinite log-probs",
        lambda: aot_unpaired_loss(*replace(1, torch.tensor([0, -math.inf, 0, 0]))),
        ValueError,
        "policy_rejected_logps must be finite",
    ),
    (
        "NaN samples",
        lambda: ot_1d(torch.tensor([0.0, math.nan]), x4),
        ValueError,
        "u must be finite",
    ),
    (
        "u and v leading shapes differ",
        lambda: ot_1d(torch.randn(2, 3), torch.randn(3, 3)),
        ValueError,
        "u and v must have the same leading shape",
    ),
    (
        "SLiC margin <= 0",
        lambda: slic_loss(*ok, margin=0),
        ValueError,
        "margin must be a finite number > 0",
    ),
    (
        "KTO weight <= 0",
        lambda: kto_loss(*ok, desirable_weight=0.0),
        ValueError,
        "desirable_weight must be a finite number > 0",
    ),
    ("KTO kl not a scalar", lambda: kto_loss(*ok, kl=torch.ones(2)), ValueError, "kl must be 0-D"),
    (
        "sort of the wrong type",
        lambda: aot_paired_loss(*ok, sort=3),
        TypeError,
        "sort must be 'hard', 'soft', a SoftSort or a callable",
    ),
    (
        "soft-sort keyword with a sort object",
        lambda: aot_paired_loss(*ok, sort=aot_losses.SoftSort(), regularization_strength=1.0),
        ValueError,
        "regularization_strength=1.0 applies to sort='soft' only",
    ),
    (
        "sort that changes the shape",
        lambda: ot_1d(x4, x4, sort=lambda x: x[..., :2]),
        ValueError,
        "sort must return its input sorted along the last dimension, with its shape",
    ),
    (
        "soft-sort strength <= 0 with the hard sort",
        lambda: aot_unpaired_loss(*ok, regularization_strength=0.0),
        ValueError,
        "regularization_strength must be a finite number > 0; got 0.0",
    ),
    (
        "unknown sort backend with the hard sort",
        lambda: aot_paired_loss(*ok, sort_backend="cuda"),
        ValueError,
        "backend must be one of 'torch', 'torchsort', 'sinkhorn'; got 'cuda'",
    ),
    (
        "penalty that is not elementwise",
        lambda: ot_1d(x4, x4, lambda x: x.sum(-1, keepdim=True)),
        ValueError,
        r"penalty must be elementwise: it got shape \(4,\) and returned shape \(1,\)",
    ),
    (
        "penalty that returns integers",
        lambda: ot_1d(x4, x4, lambda x: (x > 0).long()),
        TypeError,
        "penalty must return a floating-point tensor of its argument's shape",
    ),
    (
        "KTO kl NaN",
        lambda: kto_loss(*ok, kl=math.nan),
        ValueError,
        "kl must be finite; got nan",
    ),
    (
        "KTO kl tensor NaN",
        lambda: kto_loss(*ok, kl=torch.tensor(math.nan)),
        ValueError,
        "kl must be finite",
    ),
    (
        "module option checked at construction",
        lambda: AOTPairedLoss(beta=0.0),
        ValueError,
        "beta must be a finite number > 0; got 0.0",
    ),
    (
        "module penalty checked at construction",
        lambda: AOTUnpairedLoss(penalty="hingee"),
        ValueError,
        "penalty must be one of",
    ),
    (
        "baseline module option checked at construction",
        lambda: KTOLoss(kl=math.inf),
        ValueError,
        "kl must be finite; got inf",
    ),
    (
        "module called with 3 tensors",
        lambda: AOTPairedLoss()(*ok[:3]),
        TypeError,
        r"^AOTPairedLoss takes 4 tensors \(policy_chosen_logps, policy_rejected_logps, "
        r"reference_chosen_logps, reference_rejected_logps\); got 3$",
    ),
    (
        "module called with a tensor missing by name",
        lambda: DPOLoss()(*ok[:2], reference_chosen_logps=ok[2]),
        TypeError,
        r"DPOLoss takes 4 tensors \(.*\); got 2 positional and reference_chosen_logps by name",
    ),
    (
        "unknown value-check mode",
        lambda: aot_losses.set_value_checks("sometimes"),
        ValueError,
        "mode must be one of 'auto', 'always', 'never'; got 'sometimes'",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_value_checks_can_be_turned_off_then_nan_propagates(value_checks):
    nan_input = replace(0, torch.tensor([0, math.nan, 0, 0]))
    aot_losses.set_value_checks("never")
    assert aot_losses.get_value_checks() == "never"
    assert math.isnan(float(aot_paired_loss(*nan_input)))
    # a negative weight is then not caught either: the caller asked for no value reads
    aot_paired_loss(*ok, weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))


def test_finite_values_whose_sum_overflows_are_not_rejected():
    huge = torch.tensor([1e308, 1e308], dtype=torch.float64)  # the check's float64 sum is inf
    assert math.isfinite(float(ot_1d(huge, huge, "least_squares")))


def test_metadata_checks_run_with_value_checks_off(value_checks):
    aot_losses.set_value_checks("never")
    with pytest.raises(ValueError, match="must be 1-D"):
        aot_paired_loss(*replace(0, torch.randn(4, 2)))


def test_value_checks_skip_accelerator_tensors_in_auto_mode():
    """'auto' reads values on CPU only; 'meta' stands in for a device whose reads would sync."""
    meta = [t.to("meta") for t in ok]
    out = aot_paired_loss(*meta, weights=torch.ones(4, device="meta"))
    assert out.device.type == "meta"


def test_docs_table_lists_every_case():
    from pathlib import Path

    table = (Path(__file__).parents[2] / "docs" / "errors.md").read_text()
    missing = [case[0] for case in BAD_INPUTS if f"| {case[0]} |" not in table]
    assert not missing, f"docs/errors.md lacks rows for {missing}"


@pytest.mark.parametrize(
    "number",
    [np.float32(0.5), np.float16(0.5), np.int64(2), np.int32(1), fractions.Fraction(1, 4)],
    ids=lambda v: type(v).__name__,
)
def test_real_numbers_of_any_kind_are_accepted(number):
    """NumPy scalars and fractions are real numbers; only np.float64 used to pass."""
    expected = aot_paired_loss(*ok, beta=float(number), regularization_strength=float(number))
    assert_close(aot_paired_loss(*ok, beta=number, regularization_strength=number), expected)
    assert_close(dpo_loss(*ok, beta=number), dpo_loss(*ok, beta=float(number)))
    assert_close(SLiCLoss(margin=number)(*ok), slic_loss(*ok, margin=float(number)))
    assert_close(kto_loss(*ok, kl=number), kto_loss(*ok, kl=float(number)))
    smoothing = number / 8
    assert_close(
        DPOLoss(label_smoothing=smoothing)(*ok), dpo_loss(*ok, label_smoothing=float(smoothing))
    )
    x = torch.randn(2, 5)
    assert_close(
        aot_losses.soft_sort(x, dim=np.int64(0), backend="sinkhorn", max_iter=np.int64(50)),
        aot_losses.soft_sort(x, dim=0, backend="sinkhorn", max_iter=50),
    )
