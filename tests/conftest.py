"""Fixtures shared by the test suite: the devices, the value-check mode, one torch thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import aot_losses

#: The devices the device-parametrized tests run on: the CPU, and CUDA where present (test ids
#: end in ``-cuda``: ``pytest -k cuda`` runs the CUDA half, as ``benchmarks/gpu_check.sh`` does).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session", params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Session-scoped, so that hypothesis tests may take it too."""
    return torch.device(request.param)


@pytest.fixture
def value_checks() -> Iterator[None]:
    """Restore the value-check mode after a test that changes it."""
    saved = aot_losses.get_value_checks()
    yield
    aot_losses.set_value_checks(saved)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: large cases and tiny models run faster alone on a shared machine
    (threads that wait for each other's cores made some cases 20 times slower)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
