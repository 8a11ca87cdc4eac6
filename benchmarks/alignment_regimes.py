"""AOT in its own regime: the pre-registered study of docs/preregistration.md (issue 12).

Where does AOT help, and where not? AOT against DPO, IPO and KTO in three data cells of the
embedded task (exact reward as the judge), each method tuned with the same budget, then tested
with fresh seeds; and a sort-group ablation in the unpaired cell.

    python -m benchmarks.alignment_regimes            # the study, 2 runs at a time
    python -m benchmarks.alignment_regimes --quick    # a pipeline check, not the study
    python -m benchmarks.alignment_regimes --report   # the docs section from the saved results

Phases, as the protocol fixes them: **tune** (every configuration of every method in every
cell, tuning seeds 100 and 101, reward on the validation prompts), the **selection** (highest
mean validation reward; ties: the lower KL), **test** (the chosen configuration, test seeds 0-4,
test prompts) and the **ablation** (``aot_unpaired`` at its chosen configuration in the
``unpaired`` cell, 256 completions per step sorted in groups of 16, 64 or 256). Every run is
``examples/align.py`` launched as a user launches it (``benchmarks.alignment.launch``), on the
study's task (``aot_examples.toy.STUDY_TOY``, one SFT reference for every run, in
``--work-dir``). Writes ``benchmarks/results/alignment_regimes.json`` (``--quick``:
``alignment_regimes_quick.json``), one record per run, and a section of ``docs/alignment.md``
with its plots in ``docs/img/``: tables, paired bootstrap intervals, the matched-KL comparison
and a verdict per hypothesis computed by the protocol's rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from statistics import fmean, median, stdev
from typing import Any, TypeVar

from aot_examples import toy
from aot_examples.config import EMBEDDED_DEFAULTS
from aot_examples.losses import PAIRED_LOSSES
from aot_examples.toy.regimes import (
    BOOTSTRAP_SEED,
    RESAMPLES,
    bootstrap_interval,
    bootstrap_interval_of_gap,
    combine,
    interpolate,
    verdict,
)
from tqdm import tqdm

from benchmarks.alignment import Arm, launch
from benchmarks.common import ROOT, environment, write_section

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
NAME = "alignment_regimes"

T = TypeVar("T")
CELLS = tuple(toy.CELL_DATA)  # best_vs_worst, noisy, unpaired
TUNING_SEEDS = (100, 101)
TEST_SEEDS = (0, 1, 2, 3, 4)
#: ``--quick``: optimizer steps of the tune and test runs, and of the ablation's.
QUICK_STEPS, QUICK_ABLATION_STEPS = 30, 10


def _betas(*betas: float) -> list[dict[str, Any]]:
    return [{"beta": b} for b in betas]


_AOT = [{"penalty": p, "beta": b} for p in ("logistic", "least_squares") for b in (1.0, 4.0, 16.0)]
#: Each method of the study: its fixed loss options and its 6 configurations (the protocol's
#: table: grids centred on each method's best beta in docs/alignment.md, in half-decade steps).
METHODS: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "aot_paired": ({"loss": "aot_paired", "sort": "hard"}, _AOT),
    "aot_unpaired": ({"loss": "aot_unpaired", "sort": "hard"}, _AOT),
    "dpo": ({"loss": "dpo"}, _betas(0.1, 0.3, 1.0, 3.0, 10.0, 30.0)),
    "dpo_ls": ({"loss": "dpo", "label_smoothing": 0.2}, _betas(0.1, 0.3, 1.0, 3.0, 10.0, 30.0)),
    "ipo": ({"loss": "ipo"}, _betas(0.01, 0.03, 0.1, 0.3, 1.0, 3.0)),
    "kto": ({"loss": "kto"}, _betas(0.3, 1.0, 3.0, 10.0, 30.0, 100.0)),
}
AOT_METHODS = ("aot_paired", "aot_unpaired")
BASELINES = ("dpo", "dpo_ls", "ipo", "kto")


def cell_methods(cell: str) -> list[str]:
    """Every method in every cell; label-smoothed DPO in the ``noisy`` cell only."""
    return [m for m in METHODS if m != "dpo_ls" or cell == "noisy"]


def feed(cell: str, method: str) -> dict[str, Any]:
    """``align.py`` options for what a method is fed in a cell: the cell's records; in
    ``unpaired``, KTO's weights for 1 desirable to 3 undesirable and, for the paired losses,
    pairs formed within each micro-batch. (In the paired cells, the unpaired losses take the
    pairs' chosen completions as desirable and rejected ones as undesirable: the loop's
    semantics of paired data.)"""
    options: dict[str, Any] = {"toy_data": toy.CELL_DATA[cell]}
    loss = METHODS[method][0]["loss"]
    if cell == "unpaired" and loss in PAIRED_LOSSES:
        options["pair_within_batch"] = True
    if cell == "unpaired" and loss == "kto":
        options |= {"desirable_weight": 3.0, "undesirable_weight": 1.0}
    return options


def setting_label(setting: dict[str, Any]) -> str:
    """A configuration in words: ``"logistic, beta 4"``, ``"beta 0.3"``."""
    words = [str(v) for k, v in setting.items() if k == "penalty"]
    words += [f"{k} {v:g}" for k, v in setting.items() if k != "penalty"]
    return ", ".join(words)


@dataclass(frozen=True)
class Plan:
    """Everything a study runs: the task, options of every run, the methods of each cell with
    their configurations, the seeds, and the ablation's group sizes and length."""

    name: str = NAME
    toy_config: toy.ToyConfig = toy.STUDY_TOY
    base: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, list[str]] = field(default_factory=lambda: {c: cell_methods(c) for c in CELLS})
    grids: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {m: settings for m, (_, settings) in METHODS.items()}
    )
    tuning_seeds: tuple[int, ...] = TUNING_SEEDS
    test_seeds: tuple[int, ...] = TEST_SEEDS
    ablation_groups: tuple[int, ...] = (16, 64, 256)
    ablation_per_step: int = 256
    ablation_steps: int = 40
    ablation_warmup: int = 3

    @classmethod
    def quick(cls) -> Plan:
        """One tuning seed and one test seed per cell and method, fewer steps."""
        return cls(
            name=f"{NAME}_quick",
            base={"max_steps": QUICK_STEPS},
            tuning_seeds=TUNING_SEEDS[:1],
            test_seeds=TEST_SEEDS[:1],
            ablation_steps=QUICK_ABLATION_STEPS,
        )

    @property
    def quick_check(self) -> bool:
        return self.name.endswith("_quick")


