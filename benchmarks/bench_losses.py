"""AOT losses forward+backward against the work they cannot avoid: one ``torch.sort`` of the two
stacked samples, forward+backward, in the same run.

    python -m benchmarks.bench_losses [--device cpu|cuda|all] [--sizes 64 4096 ...]
                                      [--min-run-time 1.0] [--out DIR | --write]

One progress line per case. Writes ``losses_<device>.json`` and the device's section of the page
(``bench_losses`` for the CPU, ``bench_losses_cuda``) into ``--out`` (``runs/benchmarks/``), or
with ``--write`` into ``benchmarks/results/`` and ``docs/benchmarks.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from aot_losses import aot_paired_loss, aot_unpaired_loss
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

__all__ = ["main", "measure", "section"]

SIZES = [64, 1024, 4096, 65536, 262144, 1048576]
BASELINE = "torch.sort (2, n) fwd+bwd"


def cases(n: int, device: str) -> dict[str, Callable[[], None]]:
    """Forward+backward closures over fresh leaf tensors of batch size ``n``."""
    gen = torch.Generator(device=device).manual_seed(n)

    def logps(size: int, grad: bool) -> torch.Tensor:
        x = -10 * torch.rand(size, generator=gen, device=device) - 1
        return x.requires_grad_(grad)

    pc, pr, rc, rr = logps(n, True), logps(n, True), logps(n, False), logps(n, False)
    half_pr, half_rr = logps(n // 2 or 1, True), logps(n // 2 or 1, False)
    weights = torch.rand(n, generator=gen, device=device)
    stacked = torch.stack((pc.detach(), pr.detach())).requires_grad_()

    def sort_baseline() -> None:
        torch.sort(stacked, dim=-1).values.sum().backward()

    def paired() -> None:
        aot_paired_loss(pc, pr, rc, rr).backward()

    def unpaired() -> None:
        aot_unpaired_loss(pc, pr, rc, rr).backward()

    def unpaired_unequal() -> None:
        aot_unpaired_loss(pc, half_pr, rc, half_rr).backward()

    def unpaired_unequal_weighted() -> None:
        aot_unpaired_loss(pc, half_pr, rc, half_rr, chosen_weights=weights).backward()

    return {
        BASELINE: sort_baseline,
        "aot_paired_loss": paired,
        "aot_unpaired_loss": unpaired,
        "aot_unpaired_loss n vs n/2": unpaired_unequal,
        "aot_unpaired_loss n vs n/2, weighted": unpaired_unequal_weighted,
    }


def measure(sizes: list[int], device: str, min_run_time: float) -> list[dict[str, object]]:
    """Every case at every size, the sort baseline first (the others' lines compare to it)."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        what = f"losses n={n} {device} fwd+bwd"
        for name, fn in cases(n, device).items():  # the baseline first
            t = time_it(fn, device, min_run_time)
            if name == BASELINE:
                base = t["median_s"]
                progress(what, name, t)
            else:
                progress(what, name, t, f"{t['median_s'] / base:.2f}x the sort")
            rows.append({"n": n, "case": name, **t, "ratio_to_sort": t["median_s"] / base})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(str(r["case"]) for r in rows))
    lines = ["| n | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for n in dict.fromkeys(r["n"] for r in rows):
        cells = []
        for r in (r for r in rows if r["n"] == n):
            cell = f"{format_time(float(r['median_s']))} ± {format_time(float(r['iqr_s']))}"
            if r["case"] != BASELINE:
                cell += f" ({float(r['ratio_to_sort']):.2f}x)"
            cells.append(cell)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(payload: dict[str, Any]) -> str:
    """The device's section of docs/benchmarks.md from a ``losses_<device>.json`` payload."""
    env = payload["environment"]
    return f"{HEADING[env['device']]}### {describe_machine(env)}\n\n{table(payload['results'])}"


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=SIZES, help="sample sizes n (pairs per batch)"
    )
    parser.add_argument(
        "--min-run-time", type=float, default=1.0, help="seconds of timing per case at least"
    )
    add_output_arguments(parser)
    args = parser.parse_args()
    for device in devices(args.device):
        payload = {
            "environment": environment(device),
            "results": measure(args.sizes, device, args.min_run_time),
        }
        key = section_key("bench_losses", device)
        publish(f"losses_{device}", payload, key, section(payload), args)


HEADING = {
    "cpu": "## Losses: forward+backward against one sort\n\n"
    "`python -m benchmarks.bench_losses --device cpu`. Median ± IQR of "
    "`torch.utils.benchmark.Timer.blocked_autorange`; in parentheses the ratio to one "
    "`torch.sort` of the two stacked samples (forward+backward), measured in the same run. "
    "Goal: <= 1.2x at n >= 65536 on CPU.\n\n",
    "cuda": "## Losses on CUDA: forward+backward against one sort\n\n"
    "`python -m benchmarks.bench_losses --device cuda` (run by `benchmarks/gpu_check.sh`). "
    "As the CPU table, CUDA synchronized around each timed call.\n\n",
}


if __name__ == "__main__":
    main()
