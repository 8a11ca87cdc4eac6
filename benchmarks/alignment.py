"""AOT against DPO, IPO and KTO on the examples' embedded task (exact reward), with the paper's
ablations: batch size (and global-batch sorting on 2 gloo ranks), beta, penalty, hard vs soft sort.

    python -m benchmarks.alignment            # the full grid (3 seeds)
    python -m benchmarks.alignment --quick    # the method comparison, 1 seed, fewer steps
    python -m benchmarks.alignment --report   # tables and plots from the saved results only

Every run starts from the same SFT reference (built once, cached in ``--work-dir``); seeds vary
the alignment (data order, LoRA init, sampling). Each run is measured on held-out prompts:
mean ground-truth reward, win rate against the reference, a KL(policy || reference) estimate,
and first-order stochastic dominance of chosen over rejected implicit rewards on the held-out
preference split. Writes ``benchmarks/results/alignment.json`` (or ``alignment_quick.json``),
``docs/alignment.md`` and its plots in ``docs/img/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.common import ROOT, environment

sys.path.insert(0, str(ROOT / "examples"))

import align
from aot_examples import toy

RESULTS = ROOT / "benchmarks" / "results"
QUICK_STEPS = 60
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
    beta = [Arm("beta", f"{b}", {"beta": b}) for b in (0.01, 0.1, 0.5, 2.0)]
    penalty = [
        Arm("penalty", p, {"penalty": p}) for p in ("logistic", "squared_hinge", "least_squares")
    ]
    return methods + batch + beta + penalty


def config(
    arm: Arm, seed: int, work: Path, toy_config: toy.ToyConfig, base: dict[str, Any]
) -> align.AlignConfig:
    """The embedded defaults, updated by ``base`` (the whole grid's settings), then the arm's."""
    out = work / "runs" / f"{arm.group}-{arm.label}-seed{seed}".replace(" ", "_")
    overrides = {**base, **arm.overrides, "seed": seed, "toy": toy_config,
                 "toy_cache_dir": str(work / "toy")}  # fmt: skip
    return align.AlignConfig.embedded(str(out), **overrides)


def launch(cfg: align.AlignConfig, processes: int) -> dict[str, Any]:
    """``align.run(cfg)`` here, or on ``processes`` gloo ranks through torchrun."""
    if processes == 1:
        return align.run(cfg)
    payload = json.dumps(dataclasses.asdict(cfg))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "-m", "benchmarks.alignment", "--worker", payload]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return json.loads((Path(cfg.output_dir) / "summary.json").read_text())


def worker(payload: str) -> None:
    """A rank of a multi-process arm: rebuild the config (the toy task included) and run it."""
    options = json.loads(payload)
    options["toy"] = toy.ToyConfig(**options["toy"])
    align.run(align.AlignConfig(**options))


def record(arm: Arm, seed: int, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    held_out = summary.get("eval_policy", {})
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
        "fsd_violation": held_out.get("fsd/violation"),
        "almost_fsd_ratio": held_out.get("fsd/almost_ratio"),
        "reward_margin": held_out.get("rewards/margin"),
        "wall_s": seconds,
        "config": {
            **arm.overrides,
            "processes": arm.processes,
            "steps": summary.get("steps"),
        },
    }


def run_grid(arms: list[Arm], seeds: list[int], work: Path, toy_config: toy.ToyConfig,
             base: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """Run every arm with every seed; one record per run."""
    toy.prepare(toy_config, work / "toy")  # the SFT reference, shared by every run
    runs = []
    for arm, seed in tqdm([(a, s) for a in arms for s in seeds], desc="alignment runs"):
        start = time.perf_counter()
        summary = launch(config(arm, seed, work, toy_config, base), arm.processes)
        runs.append(record(arm, seed, summary, time.perf_counter() - start))
    return runs


METRICS = [("reward_mean", "reward"), ("win_rate", "win rate"), ("kl", "KL"),
           ("fsd_violation", "FSD violation")]  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds for each (group, label)."""
    rows = []
    for key in dict.fromkeys((r["group"], r["label"]) for r in runs):
        same = [r for r in runs if (r["group"], r["label"]) == key]
        row: dict[str, Any] = {"group": key[0], "label": key[1], "seeds": len(same)}
        for metric, _ in METRICS:
            values = [r[metric] for r in same if r[metric] is not None]
            mean = sum(values) / len(values) if values else float("nan")
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0
            row[metric] = (mean, var**0.5)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| arm | seeds | " + " | ".join(name for _, name in METRICS) + " |",
             "|---|---:|" + "---:|" * len(METRICS)]  # fmt: skip
    for row in rows:
        cells = [f"{row[m][0]:.4f} ± {row[m][1]:.4f}" for m, _ in METRICS]
        lines.append(f"| {row['label']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], group: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r["group"] == group]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric, name in ((axes[0], "reward_mean", "held-out reward"),
                             (axes[1], "fsd_violation", "FSD violation (held-out)")):  # fmt: skip
        means = [r[metric][0] for r in chosen]
        stds = [r[metric][1] for r in chosen]
        ax.bar(range(len(chosen)), means, yerr=stds, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(chosen)), [r["label"] for r in chosen], rotation=30, ha="right")
        ax.set_title(f"{group}: {name}")
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
        "better), KL(policy || reference) estimated on policy samples, FSD violation = share of "
        "quantile levels where the chosen implicit reward is below the rejected one on the "
        "held-out preference split (0 = chosen dominates)."
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
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "alignment")
    parser.add_argument("--report", action="store_true", help="only rebuild docs from results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # the embedded model is tiny: more threads only contend
    if args.worker is not None:
        worker(args.worker)
        return
    name = "alignment_quick" if args.quick else "alignment"
    path = RESULTS / f"{name}.json"
    if not args.report:
        seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
        start = time.perf_counter()
        base = {"max_steps": QUICK_STEPS, "eval_every": QUICK_STEPS} if args.quick else {}
        runs = run_grid(grid(args.quick), seeds, args.work_dir, toy.ToyConfig(), base)
        env = environment("cpu")
        payload = {
            "command": "python -m benchmarks.alignment" + (" --quick" if args.quick else ""),
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
