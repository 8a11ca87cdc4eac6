"""Tests of ``examples/align.py``, run as a user runs it (``python`` or ``torchrun``) on a micro
embedded task: outputs, every loss, several processes, interruptions and resuming."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

for _module in ("transformers", "peft", "accelerate", "matplotlib", "tqdm"):
    pytest.importorskip(_module)

from aot_examples import toy  # noqa: E402
from aot_examples.config import EMBEDDED_BETA, AlignConfig, to_args  # noqa: E402
from aot_examples.data import read_jsonl  # noqa: E402
from aot_examples.launch import ALIGN_SCRIPT, run_align  # noqa: E402
from aot_examples.losses import (  # noqa: E402
    LOSSES,
    PAIRED_LOSSES,
    PreferenceLogps,
    check_data_format,
    preference_loss,
    within_batch_pairs,
)
from safetensors.torch import load_file  # noqa: E402

import aot_losses  # noqa: E402
from aot_losses import baselines  # noqa: E402

MICRO_TOY = toy.ToyConfig(
    alphabet="abcde",
    min_letters=2,
    max_letters=3,
    n_layer=1,
    n_embd=32,
    n_head=2,
    sft_steps=200,
    sft_batch_size=16,
    sft_learning_rate=1e-2,
    train_prompts=48,
    eval_prompts=16,
    test_prompts=16,
    test_samples_per_prompt=2,
)
#: The loop's settings for the micro task (with MICRO_TOY's lengths: 10 positions).
MICRO_OPTIONS: dict[str, Any] = {
    "per_device_batch_size": 8,
    "eval_batch_size": 16,
    "max_steps": 6,
    "warmup_steps": 1,
    "log_every": 1,
    "eval_every": 3,
    "lora_r": 4,
    "lora_alpha": 8,
}


@pytest.fixture(scope="session")
def micro_task(tmp_path_factory: pytest.TempPathFactory) -> toy.Artifacts:
    """The micro embedded task, built once (a few seconds)."""
    return toy.prepare(MICRO_TOY, tmp_path_factory.mktemp("toy"))


def embedded_args(out: Path, task: toy.Artifacts, **overrides: Any) -> list[str]:
    """``align.py`` flags of a micro embedded run (the task's cache shared)."""
    files = {"toy_config": str(task.config_file), "toy_cache_dir": str(task.cache_dir)}
    return to_args({**MICRO_OPTIONS, "output_dir": str(out), **files, **overrides})


def align(args: list[str], processes: int = 1) -> subprocess.CompletedProcess[str]:
    """Run align.py; fail the test with its output's end if it fails."""
    done = run_align(args, processes=processes, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def read_metrics(path: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


def test_embedded_run_writes_summary_metrics_and_figure(
    tmp_path: Path, micro_task: toy.Artifacts
) -> None:
    printed = align(embedded_args(tmp_path, micro_task)).stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("reference_reward_mean", "policy_reward_mean", "policy_reward_se", "win_rate_mean"):
        assert isinstance(summary[key], float)
    assert summary["toy"] == dataclasses.asdict(MICRO_TOY) and summary["steps"] == 6
    assert "reward (held-out prompts)" in printed and "held-out pairs: fsd/violation" in printed
    assert (tmp_path / "quantiles.png").stat().st_size > 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "eval"] == [3, 6]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(r["loss"], float) for r in records)
    assert "fsd/violation" in records[-1]
    # the held-out pairs, scored again from the saved adapter, give the loop's last evaluation
    pairs, last = summary["held_out_pairs"], summary["eval_policy"]
    assert set(last) - {"loss"} == set(pairs)
    for key in ("rewards/chosen", "rewards/rejected", "quantile_margin/q10", "logps/chosen"):
        assert pairs[key] == pytest.approx(last[key], rel=1e-4, abs=1e-5), key
    assert summary["config"]["beta"] == EMBEDDED_BETA["aot_paired"]
    assert (summary["config"]["max_length"], summary["config"]["max_prompt_length"]) == (10, 4)


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss": "aot_unpaired", "sort": "soft", "penalty": "squared_hinge"},
        {"loss": "dpo", "gradient_accumulation_steps": 2},
        # thumbs-up/down data, pairs formed in each micro-batch, measured on the validation
        # prompts
        {
            "loss": "ipo",
            "toy_data": "thumbs",
            "pair_within_batch": True,
            "toy_eval_prompts": "validation",
        },
    ],
    ids=lambda o: str(o["loss"]),
)
def test_unpaired_and_paired_losses_train(
    tmp_path: Path, micro_task: toy.Artifacts, overrides: dict[str, Any]
) -> None:
    align(embedded_args(tmp_path, micro_task, max_steps=2, eval_every=2, **overrides))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval_policy"]["loss"] is not None
    assert summary["config"]["beta"] == EMBEDDED_BETA[overrides["loss"]]
    assert summary["paired"] == (overrides["loss"] == "dpo")  # the data's format
    prompts = overrides.get("toy_eval_prompts", "test")
    count = {"validation": MICRO_TOY.eval_prompts, "test": MICRO_TOY.test_prompts}[prompts]
    assert (summary["prompts"], summary["prompt_count"]) == (prompts, count)
    kind = overrides.get("toy_data", "paired" if overrides["loss"] == "dpo" else "unpaired")
    assert summary["train_examples"] == len(read_jsonl(micro_task.dataset(kind, "train")))
    # paired or not, every loss is measured on the same held-out pairs
    assert summary["held_out_pairs"]["rewards/accuracy"] is not None
    assert summary["held_out_pairs"]["fsd/violation"] is not None


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_is_the_library_function(loss: str) -> None:
    """The loop's loss dispatch (the end-to-end runs above and the benchmark's cover the data
    paths; the losses themselves are tested in the library's tests)."""
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(6, generator=generator, dtype=torch.float64) for _ in range(4)]
    weights = {"desirable_weight": 3.0, "undesirable_weight": 0.5} if loss == "kto" else {}
    cfg = AlignConfig("x", loss=loss, beta=0.5, penalty="logistic", label_smoothing=0.1, **weights)
    expected = {
        "aot_paired": lambda: aot_losses.aot_paired_loss(
            *tensors, beta=0.5, penalty="logistic", label_smoothing=0.1
        ),
        "aot_unpaired": lambda: aot_losses.aot_unpaired_loss(
            *tensors, beta=0.5, penalty="logistic", label_smoothing=0.1
        ),
        "dpo": lambda: baselines.dpo_loss(*tensors, beta=0.5, label_smoothing=0.1),
        "ipo": lambda: baselines.ipo_loss(*tensors, beta=0.5),
        "kto": lambda: baselines.kto_loss(*tensors, beta=0.5, **weights),
    }[loss]()
    logps = PreferenceLogps(*tensors, paired=loss in PAIRED_LOSSES)
    torch.testing.assert_close(preference_loss(cfg.loss_spec, logps), expected, rtol=0, atol=0)


