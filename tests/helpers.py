"""What the test files share: the one tolerance table, keyed by dtype, and random log-probs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rtol": 1e-9, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float16: {"rtol": 1e-2, "atol": 1e-2},
    torch.bfloat16: {"rtol": 1e-2, "atol": 1e-2},
}


def assert_close(actual: Any, expected: Any, dtype: torch.dtype | None = None) -> None:
    """``torch.testing.assert_close`` with the table's tolerance for ``dtype`` (default: the
    dtype of ``actual``); numbers and arrays are compared as float64 tensors."""
    actual_t = torch.as_tensor(actual, dtype=None if torch.is_tensor(actual) else torch.float64)
    expected_t = torch.as_tensor(
        expected, dtype=None if torch.is_tensor(expected) else torch.float64
    )
    dtype = dtype or actual_t.dtype
    torch.testing.assert_close(
        actual_t.double(), expected_t.double().to(actual_t.device), **TOLERANCES[dtype]
    )


def random_logps(
    sizes: Sequence[int],
    seed: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    leading: tuple[int, ...] = (),
) -> list[torch.Tensor]:
    """Sequence log-probs uniform in (-11, -1), one tensor of shape ``(*leading, n)`` per size
    ``n``, drawn in float64 from ``seed`` and then cast to ``dtype`` on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    draws = (-10 * torch.rand(*leading, n, generator=gen, dtype=torch.float64) - 1 for n in sizes)
    return [x.to(dtype).to(device) for x in draws]
