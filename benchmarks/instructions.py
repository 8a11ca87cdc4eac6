"""AOT against DPO, IPO and KTO on a real chat model: SmolLM2-135M-Instruct on the examples'
instructions task (verifiable constraints, exact reward in [0, 1]).

    python -m benchmarks.instructions                    # CPU demonstration: one seed per method
    python -m benchmarks.instructions --preset gpu       # seeds x cells, one CUDA GPU
    python -m benchmarks.instructions --report           # table and plot from the saved results

Each run is ``examples/align.py --model smollm2-135m-instruct --task instructions`` launched as
a user launches it; its ``summary.json`` is the result. The first run builds the task's data (the
reference's scored samples, cached in ``WORK_DIR/task``); every other run, method and seed
reuses it. Runs go into ``--work-dir``; ``--write`` also saves
``benchmarks/results/instructions_PRESET.json`` and its section of ``docs/alignment.md`` (table
and reward-quantile plot).

The ``cpu`` preset is a one-seed demonstration sized for a 2-core machine (measured: 8 minutes
of data and 45 of runs), not a study: no tuning, one seed, a few optimizer steps. The ``gpu``
preset runs three seeds on the three data cells on one CUDA GPU, with the shuffled-coupling and
least-squares arms of the mechanism study beside the five methods (not yet run; sized, not
measured, for about 15 minutes at 6 runs at a time).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aot_examples.config import to_args
from aot_examples.launch import run_align
from tqdm import tqdm

from benchmarks.common import RESULTS, ROOT, environment, write_section

__all__ = ["COUPLINGS", "METHODS", "PRESETS", "Method", "Preset", "main", "report"]

DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Method:
    """One arm: a label and its options of ``align.py``."""

    label: str
    options: dict[str, Any]


#: The methods, each at a common beta for sequence log-probs of a chat model (no tuning).
METHODS = (
    Method("aot_paired", {"loss": "aot_paired", "beta": 0.1}),
    Method("aot_unpaired", {"loss": "aot_unpaired", "beta": 0.1}),
    Method("dpo", {"loss": "dpo", "beta": 0.1}),
    Method("ipo", {"loss": "ipo", "beta": 0.1}),
    Method("kto", {"loss": "kto", "beta": 0.1}),
)
#: The GPU preset's further arms, the couplings of the mechanism study
#: (docs/preregistration_2.md): AOT's sort replaced by a seeded random permutation
#: (``--sort shuffled``) for the logistic penalty, and AOT's least squares sorted and shuffled at
#: IPO's margin (1 / (2 x 0.1) = 5), so that each AOT arm has its per-pair and its random
#: coupling beside it.
COUPLINGS = (
    Method("aot_paired_shuffled", {"loss": "aot_paired", "beta": 0.1, "sort": "shuffled"}),
    Method("aot_unpaired_shuffled", {"loss": "aot_unpaired", "beta": 0.1, "sort": "shuffled"}),
    Method("aot_paired_ls", {"loss": "aot_paired", "penalty": "least_squares", "beta": 5.0}),
    Method(
        "aot_paired_ls_shuffled",
        {"loss": "aot_paired", "penalty": "least_squares", "beta": 5.0, "sort": "shuffled"},
    ),
)


@dataclass(frozen=True)
class Preset:
    """Seeds, data cells, methods and ``align.py`` options of one comparison."""

    seeds: tuple[int, ...]
    cells: tuple[str, ...]
    methods: tuple[Method, ...]
    options: dict[str, Any] = field(default_factory=dict)
    jobs: int = 1


PRESETS = {
    "cpu": Preset(
        seeds=(0,),
        cells=("best_vs_worst",),
        methods=METHODS,
        options={
            "max_steps": 10,
            "per_device_batch_size": 8,
            "learning_rate": 5e-4,
            "warmup_steps": 1,
            "max_length": 128,
            "eval_every": 10,
            "eval_batch_size": 16,
        },
        jobs=2,
    ),
    "gpu": Preset(
        seeds=(0, 1, 2),
        cells=("best_vs_worst", "noisy", "unpaired"),
        methods=METHODS + COUPLINGS,
        options={
            "max_steps": 60,
            "per_device_batch_size": 16,
            "learning_rate": 5e-4,
            "warmup_steps": 5,
            "max_length": 128,
            "eval_every": 60,
            "eval_batch_size": 64,
        },
        jobs=6,
    ),
}
#: The task's size in both presets: the data cells hold the reference's 4 samples of each of
#: 96 training prompts; 16 validation prompts (the held-out pairs of the loop's evaluation);
#: 24 test prompts, disjoint by topic, for the reward evaluation.
TASK_CONFIG = {"train_prompts": 96, "validation_prompts": 16, "test_prompts": 24}


def run_dir(work: Path, cell: str, method: Method, seed: int) -> Path:
    return work / "runs" / f"{cell}-{method.label}-seed{seed}"


def align_args(work: Path, preset: Preset, cell: str, method: Method, seed: int) -> list[str]:
    """``align.py``'s flags for one run: the task on the shared cache, the preset's options,
    the method's, the cell and the seed."""
    options = {
        "model": "smollm2-135m-instruct",
        "task": "instructions",
        "task_data": cell,
        "task_config": str(work / "task_config.json"),
        "task_cache_dir": str(work / "task"),
        **preset.options,
        **method.options,
        "seed": seed,
        "output_dir": str(run_dir(work, cell, method, seed)),
    }
    return to_args(options)


