"""Align a causal LM on preference data with LoRA and an AOT loss, in a plain PyTorch loop.

With no ``--model``/``--dataset`` it runs the embedded task end to end (a tiny GPT-2 that sorts
letters; see docs/examples.md): SFT a reference, sample and score completions into preference
data, align with AOT, and compare reference and policy on held-out prompts. Otherwise it
aligns ``--model`` (a hub name or a local directory) on ``--dataset`` (paired or unpaired
JSONL, or a hub dataset).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import set_seed
from aot_examples import toy
from aot_examples.batching import BatchSchedule, collate
from aot_examples.checkpoints import (
    SUMMARY,
    TrainerState,
    existing_run,
    keep_trainable_weights,
    restore_checkpoint,
    save_checkpoint,
    write_atomically,
)
from aot_examples.config import EMBEDDED_BETA, AlignConfig, parse_args
from aot_examples.data import load_splits
from aot_examples.losses import PAIRED_LOSSES, PreferenceLogps, check_data_format, preference_loss
from aot_examples.modeling import (
    batch_logps,
    check_context,
    load_policy,
    load_tokenizer,
    score_examples,
)
from aot_examples.report import eval_summary, preference_metrics, quantile_figure, summary_table
from aot_examples.tokenization import encode_examples
from aot_examples.tracking import MetricsLog, RunningStats
from tqdm.auto import tqdm
from transformers import get_scheduler


@dataclass
class TrainResult:
    """Where :func:`train` stopped, and the final evaluation's log-probs."""

    step: int
    finished: bool
    eval_logps: PreferenceLogps | None
    paired: bool
    train_examples: int
    eval_examples: int


def train(accelerator: Accelerator, cfg: AlignConfig) -> TrainResult:
    """Align ``cfg.model`` on ``cfg.dataset``; returns after ``max_steps`` (or ``stop_after``).

    Each optimizer step runs ``gradient_accumulation_steps`` micro-batches; a micro-batch is
    ``per_device_batch_size`` examples on each process. AOT losses sort the *global*
    micro-batch (all processes) unless ``global_sort`` is off.
    """
    if cfg.model is None or cfg.dataset is None:  # main() fills them in for the embedded task
        raise ValueError("train() needs --model and --dataset")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_context(cfg.model, cfg.max_length)  # before loading data or weights
    set_seed(cfg.seed)  # python, numpy, torch: the LoRA initialization
    tokenizer = load_tokenizer(cfg.model)
    train_records, eval_records = load_splits(
        cfg.dataset,
        cfg.dataset_split,
        eval_dataset=cfg.eval_dataset,
        eval_split=cfg.eval_split,
        eval_fraction=cfg.eval_fraction,
        seed=cfg.seed,
    )
    paired = check_data_format(cfg.loss, train_records, pair_within_batch=cfg.pair_within_batch)
    lengths = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length}
    train_examples = encode_examples(train_records, tokenizer, **lengths)
    eval_examples = encode_examples(eval_records, tokenizer, **lengths)

    targets = cfg.lora_target_modules
    model = load_policy(
        cfg.model,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets if targets == "all-linear" else targets.split(","),
        dtype=getattr(torch, cfg.dtype),
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
    )
    schedule = BatchSchedule.for_examples(
        train_records,
        cfg.per_device_batch_size,
        seed=cfg.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    accumulation = cfg.gradient_accumulation_steps
    total_steps = cfg.max_steps or max(schedule.per_epoch * cfg.num_epochs // accumulation, 1)
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=total_steps,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    peft_model = accelerator.unwrap_model(model)
    accelerator.register_save_state_pre_hook(keep_trainable_weights)
    group = dist.group.WORLD if accelerator.num_processes > 1 and cfg.global_sort else None

    metrics = MetricsLog(out / "metrics.jsonl", writer=accelerator.is_main_process)
    stats = RunningStats(accelerator.device)
    if cfg.resume:
        state = restore_checkpoint(accelerator, out, stats, metrics)
    else:
        state = TrainerState()
        metrics.truncate(0)
    step, micro_step = state.step, state.micro_step

    def evaluate(step: int) -> PreferenceLogps:
        logps = score_examples(
            accelerator,
            model,
            peft_model,
            eval_examples,
            cfg.eval_batch_size,
            tokenizer.pad_token_id,
        )
        loss = preference_loss(cfg, logps).item()
        metrics.append({"step": step, "split": "eval", "loss": loss, **preference_metrics(logps)})
        return logps

    last_step = min(total_steps, cfg.stop_after or total_steps)
    progress = tqdm(
        total=total_steps,
        initial=step,
        desc=f"align ({cfg.loss})",
        disable=not accelerator.is_main_process,
    )
    start_time = time.perf_counter()
    model.train()
    while step < last_step:
        for _ in range(accumulation):
            ids = schedule.indices(micro_step)
            batch = collate([train_examples[i] for i in ids], tokenizer.pad_token_id)
            micro_step += 1
            with accelerator.accumulate(model):
                logps = batch_logps(model, peft_model, batch.to(accelerator.device), paired)
                loss = preference_loss(cfg, logps, group)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()  # a no-op until the last micro-batch of the step
                optimizer.zero_grad()
            stats.add(loss, logps)
        scheduler.step()
        step += 1
        progress.update()
        if step % cfg.log_every == 0 or step == total_steps:
            record = {"step": step, "split": "train", **stats.read(accelerator, paired)}
            record["epoch"] = micro_step / schedule.per_epoch
            record["lr"] = scheduler.get_last_lr()[0]
            record["time_s"] = time.perf_counter() - start_time
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            metrics.append(record)
        if eval_examples and step % cfg.eval_every == 0 and step < total_steps:
            evaluate(step)
        if cfg.save_every and step % cfg.save_every == 0:
            state = TrainerState(step, micro_step, metrics.size())
            save_checkpoint(accelerator, out, state, stats)
    progress.close()

    finished = step == total_steps
    eval_logps = None
    if finished:  # after the last checkpoint: a run killed here redoes exactly this
        eval_logps = evaluate(step) if eval_examples else None
        state_dict = accelerator.get_state_dict(model)  # gathers FSDP shards (all processes)
        if accelerator.is_main_process:
            peft_model.save_pretrained(out / "adapter", state_dict=state_dict)
            tokenizer.save_pretrained(out / "adapter")
    return TrainResult(step, finished, eval_logps, paired, len(train_examples), len(eval_examples))


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
        accelerator.print(summary_table(json.loads((out / SUMMARY).read_text())))
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
        summary |= eval_summary(result.eval_logps, lambda logps: preference_loss(cfg, logps))
        quantile_figure(result.eval_logps, out / "quantiles.png")
    if artifacts is not None:
        summary |= {"toy": dataclasses.asdict(artifacts.config), "toy_data": artifacts.data_stats}
        summary |= toy.evaluate_policy(artifacts, out / "adapter", cfg.toy_eval_prompts)
    write_atomically(out / SUMMARY, json.dumps(summary, indent=2))
    print(summary_table(summary))


if __name__ == "__main__":
    main()
