"""The mechanism study's pieces (docs/preregistration_2.md): its arms and grids, the quantile
dominance against NumPy's quantiles and hand-made cases, the verdicts; and the whole pipeline of
benchmarks/alignment_mechanism.py (data seeds, tune, select, test, kl, ablation, analysis,
report) at micro scale."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
pytest.importorskip("matplotlib")

from aot_examples.config import parse_args, to_args

from benchmarks import alignment_mechanism as study

from ..examples.test_examples import MICRO_TOY


def test_every_arm_of_a_family_gets_the_same_grid_and_its_coupling() -> None:
    """Logistic arms: beta x smoothing; least squares: one margin grid, IPO's beta 1/(2 m);
    the options parse as align.py's command line."""
    assert len(study.GRIDS["logistic"]) == 6 and len(study.GRIDS["least_squares"]) == 3
    assert study.setting_options("ipo", {"margin": 4.0}) == {"beta": 0.125}
    assert study.setting_options("aot_sorted_ls", {"margin": 4.0}) == {"beta": 4.0}
    for cell in ("thumbs", "noisy"):
        for name, arm in study.ARMS.items():
            options = arm.loss_options(cell)
            for setting in study.GRIDS[arm.family]:
                args = {**options, **study.setting_options(name, setting), "toy_data": cell}
                cfg = parse_args(["--output-dir", "x", *to_args(args)])
                aot = "aot_unpaired" if cell == "thumbs" else "aot_paired"
                assert cfg.loss == {"dpo": "dpo", "ipo": "ipo"}.get(name, aot)
                assert cfg.sort == ("shuffled" if arm.coupling == "shuffled" else "hard")
                assert cfg.pair_within_batch == (cell == "thumbs" and arm.coupling == "per pair")
                if arm.coupling != "per pair":
                    assert cfg.penalty == arm.family


def test_quantiles_are_numpys_inverted_cdf() -> None:
    """Q(t) = inf{y : F(y) >= t} from the pooled counts, as NumPy's ``inverted_cdf``."""
    generator = np.random.default_rng(0)
    rewards = generator.integers(0, 7, size=(3, 20, 4)) / 6
    values = torch.tensor(sorted(set(rewards.flatten().tolist())), dtype=torch.float64)
    pooled = study._histograms(rewards.tolist(), values).sum((0, 1))
    expected = np.quantile(rewards.flatten(), study.LEVELS.numpy(), method="inverted_cdf")
    np.testing.assert_allclose(study._quantiles(pooled, values).numpy(), expected)


def test_quantile_dominance_of_equal_and_shifted_rewards() -> None:
    generator = np.random.default_rng(1)
    rewards = (generator.integers(0, 5, size=(4, 30, 4)) / 4).tolist()
    same = study.quantile_dominance(rewards, rewards, resamples=200)
    assert same["lower_share"] == 0 and same["area"] == 0
    assert same["area_interval"] == [0.0, 0.0]
    lower = [[[r - 0.25 for r in p] for p in run] for run in rewards]  # every sample lower
    shifted = study.quantile_dominance(lower, rewards, resamples=200)
    assert shifted["lower_share"] == 1 and shifted["area"] == pytest.approx(-0.25)
    assert shifted["area_interval"] == pytest.approx([-0.25, -0.25])
    # the bootstrap moves runs and prompts: a difference in one run only is not certain
    one = [run if i else [[r + 0.5 for r in p] for p in run] for i, run in enumerate(rewards)]
    partial = study.quantile_dominance(one, rewards, resamples=500)
    low, high = partial["area_interval"]
    assert low < partial["area"] < high and low >= 0


def test_verdicts_need_every_difference_and_g1_the_ordered_means() -> None:
    def row(hypothesis: str, verdict: str, family: str = "logistic") -> dict[str, str]:
        return {"hypothesis": hypothesis, "cell": "c", "family": family, "verdict": verdict}

    rows = [
        row("M1", "supported"),
        row("T1", "supported"),
        row("T1", "inconclusive"),
        row("T1", "supported", "least_squares"),
        row("T1", "supported", "least_squares"),
        row("M3", "per-pair better"),
        row("G1", "supported"),
        row("G1", "does not hold"),
    ]
    assert study.overall(rows) == {
        "M1 c": "supported",
        "T1 c (logistic)": "inconclusive",
        "T1 c (least_squares)": "supported",
        "M3 c (logistic)": "per-pair better",
        "G1": "inconclusive",
    }


def test_the_study_pipeline_runs_at_micro_scale(tmp_path: Path) -> None:
    """Every phase on a micro task with a hard subgroup: records per phase, test rewards kept,
    every hypothesis computed, the report written with its plots."""
    tail = dataclasses.replace(MICRO_TOY, min_letters=2, max_letters=8, test_prompts=24)
    plan = study.Plan(
        name="micro",
        tasks={"letters-tail": tail},
        cells=(("letters-tail", "thumbs"),),
        grids={
            "logistic": [{"beta": 2.0, "label_smoothing": s} for s in (0.0, 0.2)],
            "least_squares": [{"margin": 1.0}],
        },
        base={
            "max_steps": 2,
            "per_device_batch_size": 8,
            "eval_batch_size": 32,
            "lora_r": 4,
            "lora_alpha": 8,
            "warmup_steps": 1,
            "eval_every": 2,
        },
        tuning_seeds=(100,),
        test_seeds=(0,),
        data_seeds=(0, 1),
        ablation_groups=(4, 8),
        ablation_per_step=8,
        ablation_steps=2,
        ablation_warmup=1,
        ablation_seeds=(0,),
    )
    payload = study.run_study(plan, tmp_path)
    runs = payload["runs"]
    phases = Counter(r["phase"] for r in runs)
    assert phases["tune"] == 3 * 2 + 3 * 1 and phases["test"] == 6 * 2 and phases["ablation"] == 2
    assert set(phases) <= {"tune", "test", "kl", "ablation"}
    for r in runs:
        assert 0 <= r["hard_reward_mean"] <= 1 and r["cvar10"] <= r["reward_mean"] + 1e-12
        if r["phase"] == "test":
            assert np.shape(r["rewards"]) == (24, MICRO_TOY.test_samples_per_prompt)
    assert {r["data_seed"] for r in runs if r["phase"] == "test"} == {0, 1}
    payload["command"] = "test"
    payload["analysis"] = study.analyse(payload)
    study.save(payload, tmp_path / "micro.json")  # one line per run, read back as it was
    assert json.loads((tmp_path / "micro.json").read_text()) == json.loads(json.dumps(payload))
    hypotheses = {c["hypothesis"] for c in payload["analysis"]["comparisons"]}
    assert hypotheses == {"M1", "M2", "M3", "T1", "T2", "G1"}
    study.report(payload, "micro", tmp_path)
    page = (tmp_path / "alignment.md").read_text()
    assert "### Verdicts" in page and "letters-tail/thumbs: sort group size" in page
    assert (tmp_path / "img" / "micro_letters-tail_thumbs_quantiles.png").stat().st_size > 0
