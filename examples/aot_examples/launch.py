"""Running ``examples/align.py`` as a user runs it, for the benchmarks and the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The script, next to this package in the checkout.
ALIGN_SCRIPT = Path(__file__).resolve().parent.parent / "align.py"
CHECKOUT = ALIGN_SCRIPT.parent.parent


def run_align(
    args: Sequence[str], *, processes: int = 1, **kwargs: Any
) -> subprocess.CompletedProcess[Any]:
    """``python examples/align.py ARGS``, or ``torchrun`` on ``processes`` processes (gloo
    ranks on CPU; ``--standalone`` picks a free port, so launches may run side by side).

    Each process runs on one thread (the embedded model is tiny) and imports ``aot_losses`` from
    this checkout. ``kwargs`` go to ``subprocess.run`` (output capture, timeout); the exit status
    is the caller's to check (or pass ``check=True``).
    """
    command = [sys.executable, str(ALIGN_SCRIPT), *args]
    if processes > 1:
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
        command[1:1] = [*torchrun, str(processes)]
    path = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(command, env=env, **kwargs)
