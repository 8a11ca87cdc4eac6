"""benchmarks/instructions.py: its runs are command lines that align.py accepts, and its table
and plot say what the runs' summaries say."""

from __future__ import annotations

from pathlib import Path

import pytest

for _module in ("matplotlib", "transformers", "peft", "accelerate", "tqdm"):
    pytest.importorskip(_module)

from aot_examples.config import parse_args  # noqa: E402

from benchmarks import instructions  # noqa: E402


@pytest.mark.parametrize("preset", sorted(instructions.PRESETS))
def test_every_run_is_a_command_line_align_accepts(preset: str, tmp_path: Path) -> None:
    chosen = instructions.PRESETS[preset]
    for cell in chosen.cells:
        for method in chosen.methods:
            args = instructions.align_args(tmp_path, chosen, cell, method, seed=3)
            cfg = parse_args(args)
            assert (cfg.task, cfg.task_data, cfg.seed) == ("instructions", cell, 3)
            assert cfg.loss == method.options["loss"]
            assert cfg.sort == method.options.get("sort", "hard")
            assert cfg.max_steps == chosen.options["max_steps"]


def _run(method: str, seed: int, policy: list[list[float]]) -> dict[str, object]:
    reference = [[0.0, 0.5], [1.0, 1.0]]
    return {
        "cell": "best_vs_worst",
        "method": method,
        "seed": seed,
        "policy_reward_mean": sum(map(sum, policy)) / 4,
        "policy_reward_cvar10": min(sum(r) / 2 for r in policy),
        "policy_zero_reward_share": sum(sum(r) == 0 for r in policy) / 2,
        "reference_reward_mean": 0.625,
        "reference_reward_cvar10": 0.25,
        "reference_zero_reward_share": 0.0,
        "kl": 0.1 * (seed + 1),
        "policy_finished_share": 1.0,
        "train_time_s": 10.0,
        "wall_s": 20.0,
        "rewards": {"policy": policy, "reference": reference},
    }


def test_the_table_averages_seeds_and_leads_with_the_reference(tmp_path: Path) -> None:
    runs = [
        _run("aot_paired", 0, [[1.0, 1.0], [0.0, 0.0]]),
        _run("aot_paired", 1, [[1.0, 0.0], [1.0, 1.0]]),
        _run("dpo", 0, [[0.0, 0.0], [0.0, 0.0]]),
    ]
    lines = instructions.table(runs).splitlines()
    assert lines[2].startswith("| best_vs_worst | reference | | 0.625 | 0.250 | 0.000 |")
    aot = lines[3].split(" | ")
    assert aot[1:4] == ["aot_paired", "2", "0.625"]  # (0.5 + 0.75) / 2
    assert aot[4:7] == ["0.250", "0.250", "0.150"]  # CVaR (0 + 0.5) / 2, zero share, KL
    assert lines[4].split(" | ")[1:4] == ["dpo", "1", "0.000"]
    payload = {
        "command": "python -m benchmarks.instructions",
        "preset": "cpu",
        "seeds": [0, 1],
        "machine": "a test",
        "wall_s": 60.0,
        "runs": runs,
    }
    (tmp_path / "img").mkdir()
    instructions.report(payload, "instructions_test", tmp_path)
    page = (tmp_path / "alignment.md").read_text()
    assert "one-seed demonstration" in page and "\n".join(lines) in page
    assert (tmp_path / "img" / "instructions_test.png").stat().st_size > 0