def execute(work: Path, preset: Preset, cell: str, method: Method, seed: int) -> dict[str, Any]:
    """One run in a fresh output directory; its record (``summary.json`` and the seconds)."""
    out = run_dir(work, cell, method, seed)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "align.log"
    start = time.perf_counter()
    with log.open("w") as file:
        args = align_args(work, preset, cell, method, seed)
        done = run_align(args, stdout=file, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{cell} {method.label} seed {seed}: align.py failed; see {log}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "cell": cell,
        "method": method.label,
        "seed": seed,
        "wall_s": time.perf_counter() - start,
        **{k: v for k, v in summary.items() if isinstance(v, int | float)},
        "rewards": summary.get("rewards"),
        "config": {**preset.options, **method.options},
    }


def run(work: Path, preset: Preset) -> list[dict[str, Any]]:
    """Every (cell, method, seed) of ``preset``: the first run alone (it builds the task's
    data), then ``preset.jobs`` at a time; one record per run, in order."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "task_config.json").write_text(json.dumps(TASK_CONFIG))
    tasks = [(c, m, s) for c in preset.cells for m in preset.methods for s in preset.seeds]
    progress = tqdm(total=len(tasks), desc="instructions runs")
    first = execute(work, preset, *tasks[0])
    progress.update()
    with ThreadPoolExecutor(preset.jobs) as pool:  # the runs are processes: threads only wait
        futures = [pool.submit(execute, work, preset, *task) for task in tasks[1:]]
        for _ in as_completed(futures):
            progress.update()
    return [first, *(f.result() for f in futures)]


#: The table's columns: a record's key and its heading.
COLUMNS = (
    ("policy_reward_mean", "reward"),
    ("policy_reward_cvar10", "CVaR 10 %"),
    ("policy_zero_reward_share", "share at 0"),
    ("kl", "KL"),
    ("policy_finished_share", "finished"),
    ("train_time_s", "train s"),
    ("wall_s", "run s"),
)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def table(runs: list[dict[str, Any]]) -> str:
    """One row per (cell, method): means over seeds of :data:`COLUMNS`; the reference's row
    (its samples are the same in every run) first."""
    head = "| cell | method | seeds | " + " | ".join(name for _, name in COLUMNS) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * len(COLUMNS)]
    for cell in dict.fromkeys(r["cell"] for r in runs):
        in_cell = [r for r in runs if r["cell"] == cell]
        reference = {
            "policy_reward_mean": _mean([r["reference_reward_mean"] for r in in_cell]),
            "policy_reward_cvar10": _mean([r["reference_reward_cvar10"] for r in in_cell]),
            "policy_zero_reward_share": _mean([r["reference_zero_reward_share"] for r in in_cell]),
        }
        cells = [f"{reference[k]:.3f}" if k in reference else "" for k, _ in COLUMNS]
        lines.append(f"| {cell} | reference | | " + " | ".join(cells) + " |")
        for method in dict.fromkeys(r["method"] for r in in_cell):
            same = [r for r in in_cell if r["method"] == method]
            values = [_mean([float(r.get(k, float("nan"))) for r in same]) for k, _ in COLUMNS]
            cells = [f"{v:.0f}" if k.endswith("_s") else f"{v:.3f}" for (k, _), v in
                     zip(COLUMNS, values, strict=True)]  # fmt: skip
            lines.append(f"| {cell} | {method} | {len(same)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Per cell, the quantile curves of the per-prompt mean reward on the test prompts: each
    method (its seeds pooled) and the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from aot_losses import diagnostics

    cells = list(dict.fromkeys(r["cell"] for r in runs))
    fig, axes = plt.subplots(1, len(cells), figsize=(5.5 * len(cells), 3.8), squeeze=False)
    levels = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    for ax, cell in zip(axes[0], cells, strict=True):
        in_cell = [r for r in runs if r["cell"] == cell]
        curves = {"reference": [in_cell[0]["rewards"]["reference"]]}
        for r in in_cell:
            curves.setdefault(r["method"], []).append(r["rewards"]["policy"])
        for name, rewards in curves.items():
            per_prompt = torch.cat([torch.tensor(x, dtype=torch.float64).mean(1) for x in rewards])
            q = diagnostics.quantiles(per_prompt, levels)
            style = {"color": "black", "linestyle": "--"} if name == "reference" else {}
            ax.plot(levels.numpy(), q.numpy(), label=name, **style)
        ax.set_title(f"{cell}: reward quantiles over test prompts")
        ax.set_xlabel("quantile level t")
        ax.set_ylabel("mean reward of a prompt")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(payload: dict[str, Any], name: str, docs: Path = DOCS) -> None:
    """The table and the plot of ``payload`` into their section of ``docs``/alignment.md."""
    runs = payload["runs"]
    image = docs / "img" / f"{name}.png"
    plot(runs, image)
    label = (
        "A one-seed demonstration, not a study: no method was tuned, each ran once."
        if payload["preset"] == "cpu"
        else f"Seeds {', '.join(str(s) for s in payload['seeds'])}; means over seeds."
    )
    data = (
        f", after {payload['data_wall_s'] / 60:.1f} minutes building the task's data (the "
        "reference's samples, cached and shared by every run)"
        if "data_wall_s" in payload
        else ", the task's data included"
    )
    text = (
        f"Command: `{payload['command']}`; {payload['machine']}; "
        f"{payload['wall_s'] / 60:.1f} minutes of runs{data}. {label} "
        "Test prompts: 24, 4 samples each, for the policy and for its reference (the same "
        "samples in every run). Reward: the share of a prompt's constraints met (exact); "
        "CVaR 10 %: the mean of the worst 10 % of prompts; share at 0: prompts whose every "
        "sample scores 0; KL: KL(policy || reference) per completion, on policy samples; "
        "finished: the share of samples that ended before the token budget.\n\n"
        f"{table(runs)}\n\n![reward quantiles](img/{image.name})"
    )
    write_section(name, text, docs / "alignment.md", "Alignment: AOT vs baselines")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "instructions")
    parser.add_argument(
        "--write", action="store_true", help="save the results JSON and the docs section"
    )
    parser.add_argument(
        "--report", action="store_true", help="only rebuild the docs section from saved results"
    )
    args = parser.parse_args()
    name = f"instructions_{args.preset}"
    path = RESULTS / f"{name}.json"
    if args.report:
        report(json.loads(path.read_text()), name)
        return
    preset = PRESETS[args.preset]
    start = time.perf_counter()
    runs = run(args.work_dir, preset)
    env = environment("cuda" if args.preset == "gpu" else "cpu")
    payload = {
        "command": f"python -m benchmarks.instructions --preset {args.preset}",
        "preset": args.preset,
        "seeds": list(preset.seeds),
        "machine": f"{env['cpu']}, {env['cores']} cores, torch {env['torch']}, "
        f"Python {platform.python_version()}" + (f", {env.get('gpu')}" if env.get("gpu") else ""),
        "wall_s": time.perf_counter() - start,
        "task": TASK_CONFIG,
        "runs": runs,
    }
    out = path if args.write else args.work_dir / f"{name}.json"
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(table(runs))
    if args.write:
        report(payload, name)


if __name__ == "__main__":
    main()
