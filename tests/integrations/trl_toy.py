"""A tiny TRL setup for the tests of aot_losses.integrations.trl, built without downloads, and
its 2-process worker.

Word-level tokenizer and a 1-block GPT-2 built from a config; paired (``prompt``, ``chosen``,
``rejected``) and unpaired (``prompt``, ``completion``, ``label``) datasets in memory. Run as a
script (``accelerate launch ... tests/integrations/trl_toy.py OUT_DIR``), it trains the
configurations of :data:`WORKER_RUNS` on every process and rank 0 saves the parameters and
logged losses of each.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

if TYPE_CHECKING:  # datasets comes with TRL (imported where used: pytest imports this module)
    from datasets import Dataset

WORDS = "the a cat dog bird sat ran flew on under mat tree fast slow big small red blue".split()
SPECIAL = ["<pad>", "<eos>", "<unk>"]

# (name, per-device batch size, gradient accumulation steps, aot options) trained by the worker
WORKER_RUNS: list[tuple[str, int, int, dict[str, Any]]] = [
    ("global", 2, 1, {"aot_global_sort": True}),
    ("local", 2, 1, {"aot_global_sort": False}),
    ("global_accumulated", 2, 2, {"aot_global_sort": True, "aot_sort_across_accumulation": True}),
]
WORKER_STEPS = 3


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over :data:`WORDS` (no download)."""
    vocab = {token: i for i, token in enumerate([*SPECIAL, *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def build_model(seed: int = 0) -> GPT2LMHeadModel:
    """A float32 GPT-2 of one block of width 16, without dropout, seeded."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(SPECIAL) + len(WORDS),
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_inner=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config)


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def paired_dataset(size: int = 32, seed: int = 0, *, equal_lengths: bool = False) -> Dataset:
    """``size`` random prompt / chosen / rejected rows. With ``equal_lengths`` every prompt has
    3 words and every completion 4, so that no batch is padded: a sample's log-probs then do not
    depend on which samples share its batch (GPT-2's positions shift with left padding)."""
    from datasets import Dataset

    rng = random.Random(seed)
    prompt, completion = ((3, 3), (4, 4)) if equal_lengths else ((2, 4), (1, 5))
    rows = [
        {
            "prompt": _sentence(rng, *prompt),
            "chosen": " " + _sentence(rng, *completion),
            "rejected": " " + _sentence(rng, *completion),
        }
        for _ in range(size)
    ]
    return Dataset.from_list(rows)


def unpaired_dataset(labels: list[bool], seed: int = 0, *, equal_lengths: bool = False) -> Dataset:
    """Random prompt / completion rows with the given labels, in that order (``equal_lengths``:
    as in :func:`paired_dataset`)."""
    from datasets import Dataset

    rng = random.Random(seed)
    prompt, completion = ((3, 3), (4, 4)) if equal_lengths else ((2, 4), (1, 5))
    rows = [
        {
            "prompt": _sentence(rng, *prompt),
            "completion": " " + _sentence(rng, *completion),
            "label": label,
        }
        for label in labels
    ]
    return Dataset.from_list(rows)


def config_kwargs(output_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """Trainer options for short, deterministic CPU runs (plain SGD: the parameters then depend
    smoothly on the gradients, where Adam's first step is about lr x sign(gradient))."""
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,  # TRL defaults to bf16 autocast, on the CPU too
        "gradient_checkpointing": False,  # TRL's default; a tiny model needs no recomputation
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "logging_steps": 1,
        "learning_rate": 0.5,
        "lr_scheduler_type": "constant",
        "optim": "sgd",
        "train_sampling_strategy": "sequential",
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    }
    kwargs.update(overrides)
    return kwargs


def train(
    trainer_class: Any,
    config_class: Any,
    dataset: Dataset,
    peft_config: Any = None,
    **overrides: Any,
) -> Any:
    """Train a fresh :func:`build_model` and return the trainer, with its parameters before
    training as ``initial_parameters``. The reference is an identical copy, or with
    ``peft_config`` the model with its adapters disabled."""
    trainer = trainer_class(
        model=build_model(),
        ref_model=None if peft_config is not None else build_model(),
        args=config_class(**config_kwargs(**overrides)),
        train_dataset=dataset,
        processing_class=build_tokenizer(),
        peft_config=peft_config,
    )
    trainer.initial_parameters = parameters(trainer)  # for tests that the training moved them
    trainer.train()
    return trainer


def lora(init: bool = True) -> Any:
    """A LoRA config on GPT-2's attention; ``init=False``: random B, so that the adapted model
    differs from its base from the start."""
    from peft import LoraConfig

    return LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["c_attn"],
        fan_in_fan_out=True,
        init_lora_weights=init,
    )


def parameters(trainer: Any) -> dict[str, torch.Tensor]:
    """The trained model's parameters, detached, on the CPU."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}


def losses(trainer: Any) -> list[float]:
    """The logged training losses, one per step."""
    return [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def main(out_dir: str) -> None:
    """Train :data:`WORKER_RUNS` (``AOTTrainer``, loss ``"aot"``) on every process; rank 0
    writes ``{name}.pt`` (parameters and losses) and ``processes.json``."""
    import torch.distributed as dist

    from aot_losses.integrations.trl import AOTConfig, AOTTrainer

    out = Path(out_dir)
    dataset = paired_dataset(equal_lengths=True)
    for name, batch_size, accumulation, options in WORKER_RUNS:
        trainer = train(
            AOTTrainer,
            AOTConfig,
            dataset,
            output_dir=out / name,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=WORKER_STEPS,
            beta=1.0,
            **options,
        )
        if trainer.accelerator.is_main_process:
            torch.save(
                {"parameters": parameters(trainer), "losses": losses(trainer)}, out / f"{name}.pt"
            )
    if dist.get_rank() == 0:
        processes = {
            "world_size": dist.get_world_size(),
            "backend": dist.get_backend(),
            "distributed_type": str(trainer.accelerator.distributed_type),
        }
        (out / "processes.json").write_text(json.dumps(processes))


if __name__ == "__main__":
    main(sys.argv[1])