@dataclass(frozen=True)
class Run:
    """One run of the study: its phase, cell, method, configuration (``setting``: one of the
    method's grid) and seed; ``extra`` holds the ablation's batch options."""

    phase: str  # "tune", "test" or "ablation"
    cell: str
    method: str
    setting: dict[str, Any]
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompts(self) -> str:
        """Tuning is scored on the validation prompts, the rest on the test prompts."""
        return "validation" if self.phase == "tune" else "test"

    def arm(self, plan: Plan) -> Arm:
        """The run as ``benchmarks.alignment`` launches it (its output directory from its
        names)."""
        overrides = {
            **METHODS[self.method][0],
            **self.setting,
            **feed(self.cell, self.method),
            "toy_eval_prompts": self.prompts,
            **self.extra,
        }
        label = run_label(self.method, setting_label(self.setting), self.extra)
        return Arm(f"{plan.name}-{self.phase}-{self.cell}", label, overrides)


def ablation_options(group: int, per_step: int, steps: int, warmup: int) -> dict[str, Any]:
    """``align.py``'s batch options of a sort-group ablation: ``group`` completions sorted
    together, ``per_step`` per optimizer step (accumulated), ``steps`` steps."""
    return {
        "per_device_batch_size": group,
        "gradient_accumulation_steps": per_step // group,
        "max_steps": steps,
        "warmup_steps": warmup,
    }


def ablation(plan: Plan, group: int) -> dict[str, Any]:
    """The plan's ablation options for ``group``."""
    return ablation_options(
        group, plan.ablation_per_step, plan.ablation_steps, plan.ablation_warmup
    )


def run_label(name: str, setting: str, extra: dict[str, Any]) -> str:
    """A run's directory label: its method or arm, configuration and (ablation) group."""
    label = f"{name}-{setting}"
    if extra:
        label += f"-group{extra['per_device_batch_size']}"
    return label.replace(", ", "-").replace(" ", "")


#: The metrics of a record and the keys of ``toy.evaluate_policy`` they come from.
METRICS = {
    "reward_mean": "policy_reward_mean",
    "win_rate": "win_rate_mean",
    "kl": "kl_policy_reference_mean",
    "reward_q10": "policy_reward_q10",
    "zero_reward_share": "policy_zero_reward_share",
    "fsd_violation_per_prompt": "fsd_violation_per_prompt",
    "fsd_violation_pooled": "fsd_violation_pooled",
}
#: Options of a run's config that name files of this machine (left out of records).
PATHS = ("output_dir", "model", "dataset", "eval_dataset", "toy_config", "toy_cache_dir")


