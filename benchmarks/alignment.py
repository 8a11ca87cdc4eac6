"""AOT against DPO, IPO and KTO on the examples' embedded task (exact reward), with the paper's
ablations: batch size (and global-batch sorting on 2 gloo ranks), beta, penalty, hard vs soft sort.

    python -m benchmarks.alignment            # the full grid (3 seeds), 2 runs at a time
    python -m benchmarks.alignment --quick    # the method comparison, 1 seed, fewer steps
    python -m benchmarks.alignment --report   # tables and plots from the saved results only

Every run starts from the same SFT reference (built once, cached in ``--work-dir``); seeds vary
the alignment (data order, LoRA init, sampling). Each run is ``examples/align.py`` launched as a
user launches it (``python``, or ``torchrun`` for the 2-process arms), its flags written by
``aot_examples.config.to_args``; its ``summary.json`` is the result. Each run is measured on
held-out prompts:
mean ground-truth reward, win rate against the reference, a KL(policy || reference) estimate,
and first-order stochastic dominance of chosen over rejected implicit rewards on the held-out
preference split. Writes ``benchmarks/results/alignment.json`` (or ``alignment_quick.json``),
``docs/alignment.md`` and its plots in ``docs/img/``.
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

from aot_examples import toy
from aot_examples.config import to_args
from aot_examples.launch import run_align
from aot_examples.losses import LOSSES
from tqdm import tqdm

from benchmarks.common import ROOT, environment

RESULTS = ROOT / "benchmarks" / "results"
QUICK_STEPS = 60
#: The beta sweep, for every method (the paper's Figure 3 sweeps AOT's).
BETAS = (0.03, 0.1, 0.3, 1.0, 4.0, 10.0)
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Arm:
    """One configuration: an ablation group, a label, overrides of the embedded defaults, and
    the number of processes (2: gloo ranks on CPU)."""

    group: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    processes: int = 1

    @property
    def method(self) -> str:
        return str(self.overrides.get("loss", "aot_paired"))


def grid(quick: bool) -> list[Arm]:
    """The method comparison, then (full grid only) the ablations of the paper."""
    methods = [
        Arm("methods", "aot_paired (hard)", {"loss": "aot_paired"}),
        Arm("methods", "aot_paired (soft)", {"loss": "aot_paired", "sort": "soft"}),
        Arm(
            "methods",
            "aot_paired (soft, s=10)",
            {"loss": "aot_paired", "sort": "soft", "regularization_strength": 10.0},
        ),
        Arm("methods", "aot_unpaired (hard)", {"loss": "aot_unpaired"}),
        Arm("methods", "aot_unpaired (soft)", {"loss": "aot_unpaired", "sort": "soft"}),
        Arm("methods", "dpo", {"loss": "dpo"}),
        Arm("methods", "ipo", {"loss": "ipo"}),
        # IPO's (m - 1 / (2 beta))^2 at beta = 1 / 8 is aot_paired's least squares (4 - d)^2
        # with d = u - v unsorted: this arm isolates what the sorting does
        Arm("methods", "ipo (beta 0.125: aot_paired unsorted)", {"loss": "ipo", "beta": 0.125}),
        Arm("methods", "kto", {"loss": "kto"}),
    ]
    if quick:
        return methods
    batch = [Arm("batch size", f"{b}", {"per_device_batch_size": b}) for b in (8, 16, 32, 64)]
    batch += [
        Arm("batch size", "2 ranks x 16, local sort", {"per_device_batch_size": 16,
                                                        "global_sort": False}, processes=2),
        Arm("batch size", "2 ranks x 16, global sort", {"per_device_batch_size": 16}, processes=2),
    ]  # fmt: skip
    # AOT's penalty is least squares unless named; "aot_paired, logistic" unsorted is DPO
    series = [(method, {"loss": method}) for method in LOSSES]
    series.insert(1, ("aot_paired, logistic", {"loss": "aot_paired", "penalty": "logistic"}))
    beta = [
        Arm("beta", f"{name}, beta {b:g}", {**overrides, "beta": b})
        for name, overrides in series
        for b in BETAS
    ]
    penalty = [
        Arm("penalty", p, {"penalty": p}) for p in ("logistic", "squared_hinge", "least_squares")
    ]
    return methods + batch + beta + penalty


def run_dir(arm: Arm, seed: int, work: Path) -> Path:
    return work / "runs" / f"{arm.group}-{arm.label}-seed{seed}".replace(" ", "_")


def align_args(arm: Arm, seed: int, work: Path, base: dict[str, Any]) -> list[str]:
    """``align.py``'s flags: the embedded defaults, updated by ``base`` (the whole grid's
    settings), then the arm's; the task (config and cache) is the grid's, in ``work/toy``."""
    task = {"toy_config": str(work / "toy" / "toy_config.json"), "toy_cache_dir": str(work / "toy")}
    out = str(run_dir(arm, seed, work))
    return to_args({**base, **arm.overrides, "seed": seed, "output_dir": out, **task})


def record(arm: Arm, seed: int, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One run's results; the dominance diagnostics are those of the held-out pairs, which
    every method (paired or unpaired) is evaluated on."""
    pairs = summary["held_out_pairs"]
    return {
        "group": arm.group,
        "label": arm.label,
        "method": arm.method,
        "seed": seed,
        "processes": arm.processes,
        "reward_mean": summary["policy_reward_mean"],
        "reward_se": summary["policy_reward_se"],
        "reference_reward_mean": summary["reference_reward_mean"],
        "win_rate": summary["win_rate_mean"],
        "kl": summary["kl_policy_reference_mean"],
        "fsd_violation": pairs["fsd/violation"],
        "almost_fsd_ratio": pairs["fsd/almost_ratio"],
        "reward_margin": pairs["rewards/margin"],
        "pair_accuracy": pairs["rewards/accuracy"],
        "quantile_margins": {
            k.removeprefix("quantile_margin/"): v
            for k, v in pairs.items()
            if k.startswith("quantile_margin/")
        },
        "wall_s": seconds,
        "config": {
            **arm.overrides,
            "beta": summary["config"]["beta"],
            "processes": arm.processes,
            "steps": summary.get("steps"),
        },
    }


