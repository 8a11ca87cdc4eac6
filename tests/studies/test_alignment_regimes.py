"""The pre-registered study's pieces (docs/preregistration.md): its data cells, reward metrics,
selection rule, bootstrap intervals and verdicts, each on hand-computed cases; and the whole
pipeline of benchmarks/alignment_regimes.py (tune, select, test, ablation, records, report) at
micro scale."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
pytest.importorskip("matplotlib")

from aot_examples.preferences import CELL_DATA
from aot_examples.toy import regimes, reward_metrics
from aot_examples.toy.preferences import ScoredSample, noisy_pairs, thumbs_up_down

from benchmarks import alignment_regimes as study

from ..examples.test_examples import MICRO_TOY

# --------------------------------------------------------------------------------------------
# Data cells
# --------------------------------------------------------------------------------------------


def scored(*prompts: list[tuple[str, float]]) -> list[list[ScoredSample]]:
    """Scored samples: one list of ``(completion, reward)`` per prompt."""
    return [[ScoredSample(f"p{i}=", c, r) for c, r in samples] for i, samples in enumerate(prompts)]


def test_noisy_pairs_draw_distinct_texts_and_label_by_a_noisy_annotator() -> None:
    data = scored([("a", 1.0), ("b", 0.0)] * 2, [("a", 0.5)] * 4, [("x", 0.2), ("y", 0.7)])
    pairs = noisy_pairs(data)
    assert [p["prompt"] for p in pairs] == ["p0=", "p2="]  # one text only: no pair
    assert pairs == noisy_pairs(data)  # the data seed fixes the records
    for p in pairs:
        assert p["chosen"] != p["rejected"]
        exact = {"a": 1.0, "b": 0.0, "x": 0.2, "y": 0.7}  # the exact rewards are kept
        assert (p["chosen_reward"], p["rejected_reward"]) == (
            exact[p["chosen"]],
            exact[p["rejected"]],
        )
    # no noise to speak of, a sharp annotator, no flips: the better sample is chosen; all
    # flips: the worse one
    sharp = {"noise": 1e-9, "temperature": 1e-6}
    assert all(
        p["chosen_reward"] > p["rejected_reward"] for p in noisy_pairs(data, flip_rate=0.0, **sharp)
    )
    assert all(
        p["chosen_reward"] < p["rejected_reward"] for p in noisy_pairs(data, flip_rate=1.0, **sharp)
    )


def test_noisy_pairs_flip_at_the_rate_and_label_ties_at_random() -> None:
    """2000 prompts of two samples: flips at 0.2; equal rewards chosen either way at 1/2; and a
    clear gap (1 vs 0, noise 0.1, temperature 0.1) gives the better sample about 80 %."""
    tied = noisy_pairs(scored(*[[("a", 0.5), ("b", 0.5)]] * 2000))
    assert abs(sum(p["flipped"] for p in tied) / 2000 - 0.2) < 0.03
    assert abs(Counter(p["chosen"] for p in tied)["a"] / 2000 - 0.5) < 0.04
    clear = noisy_pairs(scored(*[[("a", 1.0), ("b", 0.0)]] * 2000))
    assert abs(sum(p["chosen"] == "a" for p in clear) / 2000 - 0.8) < 0.03


def test_thumbs_take_the_first_sample_and_label_one_in_four_desirable() -> None:
    generator = torch.Generator().manual_seed(0)
    rewards = torch.rand(400, 2, generator=generator).tolist()
    data = scored(*[[(f"first{i}", a), (f"second{i}", b)] for i, (a, b) in enumerate(rewards)])
    records = thumbs_up_down([*data, []])  # a prompt without a sample gives nothing
    assert [r["completion"] for r in records] == [f"first{i}" for i in range(400)]
    assert [r["reward"] for r in records] == [a for a, _ in rewards]
    assert sum(r["label"] for r in records) == 100  # above the 75th percentile: 1 to 3
    assert all(r["label"] == (r["noisy_reward"] > r["threshold"]) for r in records)
    noise = [r["noisy_reward"] - r["reward"] for r in records]
    assert abs(sum(noise) / 400) < 0.02 and 0.08 < math.sqrt(sum(x * x for x in noise) / 400) < 0.12
    assert records == thumbs_up_down(data)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def test_reward_metrics_by_hand() -> None:
    # prompt 0: the policy dominates; prompt 1: the reference does. Pooled, the two cancel:
    # policy {0, 0, 1, 1} against reference {0, 0, 0.5, 0.5}
    out = reward_metrics(
        torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.5, 0.5]])
    )
    assert out == {
        "policy_reward_q10": 0.0,
        "policy_zero_reward_share": 0.5,
        "reference_reward_q10": 0.0,
        "reference_zero_reward_share": 0.5,
        "fsd_violation_per_prompt": 0.5,  # (0 + 1) / 2
        "fsd_violation_pooled": 0.0,
    }
    # policy {0, 1} against reference {0.5, 0.5}: below at levels 0.01..0.50, 50 of 99; pooled
    # policy {0, 0.5, 1, 1} against 0.5: below at levels 0.01..0.25
    out = reward_metrics(torch.tensor([[1.0, 0.5], [0.0, 1.0]]), torch.full((2, 2), 0.5))
    assert out["fsd_violation_per_prompt"] == pytest.approx((0 + 50 / 99) / 2)
    assert out["fsd_violation_pooled"] == pytest.approx(25 / 99)
    assert (out["policy_reward_q10"], out["reference_reward_q10"]) == (0.0, 0.5)
    assert (out["policy_zero_reward_share"], out["reference_zero_reward_share"]) == (0.25, 0.0)
    # the 10 % quantile of 10 samples is the smallest; of 11, the second smallest
    ten = torch.arange(10.0).view(5, 2)
    assert reward_metrics(ten, ten)["policy_reward_q10"] == 0.0
    eleven = torch.arange(11.0).view(11, 1)
    assert reward_metrics(eleven, eleven)["policy_reward_q10"] == 1.0
    with pytest.raises(ValueError, match="one shape"):
        reward_metrics(torch.zeros(2, 2), torch.zeros(2, 3))


# --------------------------------------------------------------------------------------------
# Selection, bootstrap, verdicts, matched KL
# --------------------------------------------------------------------------------------------


def run(
    phase: str, cell: str, method: str, seed: int, reward: float, **fields: Any
) -> dict[str, Any]:
    """A record with the fields the analysis reads."""
    setting = fields.pop("setting", {"beta": 1.0})
    return {
        "phase": phase,
        "cell": cell,
        "method": method,
        "seed": seed,
        "setting": setting,
        "setting_label": study.setting_label(setting),
        "reward_mean": reward,
        "kl": fields.pop("kl", 1.0),
        "fsd_violation_pooled": 0.0,
        "group_size": 64,
        **fields,
    }


def test_selection_takes_the_best_mean_validation_reward_then_the_lower_kl() -> None:
    a, b, c = {"beta": 1.0}, {"beta": 3.0}, {"beta": 10.0}
    runs = [
        run("tune", "noisy", "dpo", 100, 0.75, setting=a, kl=2.0),
        run("tune", "noisy", "dpo", 101, 0.5, setting=a, kl=2.0),  # mean 0.625
        run("tune", "noisy", "dpo", 100, 0.625, setting=b, kl=1.0),
        run("tune", "noisy", "dpo", 101, 0.625, setting=b, kl=1.0),  # mean 0.625, lower KL
        run("tune", "noisy", "dpo", 100, 0.75, setting=c, kl=0.5),
        run("tune", "noisy", "dpo", 101, 0.25, setting=c, kl=0.5),  # mean 0.5
        run("tune", "noisy", "ipo", 100, 0.10, setting=c),
        run("test", "noisy", "ipo", 0, 0.99, setting=a),  # test runs take no part
    ]
    assert study.select(runs) == {("noisy", "dpo"): b, ("noisy", "ipo"): c}
    (row,) = [r for r in study.tune_table(runs) if r["setting"] == a]
    assert (row["seeds"], row["reward_mean"], row["kl"]) == (2, 0.625, 2.0)


def test_bootstrap_intervals() -> None:
    assert regimes.bootstrap_interval([0.25] * 5) == (0.25, 0.25)
    low, high = regimes.bootstrap_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= low < 2.5 < 3.0 < 3.5 < high <= 5.0
    assert (low, high) == (1.8, 4.2)  # the percentiles land on the means' grid of 0.2
    spread = [0.013, 0.5, 1.7, 2.03, 3.3]  # means fall everywhere: the seed shows
    assert regimes.bootstrap_interval(spread) == regimes.bootstrap_interval(spread)
    assert regimes.bootstrap_interval(spread) != regimes.bootstrap_interval(spread, seed=1)
    # the mean of 2 resampled values of {-1, 3}: -1 or 3 with probability 1/4, 1 otherwise
    low2, high2 = regimes.bootstrap_interval([3.0, -1.0])
    assert (low2, high2) == (-1.0, 3.0)
    assert regimes.bootstrap_interval_of_gap([0.5] * 5, [0.25] * 5) == (0.25, 0.25)
    low3, high3 = regimes.bootstrap_interval_of_gap([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert 1.0 <= low3 < 2.0 < high3 <= 3.0
    with pytest.raises(ValueError, match="at least one value"):
        regimes.bootstrap_interval([])


@pytest.mark.parametrize(
    ("interval", "strict", "expected"),
    [
        ((0.01, 0.2), True, "supported"),
        ((0.0, 0.2), True, "inconclusive"),  # touches 0: not above it
        ((0.0, 0.2), False, "supported"),  # ">= 0": 0 is on the predicted side
        ((0.0, 0.0), True, "inconclusive"),
        ((-0.1, 0.1), True, "inconclusive"),
        ((-0.2, -0.01), True, "contradicted"),
        ((-0.2, 0.0), True, "inconclusive"),
        ((-0.2, -0.01), False, "contradicted"),
    ],
)
def test_verdict_rule(interval: tuple[float, float], strict: bool, expected: str) -> None:
    assert regimes.verdict(interval, strict=strict) == expected


def test_combined_verdicts_and_interpolation() -> None:
    assert regimes.combine(["supported", "supported"]) == "supported"
    assert regimes.combine(["supported", "inconclusive"]) == "inconclusive"
    assert regimes.combine(["not run", "contradicted"]) == "contradicted"
    assert regimes.combine(["supported", "not run"]) == "not run"
    points = [(4.0, 0.8), (1.0, 0.5), (2.0, 0.7)]
    assert regimes.interpolate(points, 1.5) == pytest.approx(0.6)
    assert regimes.interpolate(points, 3.0) == pytest.approx(0.75)
    assert regimes.interpolate(points, 4.0) == 0.8
    assert regimes.interpolate(points, 0.5) is None and regimes.interpolate(points, 5) is None


def test_matched_kl_interpolates_each_method_at_the_median_test_kl() -> None:
    runs = [
        run("tune", "noisy", "dpo", 100, 0.5, setting={"beta": 10.0}, kl=1.0),
        run("tune", "noisy", "dpo", 100, 0.7, setting={"beta": 1.0}, kl=3.0),
        run("tune", "noisy", "ipo", 100, 0.6, setting={"beta": 1.0}, kl=0.2),
        *[run("test", "noisy", "dpo", s, 0.7, kl=kl) for s, kl in enumerate([1.0, 2.0, 9.0])],
        run("test", "noisy", "ipo", 0, 0.7, kl=1.5),
        run("test", "best_vs_worst", "ipo", 0, 0.7, kl=100.0),  # another cell
    ]
    target, rewards = study.matched_kl(runs, "noisy")
    assert target == 1.75  # the median of 1, 1.5, 2, 9
    assert rewards == {"dpo": pytest.approx(0.5 + 0.2 * 0.375), "ipo": None}


def cell_runs(cell: str, rewards: dict[str, list[float]], **fields: Any) -> list[dict[str, Any]]:
    return [
        run("test", cell, m, seed, r, **fields)
        for m, rs in rewards.items()
        for seed, r in enumerate(rs)
    ]


def test_hypotheses_follow_the_protocol() -> None:
    up = [0.70, 0.71, 0.72, 0.73, 0.74]
    runs = [
        # H1: dpo ahead in the control by about 0.02-0.06
        *cell_runs("best_vs_worst", {"dpo": [0.76, 0.74, 0.77, 0.76, 0.79], "aot_paired": up}),
        # H2: aot_paired behind dpo in noisy by exactly 0.01; H2b: -0.01 against -0.04
        *cell_runs("noisy", {"aot_paired": [r - 0.01 for r in up], "dpo": up}),
        # H3: aot_unpaired above kto, dpo and ipo, level with aot_paired on one seed
        *cell_runs(
            "unpaired",
            {
                "aot_unpaired": up,
                "kto": [r - 0.05 for r in up],
                "dpo": [r - 0.02 for r in up],
                "ipo": [r - 0.03 for r in up],
                "aot_paired": [0.70, 0.72, 0.71, 0.73, 0.73],
            },
        ),
        # H4: 16 < 64 < 256, 256 - 16 = 0.02 on every seed
        *[
            run("ablation", "unpaired", "aot_unpaired", s, 0.70 + g / 12800, group_size=g)
            for g in (16, 64, 256)
            for s in range(5)
        ],
    ]
    comparisons, overall = study.hypotheses(runs)
    by_what = {c.what: c for c in comparisons}
    h1 = by_what["best_vs_worst: dpo - aot_paired"]
    assert h1.seeds == "5" and h1.mean == pytest.approx(0.044) and h1.verdict == "supported"
    h2 = by_what["noisy: aot_paired - dpo"]
    assert h2.interval == pytest.approx((-0.01, -0.01)) and h2.verdict == "contradicted"
    (h2b,) = [c for c in comparisons if c.hypothesis == "H2b"]
    assert h2b.mean == pytest.approx(-0.01 + 0.044) and h2b.seeds == "5 + 5"
    assert h2b.verdict == "supported"
    h3 = [c.verdict for c in comparisons if c.hypothesis == "H3"]
    assert h3 == ["supported", "supported", "supported", "inconclusive"]
    gap = by_what["ablation: reward(256) - reward(16)"]
    assert gap.mean == pytest.approx(0.01875) and gap.verdict == "supported"
    # H5: in noisy the best baseline (dpo) and the best AOT (aot_paired) both dominate (0):
    # no difference to find; unpaired was not run for the FSD violation either way
    h5 = [c for c in comparisons if c.hypothesis == "H5"]
    assert "best baseline (dpo) - best AOT (aot_paired)" in h5[0].what
    assert h5[0].verdict == "inconclusive" and h5[0].interval == (0.0, 0.0)
    assert "best baseline (dpo) - best AOT (aot_unpaired)" in h5[1].what
    assert overall == {
        "H1": "supported",
        "H2": "contradicted",
        "H2b": "supported",
        "H3": "inconclusive",
        "H4": "supported",
        "H5": "inconclusive",
    }
    # a hypothesis whose runs are missing is not run; unordered means make H4 inconclusive
    unordered = [
        dict(r, reward_mean=0.8) if r.get("group_size") == 64 and r["phase"] == "ablation" else r
        for r in runs
        if r["cell"] != "noisy"
    ]
    _, overall = study.hypotheses(unordered)
    assert overall["H2"] == overall["H2b"] == overall["H5"] == "not run"
    assert overall["H4"] == "inconclusive"


def test_report_of_a_whole_study(tmp_path: Path) -> None:
    """Every cell, method and phase (synthetic records): the tables, the differences, the
    matched KL, the verdicts and the plots; the file's other sections stay as they are."""
    runs = []
    for c, cell in enumerate(study.CELLS):
        for m, method in enumerate(study.cell_methods(cell)):
            for k, setting in enumerate(study.METHODS[method][1][:2]):
                runs += [
                    run(
                        "tune",
                        cell,
                        method,
                        seed,
                        0.6 + 0.01 * (m + k),
                        setting=setting,
                        kl=1.0 + k + m / 10,
                        prompts="validation",
                    )
                    for seed in (100, 101)
                ]
            runs += [
                run(
                    "test",
                    cell,
                    method,
                    seed,
                    0.6 + 0.01 * (m + seed + c),
                    setting=study.METHODS[method][1][1],
                    kl=1.5,
                    prompts="test",
                )
                for seed in range(5)
            ]
    runs += [
        run(
            "ablation",
            "unpaired",
            "aot_unpaired",
            seed,
            0.7 + g / 1000 + seed / 100,
            setting=study.METHODS["aot_unpaired"][1][1],
            kl=1.0,
            prompts="test",
            group_size=g,
            gradient_accumulation_steps=256 // g,
        )
        for g in (16, 64, 256)
        for seed in range(5)
    ]
    for r in runs:
        r |= {key: 0.5 for key in study.METRICS if key not in r}
        r |= {"reference_reward_mean": 0.45, "wall_s": 10.0, "train_time_s": 3.0, "steps": 30}
    data = {
        "train_pairs": 3919,
        "train_noisy_pairs": 100,
        "train_noisy_pairs_truly_better": 60,
        "train_noisy_pairs_truly_tied": 20,
        "train_noisy_labels_flipped": 21,
        "train_thumbs": 4096,
        "train_thumbs_desirable": 1024,
    }
    plan = study.Plan()
    payload = {
        "quick": False,
        "command": "python -m benchmarks.alignment_regimes",
        "machine": "test machine",
        "jobs": 2,
        "wall_s": 3600.0,
        "toy": dataclasses.asdict(plan.toy_config),
        "data": data,
        "plan": {
            "base": {},
            "tuning_seeds": [100, 101],
            "test_seeds": [0, 1, 2, 3, 4],
            "ablation": {"per_step": 256, "steps": 40, "warmup_steps": 3},
        },
        "runs": runs,
    }
    page = tmp_path / "alignment.md"
    page.write_text("# Alignment\n\nHand-written text.\n")
    study.report(payload, "regimes_test", docs=tmp_path)
    text = page.read_text()
    assert text.startswith("# Alignment\n\nHand-written text.\n\n<!-- regimes_test:begin -->")
    assert "## AOT in its own regime: the study" in text and "Pipeline check" not in text
    assert "`noisy` 100 pairs whose chosen completion is truly better in 60%" in text
    for cell in study.CELLS:
        assert f"### {cell}" in text
        assert (tmp_path / "img" / f"regimes_test_{cell}.png").stat().st_size > 0
    # the chosen setting (the better one, k = 1) in the tables; dpo_ls in noisy only
    assert text.count("| dpo_ls | beta 0.3 | 5 |") == 1
    assert text.count("| aot_paired | logistic, beta 4 | 5 |") == 3
    assert "| aot_paired - dpo_ls | 5 |" in text and "| aot_unpaired - kto | 5 |" in text
    assert "| 16 x 16 | logistic, beta 4 | 5 |" in text
    assert "| H4 | ablation: reward(256) - reward(16) | > 0 | 5 | +0.2400 |" in text
    assert "**H1**: " in text and "**H5**: " in text and study.ANALYSIS_NOTE in text
    assert "<details><summary>Tuning" in text and "| dpo | beta 0.1 | 2 | 0.6" in text
    before = text
    study.report(payload, "regimes_test", docs=tmp_path)  # rewritten in place, not appended
    assert page.read_text() == before
    # a quick run says what it is, and what the study would take
    quick = dict(payload, quick=True, plan=dict(payload["plan"], base={"max_steps": 30}))
    study.report(quick, "regimes_test_quick", docs=tmp_path)
    text = page.read_text().split("<!-- regimes_test_quick:begin -->")[1]
    assert "quick run (pipeline check, not the study)" in text and "30 optimizer steps" in text
    assert f"about {study.full_study_hours(quick):.1f} hours at 2 runs" in text
    assert study.ANALYSIS_NOTE not in text


