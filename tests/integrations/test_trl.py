"""aot_losses.integrations.trl against TRL itself: a 1-block GPT-2 built from a config, a
word-level tokenizer and in-memory datasets (tests/integrations/trl_toy.py), float32 on the CPU,
no hub."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

import torch
from torch import Tensor
from transformers import HfArgumentParser
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from aot_losses import aot_paired_loss, aot_unpaired_loss
from aot_losses.diagnostics import fsd_violation, quantile_curves
from aot_losses.integrations.trl import (
    QUANTILE_LEVELS,
    AOTConfig,
    AOTTrainer,
    AOTUnpairedConfig,
    AOTUnpairedTrainer,
)

from .trl_toy import (
    WORKER_RUNS,
    WORKER_STEPS,
    build_model,
    build_tokenizer,
    config_kwargs,
    lora,
    losses,
    paired_dataset,
    parameters,
    train,
    unpaired_dataset,
)

ROOT = Path(__file__).resolve().parents[2]
FSD_KEYS = ["fsd/violation", *(f"fsd/margin_q{round(100 * t)}" for t in QUANTILE_LEVELS)]


def max_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).detach().abs().max()) for name in a)


def sequence_logps(model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Completion log-probs of a collated TRL batch, from the model's plain logits (not TRL's
    fused LM head): an independent computation of what TRL feeds the loss."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_token = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    per_token = per_token.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (per_token * batch["completion_mask"][:, 1:]).sum(-1)


# --------------------------------------------------------------------------------------------
# Packaging
# --------------------------------------------------------------------------------------------


def test_import_aot_losses_does_not_import_trl() -> None:
    code = (
        "import sys, aot_losses, aot_losses.integrations\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'trl'], 'trl imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    ("ours", "theirs"), [(AOTTrainer, DPOTrainer), (AOTUnpairedTrainer, KTOTrainer)]
)
def test_constructor_is_trls(ours: type, theirs: type) -> None:
    def parameters_of(cls: type) -> list[tuple[str, Any, Any]]:
        signature = inspect.signature(cls.__init__)  # type: ignore[misc]
        return [(p.name, p.kind, p.default) for p in signature.parameters.values()]

    assert parameters_of(ours) == parameters_of(theirs)


def test_configs_parse_from_the_command_line(tmp_path: Path) -> None:
    """TRL scripts build their config with an argument parser; the aot_* fields come along."""
    argv = ["--output_dir", str(tmp_path), "--use_cpu", "--aot_penalty", "hinge"]
    argv += ["--aot_sort", "soft", "--aot_regularization_strength", "2", "--aot_global_sort"]
    (config,) = HfArgumentParser(AOTConfig).parse_args_into_dataclasses(argv)
    assert (config.aot_penalty, config.aot_sort, config.aot_global_sort) == ("hinge", "soft", True)
    assert config.aot_regularization_strength == 2.0 and config.loss_type == ["aot"]
    with pytest.raises(SystemExit):
        HfArgumentParser(AOTConfig).parse_args_into_dataclasses([*argv, "--aot_sort", "medium"])


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("trl_aot", ROOT / "examples" / "trl_aot.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules["trl_aot"] = example  # where its dataclass finds its module
    spec.loader.exec_module(example)
    return example


def accelerate_launch() -> list[str]:
    """``accelerate launch`` of 2 processes on a free port (``--multi_gpu`` starts 2 gloo
    processes on a CPU-only machine, see docs/trl.md)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    command += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    return [*command, "--dynamo_backend", "no", "--main_process_port", str(port)]


@pytest.mark.parametrize("lora", [[], ["--lora"]], ids=["full", "lora"])
def test_example_runs_offline(tmp_path: Path, lora: list[str]) -> None:
    example = load_example()
    argv = ["--output-dir", str(tmp_path), "--max-steps", "2", "--batch-size", "4", *lora]
    trainer = example.main([*argv, "--penalty", "squared_hinge", "--sort", "soft"])
    assert isinstance(trainer, AOTTrainer) and trainer.state.global_step == 2
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in trained) == bool(lora) and trained
    assert (trainer.args.aot_penalty, trainer.args.aot_sort) == ("squared_hinge", "soft")
    assert {"loss", "rewards/margins", *FSD_KEYS} <= set(trainer.state.log_history[0])