def record(run: Run, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A run's record: who it is, its metrics on its prompts, and its whole configuration."""
    cfg = summary["config"]
    return {
        "phase": run.phase,
        "cell": run.cell,
        "method": run.method,
        "seed": run.seed,
        "prompts": summary["prompts"],
        "setting": run.setting,
        "setting_label": setting_label(run.setting),
        "beta": cfg["beta"],
        "penalty": cfg["penalty"] if run.method in AOT_METHODS else None,
        "label_smoothing": cfg["label_smoothing"],
        "group_size": cfg["per_device_batch_size"],
        "gradient_accumulation_steps": cfg["gradient_accumulation_steps"],
        "steps": summary["steps"],
        **{name: summary[key] for name, key in METRICS.items()},
        "reward_se": summary["policy_reward_se"],
        "reference_reward_mean": summary["reference_reward_mean"],
        "reference_reward_q10": summary["reference_reward_q10"],
        "reference_zero_reward_share": summary["reference_zero_reward_share"],
        "train_examples": summary["train_examples"],
        "wall_s": seconds,
        "train_time_s": summary["train_time_s"],
        "config": {k: v for k, v in cfg.items() if k not in PATHS},
    }


def run_all(
    runs: Sequence[Run], plan: Plan, work: Path, jobs: int, reuse: bool
) -> list[dict[str, Any]]:
    """Launch ``runs``, ``jobs`` at a time (each on one thread: a run's result does not depend
    on what runs beside it); their records in the order given."""

    def execute(run: Run) -> dict[str, Any]:
        summary, seconds = launch(run.arm(plan), run.seed, work, plan.base, reuse=reuse)
        return record(run, summary, seconds)

    return in_parallel(execute, runs, jobs, f"{plan.name} runs")


def in_parallel(
    execute: Callable[[T], dict[str, Any]], runs: Sequence[T], jobs: int, desc: str
) -> list[dict[str, Any]]:
    """``execute`` of every run, ``jobs`` at a time on threads (the runs are processes: the
    threads only wait), with a progress bar; the results in the order given."""
    progress = tqdm(total=len(runs), desc=desc)
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(execute, run) for run in runs]
        for _ in as_completed(futures):
            progress.update()
    progress.close()
    return [f.result() for f in futures]


def tune_table(
    runs: Sequence[dict[str, Any]],
    who: str = "method",
    metrics: Sequence[str] = ("reward_mean", "kl"),
) -> list[dict[str, Any]]:
    """Per cell, ``who`` (method or arm) and configuration of the tune phase: the ``metrics``
    on the validation prompts, each the mean over the tuning seeds, in grid order."""
    tune = [r for r in runs if r["phase"] == "tune"]
    rows = []
    for key in dict.fromkeys((r["cell"], r[who], r["setting_label"]) for r in tune):
        same = [r for r in tune if (r["cell"], r[who], r["setting_label"]) == key]
        rows.append(
            {
                "cell": key[0],
                who: key[1],
                "setting_label": key[2],
                "setting": same[0]["setting"],
                "seeds": len(same),
                **{m: fmean(r[m] for r in same) for m in metrics},
            }
        )
    return rows


