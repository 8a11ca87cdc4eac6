"""Does the sort matter? The pre-registered study of docs/preregistration_2.md (issue 19).

AOT's loss, penalty, beta and label smoothing held fixed, only the coupling of the margins
changed: **sorted** (AOT), **shuffled** (the same loss with a seeded random permutation in place
of the sort, ``align.py --sort shuffled``) and **per pair** (DPO for the logistic penalty, IPO for
least squares), each tuned on the same grid, in cells of the embedded task with room for
distributional effects (noisy pairs, thumbs-up/down data, a task with a tail).

    python -m benchmarks.alignment_mechanism --timing       # time cells 1-2, estimate the study
    python -m benchmarks.alignment_mechanism --cells 1      # the study: the first N cells
    python -m benchmarks.alignment_mechanism --report       # the docs section from the results
    python -m benchmarks.alignment_mechanism --quick        # a pipeline check, not the study

Phases, as the protocol fixes them: **tune** (every configuration of every arm, data seed 0,
tuning seeds 100 and 101, validation prompts), the **selection** (highest mean validation
reward; ties: the lower KL), **test** (the selected configuration, test seeds 0-9 on data seeds
0-2, test prompts), **kl** (the configuration whose validation KL is nearest the KL target,
where it is another one: data seed 0, test seeds 0-9) and the **ablation** (in the first cell,
the sorted logistic arm with 256 completions per step sorted in groups of 16, 64 or 256). Every
run is ``examples/align.py`` launched as a user launches it, 2 at a time. The study writes
``benchmarks/results/alignment_mechanism.json`` (one record per run) and its section of
``docs/alignment.md``; ``--quick`` writes both under ``--work-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from aot_examples import toy
from aot_examples.toy.regimes import (
    BOOTSTRAP_SEED,
    RESAMPLES,
    combine,
    interpolate,
    verdict,
)
from aot_examples.toy.task import make_splits

from benchmarks import alignment_regimes as regimes
from benchmarks.alignment import Arm, launch
from benchmarks.alignment_regimes import (
    PATHS,
    Comparison,
    ablation_options,
    compare,
    in_parallel,
    interval_text,
    markdown_table,
    mean_sd,
    paired_differences,
    plot_ablation,
    plot_cell,
    run_label,
    signed,
)
from benchmarks.common import ROOT, environment, write_section

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
NAME = "alignment_mechanism"

#: The two tasks: the embedded task (3-6 letters) and its variant with a tail (3-10 letters),
#: each with 4096 training prompts and its own SFT reference.
TASKS = {
    "letters": toy.ToyConfig(train_prompts=4096),
    "letters-tail": toy.ToyConfig(train_prompts=4096, max_letters=10),
}
#: The pre-declared hard subgroup of ``letters-tail``: prompts of at least 8 letters.
HARD_LETTERS = 8
#: The cells in the protocol's priority order, each a task and the kind of data it trains on.
CELLS = (
    ("letters-tail", "thumbs"),
    ("letters-tail", "noisy"),
    ("letters", "noisy"),
    ("letters", "thumbs"),
    ("letters", "best_vs_worst"),
)
#: ``--toy-data`` of each cell's data.
CELL_DATA = {"thumbs": "thumbs", "noisy": "noisy", "best_vs_worst": "paired"}
TUNING_SEEDS = (100, 101)
TEST_SEEDS = tuple(range(10))
DATA_SEEDS = (0, 1, 2)
#: The matched KL (nats per completion) of the selection at matched KL.
KL_TARGET = 1.0
#: The budget of the study (seconds at 2 runs at a time) that the cells are cut to.
BUDGET_S = 90 * 60


@dataclass(frozen=True)
class ArmSpec:
    """An arm: its penalty family, its coupling, and ``align.py``'s options for it (the AOT
    arms take ``aot_paired`` on paired data and ``aot_unpaired`` on thumbs)."""

    family: str  # "logistic" or "least_squares"
    coupling: str  # "sorted", "shuffled" or "per pair"
    options: dict[str, Any]

    def loss_options(self, data: str) -> dict[str, Any]:
        if "loss" in self.options:  # a per-pair loss: pairs formed within batches on thumbs
            return self.options | ({"pair_within_batch": True} if data == "thumbs" else {})
        return {"loss": "aot_unpaired" if data == "thumbs" else "aot_paired", **self.options}


ARMS = {
    "aot_sorted_logistic": ArmSpec("logistic", "sorted", {"penalty": "logistic", "sort": "hard"}),
    "aot_shuffled_logistic": ArmSpec(
        "logistic", "shuffled", {"penalty": "logistic", "sort": "shuffled"}
    ),
    "dpo": ArmSpec("logistic", "per pair", {"loss": "dpo"}),
    "aot_sorted_ls": ArmSpec(
        "least_squares", "sorted", {"penalty": "least_squares", "sort": "hard"}
    ),
    "aot_shuffled_ls": ArmSpec(
        "least_squares", "shuffled", {"penalty": "least_squares", "sort": "shuffled"}
    ),
    "ipo": ArmSpec("least_squares", "per pair", {"loss": "ipo"}),
}
#: The equal grids: every logistic arm beta (a scale) x label smoothing, every least-squares
#: arm the margin (AOT's beta; IPO's 1 / (2 beta)).
GRIDS = {
    "logistic": [{"beta": b, "label_smoothing": s} for b in (0.5, 2.0, 8.0) for s in (0.0, 0.2)],
    "least_squares": [{"margin": m} for m in (1.0, 4.0, 16.0)],
}


def setting_options(arm: str, setting: dict[str, Any]) -> dict[str, Any]:
    """``align.py``'s options for a configuration: a margin m is beta = m for AOT's least
    squares and beta = 1 / (2 m) for IPO."""
    if "margin" not in setting:
        return dict(setting)
    margin = setting["margin"]
    return {"beta": 1 / (2 * margin) if arm == "ipo" else margin}


def setting_label(setting: dict[str, Any]) -> str:
    """``"beta 2, smoothing 0.2"``, ``"margin 4"``."""
    names = {"label_smoothing": "smoothing"}
    return ", ".join(f"{names.get(k, k)} {v:g}" for k, v in setting.items())


@dataclass(frozen=True)
class Plan:
    """Everything a study runs."""

    name: str = NAME
    tasks: dict[str, toy.ToyConfig] = field(default_factory=lambda: dict(TASKS))
    cells: tuple[tuple[str, str], ...] = CELLS
    arms: tuple[str, ...] = tuple(ARMS)
    grids: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: dict(GRIDS))
    base: dict[str, Any] = field(default_factory=dict)
    tuning_seeds: tuple[int, ...] = TUNING_SEEDS
    test_seeds: tuple[int, ...] = TEST_SEEDS
    data_seeds: tuple[int, ...] = DATA_SEEDS
    kl_target: float = KL_TARGET
    ablation_groups: tuple[int, ...] = (16, 64, 256)
    ablation_per_step: int = 256
    ablation_steps: int = 150
    ablation_warmup: int = 10
    ablation_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)

    @classmethod
    def quick(cls, cells: int) -> Plan:
        """A pipeline check: 20 steps, one tuning seed, test seeds 0-1 on data seeds 0-1,
        the ablation 10 steps with one seed."""
        return cls(
            name=f"{NAME}_quick",
            cells=CELLS[:cells],
            base={"max_steps": 20, "warmup_steps": 2},
            tuning_seeds=TUNING_SEEDS[:1],
            test_seeds=TEST_SEEDS[:2],
            data_seeds=DATA_SEEDS[:2],
            ablation_steps=10,
            ablation_warmup=2,
            ablation_seeds=(0,),
        )

    @property
    def quick_check(self) -> bool:
        return self.name.endswith("_quick")

    def task_config(self, task: str, data_seed: int) -> toy.ToyConfig:
        return dataclasses.replace(self.tasks[task], data_seed=data_seed)


def data_dir(root: Path, task: str, data_seed: int) -> Path:
    """The directory of a task's data on a data seed (``toy/``) and of its runs (``runs/``)."""
    return root / f"{task}-data{data_seed}"


