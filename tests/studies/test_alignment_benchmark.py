"""A micro configuration of benchmarks/alignment.py: the same code path as the full grid
(shared SFT reference, examples/align.py launched with python and torchrun, records, tables and
plots), in a minute."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
pytest.importorskip("matplotlib")

from aot_examples.config import EMBEDDED_BETA

from benchmarks import alignment

from ..examples.test_examples import MICRO_TOY

MICRO_BASE = {
    "per_device_batch_size": 8,
    "eval_batch_size": 16,
    "max_steps": 3,
    "eval_every": 3,
    "warmup_steps": 1,
    "lora_r": 4,
    "lora_alpha": 8,
}


@pytest.mark.multiprocess
def test_micro_grid_records_every_metric_and_reports(tmp_path: Path) -> None:
    arms = [
        alignment.Arm("methods", "aot_paired (hard)", {"loss": "aot_paired"}),
        alignment.Arm("beta", "kto, beta 0.5", {"loss": "kto", "beta": 0.5}),
        alignment.Arm(
            "batch size", "2 ranks x 4, global sort", {"per_device_batch_size": 4}, processes=2
        ),
    ]
    runs = alignment.run_grid(arms, [0], tmp_path / "work", MICRO_TOY, MICRO_BASE, jobs=2)
    assert [(r["label"], r["method"], r["seed"], r["config"]["beta"]) for r in runs] == [
        ("aot_paired (hard)", "aot_paired", 0, EMBEDDED_BETA["aot_paired"]),
        ("kto, beta 0.5", "kto", 0, 0.5),
        ("2 ranks x 4, global sort", "aot_paired", 0, EMBEDDED_BETA["aot_paired"]),
    ]
    for r in runs:
        for key in ("reward_mean", "win_rate", "kl", "fsd_violation", "pair_accuracy"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r)
        assert 0 <= r["win_rate"] <= 1 and 0 <= r["fsd_violation"] <= 1
        assert set(r["quantile_margins"]) == {"q10", "q25", "q50", "q75", "q90"}
        assert r["config"]["steps"] == 3
    # every run started from the same reference model
    assert len({r["reference_reward_mean"] for r in runs}) == 1
    # a run alone gives what it gave beside the others
    (alone,) = alignment.run_grid(arms[1:2], [0], tmp_path / "work", MICRO_TOY, MICRO_BASE)
    assert {k: v for k, v in alone.items() if k != "wall_s"} == {
        k: v for k, v in runs[1].items() if k != "wall_s"
    }

    payload = {"command": "test", "machine": "test", "wall_s": 1.0, "runs": runs}
    alignment.report(payload, "alignment_micro", docs=tmp_path)
    text = (tmp_path / "alignment.md").read_text()
    assert "| aot_paired (hard) | 4 | 1 |" in text and "| kto, beta 0.5 | 0.5 | 1 |" in text
    for group in ("methods", "beta", "batch_size"):
        assert (tmp_path / "img" / f"alignment_micro_{group}.png").stat().st_size > 0