def test_the_quick_run_estimates_the_study() -> None:
    """Each quick run once per seed of the study, its training scaled to the study's steps
    (30 -> 150, ablation 10 -> 40), 2 runs at a time."""
    timing = [("tune", 30, 10.0, 3.0), ("test", 30, 12.0, 3.0), ("ablation", 10, 8.0, 2.0)]
    runs = [{"phase": p, "steps": n, "wall_s": w, "train_time_s": t} for p, n, w, t in timing]
    seconds = 2 * (10 + 4 * 3) + 5 * (12 + 4 * 3) + 5 * (8 + 3 * 2)
    assert study.full_study_hours({"runs": runs, "jobs": 2}) == pytest.approx(seconds / 2 / 3600)


# --------------------------------------------------------------------------------------------
# The pipeline at micro scale
# --------------------------------------------------------------------------------------------

#: The micro task with a short SFT: the pipeline, not the reference, is under test.
MICRO_STUDY_TOY = dataclasses.replace(MICRO_TOY, sft_steps=40)
MICRO_BASE = {
    "per_device_batch_size": 8,
    "eval_batch_size": 16,
    "max_steps": 2,
    "eval_every": 2,
    "warmup_steps": 1,
    "lora_r": 4,
    "lora_alpha": 8,
}


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # the SFT of the micro task, in this process
def test_micro_study_runs_every_phase_and_reports(tmp_path: Path) -> None:
    """One method per cell (aot_unpaired in the unpaired one, which the ablation needs; a
    paired loss on within-batch pairs is tested in test_examples.py), one configuration, one
    tuning and one test seed, 2 steps; the ablation at 8 completions per step in groups of 4
    and 8, 1 step."""
    plan = study.Plan(
        name="alignment_regimes_micro",
        toy_config=MICRO_STUDY_TOY,
        base=MICRO_BASE,
        cells={"best_vs_worst": ["kto"], "noisy": ["dpo_ls"], "unpaired": ["aot_unpaired"]},
        grids={
            "kto": [{"beta": 2.0}],
            "dpo_ls": [{"beta": 0.5}],
            "aot_unpaired": [{"penalty": "logistic", "beta": 4.0}],
        },
        tuning_seeds=(100,),
        test_seeds=(0,),
        ablation_groups=(4, 8),
        ablation_per_step=8,
        ablation_steps=1,
        ablation_warmup=0,
    )
    payload = study.run_study(plan, tmp_path / "work", jobs=2)
    runs = payload["runs"]
    assert [(r["phase"], r["cell"], r["method"], r["seed"], r["prompts"]) for r in runs] == [
        ("tune", "best_vs_worst", "kto", 100, "validation"),
        ("tune", "noisy", "dpo_ls", 100, "validation"),
        ("tune", "unpaired", "aot_unpaired", 100, "validation"),
        ("test", "best_vs_worst", "kto", 0, "test"),
        ("test", "noisy", "dpo_ls", 0, "test"),
        ("test", "unpaired", "aot_unpaired", 0, "test"),
        ("ablation", "unpaired", "aot_unpaired", 0, "test"),
        ("ablation", "unpaired", "aot_unpaired", 0, "test"),
    ]
    for r in runs:
        for key in study.METRICS:
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r)
        assert 0 <= r["win_rate"] <= 1 and 0 <= r["fsd_violation_pooled"] <= 1
        assert r["config"]["toy_data"] == CELL_DATA[r["cell"]]
        assert r["config"]["toy_eval_prompts"] == r["prompts"]
        assert "output_dir" not in r["config"]
    # what each method was fed, and its configuration
    config = {(r["phase"], r["cell"], r["method"]): r["config"] for r in runs}
    kto, dpo_ls = config["test", "best_vs_worst", "kto"], config["test", "noisy", "dpo_ls"]
    assert (kto["beta"], kto["desirable_weight"], kto["pair_within_batch"]) == (2.0, 1.0, False)
    assert (dpo_ls["loss"], dpo_ls["label_smoothing"], dpo_ls["beta"]) == ("dpo", 0.2, 0.5)
    aot = config["test", "unpaired", "aot_unpaired"]
    assert (aot["penalty"], aot["beta"], aot["pair_within_batch"]) == ("logistic", 4.0, False)
    # the ablation: 8 completions per step, sorted 4 x 2 or 8 x 1, for its own steps
    ablation = [r for r in runs if r["phase"] == "ablation"]
    assert [(r["group_size"], r["gradient_accumulation_steps"], r["steps"]) for r in ablation] == [
        (4, 2, 1),
        (8, 1, 1),
    ]
    assert [r["steps"] for r in runs if r["phase"] != "ablation"] == [2] * 6
    # one reference for every run: one reference reward per prompt split
    for split in ("validation", "test"):
        assert len({r["reference_reward_mean"] for r in runs if r["prompts"] == split}) == 1

    payload["command"] = "test"
    study.report(payload, plan.name, docs=tmp_path)
    text = (tmp_path / "alignment.md").read_text()
    assert "<!-- alignment_regimes_micro:begin -->" in text
    assert "| kto | beta 2 | 1 |" in text and "| dpo_ls | beta 0.5 | 1 |" in text
    assert "| 4 x 2 | logistic, beta 4 | 1 |" in text
    assert "Matched KL" in text and study.ANALYSIS_NOTE in text
    assert "| H1 | best_vs_worst: dpo - aot_paired | >= 0 | - | - | - | not run |" in text
    for image in ("best_vs_worst", "noisy", "unpaired", "ablation"):
        assert (tmp_path / "img" / f"alignment_regimes_micro_{image}.png").stat().st_size > 0
    json.dumps(payload)  # the result file's payload is JSON