@dataclass(frozen=True)
class Run:
    """One run: phase, cell, arm, configuration, seed and data seed; ``extra`` holds the
    ablation's batch options."""

    phase: str  # "timing", "tune", "test", "kl" or "ablation"
    task: str
    cell: str
    arm: str
    setting: dict[str, Any]
    seed: int
    data_seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompts(self) -> str:
        """Tuning (and timing) is scored on the validation prompts, the rest on the test
        prompts."""
        return "validation" if self.phase in ("tune", "timing") else "test"

    @property
    def data(self) -> str:
        """The ``--toy-data`` of the run's cell (``"letters-tail/thumbs"``: ``thumbs``)."""
        return CELL_DATA[self.cell.split("/")[-1]]

    def work(self, root: Path) -> Path:
        return data_dir(root, self.task, self.data_seed)

    def launch_arm(self, plan: Plan) -> Arm:
        overrides = {
            **ARMS[self.arm].loss_options(self.data),
            **setting_options(self.arm, self.setting),
            "toy_data": self.data,
            "toy_eval_prompts": self.prompts,
            **self.extra,
        }
        label = run_label(self.arm, setting_label(self.setting), self.extra)
        return Arm(f"{plan.name}-{self.phase}-{self.cell.replace('/', '_')}", label, overrides)


@functools.lru_cache(maxsize=8)
def hard_prompts(cfg: toy.ToyConfig, prompts: str) -> list[bool]:
    """Which prompts of the split (``validation`` or ``test``) are in the hard subgroup."""
    splits = make_splits(cfg)
    texts = splits.test if prompts == "test" else splits.eval
    return [len(p) - 1 >= HARD_LETTERS for p in texts]


