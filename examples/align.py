"""Align a causal LM on preference data with LoRA and an AOT loss, in a plain PyTorch loop.

With no ``--model``/``--dataset`` it runs the embedded task end to end (a tiny GPT-2 that sorts
letters; see docs/examples.md): SFT a reference, sample and score completions into preference
data, align with AOT, and compare reference and policy on held-out prompts. Otherwise it
aligns ``--model`` (a hub name, a local directory, a ``.gguf`` file, or
``smollm2-135m-instruct``) on ``--dataset`` (paired or unpaired JSONL, or a hub dataset).

    python examples/align.py --output-dir runs/toy
    accelerate launch --config_file examples/configs/fsdp.yaml examples/align.py \\
        --model Qwen/Qwen2.5-0.5B-Instruct --dataset prefs.jsonl --output-dir runs/qwen

Writes into ``--output-dir``: ``metrics.jsonl`` (train and eval logs), ``checkpoints/``
(with ``--save-every``), ``adapter/`` (the LoRA adapter and tokenizer), ``summary.json`` and
``quantiles.png`` (chosen vs rejected quantile curves on the held-out data). The pieces live in
the package ``aot_examples`` (next to this file); this script is the loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from aot_examples import toy
from aot_examples.checkpoints import SUMMARY, existing_run, read_summary, write_atomically
from aot_examples.config import EMBEDDED_BETA, AlignConfig, parse_args
from aot_examples.losses import PAIRED_LOSSES, preference_loss
from aot_examples.report import eval_summary, quantile_figure, summary_table
from aot_examples.training import Trainer, TrainResult


def train(accelerator: Accelerator, cfg: AlignConfig) -> TrainResult:
    """Align ``cfg.model`` on ``cfg.dataset``; returns after ``max_steps`` (or ``stop_after``)."""
    trainer = Trainer.setup(accelerator, cfg)
    while not trainer.stopped:
        trainer.step()
    return trainer.finish()


def main(argv: Sequence[str] | None = None) -> None:
    """Train (after preparing the embedded task when there is no ``--model``/``--dataset``),
    evaluate, write ``summary.json`` and ``quantiles.png``, print a table."""
    cfg = parse_args(argv)
    if cfg.model is None and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # the embedded model is tiny: more threads only contend
    accelerator = Accelerator(
        # without an accelerator, processes started by torchrun talk over gloo (accelerate
        # would otherwise run each of them alone)
        cpu=not torch.accelerator.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,
    )
    out = Path(cfg.output_dir)
    if (out / SUMMARY).exists():  # a finished run is never redone: its results are shown
        accelerator.print(f"{out} holds a finished run (a new one needs another --output-dir)")
        accelerator.print(summary_table(read_summary(out)))
        return
    previous = existing_run(out)
    if not cfg.resume and previous is not None:
        raise SystemExit(
            f"align.py: error: --output-dir {out} already holds an unfinished run ({previous}): "
            "pass --resume to continue it, or choose another --output-dir"
        )
    artifacts = None
    if cfg.model is None:
        task = toy.ToyConfig.load(cfg.toy_config)
        with accelerator.main_process_first():
            artifacts = toy.prepare(task, cfg.toy_cache_dir or out / "toy")
        kind = cfg.toy_data or ("paired" if cfg.loss in PAIRED_LOSSES else "unpaired")
        cfg = dataclasses.replace(
            cfg,
            model=str(artifacts.reference_dir),
            dataset=str(artifacts.dataset(kind, "train")),
            eval_dataset=str(artifacts.dataset(kind, "eval")),
            beta=EMBEDDED_BETA[cfg.loss] if cfg.beta is None else cfg.beta,
        )

    start = time.perf_counter()
    result = train(accelerator, cfg)
    accelerator.end_training()
    if not accelerator.is_main_process or not result.finished:
        return
    summary: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "paired": result.paired,
        "steps": result.step,
        "train_examples": result.train_examples,
        "eval_examples": result.eval_examples,
        "train_time_s": time.perf_counter() - start,
    }
    if result.eval_logps is not None:
        summary |= eval_summary(
            result.eval_logps, lambda logps: preference_loss(cfg.loss_spec, logps)
        )
        quantile_figure(result.eval_logps, out / "quantiles.png")
    if artifacts is not None:
        summary |= {"toy": dataclasses.asdict(artifacts.config), "toy_data": artifacts.data_stats}
        summary |= toy.evaluate_policy(artifacts, out / "adapter", cfg.toy_eval_prompts)
    write_atomically(out / SUMMARY, json.dumps(summary, indent=2))
    print(summary_table(summary))


if __name__ == "__main__":
    main()