def test_example_reads_records_in_trls_chat_format(tmp_path: Path) -> None:
    """``--dataset`` records: with a chat template, string prompts become a user turn and
    completions the assistant's (TRL then renders them); records that ``--unpaired`` does not
    announce are refused."""
    example = load_example()
    path = tmp_path / "unpaired.jsonl"
    path.write_text(json.dumps({"prompt": "the cat", "completion": " sat", "label": True}) + "\n")
    tokenizer = build_tokenizer()
    row = {"prompt": "the cat", "completion": " sat", "label": True}
    assert example.preference_dataset(str(path), tokenizer, unpaired=True).to_list() == [row]
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    row |= {"prompt": [{"role": "user", "content": "the cat"}]}
    row |= {"completion": [{"role": "assistant", "content": " sat"}]}
    assert example.preference_dataset(str(path), tokenizer, unpaired=True).to_list() == [row]
    with pytest.raises(ValueError, match="holds unpaired records: run with --unpaired"):
        example.preference_dataset(str(path), tokenizer, unpaired=False)
    with pytest.raises(SystemExit):  # the tiny GPT-2 knows only its own words
        example.parse(["--dataset", str(path)])


def docs_python(section: str) -> str:
    """The first Python block of the section of docs/trl.md with that title."""
    text = (ROOT / "docs" / "trl.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return body.split("```python\n", 1)[1].split("```", 1)[0]


def docs_script(data: str) -> str:
    """The complete script of docs/trl.md; ``"unpaired"``: its model and tokenizer with the
    unpaired snippet of the AOTUnpairedTrainer section."""
    script = docs_python("A complete script on the CPU")
    if data == "paired":
        return script
    return script.split("dataset = ", 1)[0] + docs_python("Unpaired data: `AOTUnpairedTrainer`")


@pytest.mark.parametrize("data", ["paired", "unpaired"])
def test_docs_scripts_run_as_written(tmp_path: Path, data: str) -> None:
    """The script of docs/trl.md, as a user would run it: a fresh interpreter, its own
    directory, no network, well under a minute."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["HF_HOME"] = str(tmp_path / "hf")
    (tmp_path / "script.py").write_text(docs_script(data))
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    if data == "paired":
        lines = [line for line in result.stdout.splitlines() if line.startswith("loss ")]
        assert len(lines) == 3 and "fsd/violation" in lines[0], result.stdout
    else:
        assert len(ast.literal_eval(result.stdout.splitlines()[-1])) == 3, result.stdout
    assert elapsed < 60, elapsed


def test_unpaired_example_runs_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``examples/trl_aot.py --unpaired``: AOTUnpairedTrainer on one desirable completion in
    three, and the summary it prints."""
    example = load_example()
    argv = ["--output-dir", str(tmp_path), "--max-steps", "2", "--batch-size", "6", "--unpaired"]
    trainer = example.main([*argv, "--penalty", "squared_hinge", "--beta", "0.5"])
    assert isinstance(trainer, AOTUnpairedTrainer) and trainer.state.global_step == 2
    assert trainer.args.aot_penalty == "squared_hinge"
    labels = trainer.train_dataset["label"]
    assert 3 * sum(labels) == len(labels)
    capsys.readouterr()  # the Trainer's own logs
    example.report(trainer)
    summary = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in summary] == ["loss", "rewards/margins", "fsd/violation"]


