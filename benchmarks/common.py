"""Shared benchmark plumbing: environment metadata, synchronized timing, progress lines, result
files and the sections of their page.

A benchmark writes its JSON and its section of a copy of ``docs/benchmarks.md`` into ``--out``
(``runs/benchmarks/`` by default, ignored by git); only with ``--write`` does it write the
committed ``benchmarks/results/`` and ``docs/benchmarks.md``. ``python -m scripts.doc_tables``
rebuilds the page's tables from the committed JSON without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

__all__ = [
    "DOCS",
    "RESULTS",
    "ROOT",
    "RUNS",
    "add_output_arguments",
    "argument_parser",
    "describe_machine",
    "devices",
    "environment",
    "format_time",
    "progress",
    "publish",
    "replace_section",
    "save_json",
    "section_key",
    "time_it",
    "write_section",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
RUNS = ROOT / "runs" / "benchmarks"


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


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc`` whose ``--help`` shows the defaults."""
    return argparse.ArgumentParser(
        description=(doc or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def add_output_arguments(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """``--device`` (unless ``device`` is false), and ``--out`` or ``--write``: where the JSON and
    the page go."""
    if device:
        parser.add_argument(
            "--device",
            choices=["cpu", "cuda", "all"],
            default="all",
            help="where to measure; all: the CPU, and CUDA where present",
        )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        type=Path,
        default=RUNS,
        help="folder for the JSON and for a copy of docs/benchmarks.md with this run's tables",
    )
    where.add_argument(
        "--write",
        action="store_true",
        help=f"write the committed {RESULTS.relative_to(ROOT)}/*.json and "
        f"{DOCS.relative_to(ROOT)} instead",
    )


def publish(name: str, payload: dict[str, Any], key: str, markdown: str, args: Any) -> None:
    """Save ``payload`` as ``name``.json and ``markdown`` as the ``key`` section of the page: the
    committed ones with ``args.write``, else in ``args.out`` (the page copied there first)."""
    results, page = (RESULTS, DOCS) if args.write else (args.out, args.out / DOCS.name)
    path = save_json(name, payload, results)
    if not page.exists():
        shutil.copyfile(DOCS, page)
    write_section(key, markdown, page)
    print(f"wrote {path} and the {key} section of {page}", flush=True)


def progress(what: str, name: str, timing: dict[str, float], versus: str = "") -> None:
    """One line per measured case, e.g. ``sort (64, 256) float32 fwd+bwd: torch 1.82 ms
    [IQR 187 us], torchsort 1.27 ms: 1.44x`` (``versus`` is the tail after the IQR)."""
    line = f"{what}: {name} {format_time(timing['median_s'])} [IQR {format_time(timing['iqr_s'])}]"
    print(line + (f", {versus}" if versus else ""), flush=True)


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


def replace_section(text: str, key: str, markdown: str) -> str:
    """``text`` with the block between ``<!-- key:begin -->`` and ``<!-- key:end -->`` replaced
    by ``markdown`` (the block appended if absent)."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text and end in text:
        return text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    return text.rstrip() + "\n\n" + block + "\n"


def write_section(key: str, markdown: str, path: Path = DOCS, title: str = "Benchmarks") -> None:
    """:func:`replace_section` in the file ``path`` (docs/benchmarks.md by default; created with
    ``title`` if missing); the rest of the file is left as it is."""
    text = path.read_text() if path.exists() else f"# {title}\n"
    path.write_text(replace_section(text, key, markdown))


def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"
