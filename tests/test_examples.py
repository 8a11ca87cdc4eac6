"""Tests of the examples/ layer: data checks, the alignment loop, multi-process, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

for _module in ("transformers", "peft", "accelerate", "matplotlib", "tqdm"):
    pytest.importorskip(_module)

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import align  # noqa: E402
from aot_examples import data, toy  # noqa: E402

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


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The models are tiny: one thread is faster (much faster on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> toy.Artifacts:
    """The micro embedded task, built once (a few seconds)."""
    return toy.prepare(MICRO_TOY, tmp_path_factory.mktemp("toy"))


def micro_config(out: Path, artifacts: toy.Artifacts, **overrides: object) -> align.AlignConfig:
    options: dict[str, object] = {
        "toy": MICRO_TOY,
        "toy_cache_dir": str(artifacts.data_dir.parent),
        "per_device_batch_size": 8,
        "eval_batch_size": 16,
        "max_steps": 6,
        "warmup_steps": 1,
        "log_every": 1,
        "eval_every": 3,
        "lora_r": 4,
        "lora_alpha": 8,
        **overrides,
    }
    return align.AlignConfig.embedded(str(out), **options)


def read_metrics(path: Path) -> list[dict[str, object]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


# --------------------------------------------------------------------------------------------
# The loop in one process
# --------------------------------------------------------------------------------------------


def test_embedded_run_writes_summary_metrics_and_figure(
    tmp_path: Path, artifacts: toy.Artifacts
) -> None:
    summary = align.run(micro_config(tmp_path, artifacts))
    for key in ("reference_reward_mean", "policy_reward_mean", "policy_reward_se", "win_rate_mean"):
        assert isinstance(summary[key], float)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "quantiles.png").stat().st_size > 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "eval"] == [3, 6]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert "fsd/violation" in records[-1]
    # the held-out pairs, scored again from the saved adapter, give the loop's last evaluation
    pairs, last = summary["held_out_pairs"], summary["eval_policy"]
    assert set(last) - {"loss"} == set(pairs)
    for key in ("rewards/chosen", "rewards/rejected", "quantile_margin/q10", "logps/chosen"):
        assert pairs[key] == pytest.approx(last[key], rel=1e-4, abs=1e-5), key
    assert summary["config"]["beta"] == align.EMBEDDED_BETA["aot_paired"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss": "aot_unpaired", "sort": "soft", "penalty": "squared_hinge"},
        {"loss": "dpo", "gradient_accumulation_steps": 2},
        {"loss": "ipo"},
        {"loss": "kto"},
    ],
    ids=lambda o: str(o["loss"]),
)
def test_every_loss_trains(tmp_path: Path, artifacts: toy.Artifacts, overrides: dict) -> None:
    summary = align.run(micro_config(tmp_path, artifacts, max_steps=2, eval_every=2, **overrides))
    assert summary["steps"] == 2
    assert summary["eval_policy"]["loss"] is not None
    assert summary["config"]["beta"] == align.EMBEDDED_BETA[overrides["loss"]]
    # paired or not, every loss is measured on the same held-out pairs
    pairs = [json.loads(line) for line in artifacts.dataset("paired", "eval").open()]
    assert summary["held_out_pairs"]["rewards/accuracy"] is not None
    assert summary["held_out_pairs"]["fsd/violation"] is not None and len(pairs) > 0


def test_paired_loss_rejects_unpaired_data(tmp_path: Path, artifacts: toy.Artifacts) -> None:
    cfg = micro_config(
        tmp_path,
        artifacts,
        model=str(artifacts.reference_dir),
        dataset=str(artifacts.dataset("unpaired", "train")),
    )
    with pytest.raises(ValueError, match="needs paired data"):
        align.run(cfg)


def test_resume_matches_uninterrupted_run(tmp_path: Path, artifacts: toy.Artifacts) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    expected = align.run(micro_config(whole, artifacts, save_every=3))
    assert align.run(micro_config(parts, artifacts, save_every=3, stop_after=3)) == {}
    assert not (parts / "adapter").exists()
    resumed = align.run(micro_config(parts, artifacts, save_every=3, resume=True))

    assert read_metrics(parts / "metrics.jsonl") == read_metrics(whole / "metrics.jsonl")
    for key in ("eval_policy", "policy_reward_mean", "kl_policy_reference_mean", "win_rate_mean"):
        assert resumed[key] == expected[key]
    weights = [load_file(d / "adapter" / "adapter_model.safetensors") for d in (whole, parts)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=1e-6)
    checkpoint = parts / "checkpoints" / "step-0000003"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 3
    saved = load_file(checkpoint / "model.safetensors")
    assert saved and all("lora_" in name for name in saved)  # the adapter, not the base model


# --------------------------------------------------------------------------------------------
# Several processes (gloo on CPU)
# --------------------------------------------------------------------------------------------


def launch(args: list[str], num_processes: int, cwd: Path) -> None:
    """``torchrun`` on CPU (``accelerate launch --cpu`` would start a single process)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "examples")])}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(num_processes), str(ROOT / "examples" / "align.py"), *args]
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.multiprocess
def test_two_processes_sort_the_global_batch(tmp_path: Path, artifacts: toy.Artifacts) -> None:
    """2 processes x 4 pairs with global sorting train like 1 process x 8 pairs: the same global
    micro-batches, and gradients averaged over ranks equal the gradient of the loss on the whole
    batch. Sorting each process's 4 pairs alone trains differently. (A soft sort with a large
    strength mixes the whole batch, so the difference shows from the first step.)"""
    common = [
        "--model", str(artifacts.reference_dir),
        "--dataset", str(artifacts.dataset("paired", "train")),
        "--eval-dataset", str(artifacts.dataset("paired", "eval")),
        "--max-steps", "3", "--eval-every", "3", "--warmup-steps", "0",
        "--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "1e-2", "--beta", "1.0",
        "--sort", "soft", "--regularization-strength", "10",
    ]  # fmt: skip
    launch([*common, "--output-dir", "global", "--per-device-batch-size", "4"], 2, tmp_path)
    launch([*common, "--output-dir", "local", "--per-device-batch-size", "4", "--no-global-sort"],
           2, tmp_path)  # fmt: skip
    launch([*common, "--output-dir", "one", "--per-device-batch-size", "8"], 1, tmp_path)
    final = {
        d: read_metrics(tmp_path / d / "metrics.jsonl")[-1] for d in ("global", "local", "one")
    }
    assert final["one"]["split"] == "eval" and final["one"]["step"] == 3
    for key in ("loss", "rewards/margin", "logps/chosen", "logps/rejected"):
        assert final["global"][key] == pytest.approx(final["one"][key], rel=1e-5), key
    assert final["local"]["rewards/margin"] != pytest.approx(
        final["one"]["rewards/margin"], rel=1e-4
    )