@pytest.mark.multiprocess
def test_example_prints_its_summary_once_with_two_processes(tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2 examples/trl_aot.py --global-sort``
    (the command of docs/trl.md): both processes train, the main one prints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env["HF_HOME"] = str(tmp_path / "hf")  # no user accelerate config
    command = [*accelerate_launch(), str(ROOT / "examples" / "trl_aot.py"), "--global-sort"]
    command += ["--output-dir", str(tmp_path), "--max-steps", "2", "--batch-size", "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("loss: ") == 1, result.stdout


# --------------------------------------------------------------------------------------------
# Parity with TRL's DPOTrainer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"loss_type": "aot"},
        {"loss_type": "aot_unpaired"},
        {"loss_type": "aot", "beta": 0.5, "label_smoothing": 0.2},
        {"loss_type": ["sigmoid", "aot"], "loss_weights": [0.5, 2.0]},
        {"loss_type": ["aot_unpaired", "ipo", "aot"], "loss_weights": [1.0, 0.1, 0.5]},
        {"loss_type": "aot", "beta": 1.0, "peft_config": lora()},
    ],
    ids=["aot", "aot_unpaired", "label_smoothing", "with_sigmoid", "both_with_ipo", "peft"],
)
def test_defaults_train_exactly_as_trl(tmp_path: Path, options: dict[str, Any]) -> None:
    """Same logged losses and parameters after 3 SGD steps as TRL's DPOTrainer with the same
    loss_type (float32, 1e-5), TRL's metrics logged, plus the FSD diagnostics."""
    dataset = paired_dataset()
    theirs = train(DPOTrainer, DPOConfig, dataset, output_dir=tmp_path / "trl", **options)
    ours = train(AOTTrainer, AOTConfig, dataset, output_dir=tmp_path / "aot", **options)
    torch.testing.assert_close(losses(ours), losses(theirs), rtol=0, atol=1e-5)
    assert len(losses(ours)) == 3
    assert max_difference(parameters(ours), parameters(theirs)) <= 1e-5
    assert max_difference(parameters(ours), ours.initial_parameters) > 1e-3  # 100 x the tolerance
    loss_types = options["loss_type"] if isinstance(options["loss_type"], list) else ["x"]
    aot_types = [t for t in loss_types if t in ("aot", "aot_unpaired")]
    fsd_keys = set(FSD_KEYS)
    if len(aot_types) > 1:  # one set of diagnostics per AOT loss type
        fsd_keys = {k.replace("fsd/", f"fsd/{t}/") for k in FSD_KEYS for t in aot_types}
    for ours_log, theirs_log in zip(ours.state.log_history, theirs.state.log_history, strict=True):
        assert set(ours_log) == set(theirs_log) | (fsd_keys if "loss" in theirs_log else set())
        for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen"):
            if key in theirs_log:
                assert ours_log[key] == pytest.approx(theirs_log[key], abs=1e-5), key


@pytest.mark.parametrize(
    ("loss_type", "penalty", "beta", "expected"),
    [
        ("aot", "least_squares", 0.5, 0.25),
        ("aot_unpaired", "least_squares", 0.5, 0.25),
        ("aot", "hinge", 0.5, 0.5),
    ],
)
def test_first_loss_at_policy_equal_reference(
    tmp_path: Path, loss_type: str, penalty: str, beta: float, expected: float
) -> None:
    """At the first step policy = reference, so every margin difference is 0 and the loss is
    h(0): beta^2 for least squares, beta for hinge (log 2 for TRL's logistic: see the first
    logged loss of the parity tests, which equals TRL's)."""
    trainer = train(
        AOTTrainer,
        AOTConfig,
        paired_dataset(8),
        output_dir=tmp_path,
        loss_type=loss_type,
        aot_penalty=penalty,
        beta=beta,
        max_steps=1,
    )
    assert losses(trainer)[0] == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------------------------
# The loss and the diagnostics of one batch against aot_losses on independent log-probs
# --------------------------------------------------------------------------------------------