def test_paired_losses_refuse_unpaired_data(micro_task: toy.Artifacts) -> None:
    unpaired = read_jsonl(micro_task.dataset("thumbs", "train"))
    with pytest.raises(ValueError, match=r"--loss dpo needs paired data.*thumbs_train\.jsonl:1"):
        check_data_format("dpo", unpaired)
    assert check_data_format("kto", unpaired) is False
    # unless asked to pair within batches, which in turn needs unpaired data
    assert check_data_format("dpo", unpaired, pair_within_batch=True) is False
    paired = read_jsonl(micro_task.dataset("noisy", "train"))
    with pytest.raises(ValueError, match=r"--pair-within-batch pairs unpaired data.*noisy_train"):
        check_data_format("dpo", paired, pair_within_batch=True)


def test_within_batch_pairs_take_the_desirable_completions_in_turn() -> None:
    """Undesirable j meets desirable j mod n; a desirable completion used k times gets k times
    the gradient; a paired loss then sees m pairs of (usually) different prompts."""
    chosen = torch.tensor([10.0, 11.0], requires_grad=True)
    rejected = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    logps = PreferenceLogps(chosen, rejected, chosen.detach() - 1, rejected - 1, paired=False)
    pairs = within_batch_pairs(logps)
    assert pairs.paired
    assert pairs.policy_chosen.tolist() == [10.0, 11.0, 10.0, 11.0, 10.0]
    assert pairs.reference_chosen.tolist() == [9.0, 10.0, 9.0, 10.0, 9.0]
    assert pairs.policy_rejected.tolist() == rejected.tolist()
    assert pairs.reference_rejected.tolist() == (rejected - 1).tolist()
    pairs.policy_chosen.sum().backward()
    assert chosen.grad is not None and chosen.grad.tolist() == [3.0, 2.0]
    # more desirable than undesirable completions: one pair per undesirable one
    few = within_batch_pairs(PreferenceLogps(rejected, chosen, rejected, chosen, paired=False))
    assert few.policy_chosen.tolist() == [0.0, 1.0]
    cfg = AlignConfig("x", loss="dpo", beta=0.5, pair_within_batch=True)
    expected = baselines.dpo_loss(
        pairs.policy_chosen, rejected, pairs.reference_chosen, rejected - 1, beta=0.5
    )
    torch.testing.assert_close(preference_loss(cfg.loss_spec, logps), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs an unpaired batch"):
        within_batch_pairs(pairs)
    none, three = torch.zeros(0), torch.zeros(3)
    with pytest.raises(ValueError, match="0 desirable, 3 undesirable"):
        within_batch_pairs(PreferenceLogps(none, three, none, three, paired=False))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"loss": "kto", "pair_within_batch": True}, "--pair-within-batch applies to the paired"),
        ({"loss": "dpo", "desirable_weight": 3.0}, "--desirable-weight applies to --loss kto"),
        ({"loss": "kto", "undesirable_weight": 0.0}, "--undesirable-weight must be positive"),
    ],
)
def test_new_options_name_the_flag(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AlignConfig("x", **options)


@pytest.mark.multiprocess
def test_two_processes_sort_the_global_batch(tmp_path: Path, micro_task: toy.Artifacts) -> None:
    """2 processes x 4 pairs with global sorting train like 1 process x 8 pairs: the same global
    micro-batches, and gradients averaged over ranks equal the gradient of the loss on the whole
    batch. Sorting each process's 4 pairs alone trains differently. (A soft sort with a large
    strength mixes the whole batch, so the difference shows from the first step.)"""
    common = [
        "--model", str(micro_task.reference_dir),
        "--dataset", str(micro_task.dataset("paired", "train")),
        "--eval-dataset", str(micro_task.dataset("paired", "eval")),
        "--max-length", "10", "--max-prompt-length", "4",
        "--max-steps", "3", "--eval-every", "3", "--warmup-steps", "0",
        "--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "1e-2", "--beta", "1.0",
        "--sort", "soft", "--regularization-strength", "10",
    ]  # fmt: skip
    runs = {
        "global": (["--per-device-batch-size", "4"], 2),
        "local": (["--per-device-batch-size", "4", "--no-global-sort"], 2),
        "one": (["--per-device-batch-size", "8"], 1),
    }
    for name, (flags, processes) in runs.items():
        align([*common, *flags, "--output-dir", str(tmp_path / name)], processes)
    final = {name: read_metrics(tmp_path / name / "metrics.jsonl")[-1] for name in runs}
    assert final["one"]["split"] == "eval" and final["one"]["step"] == 3
    for key in ("loss", "rewards/margin", "logps/chosen", "logps/rejected"):
        assert final["global"][key] == pytest.approx(final["one"][key], rel=1e-5), key
    assert final["local"]["rewards/margin"] != pytest.approx(
        final["one"]["rewards/margin"], rel=1e-4
    )


# --------------------------------------------------------------------------------------------
# Interruptions: resuming, finished runs, half-written logs (on user data: the same loop)
# --------------------------------------------------------------------------------------------


def user_args(out: Path, task: toy.Artifacts, *flags: str) -> list[str]:
    """A micro run on the task's data as user data; logs (every 4 steps) are rarer than
    checkpoints (every 3), so a checkpoint falls between logs."""
    return [
        "--model", str(task.reference_dir),
        "--dataset", str(task.dataset("paired", "train")),
        "--eval-dataset", str(task.dataset("paired", "eval")),
        "--max-length", "10", "--max-prompt-length", "4",
        "--per-device-batch-size", "8", "--eval-batch-size", "16", "--max-steps", "6",
        "--warmup-steps", "1", "--lora-r", "4", "--lora-alpha", "8",
        "--log-every", "4", "--eval-every", "3", "--save-every", "3",
        "--output-dir", str(out), *flags,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, micro_task: toy.Artifacts
) -> tuple[Path, str]:
    """A whole run (checkpoints at steps 3 and 6) and what it printed."""
    out = tmp_path_factory.mktemp("whole")
    return out, align(user_args(out, micro_task)).stdout


def assert_same_run(run: Path, expected: Path) -> None:
    """The same logs (but times), held-out results and adapter weights."""
    assert read_metrics(run / "metrics.jsonl") == read_metrics(expected / "metrics.jsonl")
    summaries = [json.loads((d / "summary.json").read_text()) for d in (run, expected)]
    for key in ("eval_policy", "eval_reference", "steps"):
        assert summaries[0][key] == summaries[1][key], key
    weights = [load_file(d / "adapter" / "adapter_model.safetensors") for d in (run, expected)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=1e-6)


def test_resume_after_a_kill_reads_like_the_uninterrupted_run(
    tmp_path: Path, micro_task: toy.Artifacts, uninterrupted: tuple[Path, str]
) -> None:
    """Killed after the checkpoint of step 3, while writing a log line: the resumed run drops
    the half-written line, and its first log (step 4) averages steps 1-4 like the whole run's
    (the running sums are checkpointed)."""
    align(user_args(tmp_path, micro_task, "--stop-after", "3"))
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "summary.json").exists()
    checkpoint = tmp_path / "checkpoints" / "step-0000003"
    saved = load_file(checkpoint / "model.safetensors")
    assert saved and all("lora_" in name for name in saved)  # the adapter, not the base model
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 4, "split": "tr')
    refused = run_align(
        user_args(tmp_path, micro_task), capture_output=True, text=True, timeout=600
    )
    assert refused.returncode != 0  # not mixed with a new run's files
    assert f"already holds an unfinished run ({checkpoint})" in refused.stderr
    printed = align(user_args(tmp_path, micro_task, "--resume")).stdout
    assert "dropped 1 line(s) logged after the checkpoint (the last one half-written)" in printed
    assert_same_run(tmp_path, uninterrupted[0])


