"""Align a causal LM with AOT through TRL: ``AOTTrainer`` / ``AOTConfig`` in place of TRL's
``DPOTrainer`` / ``DPOConfig`` on paired data, or with ``--unpaired`` ``AOTUnpairedTrainer`` /
``AOTUnpairedConfig`` in place of ``KTOTrainer`` / ``KTOConfig`` on unpaired data (see
``docs/trl.md``).

Offline by default: without ``--model`` it builds a word-level tokenizer and a tiny GPT-2 from a
config, and a toy dataset in memory (a good completion repeats the prompt, a bad one is random
words; ``--unpaired``: one good completion for two bad ones), and trains on the CPU in seconds::

    python examples/trl_aot.py --output-dir runs/trl
    python examples/trl_aot.py --unpaired --penalty squared_hinge --beta 0.5
    accelerate launch --multi_gpu --num_processes 2 examples/trl_aot.py --global-sort

(on a CPU-only machine ``--multi_gpu`` is what makes accelerate start 2 processes; the trainer
then runs on gloo). With ``--model`` (a hub name, a local directory, a ``.gguf`` file, or
``smollm2-135m-instruct``) it loads that model in float32 and trains it on ``--dataset``, a
JSONL file (or a hub dataset) of paired records ``{"prompt", "chosen", "rejected"}`` or, with
``--unpaired``, ``{"prompt", "completion", "label"}``, such as the preference pairs that
``examples/align.py``'s tasks cache. With a chat template, string prompts become a user turn
and completions the assistant's reply, as ``examples/align.py`` renders them. Full fine-tuning
against a frozen copy, or ``--lora``::

    python examples/trl_aot.py --model smollm2-135m-instruct --dataset pairs.jsonl --lora \\
        --max-length 128 --batch-size 4 --max-steps 4
    accelerate launch examples/trl_aot.py --model Qwen/Qwen2.5-0.5B-Instruct \\
        --dataset pairs.jsonl --global-sort --sort soft
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from aot_examples.data import PairedExample, load_examples
from aot_examples.modeling import ModelSource, load_tokenizer, lora_targets
from datasets import Dataset
from peft import LoraConfig
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from aot_losses.integrations.trl import (
    AOTConfig,
    AOTTrainer,
    AOTUnpairedConfig,
    AOTUnpairedTrainer,
)

WORDS = "the a cat dog bird sat ran on under mat tree big small red blue".split()
SUMMARY_KEYS = ("loss", "rewards/margins", "fsd/violation")


@dataclass
class Setup:
    """What the trainer is built from: the model, its tokenizer, frozen reference (``None``
    with LoRA: TRL's reference is then the model with its adapters disabled) and LoRA config,
    the dataset and config options."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    ref_model: PreTrainedModel | None
    peft_config: LoraConfig | None
    dataset: Dataset
    options: dict[str, Any] = field(default_factory=dict)


def tiny_model_and_tokenizer() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A word-level tokenizer over :data:`WORDS` and a 2-block GPT-2 (no download)."""
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config), tokenizer


def toy_dataset(size: int, *, unpaired: bool = False, seed: int = 0) -> Dataset:
    """Paired rows (``prompt``, ``chosen`` repeating the prompt, ``rejected`` random), or with
    ``unpaired`` rows (``prompt``, ``completion``, ``label``), one in three desirable."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(size):
        prompt = " ".join(rng.choices(WORDS, k=3))
        good, bad = " " + prompt, " " + " ".join(rng.choices(WORDS, k=3))
        if unpaired:
            desirable = i % 3 == 0
            rows.append({"prompt": prompt, "completion": good if desirable else bad,
                         "label": desirable})  # fmt: skip
        else:
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return Dataset.from_list(rows)


def trl_record(record: dict[str, Any], chat: bool) -> dict[str, Any]:
    """``record`` in TRL's format; with ``chat`` (a tokenizer with a chat template), a string
    prompt becomes a user turn and a string completion the assistant's turn, which TRL renders
    through the chat template exactly as ``aot_examples.tokenization.encode`` does."""
    if not chat:
        return record
    return {
        key: [{"role": "user" if key == "prompt" else "assistant", "content": value}]
        if isinstance(value, str)
        else value
        for key, value in record.items()
    }


def preference_dataset(name: str, tokenizer: PreTrainedTokenizerBase, *, unpaired: bool) -> Dataset:
    """The records of ``name`` (a JSONL file or a hub dataset, read and checked by
    ``aot_examples.data.load_examples``) in TRL's format (:func:`trl_record`).

    Raises:
        ValueError: paired records with ``unpaired``, or unpaired ones without it.
    """
    examples = load_examples(name)
    if isinstance(examples[0], PairedExample) == unpaired:
        found, flag = ("paired", "without") if unpaired else ("unpaired", "with")
        raise ValueError(f"--dataset {name} holds {found} records: run {flag} --unpaired")
    chat = tokenizer.chat_template is not None
    rows = [dataclasses.asdict(example) for example in examples]
    return Dataset.from_list([trl_record(row, chat) for row in rows]).remove_columns("source")


def lora_config(model: PreTrainedModel) -> LoraConfig:
    """Rank 8 on peft's default layers for the model type: the attention's query and value
    projections (``q_proj``, ``v_proj`` in Llama, SmolLM2, Qwen2; ``c_attn`` in GPT-2, whose
    ``Conv1D`` stores its weight transposed: ``fan_in_fan_out``)."""
    _, fan_in_fan_out = lora_targets(model)
    return LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM", fan_in_fan_out=fan_in_fan_out
    )