def first_batch(trainer: Any) -> dict[str, Tensor]:
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def check_diagnostics(metrics: dict[str, list[float]], u: Tensor, v: Tensor) -> None:
    assert metrics["fsd/violation"][-1] == pytest.approx(float(fsd_violation(u, v)), abs=1e-9)
    levels = torch.tensor(QUANTILE_LEVELS, dtype=torch.float64)
    _, qu, qv = quantile_curves(u, v, levels)
    for key, gap in zip(FSD_KEYS[1:], (qu - qv).tolist(), strict=True):
        assert metrics[key][-1] == pytest.approx(gap, abs=1e-4), key


@pytest.mark.parametrize(
    "options",
    [
        {"loss_type": "aot"},
        {"loss_type": "aot", "label_smoothing": 0.1},
        {"loss_type": "aot", "aot_penalty": "squared_hinge", "beta": 0.5},
        {"loss_type": "aot", "aot_sort": "soft", "aot_regularization_strength": 10.0},
        {"loss_type": "aot", "aot_sort": "soft", "aot_sort_backend": "sinkhorn"},
        {"loss_type": "aot_unpaired"},
        {"loss_type": "aot_unpaired", "aot_penalty": "hinge", "beta": 2.0},
        {
            "loss_type": "aot_unpaired",
            "aot_penalty": "least_squares",
            "aot_sort": "soft",
            "aot_regularization": "kl",
            "aot_regularization_strength": 5.0,
        },
    ],
    ids=[
        "logistic", "smoothed", "squared_hinge", "soft", "sinkhorn",
        "unpaired", "unpaired_hinge", "unpaired_soft_kl",
    ],
)  # fmt: skip
def test_loss_is_aot_losses_on_the_batch(tmp_path: Path, options: dict[str, Any]) -> None:
    """The trainer's loss on a batch (policy != reference) is aot_paired_loss /
    aot_unpaired_loss with the configured options on log-probs computed independently, and the
    logged diagnostics are aot_losses.diagnostics of the same margins."""
    options = {"beta": 1.0, **options}
    args = AOTConfig(**config_kwargs(tmp_path, per_device_train_batch_size=8, **options))
    trainer = AOTTrainer(
        model=build_model(0),
        ref_model=build_model(1),
        args=args,
        train_dataset=paired_dataset(),
        processing_class=build_tokenizer(),
    )
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    pc, pr = sequence_logps(trainer.model, batch).chunk(2)
    rc, rr = sequence_logps(trainer.ref_model, batch).chunk(2)
    paired = args.loss_type == ["aot"]
    aot_loss = aot_paired_loss if paired else aot_unpaired_loss
    expected = aot_loss(
        pc,
        pr,
        rc,
        rr,
        beta=args.beta,
        penalty=args.aot_penalty,
        label_smoothing=args.label_smoothing,
        sort=args.aot_sort,
        regularization_strength=args.aot_regularization_strength,
        regularization=args.aot_regularization,
        sort_backend=args.aot_sort_backend,
    )
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    if len(options) > 2:  # the options change the loss: TRL's (hard, logistic) differs
        assert abs(float(expected) - float(aot_loss(pc, pr, rc, rr, beta=args.beta))) > 1e-3
    u, v = (pc - pr, rc - rr) if paired else (pc - rc, pr - rr)
    check_diagnostics(trainer._metrics["train"], u, v)


