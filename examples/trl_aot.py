"""Align a causal LM with AOT through TRL: ``AOTTrainer`` / ``AOTConfig`` in place of TRL's
``DPOTrainer`` / ``DPOConfig`` (see ``docs/trl.md``).

Offline by default: without ``--model`` it builds a word-level tokenizer and a tiny GPT-2 from a
config, and a toy paired dataset in memory (the chosen completion repeats the prompt, the
rejected one is random words), and trains on the CPU in seconds::

    python examples/trl_aot.py --output-dir runs/trl
    accelerate launch --multi_gpu --num_processes 2 examples/trl_aot.py --global-sort

(on a CPU-only machine ``--multi_gpu`` is what makes accelerate start 2 processes; the trainer
then runs on gloo). With ``--model`` and ``--dataset`` it loads both from the Hugging Face hub
(or local paths), as TRL's own DPO script does::

    accelerate launch examples/trl_aot.py --model Qwen/Qwen2.5-0.5B-Instruct \\
        --dataset trl-lib/ultrafeedback_binarized --global-sort --sort soft
"""

from __future__ import annotations

import argparse
import copy
import random
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset, load_dataset
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from aot_losses.integrations.trl import AOTConfig, AOTTrainer

WORDS = "the a cat dog bird sat ran on under mat tree big small red blue".split()


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


def toy_dataset(size: int, seed: int = 0) -> Dataset:
    """Paired rows: the chosen completion repeats the prompt, the rejected one is random."""
    rng = random.Random(seed)
    rows = []
    for _ in range(size):
        prompt = " ".join(rng.choices(WORDS, k=3))
        rejected = " ".join(rng.choices(WORDS, k=3))
        rows.append({"prompt": prompt, "chosen": " " + prompt, "rejected": " " + rejected})
    return Dataset.from_list(rows)


def main(argv: Sequence[str] | None = None) -> AOTTrainer:
    """Parse ``argv``, train, and return the trainer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub name or path; default: a tiny GPT-2, offline")
    parser.add_argument("--dataset", help="paired hub dataset (with --model)")
    parser.add_argument("--output-dir", default="runs/trl_aot")
    parser.add_argument("--loss-type", default="aot", choices=["aot", "aot_unpaired"])
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

    model: str | PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    ref_model: PreTrainedModel | None
    options: dict[str, Any]
    if args.model is None:
        model, tokenizer = tiny_model_and_tokenizer()
        ref_model = copy.deepcopy(model)
        dataset = toy_dataset(size=64 * args.batch_size)
        # TRL defaults to bf16 autocast; the tiny model trains in float32 (on the CPU if no GPU)
        options = {"bf16": False, "use_cpu": not torch.cuda.is_available(), "learning_rate": 1e-2}
    else:
        if args.dataset is None:
            parser.error("--model needs --dataset")
        # TRL loads the model, its tokenizer and the reference model from the name
        model, tokenizer, ref_model = args.model, None, None
        dataset = load_dataset(args.dataset, split="train")
        options = {"learning_rate": 5e-7}
    if args.learning_rate is not None:
        options["learning_rate"] = args.learning_rate
    config = AOTConfig(
        output_dir=args.output_dir,
        loss_type=args.loss_type,
        beta=args.beta,
        aot_penalty=args.penalty,
        aot_sort=args.sort,
        aot_global_sort=args.global_sort,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps,
        logging_steps=max(1, args.max_steps // 10),
        save_strategy="no",
        report_to="none",
        **options,
    )
    trainer = AOTTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


if __name__ == "__main__":
    logs = [entry for entry in main().state.log_history if "loss" in entry]
    for key in ("loss", "rewards/margins", "fsd/violation"):
        print(f"{key}: {logs[0][key]:.4f} (first step) -> {logs[-1][key]:.4f} (last)")
