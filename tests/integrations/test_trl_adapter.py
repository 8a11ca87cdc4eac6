"""How aot_losses.integrations.trl reads TRL: only its adapter module touches TRL's internals,
it takes exactly the tensors TRL's own loss function sorts (a TRL that sorted in another order
raises instead of swapping the margins; a model that sorts in its forward changes nothing),
the version check, and TRL's KTO weights."""

from __future__ import annotations

import ast
import inspect
import logging
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

import torch
from trl import KTOTrainer
from trl.trainer.dpo_trainer import DPOTrainer

import aot_losses.integrations.trl as package
from aot_losses import aot_paired_loss, aot_unpaired_loss
from aot_losses.integrations.trl import (
    AOTConfig,
    AOTTrainer,
    AOTUnpairedConfig,
    AOTUnpairedTrainer,
)
from aot_losses.integrations.trl._adapter import _check_trl_version

from .trl_toy import build_model, build_tokenizer, config_kwargs, paired_dataset, unpaired_dataset

PACKAGE = Path(package.__file__).parent
#: What TRL keeps to itself and the trainers read or rewrite.
TRL_INTERNALS = {
    "_compute_loss", "_metrics", "_prepare_inputs", "_total_train_tokens", "loss_weights",
    "loss_types", "desirable_weight", "undesirable_weight", "model_wrapped", "get_batch_samples",
    "compute_loss_context_manager",
}  # fmt: skip


def first_batch(trainer: Any) -> dict[str, Any]:
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def paired_trainer(tmp_path: Path, model: Any = None, ref_model: Any = None, **options: Any) -> Any:
    args = AOTConfig(**config_kwargs(tmp_path, beta=1.0, **options))
    return AOTTrainer(
        model=model or build_model(0),
        ref_model=ref_model or build_model(1),
        args=args,
        train_dataset=paired_dataset(),
        processing_class=build_tokenizer(),
    )


def unpaired_trainer(tmp_path: Path, labels: list[bool], **options: Any) -> Any:
    args = AOTUnpairedConfig(**config_kwargs(tmp_path, per_device_train_batch_size=7, **options))
    return AOTUnpairedTrainer(
        model=build_model(0),
        ref_model=build_model(1),
        args=args,
        train_dataset=unpaired_dataset(labels),
        processing_class=build_tokenizer(),
    )


def edit_trl(monkeypatch: pytest.MonkeyPatch, cls: type, edit: Callable[[str], str]) -> None:
    """Replace ``cls._compute_loss`` by TRL's own source edited by ``edit``: a TRL release that
    computes the same loss in another way."""
    function = cls._compute_loss  # type: ignore[attr-defined]
    source = textwrap.dedent(inspect.getsource(function))
    edited = edit(source)
    assert edited != source
    namespace: dict[str, Any] = {}
    code = compile(edited, inspect.getsourcefile(function) or "<trl>", "exec")
    exec(code, function.__globals__, namespace)
    monkeypatch.setattr(cls, "_compute_loss", namespace["_compute_loss"])


def swap(source: str, a: str, b: str) -> str:
    """``source`` with the statements ``a`` and ``b`` (each once in it) exchanged."""
    assert source.count(a) == source.count(b) == 1
    return source.replace(a, "\0").replace(b, a).replace("\0", b)


# --------------------------------------------------------------------------------------------
# The package's layout
# --------------------------------------------------------------------------------------------


def attributes_and_imports(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text())
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    imports = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}  # fmt: skip
    imports |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return attributes, imports


def test_only_the_adapter_touches_trl_internals() -> None:
    """The objective imports no TRL; TRL's private attributes, the rewritten weights and the
    TorchFunctionMode appear in _adapter.py and nowhere else in the package."""
    modules = sorted(PACKAGE.glob("*.py"))
    names = {"__init__.py", "_adapter.py", "_config.py", "_objective.py"}
    assert {p.name for p in modules} == names
    for path in modules:
        attributes, imports = attributes_and_imports(path)
        touched = attributes & TRL_INTERNALS
        if path.name == "_adapter.py":
            assert touched == TRL_INTERNALS, TRL_INTERNALS - touched  # the list is not stale
            assert "torch.overrides" in imports
        else:
            assert not touched, (path.name, touched)
            assert "torch.overrides" not in imports, path.name
    _, imports = attributes_and_imports(PACKAGE / "_objective.py")
    assert not [name for name in imports if name.split(".")[0] == "trl"], imports


def test_public_names() -> None:
    assert package.__all__ == [
        "AOT_LOSS_TYPES", "QUANTILE_LEVELS", "TESTED_TRL_VERSIONS", "AOTConfig", "AOTTrainer",
        "AOTUnpairedConfig", "AOTUnpairedTrainer",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# The tensors TRL sorts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss_type", "a", "b"),
    [
        ("aot", "logratios_sorted, _ = torch.sort(logratios, dim=0)",
         "ref_logratios_sorted, _ = torch.sort(ref_logratios, dim=0)"),
        ("aot_unpaired", "chosen_logratios_sorted, _ = torch.sort(chosen_logratios, dim=0)",
         "rejected_logratios_sorted, _ = torch.sort(rejected_logratios, dim=0)"),
    ],
)  # fmt: skip
def test_trl_sorting_in_another_order_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loss_type: str, a: str, b: str
) -> None:
    """A TRL whose AOT branch sorts its two margins in the other order (its own loss is
    unchanged) would hand the trainer the reference's margins as the policy's, or the rejected
    as the chosen: the trainer raises and says what TRL sorted."""
    trainer = paired_trainer(tmp_path, loss_type=loss_type)
    batch = first_batch(trainer)
    trainer.compute_loss(trainer.model, batch)  # TRL as released: no error
    edit_trl(monkeypatch, DPOTrainer, lambda source: swap(source, a, b))
    with pytest.raises(RuntimeError, match=r"expected TRL's DPOTrainer._compute_loss to sort.*"
                       r"it sorted \[\('" + loss_type):  # fmt: skip
        trainer.compute_loss(trainer.model, batch)


