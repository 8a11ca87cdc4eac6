"""``benchmarks/gpu_check.sh`` picks its Python and says "no CUDA GPU" only when torch imported
and saw none: run on a copy of the script with a controlled PATH (no benchmark is run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
BASH = shutil.which("bash")
NO_GPU = "no CUDA GPU on this machine"

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def _executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder holding the script as ``benchmarks/gpu_check.sh`` and ``bin/``, the whole PATH:
    ``dirname``, and a ``python3`` without torch (this interpreter without its site-packages)."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(SCRIPT, tmp_path / "benchmarks" / "gpu_check.sh")
    (tmp_path / "bin").mkdir()
    os.symlink(shutil.which("dirname") or "/usr/bin/dirname", tmp_path / "bin" / "dirname")
    _executable(tmp_path / "bin" / "python3", f'exec "{sys.executable}" -S "$@"')
    return tmp_path


def _run(checkout: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The script with only ``env`` set (CUDA hidden, so that a GPU machine answers the same)."""
    assert BASH is not None
    return subprocess.run(
        [BASH, str(checkout / "benchmarks" / "gpu_check.sh")],
        env={"PATH": str(checkout / "bin"), "CUDA_VISIBLE_DEVICES": "", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_torch_it_fails_and_says_why(checkout: Path) -> None:
    """No PYTHON, no .venv, and the python3 on PATH cannot import torch: exit 1, not a
    reassuring "no CUDA GPU"."""
    result = _run(checkout)
    assert result.returncode == 1, result
    assert "cannot import torch" in result.stderr
    assert "ModuleNotFoundError" in result.stderr
    assert "scripts/setup.sh" in result.stderr
    assert NO_GPU not in result.stdout + result.stderr


def test_torch_without_cuda_is_no_gpu_and_exit_0(checkout: Path) -> None:
    result = _run(checkout, PYTHON=sys.executable)
    assert result.returncode == 0, result
    assert f"torch {torch.__version__}" in result.stdout
    assert NO_GPU in result.stdout


def test_it_finds_the_checkouts_venv(checkout: Path) -> None:
    """Not activated, python3 on PATH without torch: the checkout's .venv/bin/python is used."""
    venv_python = _executable(
        checkout / ".venv" / "bin" / "python", f'exec "{sys.executable}" "$@"'
    )
    result = _run(checkout)
    assert result.returncode == 0, result
    assert f"gpu_check: {venv_python}, torch" in result.stdout
    assert NO_GPU in result.stdout
    # PYTHON=... still wins over the checkout's environment
    result = _run(checkout, PYTHON=str(checkout / "bin" / "python3"))
    assert result.returncode == 1 and "cannot import torch" in result.stderr, result


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU build of torch")
def test_a_cpu_torch_beside_a_gpu_is_not_no_gpu(checkout: Path) -> None:
    """nvidia-smi on PATH but torch is a CPU build: the GPU is there, torch cannot use it."""
    _executable(checkout / "bin" / "nvidia-smi", "exit 0")
    result = _run(checkout, PYTHON=sys.executable)
    assert result.returncode == 1, result
    assert "CPU build" in result.stderr
    assert NO_GPU not in result.stdout