def test_accelerate_configs_load() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    fsdp = load_config_from_file(str(ROOT / "examples" / "configs" / "fsdp.yaml"))
    assert fsdp.distributed_type == "FSDP" and fsdp.fsdp_config["fsdp_version"] == 2
    ddp = load_config_from_file(str(ROOT / "examples" / "configs" / "ddp.yaml"))
    assert ddp.distributed_type == "MULTI_GPU" and ddp.num_processes == 8


# --------------------------------------------------------------------------------------------
# Data: formats, errors, tokenization, batch order
# --------------------------------------------------------------------------------------------

PAIRED = {"prompt": "dcba=", "chosen": "abcd", "rejected": "abdc"}
UNPAIRED = {"prompt": "dcba=", "completion": "abcd", "label": True}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"prompt": "ab=", "chosen": "ab"}), "missing field 'rejected'"),
        (json.dumps({**PAIRED, "chosen": 3}), "field 'chosen' must be a string"),
        (json.dumps({**PAIRED, "rejected": "  "}), "field 'rejected' is empty"),
        (json.dumps({**PAIRED, "prompt": [{"role": "user"}]}), "message 0"),
        (json.dumps({**PAIRED, "chosen": [{"role": "assistant", "content": "x"}]}), "mixed"),
    ],
)
def test_paired_errors_name_file_and_line(tmp_path: Path, record: str, message: str) -> None:
    path = write_lines(tmp_path / "paired.jsonl", [json.dumps(PAIRED), "", record])
    with pytest.raises(data.DataError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(message)):
        data.read_jsonl(path)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (json.dumps({"prompt": "ab=", "label": True}), "missing field 'completion'"),
        (json.dumps({**UNPAIRED, "label": 1}), "field 'label' must be true or false, got 1"),
        (json.dumps({**UNPAIRED, "label": "true"}), "field 'label' must be true or false"),
        (json.dumps({**UNPAIRED, "completion": ""}), "field 'completion' is empty"),
        (json.dumps({**UNPAIRED, "prompt": None}), "field 'prompt' must be a string"),
    ],
)
def test_unpaired_errors_name_file_and_line(tmp_path: Path, record: str, message: str) -> None:
    path = write_lines(tmp_path / "unpaired.jsonl", [json.dumps(UNPAIRED)] * 4 + [record])
    with pytest.raises(data.DataError, match=re.escape(f"{path}:5: ") + ".*" + re.escape(message)):
        data.read_jsonl(path)