def load(args: argparse.Namespace) -> Setup:
    """The model, tokenizer, reference and dataset that ``--model`` / ``--dataset`` name."""
    if args.model is None:
        model, tokenizer = tiny_model_and_tokenizer()
        dataset = toy_dataset(64 * args.batch_size, unpaired=args.unpaired)
        # TRL defaults to bf16 autocast; the tiny model trains in float32
        options: dict[str, Any] = {"bf16": False, "learning_rate": 1e-2}
    else:
        source = ModelSource.resolve(args.model)
        model, tokenizer = source.load_model(torch.float32), load_tokenizer(source)
        dataset = preference_dataset(args.dataset, tokenizer, unpaired=args.unpaired)
        options = {"learning_rate": 5e-5 if args.lora else 5e-7}
        if not torch.cuda.is_available():
            options["bf16"] = False  # TRL's bf16 autocast, on the CPU too otherwise
    options["use_cpu"] = not torch.cuda.is_available()
    if args.lora:
        return Setup(model, tokenizer, None, lora_config(model), dataset, options)
    return Setup(model, tokenizer, copy.deepcopy(model), None, dataset, options)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        help="hub name, directory, .gguf file or smollm2-135m-instruct; default: a tiny GPT-2",
    )
    parser.add_argument("--dataset", help="JSONL file or hub dataset of records (with --model)")
    parser.add_argument(
        "--lora", action="store_true", help="LoRA on the attention's q and v projections"
    )
    parser.add_argument("--max-length", type=int, help="prompt + completion tokens (TRL: 1024)")
    parser.add_argument("--unpaired", action="store_true", help="AOTUnpairedTrainer (KTO data)")
    parser.add_argument("--output-dir", default="runs/trl_aot")
    parser.add_argument(
        "--loss-type", default="aot", choices=["aot", "aot_unpaired"], help="paired data only"
    )
    parser.add_argument(
        "--penalty",
        default="logistic",
        choices=["logistic", "squared_hinge", "hinge", "least_squares"],
    )
    parser.add_argument("--sort", default="hard", choices=["hard", "soft"])
    parser.add_argument("--global-sort", action="store_true", help="sort across processes")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8, help="per device")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=None)
    args = parser.parse_args(argv)
    if (args.model is None) != (args.dataset is None):
        parser.error("--model and --dataset go together (the tiny GPT-2 knows only its toy words)")
    return args


def main(argv: Sequence[str] | None = None) -> AOTTrainer | AOTUnpairedTrainer:
    """Parse ``argv``, train, and return the trainer."""
    args = parse(argv)
    setup = load(args)
    if args.learning_rate is not None:
        setup.options["learning_rate"] = args.learning_rate
    options = {
        "output_dir": args.output_dir,
        "beta": args.beta,
        "aot_penalty": args.penalty,
        "aot_sort": args.sort,
        "aot_global_sort": args.global_sort,
        "per_device_train_batch_size": args.batch_size,
        "max_steps": args.max_steps,
        "logging_steps": max(1, args.max_steps // 10),
        "save_strategy": "no",
        "report_to": "none",
        **({} if args.max_length is None else {"max_length": args.max_length}),
        **setup.options,
    }
    trainer: AOTTrainer | AOTUnpairedTrainer
    if args.unpaired:
        trainer = AOTUnpairedTrainer(
            model=setup.model,
            ref_model=setup.ref_model,
            args=AOTUnpairedConfig(**options),
            train_dataset=setup.dataset,
            processing_class=setup.tokenizer,
            peft_config=setup.peft_config,
        )
    else:
        trainer = AOTTrainer(
            model=setup.model,
            ref_model=setup.ref_model,
            args=AOTConfig(loss_type=args.loss_type, **options),
            train_dataset=setup.dataset,
            processing_class=setup.tokenizer,
            peft_config=setup.peft_config,
        )
    trainer.train()
    return trainer


def report(trainer: AOTTrainer | AOTUnpairedTrainer) -> None:
    """Print the first and last logged values of :data:`SUMMARY_KEYS`, on the main process."""
    if not trainer.accelerator.is_main_process:
        return
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    for key in SUMMARY_KEYS:
        if key in logs[0] and key in logs[-1]:
            print(f"{key}: {logs[0][key]:.4f} (first step) -> {logs[-1][key]:.4f} (last)")


if __name__ == "__main__":
    report(main())