def test_trl_sorting_something_else_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One more sort in TRL's loss function (of any tensor) is not taken for a margin."""
    trainer = paired_trainer(tmp_path)
    extra = "delta_score = chosen_scores - rejected_scores"
    edit_trl(
        monkeypatch,
        DPOTrainer,
        lambda source: source.replace(extra, f"{extra}\n    torch.sort(delta_score, dim=0)"),
    )
    with pytest.raises(RuntimeError, match=r"it sorted \[\(None, 'delta_score'\), \('aot'"):
        trainer.compute_loss(trainer.model, first_batch(trainer))


def test_model_that_sorts_in_its_forward(tmp_path: Path) -> None:
    """A model whose forward sorts a 1-D tensor with one entry per pair (the shape of TRL's
    margins): the trainer takes TRL's sorts only, and the loss is aot_paired_loss's."""
    models = build_model(0), build_model(1)
    sorted_in_forward = []

    def sort_per_pair(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        sorted_in_forward.append(torch.sort(output[: output.shape[0] // 2, 0, 0]).values)

    for model in models:
        model.transformer.wte.register_forward_hook(sort_per_pair)
    trainer = paired_trainer(tmp_path, *models)
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    pairs = len(batch["input_ids"]) // 2
    assert [len(x) for x in sorted_in_forward] == [pairs, pairs]  # policy and reference
    with torch.no_grad():  # independent log-probs
        logps = [per_sequence(model, batch) for model in (trainer.model, trainer.ref_model)]
    expected = aot_paired_loss(*logps[0].chunk(2), *logps[1].chunk(2), beta=1.0)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def per_sequence(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_token = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    per_token = per_token.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (per_token * batch["completion_mask"][:, 1:]).sum(-1)


def test_kto_log_probs_renamed_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TRL whose KTO loss function names the reference log-probs otherwise: the trainer says
    which of the four it could not read."""
    trainer = unpaired_trainer(tmp_path, [True, False, False] * 4)
    edit_trl(
        monkeypatch,
        KTOTrainer,
        lambda source: source.replace("ref_chosen_logps", "reference_chosen_logps"),
    )
    with pytest.raises(RuntimeError, match=r"expected TRL's KTOTrainer._compute_loss to hold"):
        trainer.compute_loss(trainer.model, first_batch(trainer))


# --------------------------------------------------------------------------------------------
# TRL's version
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "tested"),
    [
        ("1.16.0", True), ("1.16.3", True), ("1.16.0.post1", True), ("1.16.1.dev0", True),
        ("1.17.0.dev0", False), ("1.17.0rc1", False), ("1.17.0", False), ("1.16.0rc1", False),
        ("1.15.2", False),
    ],
)  # fmt: skip
def test_version_outside_the_tested_range_warns(version: str, tested: bool) -> None:
    """PEP 440: the pre-releases of 1.17 are outside <1.17."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _check_trl_version(version)
    messages = [str(w.message) for w in caught]
    if tested:
        assert messages == []
    else:
        assert len(messages) == 1 and f"found trl {version}" in messages[0]


# --------------------------------------------------------------------------------------------
# KTO's desirable_weight and undesirable_weight
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["desirable_weight", "undesirable_weight"])
def test_side_weights_are_refused_with_the_reason(tmp_path: Path, name: str) -> None:
    """TRL's recommended ranges (here 2.51 for 1 desirable in 3.51) are for the KTO loss; the
    AOT loss normalizes each side, so a constant weight on one side changes nothing."""
    with pytest.raises(ValueError, match=rf"{name} must be 1.0 .*got 2.51.* would change nothing"):
        AOTUnpairedConfig(**config_kwargs(tmp_path, **{name: 2.51}))
    generator = torch.Generator().manual_seed(0)
    pc, rc = torch.randn(3, generator=generator), torch.randn(3, generator=generator)
    pr, rr = torch.randn(5, generator=generator), torch.randn(5, generator=generator)
    plain = aot_unpaired_loss(pc, pr, rc, rr, beta=1.0)
    weighted = aot_unpaired_loss(pc, pr, rc, rr, beta=1.0, chosen_weights=torch.full((3,), 2.51))
    torch.testing.assert_close(weighted, plain)


def test_trls_weight_advice_is_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """KTOTrainer advises changing the side weights on data with 1 desirable completion in 3;
    AOTUnpairedTrainer, which refuses them, does not pass that advice on."""
    labels = [True, False, False] * 4
    with caplog.at_level(logging.WARNING, logger=KTOTrainer.__module__):
        unpaired_trainer(tmp_path / "aot", labels)
    assert "desirable_weight in [" not in caplog.text
    from trl import KTOConfig

    with caplog.at_level(logging.WARNING, logger=KTOTrainer.__module__):
        KTOTrainer(
            model=build_model(0),
            ref_model=build_model(1),
            args=KTOConfig(**config_kwargs(tmp_path / "kto")),
            train_dataset=unpaired_dataset(labels),
            processing_class=build_tokenizer(),
        )
    assert "desirable_weight in [" in caplog.text  # the advice the filter removes