def select(
    runs: Sequence[dict[str, Any]], who: str = "method"
) -> dict[tuple[str, str], dict[str, Any]]:
    """The protocol's selection: per cell and ``who`` (method or arm), the configuration with
    the highest validation reward averaged over the tuning seeds (ties: the lower KL; then grid
    order)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for row in tune_table(runs, who):
        key = (row["cell"], row[who])
        if key not in best or (row["reward_mean"], -row["kl"]) > (
            best[key]["reward_mean"],
            -best[key]["kl"],
        ):
            best[key] = row
    return {key: row["setting"] for key, row in best.items()}


def run_study(plan: Plan, work: Path, jobs: int = 2, reuse: bool = False) -> dict[str, Any]:
    """Tune, select, then test and the ablation; the payload of the result file."""
    start = time.perf_counter()
    artifacts = toy.prepare(plan.toy_config, work / "toy")  # one SFT reference for every run
    tune = [
        Run("tune", cell, method, setting, seed)
        for cell, methods in plan.cells.items()
        for method in methods
        for setting in plan.grids[method]
        for seed in plan.tuning_seeds
    ]
    records = run_all(tune, plan, work, jobs, reuse)
    chosen = select(records)
    test = [
        Run("test", cell, method, chosen[cell, method], seed)
        for cell, methods in plan.cells.items()
        for method in methods
        for seed in plan.test_seeds
    ]
    if ("unpaired", "aot_unpaired") in chosen:
        setting = chosen["unpaired", "aot_unpaired"]
        test += [
            Run("ablation", "unpaired", "aot_unpaired", setting, seed, ablation(plan, g))
            for g in plan.ablation_groups
            for seed in plan.test_seeds
        ]
    records += run_all(test, plan, work, jobs, reuse)
    env = environment("cpu")
    return {
        "quick": plan.quick_check,
        "machine": f"{env['cpu']}, {env['cores']} cores, torch {env['torch']}, "
        f"Python {platform.python_version()}",
        "jobs": jobs,
        "wall_s": time.perf_counter() - start,
        "toy": dataclasses.asdict(plan.toy_config),
        "data": artifacts.data_stats,
        "plan": {
            "base": plan.base,
            "cells": plan.cells,
            "tuning_seeds": plan.tuning_seeds,
            "test_seeds": plan.test_seeds,
            "ablation": {
                "groups": plan.ablation_groups,
                "per_step": plan.ablation_per_step,
                "steps": plan.ablation_steps,
                "warmup_steps": plan.ablation_warmup,
            },
        },
        "runs": records,
    }


# --------------------------------------------------------------------------------------------
# Analysis: paired differences, bootstrap intervals, matched KL, verdicts
# --------------------------------------------------------------------------------------------


def seed_values(
    runs: Sequence[dict[str, Any]], metric: str = "reward_mean", **match: Any
) -> dict[int, float]:
    """``metric`` by seed over the runs whose fields equal ``match``."""
    return {r["seed"]: r[metric] for r in runs if all(r[k] == v for k, v in match.items())}


def paired_differences(first: dict[int, float], second: dict[int, float]) -> list[float]:
    """first - second on the seeds both have (same seed: same LoRA init and data order)."""
    return [first[s] - second[s] for s in sorted(first.keys() & second.keys())]


def seed_differences(
    runs: Sequence[dict[str, Any]], cell: str, a: str, b: str, metric: str = "reward_mean"
) -> list[float]:
    """Paired differences of ``metric``, method ``a`` - method ``b``, over the test seeds."""
    test = [r for r in runs if r["phase"] == "test"]
    return paired_differences(
        seed_values(test, metric, cell=cell, method=a),
        seed_values(test, metric, cell=cell, method=b),
    )


@dataclass
class Comparison:
    """One predicted difference: its point estimate (the mean difference), interval and
    verdict; ``seeds`` says what it is over."""

    hypothesis: str
    what: str
    prediction: str  # "> 0", ">= 0", or "increasing" (H4's means)
    seeds: str = "-"
    mean: float | None = None
    interval: tuple[float, float] | None = None
    verdict: str = "not run"


def compare(hypothesis: str, what: str, differences: list[float], strict: bool) -> Comparison:
    """The predicted difference ``> 0`` (``strict``) or ``>= 0`` over paired differences."""
    comparison = Comparison(hypothesis, what, "> 0" if strict else ">= 0")
    if differences:
        comparison.seeds, comparison.mean = str(len(differences)), fmean(differences)
        comparison.interval = bootstrap_interval(differences)
        comparison.verdict = verdict(comparison.interval, strict=strict)
    return comparison


def best_method(runs: Sequence[dict[str, Any]], cell: str, methods: Sequence[str]) -> str | None:
    """The method of ``methods`` with the highest mean test reward in ``cell``."""
    test = [r for r in runs if r["phase"] == "test"]
    means = {
        m: fmean(values.values())
        for m in methods
        if (values := seed_values(test, cell=cell, method=m))
    }
    return max(means, key=means.__getitem__) if means else None


def hypotheses(runs: Sequence[dict[str, Any]]) -> tuple[list[Comparison], dict[str, str]]:
    """Every comparison of the hypotheses H1-H5 (docs/preregistration.md), and each
    hypothesis's verdict; one of several differences needs all of them (:func:`combine`)."""
    h1 = compare(
        "H1",
        "best_vs_worst: dpo - aot_paired",
        seed_differences(runs, "best_vs_worst", "dpo", "aot_paired"),
        strict=False,
    )
    noisy = seed_differences(runs, "noisy", "aot_paired", "dpo")
    control = seed_differences(runs, "best_vs_worst", "aot_paired", "dpo")
    h2 = compare("H2", "noisy: aot_paired - dpo", noisy, strict=True)
    h2b = Comparison(
        "H2b", "(aot_paired - dpo) in noisy - (aot_paired - dpo) in best_vs_worst", "> 0"
    )
    if noisy and control:
        h2b.seeds = f"{len(noisy)} + {len(control)}"
        h2b.mean = fmean(noisy) - fmean(control)
        h2b.interval = bootstrap_interval_of_gap(noisy, control)
        h2b.verdict = verdict(h2b.interval, strict=True)
    h3 = [
        compare(
            "H3",
            f"unpaired: aot_unpaired - {other}",
            seed_differences(runs, "unpaired", "aot_unpaired", other),
            strict=True,
        )
        for other in ("kto", "dpo", "ipo", "aot_paired")
    ]
    h4 = ablation_comparisons(runs)
    h5 = []
    for cell in ("noisy", "unpaired"):
        aot, baseline = best_method(runs, cell, AOT_METHODS), best_method(runs, cell, BASELINES)
        differences = []
        if aot and baseline:
            differences = seed_differences(runs, cell, baseline, aot, "fsd_violation_pooled")
        what = f"{cell}: pooled FSD violation, best baseline ({baseline}) - best AOT ({aot})"
        h5.append(compare("H5", what, differences, strict=True))
    overall = {
        "H1": h1.verdict,
        "H2": h2.verdict,
        "H2b": h2b.verdict,
        "H3": combine([c.verdict for c in h3]),
        "H4": h4_verdict(h4),
        "H5": combine([c.verdict for c in h5]),
    }
    return [h1, h2, h2b, *h3, *h4, *h5], overall