# --------------------------------------------------------------------------------------------
# Sorting the micro-batches of an optimizer step together
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["paired", "unpaired"])
def test_sort_across_accumulation_is_exact(tmp_path: Path, data: str) -> None:
    """2 accumulated micro-batches sorted together train as one batch of both; sorted per
    micro-batch they do not. Paired: 4 + 4 pairs (AOTTrainer); unpaired: 7 + 7 completions, 3
    desirable and 4 undesirable in each (AOTUnpairedTrainer). (Equal lengths: no padding, so a
    sample's log-probs do not depend on its batch.)"""
    if data == "paired":
        classes, dataset, size = (AOTTrainer, AOTConfig), paired_dataset(equal_lengths=True), 4
    else:
        labels = [True, False, False, True, False, True, False] * 6
        dataset = unpaired_dataset(labels, equal_lengths=True)
        classes, size = (AOTUnpairedTrainer, AOTUnpairedConfig), 7
    whole = train(
        *classes, dataset, output_dir=tmp_path / "a", per_device_train_batch_size=2 * size, beta=1.0
    )
    split = {"per_device_train_batch_size": size, "gradient_accumulation_steps": 2, "beta": 1.0}
    together = train(
        *classes, dataset, output_dir=tmp_path / "b", aot_sort_across_accumulation=True, **split
    )
    apart = train(*classes, dataset, output_dir=tmp_path / "c", **split)
    assert max_difference(parameters(together), parameters(whole)) <= 1e-5
    torch.testing.assert_close(losses(together), losses(whole), rtol=0, atol=1e-5)
    assert max_difference(parameters(apart), parameters(whole)) > 1e-3
    # the first pass leaves TRL's metrics as they were: tokens are counted once
    tokens = [
        [e["num_tokens"] for e in t.state.log_history if "loss" in e] for t in (together, whole)
    ]
    assert tokens[0] == tokens[1]


# --------------------------------------------------------------------------------------------
# Unpaired data (TRL's KTO format)
# --------------------------------------------------------------------------------------------


def test_unpaired_trainer_feeds_n_desirable_and_m_undesirable(tmp_path: Path) -> None:
    """A batch of 3 desirable and 4 undesirable completions: the loss is aot_unpaired_loss of
    the 3 against the 4 (independent log-probs); training and evaluation run and log TRL's KTO
    metrics and the diagnostics."""
    labels = [True, False, False, True, False, True, False] * 4
    args = AOTUnpairedConfig(
        **config_kwargs(
            tmp_path,
            per_device_train_batch_size=7,
            aot_penalty="squared_hinge",
            beta=1.0,
            max_steps=2,
        )
    )
    trainer = AOTUnpairedTrainer(
        model=build_model(0),
        ref_model=build_model(1),
        args=args,
        train_dataset=unpaired_dataset(labels),
        eval_dataset=unpaired_dataset(labels[:7], seed=1),
        processing_class=build_tokenizer(),
    )
    batch = first_batch(trainer)
    desirable = batch["label"].bool()
    assert (int(desirable.sum()), int((~desirable).sum())) == (3, 4)
    loss = trainer.compute_loss(trainer.model, batch)
    policy = sequence_logps(trainer.model, batch)
    reference = sequence_logps(trainer.ref_model, batch)
    pc, pr, rc, rr = (
        policy[desirable],
        policy[~desirable],
        reference[desirable],
        reference[~desirable],
    )
    expected = aot_unpaired_loss(pc, pr, rc, rr, beta=1.0, penalty="squared_hinge")
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    check_diagnostics(trainer._metrics["train"], pc - rc, pr - rr)
    trainer._metrics["train"].clear()
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    keys = ["rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", *FSD_KEYS]
    assert set(keys) <= set(logged[-1])
    assert {"eval_loss", *(f"eval_{key}" for key in keys)} <= set(trainer.evaluate())
    assert args.loss_type == "aot_unpaired"