def launch(
    arm: Arm, seed: int, work: Path, base: dict[str, Any], *, reuse: bool = False
) -> tuple[dict[str, Any], float]:
    """One run in a fresh output directory (``reuse``: a run already finished there is kept,
    not redone); its ``summary.json`` and the seconds it took (``wall_s.txt``)."""
    out = run_dir(arm, seed, work)
    finished = [out / "summary.json", out / "wall_s.txt"]
    if reuse and all(f.exists() for f in finished):
        return json.loads(finished[0].read_text()), float(finished[1].read_text())
    shutil.rmtree(out, ignore_errors=True)  # a run of an earlier grid is not resumed
    out.mkdir(parents=True)
    start = time.perf_counter()
    log = out / "align.log"
    with log.open("w") as file:
        args = align_args(arm, seed, work, base)
        done = run_align(args, processes=arm.processes, stdout=file, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(
            f"{arm.label}, seed {seed}: align.py failed; {log}:\n{log.read_text()[-3000:]}"
        )
    seconds = time.perf_counter() - start
    finished[1].write_text(f"{seconds}\n")
    return json.loads(finished[0].read_text()), seconds


def execute(arm: Arm, seed: int, work: Path, base: dict[str, Any]) -> dict[str, Any]:
    """One run of the grid in a fresh output directory, timed; its record."""
    return record(arm, seed, *launch(arm, seed, work, base))


def run_grid(arms: list[Arm], seeds: list[int], work: Path, toy_config: toy.ToyConfig,
             base: dict[str, Any], jobs: int = 1) -> list[dict[str, Any]]:  # fmt: skip
    """Run every arm with every seed, ``jobs`` runs at a time (each on one thread; a run's
    result does not depend on what runs beside it); one record per run, in grid order."""
    toy.prepare(toy_config, work / "toy")  # the SFT reference and data, shared by every run
    tasks = [(arm, seed, work, base) for arm in arms for seed in seeds]
    progress = tqdm(total=len(tasks), desc="alignment runs")
    with ThreadPoolExecutor(jobs) as pool:  # the runs are processes: threads only wait
        futures = [pool.submit(execute, *task) for task in tasks]
        for _ in as_completed(futures):
            progress.update()
    return [f.result() for f in futures]


METRICS = [("reward_mean", "reward"), ("win_rate", "win rate"), ("kl", "KL"),
           ("fsd_violation", "FSD violation"), ("quantile_margins.q10", "q10 margin"),
           ("quantile_margins.q50", "median margin")]  # fmt: skip


def metric_value(run: dict[str, Any], metric: str) -> Any:
    """``run[metric]``, where a dotted name reaches into nested records."""
    for part in metric.split("."):
        run = run[part]
    return run


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds for each (group, label), with the arm's method
    and beta."""
    rows = []
    for key in dict.fromkeys((r["group"], r["label"]) for r in runs):
        same = [r for r in runs if (r["group"], r["label"]) == key]
        row: dict[str, Any] = {"group": key[0], "label": key[1], "seeds": len(same),
                               "method": same[0]["method"],
                               "beta": same[0]["config"]["beta"]}  # fmt: skip
        for metric, _ in METRICS:
            values = [v for r in same if (v := metric_value(r, metric)) is not None]
            mean = sum(values) / len(values) if values else float("nan")
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0
            row[metric] = (mean, var**0.5)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| arm | beta | seeds | " + " | ".join(name for _, name in METRICS) + " |",
             "|---|---:|---:|" + "---:|" * len(METRICS)]  # fmt: skip
    for row in rows:
        cells = [f"{row[m][0]:.4f} ± {row[m][1]:.4f}" for m, _ in METRICS]
        head = f"| {row['label']} | {row['beta']:g} | {row['seeds']} | "
        lines.append(head + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_series(row: dict[str, Any]) -> str:
    """The line of the beta plot a row belongs to: its label without the beta."""
    return str(row["label"]).rsplit(", beta", 1)[0]


PLOTTED = (("reward_mean", "held-out reward"), ("fsd_violation", "FSD violation (held-out pairs)"),
           ("quantile_margins.q10", "q10 margin (held-out pairs)"))  # fmt: skip


def plot(rows: list[dict[str, Any]], group: str, path: Path) -> None:
    """Bars (mean ± std over seeds) of the group's arms; for the beta sweep, one line per
    method against beta (the paper's Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r["group"] == group]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 3.5))
    for ax, (metric, name) in zip(axes, PLOTTED, strict=True):
        ax.set_title(f"{group}: {name}")
        if group == "beta":
            for series in dict.fromkeys(sweep_series(r) for r in chosen):
                line = [r for r in chosen if sweep_series(r) == series]
                ax.errorbar([r["beta"] for r in line], [r[metric][0] for r in line],
                            yerr=[r[metric][1] for r in line], marker="o", capsize=3,
                            label=series)  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("beta")
            ax.legend(fontsize=7)
            continue
        means = [r[metric][0] for r in chosen]
        stds = [r[metric][1] for r in chosen]
        ax.bar(range(len(chosen)), means, yerr=stds, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(chosen)), [r["label"] for r in chosen], rotation=30, ha="right")
        if metric == "reward_mean" and chosen:
            pad = 2 * max([*stds, 0.01])
            ax.set_ylim(min(means) - pad, max(means) + pad)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(payload: dict[str, Any], name: str, docs: Path = DOCS) -> None:
    """Tables (mean ± std over seeds) and plots into ``docs``/alignment.md."""
    from benchmarks.common import write_section

    runs = payload["runs"]
    rows = summarize(runs)
    reference = runs[0]["reference_reward_mean"] if runs else float("nan")
    parts = [
        f"Command: `{payload['command']}`; {payload['machine']}; {payload['wall_s'] / 60:.1f} "
        f"minutes in all. Reference (SFT) model's held-out reward: {reference:.4f}. Mean ± "
        "standard deviation over seeds; reward and win rate on held-out prompts (higher is "
        "better), KL(policy || reference) estimated on policy samples. On the held-out "
        "preference pairs (the same for every method, paired or unpaired): FSD violation = "
        "share of quantile levels where the chosen implicit reward is below the rejected one "
        "(0 = chosen dominates), q10 and median margin = Q_chosen(t) - Q_rejected(t) of the "
        "implicit rewards at t = 0.1 and 0.5."
    ]
    for group in dict.fromkeys(r["group"] for r in rows):
        image = docs / "img" / f"{name}_{group.replace(' ', '_')}.png"
        plot(rows, group, image)
        table = markdown_table([r for r in rows if r["group"] == group])
        parts.append(f"### {group}\n\n{table}\n\n![{group}](img/{image.name})")
    write_section(name, "\n\n".join(parts), docs / "alignment.md", "Alignment: AOT vs baselines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"methods only, 1 seed, {QUICK_STEPS} steps"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "alignment")
    parser.add_argument("--report", action="store_true", help="only rebuild docs from results")
    args = parser.parse_args()
    name = "alignment_quick" if args.quick else "alignment"
    path = RESULTS / f"{name}.json"
    if not args.report:
        seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
        start = time.perf_counter()
        base = {"max_steps": QUICK_STEPS, "eval_every": QUICK_STEPS} if args.quick else {}
        runs = run_grid(grid(args.quick), seeds, args.work_dir, toy.ToyConfig(), base, args.jobs)
        env = environment("cpu")
        payload = {
            "command": "python -m benchmarks.alignment"
            + (" --quick" if args.quick else "")
            + (f" --jobs {args.jobs}" if args.jobs != 2 else ""),
            "machine": f"{env['cpu']}, {env['cores']} cores, torch {env['torch']}, "
            f"Python {platform.python_version()}",
            "wall_s": time.perf_counter() - start,
            "runs": runs,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
    report(json.loads(path.read_text()), name)


if __name__ == "__main__":
    main()