def ablation_comparisons(runs: Sequence[dict[str, Any]]) -> list[Comparison]:
    """H4: reward(largest group) - reward(smallest) over the test seeds, and whether the mean
    rewards grow with the group size."""
    ablation = [r for r in runs if r["phase"] == "ablation"]
    groups = sorted({r["group_size"] for r in ablation})
    if len(groups) < 2:
        return [Comparison("H4", "ablation: reward(256) - reward(16)", "> 0")]
    by_group = {g: seed_values(ablation, group_size=g) for g in groups}
    small, large = groups[0], groups[-1]
    gap = compare(
        "H4",
        f"ablation: reward({large}) - reward({small})",
        paired_differences(by_group[large], by_group[small]),
        strict=True,
    )
    means = [fmean(by_group[g].values()) for g in groups]
    what = f"ablation: mean rewards of groups {', '.join(map(str, groups))}: " + ", ".join(
        f"{m:.4f}" for m in means
    )
    ordered = all(a < b for a, b in pairwise(means))
    order = Comparison("H4", what, "increasing", verdict="holds" if ordered else "does not hold")
    return [gap, order]


def h4_verdict(comparisons: Sequence[Comparison]) -> str:
    """Supported when the gap's interval is above 0 and the means are ordered; a supported gap
    with unordered means is inconclusive."""
    gap = comparisons[0]
    if gap.verdict == "supported" and comparisons[-1].verdict != "holds":
        return "inconclusive"
    return gap.verdict