@pytest.mark.parametrize("reference", ["peft", "precomputed"])
def test_unpaired_trainer_reference_log_probs(tmp_path: Path, reference: str) -> None:
    """The reference log-probs TRL's KTO path uses: the policy with its LoRA adapters disabled,
    or log-probs precomputed from the initial model (then the policy is moved away from it)."""
    labels = [True, False, False, True, False, True, False] * 2
    args = AOTUnpairedConfig(
        **config_kwargs(
            tmp_path,
            per_device_train_batch_size=7,
            aot_penalty="least_squares",
            beta=1.0,
            precompute_ref_log_probs=reference == "precomputed",
        )
    )
    trainer = AOTUnpairedTrainer(
        model=build_model(0),
        args=args,
        train_dataset=unpaired_dataset(labels),
        processing_class=build_tokenizer(),
        peft_config=lora(init=False) if reference == "peft" else None,
    )
    assert trainer.ref_model is None
    batch = first_batch(trainer)
    if reference == "peft":
        with trainer.model.disable_adapter():
            reference_logps = sequence_logps(trainer.model, batch)
    else:
        assert "ref_logps" in batch
        reference_logps = sequence_logps(build_model(0), batch)
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    policy = sequence_logps(trainer.model, batch)
    torch.testing.assert_close(batch.get("ref_logps", reference_logps), reference_logps)
    d = batch["label"].bool()
    expected = aot_unpaired_loss(
        policy[d], policy[~d], reference_logps[d], reference_logps[~d], beta=1.0,
        penalty="least_squares",
    )  # fmt: skip
    assert abs(float(expected) - 1.0) > 1e-3  # policy != reference: h(0) = beta^2 = 1
    loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_unpaired_batch_with_one_side_contributes_zero(tmp_path: Path) -> None:
    """A batch of desirable completions only has no undesirable distribution to compare with:
    the AOT loss is 0 there (and differentiable), not an error mid-training."""
    args = AOTUnpairedConfig(**config_kwargs(tmp_path, per_device_train_batch_size=4))
    trainer = AOTUnpairedTrainer(
        model=build_model(0),
        ref_model=build_model(1),
        args=args,
        train_dataset=unpaired_dataset([True] * 4 + [False] * 4),
        processing_class=build_tokenizer(),
    )
    batch = first_batch(trainer)
    assert batch["label"].all()
    loss = trainer.compute_loss(trainer.model, batch)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert not any(p.grad.any() for p in trainer.model.parameters() if p.grad is not None)
    assert "fsd/violation" not in trainer._metrics["train"]