def test_a_finished_run_is_shown_not_redone(
    tmp_path: Path, micro_task: toy.Artifacts, uninterrupted: tuple[Path, str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for resume in ([], ["--resume"]):  # the README's command run twice shows the first results
        shown = align(user_args(run, micro_task, *resume)).stdout
        assert "holds a finished run" in shown
        assert uninterrupted[1].strip() in shown  # the same table, from the saved summary
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_a_run_killed_after_its_last_checkpoint_completes_once(
    tmp_path: Path, micro_task: toy.Artifacts, uninterrupted: tuple[Path, str]
) -> None:
    """Killed after the final evaluation's log line, before the adapter and summary: the
    resume evaluates again, logs that once, and writes adapter and summary."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    (run / "summary.json").unlink()
    shutil.rmtree(run / "adapter")
    (run / "quantiles.png").unlink()
    printed = align(user_args(run, micro_task, "--resume")).stdout
    assert "resumed from" in printed and "dropped 1 line(s)" in printed
    assert_same_run(run, uninterrupted[0])
    assert (run / "quantiles.png").exists()


def test_a_resume_with_other_training_options_is_refused(
    tmp_path: Path, micro_task: toy.Artifacts, uninterrupted: tuple[Path, str]
) -> None:
    """Checkpointed with aot_paired and 8 pairs per step, resumed with dpo and 4: that ran to
    the end, and its summary named dpo and 4 for steps that were not."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    (run / "summary.json").unlink()
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    other = ["--resume", "--loss", "dpo", "--per-device-batch-size", "4"]
    done = run_align(user_args(run, micro_task, *other), capture_output=True, text=True)
    assert done.returncode != 0
    checkpoint = run / "checkpoints" / "step-0000006"
    assert f"--resume: {checkpoint} was written with other training options: " in done.stderr
    assert "--loss aot_paired (now dpo), --per-device-batch-size 8 (now 4);" in done.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_damaged_json_files_name_the_file_and_what_to_do(
    tmp_path: Path, micro_task: toy.Artifacts, uninterrupted: tuple[Path, str]
) -> None:
    """A damaged summary.json or trainer_state.json gave a bare JSONDecodeError; following the
    advice now completes the run as if nothing had happened."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run)
    (run / "summary.json").write_text('{"steps": 6, "eval_')
    done = run_align(user_args(run, micro_task), capture_output=True, text=True)
    assert done.returncode != 0
    assert f"{run / 'summary.json'} is damaged (not JSON: " in done.stderr
    assert "delete the file and run the same command with --resume" in done.stderr
    (run / "summary.json").unlink()
    last = run / "checkpoints" / "step-0000006"
    (last / "trainer_state.json").write_text("")
    done = run_align(user_args(run, micro_task, "--resume"), capture_output=True, text=True)
    assert done.returncode != 0
    assert f"{last / 'trainer_state.json'} is damaged (not JSON: " in done.stderr
    assert f"delete {last} to resume from the checkpoint before it" in done.stderr
    shutil.rmtree(last)
    # options that may change on a resume: checkpoint and log cadence, the stop, the length
    allowed = ["--resume", "--save-every", "100", "--stop-after", "6"]
    assert "resumed from" in align(user_args(run, micro_task, *allowed)).stdout
    assert_same_run(run, uninterrupted[0])


def test_max_length_beyond_the_model_fails_before_training(
    tmp_path: Path, micro_task: toy.Artifacts
) -> None:
    args = user_args(tmp_path, micro_task, "--max-length", "64")
    done = run_align(args, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "--max-length 64 exceeds the context of --model" in done.stderr
    assert "(10 positions" in done.stderr and not (tmp_path / "metrics.jsonl").exists()


def test_evaluation_data_of_one_label_fails_before_training(
    tmp_path: Path, micro_task: toy.Artifacts
) -> None:
    """An unpaired loss measured on desirable completions alone trained, then died at its
    first evaluation (``policy_rejected_logps must not be empty``), and so did ``--resume``."""
    records = micro_task.dataset("unpaired", "eval").read_text().splitlines()
    desirable = [line for line in records if json.loads(line)["label"]]
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(desirable) + "\n")
    out = tmp_path / "run"
    for resume in ([], ["--resume"]):
        args = user_args(out, micro_task, "--loss", "kto", *resume)
        args[args.index("--dataset") + 1] = str(micro_task.dataset("unpaired", "train"))
        args[args.index("--eval-dataset") + 1] = str(good)
        done = run_align(args, capture_output=True, text=True, timeout=600)
        assert done.returncode != 0
        expected = f"the evaluation data (--eval-dataset {good}) holds {len(desirable)} desirable"
        assert f"{expected} and 0 undesirable completion(s)" in done.stderr
        assert not (out / "metrics.jsonl").exists()  # before training


def test_accelerate_configs_load() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    configs = ALIGN_SCRIPT.parent / "configs"
    fsdp = load_config_from_file(str(configs / "fsdp.yaml"))
    assert fsdp.distributed_type == "FSDP" and fsdp.fsdp_config["fsdp_version"] == 2
    ddp = load_config_from_file(str(configs / "ddp.yaml"))
    assert ddp.distributed_type == "MULTI_GPU" and ddp.num_processes == 8