def matched_kl(
    runs: Sequence[dict[str, Any]], cell: str
) -> tuple[float | None, dict[str, float | None]]:
    """The median test-phase KL of the cell (over every test run of every method), and each
    method's validation reward interpolated there between its configurations ordered by
    validation KL (means of the tuning seeds); ``None`` where they do not bracket it."""
    kls = [r["kl"] for r in runs if r["phase"] == "test" and r["cell"] == cell]
    if not kls:
        return None, {}
    target = median(kls)
    rows = [r for r in tune_table(runs) if r["cell"] == cell]
    return target, {
        m: interpolate([(r["kl"], r["reward_mean"]) for r in rows if r["method"] == m], target)
        for m in dict.fromkeys(r["method"] for r in rows)
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

COLUMNS = {
    "reward_mean": "reward",
    "win_rate": "win rate",
    "kl": "KL",
    "reward_q10": "reward q10",
    "zero_reward_share": "zero-reward share",
    "fsd_violation_per_prompt": "FSD viol. per prompt",
    "fsd_violation_pooled": "FSD viol. pooled",
}


def mean_sd(values: Sequence[float]) -> str:
    sd = stdev(values) if len(values) > 1 else 0.0
    return f"{fmean(values):.4f} ± {sd:.4f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> str:
    """A markdown table; ``align`` holds ``l`` or ``r`` per column."""
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def metric_table(first: str, groups: Sequence[tuple[str, str, list[dict[str, Any]]]]) -> str:
    """Mean ± standard deviation over seeds of every metric, one row per ``(name, setting,
    runs)``."""
    rows = [
        [name, setting, len(same), *(mean_sd([r[m] for r in same]) for m in COLUMNS)]
        for name, setting, same in groups
    ]
    return markdown_table(
        [first, "setting", "seeds", *COLUMNS.values()], rows, "llr" + "r" * len(COLUMNS)
    )


def interval_text(c: Comparison) -> str:
    return "-" if c.interval is None else f"[{c.interval[0]:+.4f}, {c.interval[1]:+.4f}]"


def signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"


COLORS = {
    "aot_paired": "tab:blue",
    "aot_unpaired": "tab:cyan",
    "dpo": "tab:red",
    "dpo_ls": "tab:pink",
    "ipo": "tab:orange",
    "kto": "tab:green",
}


def plot_cell(
    runs: Sequence[dict[str, Any]],
    cell: str,
    path: Path,
    *,
    who: str = "method",
    target: float | None = None,
    colors: dict[str, str] = COLORS,
) -> None:
    """Reward against KL of each ``who`` (method or arm): every configuration on the
    validation prompts (means of the tuning seeds; the chosen one ringed), and the test runs
    (the mean starred); the dotted line is ``target``, by default the cell's median test-phase
    KL (the matched KL)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in tune_table(runs, who) if r["cell"] == cell]
    test = [r for r in runs if r["phase"] == "test" and r["cell"] == cell]
    chosen = select(runs, who)
    if target is None:
        target, _ = matched_kl(runs, cell)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for method in dict.fromkeys(r[who] for r in rows):
        color = colors.get(method)
        line = sorted((r for r in rows if r[who] == method), key=lambda r: r["kl"])
        left.plot(
            [r["kl"] for r in line],
            [r["reward_mean"] for r in line],
            "o-",
            color=color,
            label=method,
        )
        for r in line:
            if r["setting"] == chosen[cell, method]:
                left.plot(r["kl"], r["reward_mean"], "o", ms=13, mfc="none", color=color)
        mine = [r for r in test if r[who] == method]
        if mine:
            right.plot(
                [r["kl"] for r in mine],
                [r["reward_mean"] for r in mine],
                "o",
                alpha=0.5,
                color=color,
                label=method,
            )
            right.plot(
                fmean(r["kl"] for r in mine),
                fmean(r["reward_mean"] for r in mine),
                "*",
                ms=14,
                color=color,
            )
    for ax, title in (
        (left, "every configuration, validation (ringed: chosen)"),
        (right, "chosen configurations, test (star: mean)"),
    ):
        if target is not None:
            ax.axvline(target, color="gray", ls=":", lw=1)
        ax.set_title(f"{cell}: {title}", fontsize=10)
        ax.set_xlabel("KL(policy || reference)")
        ax.set_ylabel("exact reward")
        ax.legend(fontsize=7)
    left.set_xscale("symlog", linthresh=0.1)  # the grid's KLs span decades
    left.set_xlabel("KL(policy || reference), linear below 0.1")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ablation(
    runs: Sequence[dict[str, Any]],
    path: Path,
    title: str = "unpaired: aot_unpaired, sort group size",
) -> None:
    """Test reward against the sort group size (every seed, and the mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ablation = [r for r in runs if r["phase"] == "ablation"]
    groups = sorted({r["group_size"] for r in ablation})
    rewards = {g: [r["reward_mean"] for r in ablation if r["group_size"] == g] for g in groups}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for g, values in rewards.items():
        ax.plot([g] * len(values), values, "o", alpha=0.5, color="tab:cyan")
    ax.plot(
        groups,
        [fmean(v) for v in rewards.values()],
        "*-",
        ms=12,
        color="tab:blue",
        label="mean over seeds",
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(groups, [str(g) for g in groups])
    ax.set_xlabel("completions sorted together")
    ax.set_ylabel("exact reward (test)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


ANALYSIS_NOTE = (
    "What these results mean for each hypothesis is written by hand after the run, below this "
    "generated block ([What the regimes study says](#what-the-regimes-study-says)); `--report` "
    "rewrites the block and leaves the analysis as it is."
)


def full_study_hours(quick: dict[str, Any]) -> float:
    """The study's wall time estimated from a quick run of its whole grid: every quick run
    once per seed of the study, its training time scaled to the study's number of steps, the
    runs ``jobs`` at a time."""
    plan, steps = Plan(), EMBEDDED_DEFAULTS["max_steps"]
    seconds = 0.0
    for r in quick["runs"]:
        ablation = r["phase"] == "ablation"
        scale = (plan.ablation_steps if ablation else steps) / r["steps"]
        seeds = len(plan.tuning_seeds if r["phase"] == "tune" else plan.test_seeds)
        seconds += seeds * (r["wall_s"] + (scale - 1) * r["train_time_s"])
    return seconds / quick["jobs"] / 3600


def intro(payload: dict[str, Any]) -> list[str]:
    """The title, what was run where, the metrics, and the data of the cells."""
    runs, plan, data = payload["runs"], payload["plan"], payload["data"]
    title = "## AOT in its own regime: " + (
        "quick run (pipeline check, not the study)" if payload["quick"] else "the study"
    )
    parts = [title]
    if payload["quick"]:
        parts.append(
            "**Pipeline check, not the study:** one tuning seed and one test seed per cell "
            f"and method, {plan['base'].get('max_steps')} optimizer steps (ablation "
            f"{plan['ablation']['steps']}). Its numbers answer nothing; an interval over one "
            "seed is the single difference. From its timings, the study would take about "
            f"{full_study_hours(payload):.1f} hours at {payload['jobs']} runs at a time."
        )
    reference = {
        split: fmean(r["reference_reward_mean"] for r in runs if r["prompts"] == split)
        for split in ("validation", "test")
        if any(r["prompts"] == split for r in runs)
    }
    parts.append(
        f"Protocol: [preregistration.md](preregistration.md). Command: `{payload['command']}`; "
        f"{payload['machine']}; {len(runs)} runs, {payload['jobs']} at a time, "
        f"{payload['wall_s'] / 3600:.2f} hours in all. Tuning seeds "
        f"{', '.join(map(str, plan['tuning_seeds']))} on the validation prompts, test seeds "
        f"{', '.join(map(str, plan['test_seeds']))} on the test prompts. The reference (SFT) "
        "model's reward: "
        + ", ".join(f"{split} {value:.4f}" for split, value in reference.items())
        + ". Tables: mean ± standard deviation over the test seeds of the reward, the win rate "
        "(against the reference's sample of the same prompt and index, ties 1/2), "
        "KL(policy || reference) on policy samples, the 10 % lower quantile of the pooled "
        "rewards, the share of zero-reward completions, and the FSD violation of the exact "
        "reward (the share of levels 0.01..0.99 where the policy's quantile is below the "
        "reference's; 0: the policy dominates), per prompt (averaged) and pooled. Paired "
        "differences are over the test seeds (same seed: same LoRA initialization and data "
        f"order), with 95 % percentile intervals of {RESAMPLES:,} bootstrap resamples (seed "
        f"{BOOTSTRAP_SEED}); with 5 seeds they are coarse."
    )
    noisy = data["train_noisy_pairs"]
    better, tied = data["train_noisy_pairs_truly_better"], data["train_noisy_pairs_truly_tied"]
    worse = noisy - better - tied
    parts.append(
        f"Data ({payload['toy']['train_prompts']} training prompts, "
        f"{payload['toy']['samples_per_prompt']} reference samples each): `best_vs_worst` "
        f"{data['train_pairs']} pairs; `noisy` {noisy} pairs whose chosen completion is truly "
        f"better in {better / noisy:.0%}, tied in {tied / noisy:.0%} and worse in "
        f"{worse / noisy:.0%} ({data['train_noisy_labels_flipped']} labels flipped); "
        f"`unpaired` {data['train_thumbs']} completions, {data['train_thumbs_desirable']} "
        "desirable."
    )
    return parts


def cell_section(runs: Sequence[dict[str, Any]], cell: str, name: str, docs: Path) -> str:
    """A cell's table at the chosen configurations, AOT against each baseline, the matched-KL
    comparison, the reward-KL plot and the tuning table."""
    chosen = select(runs)
    test = [r for r in runs if r["phase"] == "test" and r["cell"] == cell]
    methods = list(dict.fromkeys(r["method"] for r in runs if r["cell"] == cell))
    groups = [
        (m, setting_label(chosen[cell, m]), [r for r in test if r["method"] == m]) for m in methods
    ]
    parts = [f"### {cell}", metric_table("method", [g for g in groups if g[2]])]
    diffs = [
        compare("", f"{a} - {b}", seed_differences(runs, cell, a, b), strict=True)
        for a in AOT_METHODS
        for b in BASELINES
        if a in methods and b in methods
    ]
    if diffs:
        rows = [[c.what, c.seeds, signed(c.mean), interval_text(c)] for c in diffs]
        parts.append(
            "Test reward, AOT against each baseline (paired by seed):\n\n"
            + markdown_table(["difference", "seeds", "mean", "95 % CI"], rows, "lrrl")
        )
    target, matched = matched_kl(runs, cell)
    if target is not None:
        rows = [[m, "not reached" if v is None else f"{v:.4f}"] for m, v in matched.items()]
        parts.append(
            "Matched KL: each method's validation reward interpolated at the cell's median "
            f"test-phase KL, {target:.4f}:\n\n"
            + markdown_table(["method", "validation reward at that KL"], rows, "lr")
        )
    image = docs / "img" / f"{name}_{cell}.png"
    plot_cell(runs, cell, image)
    parts.append(f"![{cell}: reward against KL](img/{image.name})")
    rows = [
        [
            r["method"],
            r["setting_label"],
            r["seeds"],
            f"{r['reward_mean']:.4f}",
            f"{r['kl']:.4f}",
            "yes" if r["setting"] == chosen[cell, r["method"]] else "",
        ]
        for r in tune_table(runs)
        if r["cell"] == cell
    ]
    header = ["method", "setting", "seeds", "validation reward", "validation KL", "chosen"]
    parts.append(
        "<details><summary>Tuning: every configuration (means of the tuning seeds)</summary>"
        "\n\n" + markdown_table(header, rows, "llrrrl") + "\n\n</details>"
    )
    return "\n\n".join(parts)


def ablation_section(payload: dict[str, Any], name: str, docs: Path) -> str:
    """The sort-group ablation's table and plot."""
    ablation = [r for r in payload["runs"] if r["phase"] == "ablation"]
    spec = payload["plan"]["ablation"]
    groups = [
        (f"{g} x {same[0]['gradient_accumulation_steps']}", same[0]["setting_label"], same)
        for g in sorted({r["group_size"] for r in ablation})
        if (same := [r for r in ablation if r["group_size"] == g])
    ]
    image = docs / "img" / f"{name}_ablation.png"
    plot_ablation(ablation, image)
    return (
        f"### unpaired: sort group size\n\n`aot_unpaired` at its chosen configuration, "
        f"{spec['per_step']} completions per optimizer step, {spec['steps']} steps "
        f"({spec['warmup_steps']} warmup), each micro-batch (per-device batch x gradient "
        "accumulation) sorted on its own; test prompts.\n\n"
        + metric_table("batch x accumulation", groups)
        + f"\n\n![sort group size](img/{image.name})"
    )


def verdict_section(runs: Sequence[dict[str, Any]]) -> str:
    """Every comparison of the hypotheses and each hypothesis's verdict."""
    comparisons, overall = hypotheses(runs)
    rows = [
        [c.hypothesis, c.what, c.prediction, c.seeds, signed(c.mean), interval_text(c), c.verdict]
        for c in comparisons
    ]
    header = ["hypothesis", "comparison", "prediction", "seeds", "mean", "95 % CI", "verdict"]
    return (
        "### Verdicts\n\nComputed from the protocol's rule: supported when the 95 % interval "
        "of the predicted difference lies on the predicted side of 0, contradicted when it "
        "lies below 0, inconclusive otherwise; a hypothesis of several differences needs all "
        "of them (H4 also the ordered means). Test reward unless said.\n\n"
        + markdown_table(header, rows, "llllrll")
        + "\n\n"
        + ", ".join(f"**{h}**: {v}" for h, v in overall.items())
        + "."
    )


def report(payload: dict[str, Any], name: str, docs: Path = DOCS) -> None:
    """The study's section of ``docs``/alignment.md (``name``: its marker and image prefix),
    the other sections left as they are."""
    runs = payload["runs"]
    parts = intro(payload)
    for cell in dict.fromkeys(r["cell"] for r in runs if r["phase"] != "ablation"):
        parts.append(cell_section(runs, cell, name, docs))
    if any(r["phase"] == "ablation" for r in runs):
        parts.append(ablation_section(payload, name, docs))
    parts.append(verdict_section(runs))
    if not payload["quick"]:
        parts.append("### Analysis\n\n" + ANALYSIS_NOTE)
    write_section(name, "\n\n".join(parts), docs / "alignment.md", "Alignment: AOT vs baselines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a pipeline check, not the study")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / NAME)
    parser.add_argument(
        "--reuse", action="store_true", help="keep the runs finished in --work-dir (a resume)"
    )
    parser.add_argument("--report", action="store_true", help="only rebuild docs from results")
    args = parser.parse_args()
    plan = Plan.quick() if args.quick else Plan()
    path = RESULTS / f"{plan.name}.json"
    if not args.report:
        payload = run_study(plan, args.work_dir, args.jobs, args.reuse)
        payload["command"] = (
            "python -m benchmarks.alignment_regimes"
            + (" --quick" if args.quick else "")
            + (f" --jobs {args.jobs}" if args.jobs != 2 else "")
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
    report(json.loads(path.read_text()), plan.name)


if __name__ == "__main__":
    main()
