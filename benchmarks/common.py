"""Shared benchmark plumbing: environment metadata, synchronized timing, result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


def environment(device: str) -> dict[str, Any]:
    """Machine and library versions a result was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"model name\s*:\s*(.+)", f.read())
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, Any] = {
        "device": device,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def describe_machine(env: dict[str, Any]) -> str:
    """A heading naming the machine of :func:`environment`."""
    if env["device"] == "cuda":
        return f"CUDA: {env['gpu']} (CUDA {env['cuda']}), torch {env['torch']}"
    return (
        f"CPU: {env['cpu']}, {env['cores']} cores, {env['torch_threads']} torch threads, "
        f"torch {env['torch']}"
    )


def time_it(fn: Callable[[], object], device: str, min_run_time: float) -> dict[str, float]:
    """Median and IQR in seconds from ``Timer.blocked_autorange`` (CUDA synchronized)."""
    fn()  # warm-up (allocations, lazy init)
    if device == "cuda":
        torch.cuda.synchronize()
    stmt = "fn(); torch.cuda.synchronize()" if device == "cuda" else "fn()"
    measurement = Timer(stmt=stmt, globals={"fn": fn, "torch": torch}).blocked_autorange(
        min_run_time=min_run_time
    )
    return {"median_s": measurement.median, "iqr_s": measurement.iqr}


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--results-dir``, ``--docs`` and ``--no-docs``, shared by the benchmarks."""
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the page the tables go to")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the page")


def devices(choice: str) -> list[str]:
    """The devices of ``--device``; CUDA only where present (said otherwise)."""
    wanted = ["cpu", "cuda"] if choice == "all" else [choice]
    if "cuda" in wanted and not torch.cuda.is_available():
        print("CUDA not available: no CUDA results")
        wanted.remove("cuda")
    return wanted


def section_key(name: str, device: str) -> str:
    """The marker of a benchmark's section of the page: ``name`` for the CPU, ``name_cuda``."""
    return name if device == "cpu" else f"{name}_{device}"


def save_json(name: str, payload: dict[str, Any], results_dir: Path = RESULTS) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def write_section(key: str, markdown: str, path: Path = DOCS, title: str = "Benchmarks") -> None:
    """Replace the block between ``<!-- key:begin -->`` and ``<!-- key:end -->`` in ``path``
    (docs/benchmarks.md by default; the block is appended if absent, the file created with
    ``title`` if missing); the rest of the file is left as it is."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = path.read_text() if path.exists() else f"# {title}\n"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"
