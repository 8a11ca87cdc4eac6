"""Sort backends: hard sort, pure-PyTorch soft sort, torchsort and Sinkhorn soft sort.

    python -m benchmarks.bench_sort [--device cpu|cuda|all] [--min-run-time 0.2] [--threads 1]
                                    [--out DIR | --write]

Forward and forward+backward (``out.sum().backward()``) of, on float32 ``torch.randn`` rows
(fixed seeds) of shape (batch, n), batch in {1, 64} and n in {64, 256, 4096, 65536, 2^20}:

* ``hard``: :func:`aot_losses.sorting.hard_sort` (``torch.sort`` values);
* ``torch``: :func:`aot_losses.soft_sort`, l2, ``regularization_strength=1`` (torchsort's
  default), the pure-PyTorch backend;
* ``torchsort``: ``torchsort.soft_sort`` with the same arguments (skipped when not installed);
* ``sinkhorn``: ``soft_sort(..., backend="sinkhorn")`` (epsilon 1, the defaults otherwise),
  only where ``batch * n^2 <= 5e7`` (its cost matrix), forward+backward only up to n = 256 (its
  backward solves an n x n system per row).

Cases that would not fit the time budget of one run are skipped and listed: on the CPU,
``batch * n > 2^22``. Median and IQR from ``Timer.blocked_autorange`` (CUDA synchronized),
printed one line per case. Writes ``sort_<device>.json`` and the device's section of the page
(``bench_sort`` for the CPU, ``bench_sort_cuda``) into ``--out`` (``runs/benchmarks/``), or with
``--write`` into ``benchmarks/results/`` and ``docs/benchmarks.md``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch

from aot_losses.sorting import hard_sort, soft_sort
from benchmarks.common import (
    add_output_arguments,
    argument_parser,
    describe_machine,
    devices,
    environment,
    format_time,
    progress,
    publish,
    section_key,
    time_it,
)

__all__ = ["main", "run", "section"]

METHODS = ("hard", "torch", "torchsort", "sinkhorn")
MODES = ("forward", "forward+backward")
SHAPES = [(batch, n) for batch in (1, 64) for n in (64, 256, 4096, 65536, 1 << 20)]
STRENGTH = 1.0
CPU_BUDGET = 1 << 22  # largest batch * n run on the CPU
SINKHORN_MEMORY = 5e7  # largest batch * n^2 for Sinkhorn
SINKHORN_BACKWARD_N = 256  # largest n for Sinkhorn's O(n^3) backward


def skip_reason(method: str, mode: str, batch: int, n: int, device: str) -> str | None:
    """Why a case is not run, or None."""
    if method == "torchsort" and importlib.util.find_spec("torchsort") is None:
        return "torchsort not installed"
    if method == "sinkhorn" and batch * n * n > SINKHORN_MEMORY:
        return "batch * n^2 > 5e7 (cost matrix)"
    if method == "sinkhorn" and mode != "forward" and n > SINKHORN_BACKWARD_N:
        return f"n > {SINKHORN_BACKWARD_N} (O(n^3) backward)"
    if device == "cpu" and batch * n > CPU_BUDGET:
        return "batch * n > 2^22 (time budget of the CPU run)"
    return None


def sort_fn(method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if method == "hard":
        return hard_sort
    if method == "torchsort":
        import torchsort

        return lambda x: torchsort.soft_sort(x, regularization_strength=STRENGTH)
    if method == "sinkhorn":
        return lambda x: soft_sort(x, regularization_strength=STRENGTH, backend="sinkhorn")
    return lambda x: soft_sort(x, regularization_strength=STRENGTH)


def case(method: str, mode: str, batch: int, n: int, device: str) -> Callable[[], object]:
    gen = torch.Generator().manual_seed(batch * 1_000_003 + n)
    x = torch.randn(batch, n, generator=gen).to(device)
    fn = sort_fn(method)
    if mode == "forward":
        return lambda: fn(x)
    x.requires_grad_()
    return lambda: fn(x).sum().backward()


def run(device: str, min_run_time: float) -> list[dict[str, Any]]:
    """Every case, torchsort first within each shape and mode (the others' lines compare to it);
    one progress line per case."""
    rows = []
    measured_first = ("torchsort", *(m for m in METHODS if m != "torchsort"))
    for batch, n in SHAPES:
        for mode in MODES:
            what = f"sort ({batch}, {n}) float32 {'fwd' if mode == 'forward' else 'fwd+bwd'}"
            reference: dict[str, Any] = {}
            for method in measured_first:
                row: dict[str, Any] = {"method": method, "mode": mode, "batch": batch, "n": n}
                reason = skip_reason(method, mode, batch, n, device)
                if reason is not None:
                    row["skipped"] = reason
                    print(f"{what}: {method} skipped ({reason})", flush=True)
                else:
                    row.update(time_it(case(method, mode, batch, n, device), device, min_run_time))
                    versus = ""
                    if method == "torchsort":
                        reference = row
                    elif reference:
                        ratio = row["median_s"] / reference["median_s"]
                        versus = f"torchsort {format_time(reference['median_s'])}: {ratio:.2f}x"
                    progress(what, method, row, versus)
                rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (batch, n, method); times and ratios against torchsort."""
    index = {(r["method"], r["mode"], r["batch"], r["n"]): r for r in rows}
    lines = [
        "| batch | n | method | forward | forward+backward | forward / torchsort "
        "| fwd+bwd / torchsort |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for batch, n in SHAPES:
        for method in METHODS:
            cells, ratios = [], []
            for mode in MODES:
                r = index[(method, mode, batch, n)]
                ref = index[("torchsort", mode, batch, n)]
                if "skipped" in r:
                    cells.append("skipped")
                    ratios.append("")
                    continue
                cells.append(f"{format_time(r['median_s'])} ± {format_time(r['iqr_s'])}")
                ratios.append(
                    f"{r['median_s'] / ref['median_s']:.2f}x" if "skipped" not in ref else ""
                )
            lines.append(f"| {batch} | {n} | {method} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def skipped(rows: list[dict[str, Any]]) -> str:
    reasons: dict[str, list[str]] = {}
    for r in rows:
        if "skipped" in r:
            reasons.setdefault(r["skipped"], []).append(
                f"{r['method']} {r['mode']} ({r['batch']}, {r['n']})"
            )
    return "\n".join(f"- {why}: {', '.join(cases)}" for why, cases in reasons.items())


def section(payload: dict[str, Any]) -> str:
    """The device's section of docs/benchmarks.md from a ``sort_<device>.json`` payload."""
    env, rows = payload["environment"], payload["results"]
    device = env["device"]
    command = f"python -m benchmarks.bench_sort --device {device}" + (
        " --threads 1" if device == "cpu" else ""
    )
    where = "" if device == "cpu" else " (run by `benchmarks/gpu_check.sh`, CUDA synchronized)"
    return (
        f"## Sort backends{'' if device == 'cpu' else ' on CUDA'}\n\n"
        f"`{command}`{where}. Forward and forward+backward "
        "(`out.sum().backward()`) on float32 `torch.randn` rows of shape (batch, n): `hard` is "
        "`hard_sort` (`torch.sort` values); `torch` is `soft_sort` (l2, "
        f"`regularization_strength={STRENGTH:g}`), the pure-PyTorch backend; `torchsort` is "
        "`torchsort.soft_sort` with the same arguments; `sinkhorn` is "
        f'`soft_sort(..., backend="sinkhorn")` (epsilon {STRENGTH:g}). Median ± IQR from '
        "`Timer.blocked_autorange`; the ratio columns divide by torchsort's median.\n\n"
        f"{describe_machine(env)}. One run, every case timed in the same process; the IQRs "
        "show the noise within it.\n\n"
        f"{table(rows)}\n\n"
        "Not run:\n\n"
        f"{skipped(rows)}"
    )


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--min-run-time", type=float, default=0.2, help="seconds of timing per case at least"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads; None: torch's own choice"
    )
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for device in devices(args.device):
        results = run(device, args.min_run_time)
        payload = {
            "environment": {**environment(device), "regularization_strength": STRENGTH},
            "results": results,
        }
        publish(
            f"sort_{device}", payload, section_key("bench_sort", device), section(payload), args
        )


if __name__ == "__main__":
    main()