def test_format_detection_and_empty_file(tmp_path: Path) -> None:
    paired = data.read_jsonl(write_lines(tmp_path / "p.jsonl", [json.dumps(PAIRED)] * 2))
    assert paired == [data.PairedExample("dcba=", "abcd", "abdc")] * 2
    unpaired = data.read_jsonl(write_lines(tmp_path / "u.jsonl", [json.dumps(UNPAIRED)]))
    assert unpaired == [data.UnpairedExample("dcba=", "abcd", True)]
    with pytest.raises(data.DataError, match=re.escape(f"{tmp_path / 'e.jsonl'}: no records")):
        data.read_jsonl(write_lines(tmp_path / "e.jsonl", ["", "  "]))
    with pytest.raises(data.DataError, match=":2: missing field 'chosen'"):
        data.read_jsonl(
            write_lines(tmp_path / "m.jsonl", [json.dumps(PAIRED), json.dumps(UNPAIRED)])
        )
    with pytest.raises(data.DataError, match=":1: cannot tell the format"):
        data.read_jsonl(write_lines(tmp_path / "x.jsonl", [json.dumps({"prompt": "a"})]))


def test_truncation_keeps_prompt_end_and_completion_start() -> None:
    tokenizer = toy.build_tokenizer("abcdefghij")
    prompt, completion = data.encode(
        tokenizer, "abcdefgh=", "abcdefgh", max_length=8, max_prompt_length=3
    )
    assert tokenizer.decode(prompt) == "gh="
    assert tokenizer.decode(completion) == "abcde"
    _, full = data.encode(tokenizer, "ba=", "ab", max_length=32, max_prompt_length=16)
    assert full[-1] == tokenizer.eos_token_id


def test_chat_template_marks_the_assistant_turn() -> None:
    tokenizer = toy.build_tokenizer("abcdefghij")
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}="
        "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    prompt, completion = data.encode(tokenizer, "cab", "abc", max_length=32, max_prompt_length=16)
    assert tokenizer.decode(prompt) == "cab="
    assert completion == tokenizer("abc", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    messages = [{"role": "user", "content": "cab"}]
    assert data.encode(tokenizer, messages, [{"role": "assistant", "content": "abc"}],
                       max_length=32, max_prompt_length=16) == (prompt, completion)  # fmt: skip


def test_batch_masks_only_completion_tokens() -> None:
    tokenizer = toy.build_tokenizer("abcdefghij")
    examples = [data.PairedExample("ba=", "ab", "ba"), data.PairedExample("cba=", "abc", "cab")]
    batch = data.collate(examples, tokenizer, max_length=32, max_prompt_length=16)
    assert batch.chosen.tolist() == [True, True, False, False]
    assert batch.attention_mask.sum(1).tolist() == [6, 8, 6, 8]
    assert batch.completion_mask.sum(1).tolist() == [3, 4, 3, 4]
    assert batch.input_ids[0, 6:].eq(tokenizer.pad_token_id).all()  # right padding


def test_batch_schedule_is_deterministic_and_sharded() -> None:
    paired = [data.PairedExample("a=", "a", "b")] * 20
    ranks = [
        data.BatchSchedule.for_examples(paired, 3, seed=1, rank=r, world_size=2) for r in range(2)
    ]
    assert ranks[0].per_epoch == 3
    single = data.BatchSchedule.for_examples(paired, 6, seed=1, rank=0, world_size=1)
    for k in range(7):  # crosses epochs
        assert ranks[0].indices(k) + ranks[1].indices(k) == single.indices(k)
    first_epoch = [i for k in range(3) for i in single.indices(k)]
    assert len(set(first_epoch)) == 18
    assert single.indices(5) == data.BatchSchedule.for_examples(
        paired, 6, seed=1, rank=0, world_size=1
    ).indices(5)  # a pure function of the micro-step: resuming needs only the count

    unpaired = [data.UnpairedExample("a=", "a", i % 4 == 0) for i in range(40)]
    schedule = data.BatchSchedule.for_examples(unpaired, 8, seed=0, rank=0, world_size=1)
    assert [sum(unpaired[i].label for i in schedule.indices(k)) for k in range(5)] == [2] * 5


def test_embedded_config_and_command_line_agree(tmp_path: Path) -> None:
    cfg = align.parse_args(["--output-dir", str(tmp_path), "--no-global-sort", "--beta", "0.5"])
    assert cfg == align.AlignConfig.embedded(str(tmp_path), global_sort=False, beta=0.5)
    user = align.parse_args(["--output-dir", "x", "--model", "m", "--dataset", "d.jsonl"])
    defaults = {f.name: f.default for f in dataclasses.fields(align.AlignConfig) if f.name != "toy"}
    assert (
        user.max_steps is defaults["max_steps"] and user.learning_rate == defaults["learning_rate"]
    )