# --------------------------------------------------------------------------------------------
# Bad configurations fail at construction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"aot_penalty": "cubic"}, ValueError, "aot_penalty must be one of .*; got 'cubic'"),
        ({"aot_sort": "soft", "aot_regularization_strength": 0.0}, ValueError,
         "aot_regularization_strength must be a finite number > 0; got 0.0"),
        ({"aot_sort": "soft", "aot_regularization_strength": -1.0}, ValueError,
         "aot_regularization_strength must be a finite number > 0; got -1.0"),
        ({"aot_sort": "medium"}, ValueError,
         "aot_sort must be one of 'hard', 'soft'; got 'medium'"),
        ({"aot_sort_backend": "sinkhorn", "aot_regularization": "kl"}, ValueError,
         "supports aot_regularization='l2' only"),
        ({"aot_penalty": "hinge", "label_smoothing": 0.1}, ValueError,
         "label_smoothing applies to the 'logistic' penalty only"),
        ({"label_smoothing": 0.5}, ValueError, r"label_smoothing must be in \[0, 0.5\); got 0.5"),
        ({"beta": 0.0}, ValueError, "beta must be a finite number > 0; got 0.0"),
        ({"aot_global_sort": "yes"}, TypeError, "aot_global_sort must be a bool; got 'yes'"),
        ({"loss_type": "sigmoid"}, ValueError, "loss_type must include 'aot' or 'aot_unpaired'"),
        ({"loss_type": ["sigmoid", "ipo"], "loss_weights": [1.0, 1.0]}, ValueError,
         "loss_type must include 'aot' or 'aot_unpaired'"),
        ({"aot_sort_across_accumulation": True, "disable_dropout": False}, ValueError,
         "needs disable_dropout=True"),
    ],
)  # fmt: skip
def test_bad_config_raises_at_construction(
    tmp_path: Path, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        AOTConfig(**config_kwargs(tmp_path, **options))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"loss_type": "kto"}, "loss_type must be 'aot_unpaired' for AOTUnpairedConfig; got 'kto'"),
        ({"desirable_weight": 2.0}, "desirable_weight must be 1.0"),
        ({"aot_penalty": "cubic"}, "aot_penalty must be one of"),
    ],
)
def test_bad_unpaired_config_raises_at_construction(
    tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        AOTUnpairedConfig(**config_kwargs(tmp_path, **options))


def test_trainers_need_their_config(tmp_path: Path) -> None:
    common = {
        "model": build_model(),
        "ref_model": build_model(),
        "processing_class": build_tokenizer(),
    }
    with pytest.raises(TypeError, match=r"args must be an AOTConfig .*; got DPOConfig"):
        AOTTrainer(
            args=DPOConfig(**config_kwargs(tmp_path, loss_type="aot")),
            train_dataset=paired_dataset(4),
            **common,
        )
    with pytest.raises(TypeError, match=r"args must be an AOTUnpairedConfig .*; got KTOConfig"):
        AOTUnpairedTrainer(
            args=KTOConfig(**config_kwargs(tmp_path)),
            train_dataset=unpaired_dataset([True, False]),
            **common,
        )


@pytest.mark.parametrize(
    ("trainer_class", "config_class", "dataset"),
    [
        (AOTTrainer, AOTConfig, paired_dataset(4)),
        (AOTUnpairedTrainer, AOTUnpairedConfig, unpaired_dataset([True, False] * 2)),
    ],
)
def test_global_sort_without_process_group_raises_at_construction(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trainer_class: Any,
    config_class: Any,
    dataset: Any,
) -> None:
    """A run of 2 processes (as the config sees it) without torch.distributed initialized."""
    args = config_class(**config_kwargs(tmp_path, aot_global_sort=True))
    monkeypatch.setattr(config_class, "world_size", property(lambda self: 2))
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match=r"needs an initialized torch\.distributed process group"):
        trainer_class(
            model=build_model(),
            ref_model=build_model(),
            args=args,
            train_dataset=dataset,
            processing_class=build_tokenizer(),
        )
    monkeypatch.undo()
    trainer_class(
        model=build_model(),
        ref_model=build_model(),
        args=args,
        train_dataset=dataset,
        processing_class=build_tokenizer(),
    )


# --------------------------------------------------------------------------------------------
# Several processes: accelerate launch, gloo
# --------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_two_processes_sort_the_global_batch(tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2`` with ``use_cpu=True`` starts 2 gloo
    processes (``--cpu --num_processes 2`` starts one: accelerate's CPU launcher runs a single
    process unless MPI is set up). With global sort, 2 processes x 2 pairs train as 1 process x
    4 pairs, and 2 processes x 2 pairs x 2 accumulated micro-batches (sorted across them too)
    as 1 process x 8 pairs; sorting each process's 2 pairs alone trains differently."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env["HF_HOME"] = str(tmp_path / "hf")  # no user accelerate config
    command = [*accelerate_launch(), str(ROOT / "tests" / "integrations" / "trl_toy.py")]
    command.append(str(tmp_path))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    processes = json.loads((tmp_path / "processes.json").read_text())
    assert processes == {
        "world_size": 2,
        "backend": "gloo",
        "distributed_type": "DistributedType.MULTI_CPU",
    }
    runs = {name: torch.load(tmp_path / f"{name}.pt") for name, *_ in WORKER_RUNS}
    dataset = paired_dataset(equal_lengths=True)
    for name, global_batch in (("global", 4), ("global_accumulated", 8)):
        one = train(
            AOTTrainer,
            AOTConfig,
            dataset,
            output_dir=tmp_path / f"one{global_batch}",
            per_device_train_batch_size=global_batch,
            max_steps=WORKER_STEPS,
            beta=1.0,
        )
        assert max_difference(runs[name]["parameters"], parameters(one)) <= 1e-5, name
        torch.testing.assert_close(runs[name]["losses"], losses(one), rtol=0, atol=1e-5)
        if name == "global":
            assert max_difference(runs["local"]["parameters"], parameters(one)) > 1e-3