def record(run: Run, plan: Plan, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A run's record: who it is, its metrics, its configuration; test runs keep every
    sample's reward (4 decimals: the rewards are fractions of at most 12 letters)."""
    cfg = summary["config"]
    rewards = torch.tensor(summary["policy_rewards"], dtype=torch.float64)
    out = {
        "phase": run.phase,
        "task": run.task,
        "cell": run.cell,
        "arm": run.arm,
        "family": ARMS[run.arm].family,
        "coupling": ARMS[run.arm].coupling,
        "seed": run.seed,
        "data_seed": run.data_seed,
        "prompts": summary["prompts"],
        "setting": run.setting,
        "setting_label": setting_label(run.setting),
        "group_size": cfg["per_device_batch_size"],
        "gradient_accumulation_steps": cfg["gradient_accumulation_steps"],
        "steps": summary["steps"],
        "reward_mean": summary["policy_reward_mean"],
        "cvar10": summary["policy_reward_cvar10"],
        "win_rate": summary["win_rate_mean"],
        "kl": summary["kl_policy_reference_mean"],
        "fsd_violation_per_prompt": summary["fsd_violation_per_prompt"],
        "almost_fsd_ratio": summary["eval_policy"]["fsd/almost_ratio"],
        "reference_reward_mean": summary["reference_reward_mean"],
        "reference_cvar10": summary["reference_reward_cvar10"],
        "wall_s": seconds,
        "train_time_s": summary["train_time_s"],
        "config": {k: v for k, v in cfg.items() if k not in PATHS},
    }
    if run.task == "letters-tail":
        hard = torch.tensor(hard_prompts(plan.task_config(run.task, 0), run.prompts))
        out["hard_reward_mean"] = rewards[hard].mean().item()
        reference = torch.tensor(summary["reference_rewards"], dtype=torch.float64)
        out["reference_hard_reward_mean"] = reference[hard].mean().item()
    if run.phase == "test":
        out["rewards"] = [[round(r, 4) for r in row] for row in rewards.tolist()]
    return out


def run_all(runs: Sequence[Run], plan: Plan, work: Path, jobs: int) -> list[dict[str, Any]]:
    """Launch ``runs``, ``jobs`` at a time; their records in the order given. A run finished
    in ``work`` by an earlier, interrupted call is kept (its directory names its phase,
    configuration and seeds)."""

    def execute(run: Run) -> dict[str, Any]:
        summary, seconds = launch(
            run.launch_arm(plan), run.seed, run.work(work), plan.base, reuse=True
        )
        return record(run, plan, summary, seconds)

    return in_parallel(execute, runs, jobs, f"{plan.name} runs")


def prepare_data(plan: Plan, tasks: Sequence[str], work: Path, jobs: int) -> dict[str, Any]:
    """Each task's data on each data seed (SFT reference, samples, constructions), ``jobs``
    at a time; their counts by ``task/data seed``."""
    keys = [(task, d) for task in tasks for d in plan.data_seeds]

    def build(key: tuple[str, int]) -> dict[str, int]:
        task, d = key
        return toy.prepare(plan.task_config(task, d), data_dir(work, task, d) / "toy").data_stats

    with ThreadPoolExecutor(jobs) as pool:
        stats = list(pool.map(build, keys))
    return {f"{task}/{d}": s for (task, d), s in zip(keys, stats, strict=True)}


#: The validation metrics of the tuning table.
TUNED = ("reward_mean", "kl", "cvar10", "fsd_violation_per_prompt")


def tune_table(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell, arm and configuration: :data:`TUNED` on the validation prompts, means over the
    tuning seeds."""
    return regimes.tune_table(runs, "arm", TUNED)


def select(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """By reward: per cell and arm, the configuration of highest mean validation reward
    (ties: the lower KL; then grid order)."""
    return regimes.select(runs, "arm")


def nearest_kl(runs: Sequence[dict[str, Any]], target: float) -> dict[tuple[str, str], Any]:
    """At matched KL: per cell and arm, the configuration whose mean validation KL is nearest
    ``target``."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for row in tune_table(runs):
        key = (row["cell"], row["arm"])
        if key not in best or abs(row["kl"] - target) < abs(best[key]["kl"] - target):
            best[key] = row
    return {key: row["setting"] for key, row in best.items()}


def cell_key(cell: tuple[str, str]) -> str:
    """``"letters-tail/thumbs"``: a cell's name in records and tables."""
    return "/".join(cell)


def run_study(plan: Plan, work: Path, jobs: int = 2) -> dict[str, Any]:
    """Data, tune, select, then test, the kl runs and the ablation; the result file's
    payload."""
    start = time.perf_counter()
    tasks = list(dict.fromkeys(task for task, _ in plan.cells))
    data = prepare_data(plan, tasks, work, jobs)
    tune = [
        Run("tune", task, cell_key((task, cell)), arm, setting, seed, plan.data_seeds[0])
        for task, cell in plan.cells
        for arm in plan.arms
        for setting in plan.grids[ARMS[arm].family]
        for seed in plan.tuning_seeds
    ]
    records = run_all(tune, plan, work, jobs)
    chosen, nearest = select(records), nearest_kl(records, plan.kl_target)
    later = []
    for task, cell in plan.cells:
        key = cell_key((task, cell))
        for arm in plan.arms:
            later += [
                Run("test", task, key, arm, chosen[key, arm], seed, d)
                for d in plan.data_seeds
                for seed in plan.test_seeds
            ]
            if nearest[key, arm] != chosen[key, arm]:
                later += [
                    Run("kl", task, key, arm, nearest[key, arm], seed, plan.data_seeds[0])
                    for seed in plan.test_seeds
                ]
    task, cell = plan.cells[0]
    key, arm = cell_key((task, cell)), "aot_sorted_logistic"
    if arm in plan.arms:
        later += [
            Run(
                "ablation",
                task,
                key,
                arm,
                chosen[key, arm],
                seed,
                plan.data_seeds[0],
                ablation_options(
                    g, plan.ablation_per_step, plan.ablation_steps, plan.ablation_warmup
                ),
            )
            for g in plan.ablation_groups
            for seed in plan.ablation_seeds
        ]
    records += run_all(later, plan, work, jobs)
    env = environment("cpu")
    return {
        "quick": plan.quick_check,
        "machine": f"{env['cpu']}, {env['cores']} cores, torch {env['torch']}, "
        f"Python {platform.python_version()}",
        "jobs": jobs,
        "wall_s": time.perf_counter() - start,
        "tasks": {t: dataclasses.asdict(plan.tasks[t]) for t in tasks},
        "data": data,
        "plan": {
            "cells": [cell_key(c) for c in plan.cells],
            "arms": list(plan.arms),
            "grids": plan.grids,
            "base": plan.base,
            "tuning_seeds": plan.tuning_seeds,
            "test_seeds": plan.test_seeds,
            "data_seeds": plan.data_seeds,
            "kl_target": plan.kl_target,
            "ablation": {
                "groups": plan.ablation_groups,
                "per_step": plan.ablation_per_step,
                "steps": plan.ablation_steps,
                "warmup_steps": plan.ablation_warmup,
                "seeds": plan.ablation_seeds,
            },
        },
        "runs": records,
    }


def estimate(plan: Plan, work: Path, jobs: int = 2) -> dict[str, Any]:
    """The protocol's timing pass: one tuning run of every arm in cells 1 and 2 (their first
    configuration, tuning seed 100, data seed 0; discarded), and from their times the study's
    wall time per cell at ``jobs`` runs at a time, with the cells that fit :data:`BUDGET_S`.

    A test run also evaluates the 512 test prompts (twice the validation's 256): its time is
    the tuning run's plus its evaluation time once more (wall minus training, an upper bound).
    The kl phase is counted at its most (every arm); the ablation trains 4 times as much."""
    start = time.perf_counter()
    timed = list(plan.cells[:2])
    prepare_data(plan, list(dict.fromkeys(t for t, _ in timed)), work, jobs)
    data_s = time.perf_counter() - start
    runs = [
        Run(
            "timing",
            task,
            cell_key((task, cell)),
            arm,
            plan.grids[ARMS[arm].family][0],
            plan.tuning_seeds[0],
            plan.data_seeds[0],
        )
        for task, cell in timed
        for arm in plan.arms
    ]
    records = run_all(runs, plan, work, jobs)
    tune_s = fmean(r["wall_s"] for r in records)
    train_s = fmean(r["train_time_s"] for r in records)
    test_s = 2 * tune_s - train_s
    configs = sum(len(plan.grids[ARMS[a].family]) for a in plan.arms)
    per_cell = (
        configs * len(plan.tuning_seeds) * tune_s
        + len(plan.arms) * len(plan.data_seeds) * len(plan.test_seeds) * test_s
        + len(plan.arms) * len(plan.test_seeds) * test_s
    ) / jobs
    ablation = len(plan.ablation_groups) * len(plan.ablation_seeds) * (test_s + 3 * train_s) / jobs
    total, fit = data_s + ablation, 0
    for _ in plan.cells:
        if total + per_cell > BUDGET_S:
            break
        total, fit = total + per_cell, fit + 1
    return {
        "timing_runs": records,
        "data_s": data_s,
        "tune_run_s": tune_s,
        "train_s": train_s,
        "test_run_s": test_s,
        "cell_s": per_cell,
        "ablation_s": ablation,
        "cells_that_fit": fit,
        "estimate_s": total,
        "budget_s": BUDGET_S,
    }


# --------------------------------------------------------------------------------------------
# Analysis: paired differences, quantile dominance, matched KL, verdicts
# --------------------------------------------------------------------------------------------


def by_run(runs: Sequence[dict[str, Any]], metric: str, **match: Any) -> dict[tuple[int, int], Any]:
    """``metric`` by (seed, data seed) over the test runs whose fields equal ``match``."""
    return {
        (r["seed"], r["data_seed"]): r[metric]
        for r in runs
        if r["phase"] == "test" and all(r[k] == v for k, v in match.items())
    }


def differences(
    runs: Sequence[dict[str, Any]], cell: str, a: str, b: str, metric: str = "reward_mean"
) -> list[float]:
    """Arm ``a`` - arm ``b`` of ``metric``, paired by (seed, data seed): the same LoRA
    initialization, data order and data."""
    first, second = by_run(runs, metric, cell=cell, arm=a), by_run(runs, metric, cell=cell, arm=b)
    return [first[k] - second[k] for k in sorted(first.keys() & second.keys())]


def two_sided(comparison: Comparison) -> Comparison:
    """M3's wording of a verdict without a predicted direction."""
    words = {"supported": "sorted better", "contradicted": "per-pair better"}
    comparison.prediction = "two-sided"
    comparison.verdict = words.get(comparison.verdict, comparison.verdict)
    return comparison


#: The levels t of the quantile comparison: 0.01, ..., 0.99.
LEVELS = torch.arange(1, 100, dtype=torch.float64) / 100


def _histograms(rewards: Sequence[Any], values: torch.Tensor) -> torch.Tensor:
    """Counts of each of ``values`` among each run's samples of each prompt: shape
    ``(runs, prompts, len(values))``."""
    x = torch.tensor(rewards, dtype=torch.float64)  # (runs, prompts, samples)
    index = torch.searchsorted(values, x)
    counts = torch.zeros(*x.shape[:2], len(values), dtype=torch.float64)
    return counts.scatter_add_(-1, index, torch.ones_like(x))


def _quantiles(histogram: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Q(t) = inf{y : F(y) >= t} at :data:`LEVELS` of pooled counts ``(..., len(values))``."""
    cdf = histogram.cumsum(-1) / histogram.sum(-1, keepdim=True)
    index = torch.searchsorted(cdf, LEVELS.expand(*cdf.shape[:-1], -1).contiguous() - 1e-12)
    return values[index.clamp(max=len(values) - 1)]


def quantile_dominance(
    first: Sequence[Any],
    second: Sequence[Any],
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    chunk: int = 500,
) -> dict[str, Any]:
    """Head-to-head quantiles of two arms' pooled per-sample rewards, ``first`` against
    ``second`` (each a list over paired runs of a list over prompts of the samples' rewards):
    the share of levels t in {0.01, ..., 0.99} where Q_first(t) < Q_second(t) (``lower_share``)
    and the signed area sum_t (Q_first(t) - Q_second(t)) / 99 (``area``), with 95 % percentile
    intervals of a bootstrap that resamples runs and prompts, the same for both arms."""
    values = torch.tensor(
        sorted({r for run in (*first, *second) for p in run for r in p}), dtype=torch.float64
    )
    a, b = _histograms(first, values), _histograms(second, values)
    runs, prompts = a.shape[:2]

    def stats(qa: torch.Tensor, qb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (qa < qb).double().mean(-1), (qa - qb).mean(-1)

    q_first, q_second = _quantiles(a.sum((0, 1)), values), _quantiles(b.sum((0, 1)), values)
    lower, area = stats(q_first, q_second)
    generator = torch.Generator().manual_seed(seed)
    samples: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        run_weights = torch.zeros(size, runs, dtype=torch.float64).scatter_add_(
            1,
            torch.randint(0, runs, (size, runs), generator=generator),
            torch.ones(size, runs, dtype=torch.float64),
        )
        prompt_weights = torch.zeros(size, prompts, dtype=torch.float64).scatter_add_(
            1,
            torch.randint(0, prompts, (size, prompts), generator=generator),
            torch.ones(size, prompts, dtype=torch.float64),
        )
        pooled = [torch.einsum("br,bp,rpv->bv", run_weights, prompt_weights, h) for h in (a, b)]
        samples.append(stats(*(_quantiles(h, values) for h in pooled)))
    share_draws = torch.cat([s[0] for s in samples])
    area_draws = torch.cat([s[1] for s in samples])
    bounds = torch.tensor([0.025, 0.975], dtype=torch.float64)
    return {
        "lower_share": lower.item(),
        "lower_share_interval": torch.quantile(share_draws, bounds).tolist(),
        "area": area.item(),
        "area_interval": torch.quantile(area_draws, bounds).tolist(),
        "quantiles_first": q_first.tolist(),
        "quantiles_second": q_second.tolist(),
    }


def paired_rewards(
    runs: Sequence[dict[str, Any]], cell: str, a: str, b: str
) -> tuple[list[Any], list[Any]]:
    """The two arms' per-sample test rewards on the runs (seed, data seed) both have."""
    first, second = (
        by_run(runs, "rewards", cell=cell, arm=a),
        by_run(runs, "rewards", cell=cell, arm=b),
    )
    keys = sorted(first.keys() & second.keys())
    return [first[k] for k in keys], [second[k] for k in keys]


def best_test_arm(runs: Sequence[dict[str, Any]], cell: str, arms: Sequence[str]) -> str:
    """The arm of ``arms`` with the highest mean test reward in ``cell``."""
    means = {
        a: fmean(v.values()) for a in arms if (v := by_run(runs, "reward_mean", cell=cell, arm=a))
    }
    return max(means, key=means.__getitem__)


#: The sorted, shuffled and per-pair arm of each penalty family.
FAMILIES = {
    "logistic": ("aot_sorted_logistic", "aot_shuffled_logistic", "dpo"),
    "least_squares": ("aot_sorted_ls", "aot_shuffled_ls", "ipo"),
}


def dominance_pairs(runs: Sequence[dict[str, Any]], cell: str) -> list[tuple[str, str, str]]:
    """The quantile comparisons of a cell: each AOT arm (sorted, shuffled) against its
    family's per-pair arm, and (T2) the better sorted arm against the better per-pair arm."""
    pairs = [
        ("", arm, per_pair)
        for sorted_arm, shuffled, per_pair in FAMILIES.values()
        for arm in (sorted_arm, shuffled)
    ]
    best_sorted = best_test_arm(runs, cell, [f[0] for f in FAMILIES.values()])
    best_per_pair = best_test_arm(runs, cell, [f[2] for f in FAMILIES.values()])
    return [*pairs, ("T2", best_sorted, best_per_pair)]


def analyse(payload: dict[str, Any]) -> dict[str, Any]:
    """Every comparison of the protocol, per cell, with its interval and verdict; the
    quantile comparisons (bootstrapped, the slow part) included. Stored in the result file
    (``analysis``) so that ``--report`` does not redo them."""
    runs = payload["runs"]
    comparisons: list[dict[str, Any]] = []
    dominance: list[dict[str, Any]] = []
    for cell in payload["plan"]["cells"]:
        for family, (sorted_arm, shuffled, per_pair) in FAMILIES.items():
            hypothesis = "M1" if family == "logistic" else "M2"
            rows = [
                compare(
                    hypothesis,
                    f"{cell}: {sorted_arm} - {shuffled}",
                    differences(runs, cell, sorted_arm, shuffled),
                    strict=True,
                ),
                two_sided(
                    compare(
                        "M3",
                        f"{cell}: {sorted_arm} - {per_pair}",
                        differences(runs, cell, sorted_arm, per_pair),
                        strict=True,
                    )
                ),
                *(
                    compare(
                        "T1",
                        f"{cell}: CVaR 10 %, {sorted_arm} - {other}",
                        differences(runs, cell, sorted_arm, other, "cvar10"),
                        strict=True,
                    )
                    for other in (shuffled, per_pair)
                ),
            ]
            comparisons += [dataclasses.asdict(c) | {"cell": cell, "family": family} for c in rows]
        for hypothesis, a, b in dominance_pairs(runs, cell):
            result = quantile_dominance(*paired_rewards(runs, cell, a, b))
            dominance.append(
                {"cell": cell, "hypothesis": hypothesis, "first": a, "second": b, **result}
            )
            if hypothesis:
                c = Comparison(
                    hypothesis,
                    f"{cell}: quantile area, {a} - {b}",
                    "> 0",
                    "runs x prompts",
                    result["area"],
                    tuple(result["area_interval"]),
                )
                c.verdict = verdict(tuple(result["area_interval"]), strict=True)
                comparisons.append(dataclasses.asdict(c) | {"cell": cell})
    comparisons += [
        dataclasses.asdict(c) | {"cell": payload["plan"]["cells"][0]}
        for c in ablation_comparisons(runs)
    ]
    return {"comparisons": comparisons, "dominance": dominance, "verdicts": overall(comparisons)}


def ablation_comparisons(runs: Sequence[dict[str, Any]]) -> list[Comparison]:
    """G1: reward(largest group) - reward(smallest) over the ablation's seeds, and whether the
    mean rewards grow with the group size."""
    ablation = [r for r in runs if r["phase"] == "ablation"]
    groups = sorted({r["group_size"] for r in ablation})
    if len(groups) < 2:
        return []
    by_group = {
        g: {r["seed"]: r["reward_mean"] for r in ablation if r["group_size"] == g} for g in groups
    }
    gap = compare(
        "G1",
        f"ablation: reward({groups[-1]}) - reward({groups[0]})",
        paired_differences(by_group[groups[-1]], by_group[groups[0]]),
        strict=True,
    )
    means = [fmean(by_group[g].values()) for g in groups]
    what = f"ablation: mean rewards of groups {', '.join(map(str, groups))}: " + ", ".join(
        f"{m:.4f}" for m in means
    )
    ordered = all(a < b for a, b in pairwise(means))
    return [
        gap,
        Comparison("G1", what, "increasing", verdict="holds" if ordered else "does not hold"),
    ]


def hypothesis_key(comparison: dict[str, Any]) -> str:
    """What a verdict is given for: G1 once, the others per cell, M3 and T1 per penalty
    family (the sorted arm against the arms of its own penalty)."""
    if comparison["hypothesis"] == "G1":
        return "G1"
    key = f"{comparison['hypothesis']} {comparison['cell']}"
    if comparison["hypothesis"] in ("M3", "T1"):
        key += f" ({comparison['family']})"
    return key


def overall(comparisons: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each hypothesis's verdict: all its predicted differences must hold (:func:`combine`);
    M3's is its comparison's; G1 with a supported gap but unordered means is inconclusive."""
    verdicts: dict[str, list[str]] = {}
    for c in comparisons:
        verdicts.setdefault(hypothesis_key(c), []).append(c["verdict"])
    result = {}
    for key, values in verdicts.items():
        if key.startswith("M3"):
            result[key] = values[0]
        elif key == "G1":
            gap, order = values
            result[key] = "inconclusive" if gap == "supported" and order != "holds" else gap
        else:
            result[key] = combine(values)
    return result


def matched_kl(runs: Sequence[dict[str, Any]], cell: str, target: float) -> list[list[str]]:
    """Per arm: its validation reward and per-prompt FSD violation interpolated at the KL
    target between its configurations ordered by validation KL ("not reached" where they do
    not bracket it); its configuration nearest the target, and that configuration's test
    reward and CVaR on data seed 0 (the kl runs, or the test runs where it is the selected
    one)."""
    rows = [r for r in tune_table(runs) if r["cell"] == cell]
    nearest = nearest_kl(runs, target)
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        at = [
            interpolate([(r["kl"], r[m]) for r in mine], target)
            for m in ("reward_mean", "fsd_violation_per_prompt")
        ]
        setting = nearest[cell, arm]
        tested = [
            r
            for r in runs
            if r["cell"] == cell
            and r["arm"] == arm
            and r["data_seed"] == 0
            and r["phase"] in ("test", "kl")
            and r["setting"] == setting
        ]
        kl = next(r["kl"] for r in mine if r["setting"] == setting)
        out.append(
            [
                arm,
                *("not reached" if v is None else f"{v:.4f}" for v in at),
                setting_label(setting),
                f"{kl:.3f}",
                mean_sd([r["reward_mean"] for r in tested]) if tested else "-",
                mean_sd([r["cvar10"] for r in tested]) if tested else "-",
            ]
        )
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

COLUMNS = {
    "reward_mean": "reward",
    "cvar10": "CVaR 10 %",
    "hard_reward_mean": "reward, hard prompts",
    "win_rate": "win rate",
    "kl": "KL",
    "almost_fsd_ratio": "eps-FSD ratio (held-out)",
    "fsd_violation_per_prompt": "FSD viol. per prompt",
}
COLORS = {
    "aot_sorted_logistic": "tab:blue",
    "aot_shuffled_logistic": "tab:cyan",
    "dpo": "tab:red",
    "aot_sorted_ls": "tab:purple",
    "aot_shuffled_ls": "tab:pink",
    "ipo": "tab:orange",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quantiles(dominance: Sequence[dict[str, Any]], cell: str, path: Path) -> None:
    """Q_AOT(t) - Q_per-pair(t) of the pooled test rewards against the level t, for each AOT
    arm against its family's per-pair arm (below 0: the AOT arm's quantile is lower)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for d in dominance:
        if d["cell"] == cell and not d["hypothesis"]:
            gap = torch.tensor(d["quantiles_first"]) - torch.tensor(d["quantiles_second"])
            ax.plot(
                LEVELS.tolist(),
                gap.tolist(),
                drawstyle="steps-mid",
                color=COLORS.get(d["first"]),
                label=f"{d['first']} - {d['second']}",
            )
    ax.axhline(0, color="gray", lw=1)
    ax.set_xlabel("level t")
    ax.set_ylabel("reward quantile difference")
    ax.set_title(f"{cell}: pooled test-reward quantiles, AOT - per pair", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _comparison_rows(comparisons: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            c["hypothesis"],
            c["what"],
            c["prediction"],
            c["seeds"],
            signed(c["mean"]),
            interval_text(
                Comparison(**{k: v for k, v in c.items() if k not in ("cell", "family")})
            ),
            c["verdict"],
        ]
        for c in comparisons
    ]


def intro(payload: dict[str, Any]) -> list[str]:
    plan = payload["plan"]
    runs = payload["runs"]
    title = "## Does the sort matter? " + (
        "quick run (pipeline check, not the study)" if payload["quick"] else "the study"
    )
    parts = [title]
    if payload["quick"]:
        parts.append(
            f"**Pipeline check, not the study:** {plan['base'].get('max_steps')} optimizer "
            "steps, fewer seeds. Its numbers answer nothing."
        )
    parts.append(
        "Protocol: [preregistration_2.md](preregistration_2.md). Command: "
        f"`{payload['command']}`; {payload['machine']}; {len(runs)} runs, {payload['jobs']} at "
        f"a time, {payload['wall_s'] / 3600:.2f} hours for this command (runs finished by an "
        "earlier command in the same work directory are kept, not redone). Cells run: "
        + ", ".join(f"`{c}`" for c in plan["cells"])
        + f". Tuning seeds {', '.join(map(str, plan['tuning_seeds']))} on data seed "
        f"{plan['data_seeds'][0]} and the validation prompts; test seeds "
        f"{', '.join(map(str, plan['test_seeds']))} on data seeds "
        f"{', '.join(map(str, plan['data_seeds']))} and the test prompts; KL target "
        f"{plan['kl_target']:g} nat. Tables: mean ± standard deviation over the "
        f"{len(plan['test_seeds']) * len(plan['data_seeds'])} test runs of each arm (reward: "
        "the mean exact reward; CVaR 10 %: the mean reward of the worst 10 % of test prompts "
        "ranked by their mean reward; hard prompts: the test prompts of 8 letters or more; "
        "win rate against the reference's sample of the same prompt and index, ties 1/2; "
        "KL(policy || reference) on policy samples; eps-FSD ratio: the almost-FSD ratio of "
        "chosen over rejected implicit rewards on the cell's held-out data, 0 when chosen "
        "dominates; FSD violation per prompt of the exact reward against the reference). "
        "Paired differences are over the runs (seed, data seed), with 95 % percentile "
        f"intervals of {RESAMPLES:,} bootstrap resamples (seed {BOOTSTRAP_SEED})."
    )
    return parts


def cell_section(
    payload: dict[str, Any], analysis: dict[str, Any], cell: str, name: str, docs: Path
) -> str:
    """A cell's test table, its comparisons, quantile dominance, matched KL and plots."""
    runs, target = payload["runs"], payload["plan"]["kl_target"]
    chosen = select(runs)
    test = [r for r in runs if r["phase"] == "test" and r["cell"] == cell]
    reference = fmean(r["reference_reward_mean"] for r in test)
    columns = {k: v for k, v in COLUMNS.items() if any(k in r for r in test)}
    rows = [
        [
            arm,
            setting_label(chosen[cell, arm]),
            len(mine),
            *(mean_sd([r[m] for r in mine]) for m in columns),
        ]
        for arm in ARMS
        if (mine := [r for r in test if r["arm"] == arm])
    ]
    ref_cvar = fmean(r["reference_cvar10"] for r in test)
    parts = [
        f"### {cell}",
        f"The reference's test reward {reference:.4f}, CVaR 10 % {ref_cvar:.4f}"
        + (
            f", hard prompts {fmean(r['reference_hard_reward_mean'] for r in test):.4f}"
            if "hard_reward_mean" in columns
            else ""
        )
        + ".",
        markdown_table(
            ["arm", "selected", "runs", *columns.values()], rows, "llr" + "r" * len(columns)
        ),
    ]
    mine = [c for c in analysis["comparisons"] if c["cell"] == cell and c["hypothesis"] != "G1"]
    header = ["hypothesis", "comparison", "prediction", "runs", "mean", "95 % CI", "verdict"]
    parts.append(
        "Paired comparisons (test reward unless said):\n\n"
        + markdown_table(header, _comparison_rows(mine), "llllrll")
    )
    dominance = [d for d in analysis["dominance"] if d["cell"] == cell]
    rows = [
        [
            d["hypothesis"] or "-",
            f"{d['first']} vs {d['second']}",
            f"{d['lower_share']:.3f} [{d['lower_share_interval'][0]:.3f}, "
            f"{d['lower_share_interval'][1]:.3f}]",
            f"{d['area']:+.4f} [{d['area_interval'][0]:+.4f}, {d['area_interval'][1]:+.4f}]",
        ]
        for d in dominance
    ]
    image = docs / "img" / f"{name}_{cell.replace('/', '_')}_quantiles.png"
    plot_quantiles(dominance, cell, image)
    parts.append(
        "Quantile dominance of the pooled per-sample test rewards (levels 0.01-0.99; intervals "
        "resample runs and prompts): the share of levels where the first arm's quantile is "
        "lower, and the signed area between the curves (positive: the first arm ahead).\n\n"
        + markdown_table(["", "arms", "share of levels lower", "signed area"], rows, "llrr")
        + f"\n\n![{cell}: quantile differences](img/{image.name})"
    )
    header = [
        "arm",
        f"validation reward at KL {target:g}",
        f"FSD viol. per prompt at KL {target:g}",
        "nearest configuration",
        "its validation KL",
        "its test reward (data seed 0)",
        "its test CVaR 10 %",
    ]
    parts.append(
        "Matched KL:\n\n" + markdown_table(header, matched_kl(runs, cell, target), "lrrlrrr")
    )
    image = docs / "img" / f"{name}_{cell.replace('/', '_')}.png"
    plot_cell(runs, cell, image, who="arm", target=target, colors=COLORS)
    parts.append(f"![{cell}: reward against KL](img/{image.name})")
    rows = [
        [
            r["arm"],
            r["setting_label"],
            r["seeds"],
            f"{r['reward_mean']:.4f}",
            f"{r['kl']:.4f}",
            f"{r['cvar10']:.4f}",
            "yes" if r["setting"] == chosen[cell, r["arm"]] else "",
        ]
        for r in tune_table(runs)
        if r["cell"] == cell
    ]
    header = [
        "arm",
        "configuration",
        "seeds",
        "validation reward",
        "validation KL",
        "validation CVaR 10 %",
        "selected",
    ]
    parts.append(
        "<details><summary>Tuning: every configuration (means of the tuning seeds)"
        "</summary>\n\n" + markdown_table(header, rows, "llrrrrl") + "\n\n</details>"
    )
    return "\n\n".join(parts)


def ablation_section(
    payload: dict[str, Any], analysis: dict[str, Any], name: str, docs: Path
) -> str:
    ablation = [r for r in payload["runs"] if r["phase"] == "ablation"]
    spec = payload["plan"]["ablation"]
    columns = {k: v for k, v in COLUMNS.items() if any(k in r for r in ablation)}
    rows = [
        [
            f"{g} x {same[0]['gradient_accumulation_steps']}",
            len(same),
            *(mean_sd([r[m] for r in same]) for m in columns),
        ]
        for g in sorted({r["group_size"] for r in ablation})
        if (same := [r for r in ablation if r["group_size"] == g])
    ]
    image = docs / "img" / f"{name}_ablation.png"
    cell = payload["plan"]["cells"][0]
    plot_ablation(ablation, image, f"{cell}: aot_sorted_logistic, sort group size")
    g1 = [c for c in analysis["comparisons"] if c["hypothesis"] == "G1"]
    header = ["hypothesis", "comparison", "prediction", "seeds", "mean", "95 % CI", "verdict"]
    return (
        f"### {cell}: sort group size\n\n`aot_sorted_logistic` at its "
        f"selected configuration ({ablation[0]['setting_label']}), {spec['per_step']} "
        f"completions per optimizer step, {spec['steps']} steps ({spec['warmup_steps']} "
        "warmup), each micro-batch (per-device batch x gradient accumulation) sorted on its "
        "own; test prompts, data seed 0.\n\n"
        + markdown_table(
            ["batch x accumulation", "seeds", *columns.values()], rows, "lr" + "r" * len(columns)
        )
        + f"\n\n![sort group size](img/{image.name})\n\n"
        + markdown_table(header, _comparison_rows(g1), "llllrll")
    )


ANALYSIS_NOTE = (
    "What these results say is written by hand after the run, below this generated block "
    "([What the mechanism study says](#what-the-mechanism-study-says)); `--report` rewrites "
    "the block and leaves the reading as it is."
)


def report(payload: dict[str, Any], name: str, docs: Path = DOCS) -> None:
    """The study's section of ``docs``/alignment.md (``name``: its marker and image prefix)."""
    analysis = payload["analysis"]
    parts = intro(payload)
    for cell in payload["plan"]["cells"]:
        parts.append(cell_section(payload, analysis, cell, name, docs))
    if any(r["phase"] == "ablation" for r in payload["runs"]):
        parts.append(ablation_section(payload, analysis, name, docs))
    verdicts = analysis["verdicts"]
    parts.append(
        "### Verdicts\n\nThe protocol's rule: supported when the 95 % interval lies on the "
        "predicted side of 0, contradicted when on the other side, inconclusive otherwise; a "
        "hypothesis of several differences needs all of them; M3 has no predicted direction.\n\n"
        + markdown_table(["hypothesis", "verdict"], list(verdicts.items()), "ll")
    )
    if not payload["quick"]:
        parts.append("### Reading\n\n" + ANALYSIS_NOTE)
    write_section(name, "\n\n".join(parts), docs / "alignment.md", "Alignment: AOT vs baselines")


def save(payload: dict[str, Any], path: Path) -> None:
    """The result file: the payload indented, each run's record on one line of its own."""
    head = json.dumps({k: v for k, v in payload.items() if k != "runs"}, indent=1)
    runs = ",\n".join(json.dumps(r) for r in payload["runs"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head[:-2] + f',\n "runs": [\n{runs}\n ]\n}}\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--quick", action="store_true", help="a pipeline check, not the study")
    what.add_argument("--timing", action="store_true", help="the timing pass of cells 1-2")
    what.add_argument(
        "--report", action="store_true", help="analyse the saved runs again and rebuild the docs"
    )
    parser.add_argument(
        "--cells",
        type=int,
        default=len(CELLS),
        help="run the first N cells of the priority list (default: all 5)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / "runs" / NAME,
        help="runs and data (a finished run found there is kept: a resume)",
    )
    args = parser.parse_args()
    if not 1 <= args.cells <= len(CELLS):
        parser.error(f"--cells must lie in 1..{len(CELLS)}, got {args.cells}")
    if args.timing:
        result = estimate(Plan(), args.work_dir, args.jobs)
        path = args.work_dir / "timing.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        keys = (
            "data_s",
            "tune_run_s",
            "train_s",
            "test_run_s",
            "cell_s",
            "ablation_s",
            "estimate_s",
            "cells_that_fit",
        )
        print("\n".join(f"{k}: {result[k]:.1f}" for k in keys) + f"\nwritten to {path}")
        return
    plan = (
        Plan.quick(args.cells)
        if args.quick
        else dataclasses.replace(Plan(), cells=CELLS[: args.cells])
    )
    results, docs = (args.work_dir, args.work_dir) if args.quick else (RESULTS, DOCS)
    path = results / f"{plan.name}.json"
    if args.report:  # the analysis of the saved runs, done again (it is seeded)
        payload = json.loads(path.read_text())
    else:
        payload = run_study(plan, args.work_dir, args.jobs)
        payload["command"] = (
            "python -m benchmarks.alignment_mechanism"
            + (" --quick" if args.quick else "")
            + (f" --cells {args.cells}" if args.cells != len(CELLS) else "")
            + (f" --jobs {args.jobs}" if args.jobs != 2 else "")
        )
    payload["analysis"] = analyse(payload)
    save(payload, path)
    report(json.loads(path.read_text()), plan.name, docs)
    print(f"results: {path}; report: {docs / 'alignment.md'}")


if __name__ == "__main__":
    main()
