"""Cost of global-batch sorting: ``aot_paired_loss`` with ``process_group`` against the local loss,
on 2 gloo ranks on the CPU.

    python -m benchmarks.bench_distributed [--sizes 64 1024 ...] [--repeats 15]
                                           [--out DIR | --write]

Spawns 2 processes (1 torch thread each) joined by a gloo group. Every case is forward+backward:

* ``local``: ``aot_paired_loss`` on the rank's own ``n`` pairs (``process_group=None``);
* ``global``: the same call with ``process_group=WORLD``, so each rank sorts all ``2n`` pairs;
* ``2n, one process``: ``aot_paired_loss`` on ``2n`` pairs without communication, the compute
  part of ``global``;
* ``gather_concat``: :func:`aot_losses.distributed.gather_concat` of ``n`` values per rank,
  forward+backward, the communication part (``global`` gathers two such tensors, the policy and
  the reference margins, packed into one gather with the same three collectives);
* ``one all_gather``: a bare ``torch.distributed.all_gather`` of 12 int64, the latency floor of
  one collective (``gather_concat`` forward+backward is three collectives, and so is
  ``global``: a metadata and a data ``all_gather`` forward, one ``all_reduce`` backward).

Collectives must run the same number of times on every rank, so the adaptive
``Timer.blocked_autorange`` cannot be used: each case runs ``repeats`` blocks of a fixed number
of calls (``Timer.timeit``) started together after a barrier; the median and IQR are over blocks,
measured on rank 0. The 1-minute load average at the start and end of the run is recorded
(the numbers are only comparable between runs under similar load). One progress line per case.
Writes ``distributed_cpu.json`` and the ``bench_distributed`` section of the page into ``--out``
(``runs/benchmarks/``), or with ``--write`` into ``benchmarks/results/`` and
``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import spawn
from torch.utils.benchmark import Measurement, Timer

from aot_losses import aot_paired_loss
from aot_losses.distributed import gather_concat
from benchmarks.common import (
    add_output_arguments,
    argument_parser,
    describe_machine,
    environment,
    format_time,
    progress,
    publish,
)

__all__ = ["main", "section"]

WORLD = 2
SIZES = [64, 1024, 16384, 262144]
CASES = ("local", "global", "2n, one process", "gather_concat", "one all_gather")
BLOCK_S = 0.05  # target duration of one timed block


def cases(n: int, rank: int) -> dict[str, Callable[[], None]]:
    """Forward+backward closures; rank ``r`` holds pairs ``[r n, (r + 1) n)`` of a global batch."""
    gen = torch.Generator().manual_seed(n)
    pc, pr, rc, rr = (-10 * torch.rand(WORLD * n, generator=gen) - 1 for _ in range(4))
    pc.requires_grad_()
    pr.requires_grad_()
    own = slice(rank * n, (rank + 1) * n)
    local = [t[own].detach().requires_grad_(t.requires_grad) for t in (pc, pr, rc, rr)]
    group = dist.group.WORLD

    def local_loss() -> None:
        aot_paired_loss(*local).backward()

    def global_loss() -> None:
        aot_paired_loss(*local, process_group=group).backward()

    def one_process() -> None:
        aot_paired_loss(pc, pr, rc, rr).backward()

    def gather() -> None:
        gather_concat(local[0], group, name="x").sum().backward()

    meta = torch.zeros(12, dtype=torch.int64)
    meta_parts = [torch.empty_like(meta) for _ in range(WORLD)]

    def bare_all_gather() -> None:
        dist.all_gather(meta_parts, meta, group=group)

    fns = (local_loss, global_loss, one_process, gather, bare_all_gather)
    return dict(zip(CASES, fns, strict=True))


def lockstep_time(fn: Callable[[], None], repeats: int) -> tuple[Measurement, int]:
    """``repeats`` blocks of a fixed number of calls, each block started on all ranks by a
    barrier; the number of calls (about ``BLOCK_S`` per block) is rank 0's, broadcast.
    Returns the merged per-call measurement and the number of calls per block."""
    fn()  # warm-up
    timer = Timer(stmt="fn()", globals={"fn": fn})
    number = torch.tensor([max(1, round(BLOCK_S / timer.timeit(3).median))])
    dist.broadcast(number, src=0)
    blocks = []
    for _ in range(repeats):
        dist.barrier()
        blocks.append(timer.timeit(int(number)))
    return Measurement.merge(blocks)[0], int(number)


def _worker(rank: int, store: str, sizes: list[int], repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(minutes=5),
    )
    rows = []
    for n in sizes:
        for name, fn in cases(n, rank).items():
            m, number = lockstep_time(fn, repeats)
            timing = {"median_s": m.median, "iqr_s": m.iqr}
            rows.append(
                {
                    "n_per_rank": n,
                    "case": name,
                    **timing,
                    "blocks": repeats,
                    "calls_per_block": number,
                }
            )
            if rank == 0:
                progress(f"distributed n={n} per rank, {WORLD} gloo ranks, fwd+bwd", name, timing)
    if rank == 0:
        Path(out).write_text(json.dumps({"environment": environment("cpu"), "results": rows}))
    dist.destroy_process_group()


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| n per rank | " + " | ".join(CASES) + " | global / local | global - 2n one process |",
        "|---:|" + "---:|" * (len(CASES) + 2),
    ]
    for n in dict.fromkeys(r["n_per_rank"] for r in rows):
        t = {r["case"]: r for r in rows if r["n_per_rank"] == n}
        cells = [f"{format_time(t[c]['median_s'])} ± {format_time(t[c]['iqr_s'])}" for c in CASES]
        ratio = t["global"]["median_s"] / t["local"]["median_s"]
        extra = t["global"]["median_s"] - t["2n, one process"]["median_s"]
        cells += [f"{ratio:.2f}x", format_time(extra) if extra >= 0 else f"-{format_time(-extra)}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(payload: dict[str, Any]) -> str:
    """The ``bench_distributed`` section of docs/benchmarks.md from its JSON payload."""
    env, rows = payload["environment"], payload["results"]
    return (
        "## Global-batch sorting: cost of `process_group` (2 gloo ranks, CPU)\n\n"
        "`python -m benchmarks.bench_distributed`. Forward+backward of `aot_paired_loss` with "
        "`n` pairs per rank: `local` sorts the rank's own pairs (`process_group=None`); "
        "`global` passes `process_group=torch.distributed.group.WORLD` and sorts all `2n`; "
        "`2n, one process` is the same loss on `2n` pairs without communication (the compute "
        "part of `global`); `gather_concat` gathers `n` values per rank forward+backward (the "
        "communication part: `global` gathers two such tensors, the policy and the reference "
        "margins, packed into one gather, and all-reduces the gradient of the first); "
        "`one all_gather` is a bare `all_gather` of 12 int64, the latency of one collective "
        "(`gather_concat` forward+backward is three collectives, and so is `global`: a "
        "metadata and a data `all_gather` forward, one `all_reduce` backward). Median ± IQR over "
        f"{rows[0]['blocks']} lockstep blocks of a fixed number of calls (collectives cannot use "
        "`blocked_autorange`, whose adaptive call counts would differ between ranks), rank 0, "
        "one torch thread per rank.\n\n"
        f"{describe_machine(env)}; gloo over loopback TCP. The machine's "
        f"{env['cores']} cores were shared with other jobs during the run (1-minute load "
        f"average {env['load_average_1min'][0]:.1f} at its start, "
        f"{env['load_average_1min'][1]:.1f} at its end), so absolute times are noisy (IQRs of "
        "tens of percent), and a negative last column means the communication cost was below "
        "that noise.\n\n"
        f"{table(rows)}"
    )


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="pairs per rank (n)")
    parser.add_argument("--repeats", type=int, default=15, help="timed blocks per case")
    add_output_arguments(parser, device=False)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        spawn(
            _worker,
            args=(str(Path(tmp) / "store"), args.sizes, args.repeats, str(out)),
            nprocs=WORLD,
        )
        payload = json.loads(out.read_text())
    payload["environment"].update(
        {
            "world_size": WORLD,
            "backend": "gloo",
            "torch_threads_per_rank": 1,
            "load_average_1min": [load_start, os.getloadavg()[0]],
        }
    )
    publish("distributed_cpu", payload, "bench_distributed", section(payload), args)


if __name__ == "__main__":
    main()
