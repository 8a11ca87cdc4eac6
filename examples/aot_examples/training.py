"""One alignment run of ``examples/align.py`` in three parts: :meth:`Trainer.setup` (data,
model, optimizer, resuming), :meth:`Trainer.step` (one optimizer step, then its log,
evaluation and checkpoint) and :meth:`Trainer.finish` (the final evaluation and the adapter).

The script's loop is::

    trainer = Trainer.setup(accelerator, cfg)
    while not trainer.stopped:
        trainer.step()
    result = trainer.finish()
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler

from .batching import BatchSchedule, collate
from .checkpoints import (
    TrainerState,
    check_same_options,
    keep_trainable_weights,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from .config import AlignConfig, training_options
from .data import load_splits
from .losses import LossSpec, PreferenceLogps, check_data_format, preference_loss
from .modeling import (
    ModelSource,
    batch_logps,
    check_context,
    load_policy,
    load_tokenizer,
    score_examples,
    with_reference_logps,
)
from .report import preference_metrics
from .tokenization import EncodedExample, encode_examples
from .tracking import MetricsLog, RunningStats

__all__ = ["REFERENCE_LOGPS", "TrainResult", "Trainer"]

#: The reference's log-probs of every example, computed once (in ``OUTPUT_DIR``).
REFERENCE_LOGPS = "reference_logps.pt"


@dataclass
class TrainResult:
    """Where a run stopped, and the final evaluation's log-probs."""

    step: int
    finished: bool
    eval_logps: PreferenceLogps | None
    paired: bool
    train_examples: int
    eval_examples: int
    reference_time_s: float


def _policy(cfg: AlignConfig, source: ModelSource) -> PeftModel:
    """``--model`` with fresh LoRA adapters of the run's options."""
    targets = cfg.lora_target_modules
    return load_policy(
        source,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets if targets in ("auto", "all-linear") else targets.split(","),
        dtype=getattr(torch, cfg.dtype),
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


@dataclass
class Trainer:
    """A run's model, data and position (built by :meth:`setup`)."""

    accelerator: Accelerator
    cfg: AlignConfig
    loss: LossSpec
    out: Path
    tokenizer: PreTrainedTokenizerBase
    train_examples: list[EncodedExample]
    eval_examples: list[EncodedExample]
    paired: bool
    model: Any  # the prepared model: DDP/FSDP-wrapped, or the PeftModel itself
    peft_model: PeftModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    schedule: BatchSchedule
    group: dist.ProcessGroup | None
    metrics: MetricsLog
    stats: RunningStats
    total_steps: int
    last_step: int
    global_step: int
    micro_step: int
    progress: Any
    start_time: float
    reference_time_s: float

    @classmethod
    def setup(cls, accelerator: Accelerator, cfg: AlignConfig) -> Trainer:
        """Check the context, load and tokenize the data, load the model with fresh LoRA
        adapters, build optimizer and schedule, compute the reference's log-probs of every
        example once (:func:`~.modeling.with_reference_logps`; a resume reads them back), and
        restore the newest checkpoint with ``cfg.resume``.

        Each optimizer step runs ``gradient_accumulation_steps`` micro-batches; a micro-batch is
        ``per_device_batch_size`` examples on each process. AOT losses sort the *global*
        micro-batch (all processes) unless ``global_sort`` is off.

        Raises:
            ValueError: a resume whose training options differ from its checkpoint's
                (:func:`~.checkpoints.check_same_options`), or whose length ends before it;
                a damaged checkpoint; see also the data and model loaders.
        """
        if cfg.model is None or cfg.dataset is None:  # main() fills them in for the tasks
            raise ValueError("training needs --model and --dataset")
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = latest_checkpoint(out) if cfg.resume else None
        if checkpoint is not None:  # before anything loads
            check_same_options(checkpoint[0], checkpoint[1].options, training_options(cfg))
        source = ModelSource.resolve(cfg.model)
        check_context(source, cfg.max_length)  # before loading data or weights
        set_seed(cfg.seed)  # python, numpy, torch: the LoRA initialization
        tokenizer = load_tokenizer(source)
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
        schedule = BatchSchedule.for_examples(
            train_records,
            cfg.per_device_batch_size,
            seed=cfg.seed,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
        )
        accumulation = cfg.gradient_accumulation_steps
        total_steps = cfg.max_steps or max(schedule.per_epoch * cfg.num_epochs // accumulation, 1)
        if checkpoint is not None and checkpoint[1].step > total_steps:
            raise ValueError(
                f"--resume: {checkpoint[0]} is at step {checkpoint[1].step}, beyond the "
                f"{total_steps} steps of this run (--max-steps / --num-epochs)"
            )

        model = _policy(cfg, source)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
        )
        scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=total_steps,
        )
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        accelerator.register_save_state_pre_hook(keep_trainable_weights)
        peft_model = accelerator.unwrap_model(model)
        start = time.perf_counter()
        examples = with_reference_logps(
            accelerator,
            model,
            peft_model,
            {"train": train_examples, "eval": eval_examples},
            {  # what this run's steps draw, and every held-out example
                "train": schedule.used(total_steps * accumulation),
                "eval": range(len(eval_examples)),
            },
            batch_size=cfg.eval_batch_size,
            pad_id=tokenizer.pad_token_id,
            cache=out / REFERENCE_LOGPS,
            reuse=cfg.resume,
        )
        reference_time_s = time.perf_counter() - start

        metrics = MetricsLog(out / "metrics.jsonl", writer=accelerator.is_main_process)
        stats = RunningStats(accelerator.device)
        if cfg.resume:
            state = restore_checkpoint(accelerator, checkpoint, stats, metrics)
        else:
            state = TrainerState()
            metrics.truncate(0)
        progress = tqdm(
            total=total_steps,
            initial=state.step,
            desc=f"align ({cfg.loss})",
            disable=not accelerator.is_main_process,
        )
        model.train()
        return cls(
            accelerator=accelerator,
            cfg=cfg,
            loss=cfg.loss_spec,
            out=out,
            tokenizer=tokenizer,
            train_examples=examples["train"],
            eval_examples=examples["eval"],
            paired=paired,
            model=model,
            peft_model=peft_model,
            optimizer=optimizer,
            scheduler=scheduler,
            schedule=schedule,
            group=dist.group.WORLD if accelerator.num_processes > 1 and cfg.global_sort else None,
            metrics=metrics,
            stats=stats,
            total_steps=total_steps,
            last_step=min(total_steps, cfg.stop_after or total_steps),
            global_step=state.step,
            micro_step=state.micro_step,
            progress=progress,
            start_time=time.perf_counter(),
            reference_time_s=reference_time_s,
        )

    @property
    def stopped(self) -> bool:
        """Whether the run reached ``max_steps`` (or ``stop_after``)."""
        return self.global_step >= self.last_step

    def step(self) -> None:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches, then the
        training log, the evaluation and the checkpoint that fall on it."""
        accelerator, cfg, pad_id = self.accelerator, self.cfg, self.tokenizer.pad_token_id
        for _ in range(cfg.gradient_accumulation_steps):
            ids = self.schedule.indices(self.micro_step)
            batch = collate([self.train_examples[i] for i in ids], pad_id)
            self.micro_step += 1
            with accelerator.accumulate(self.model):
                logps = batch_logps(self.model, batch.to(accelerator.device), self.paired)
                loss = preference_loss(
                    self.loss, logps, self.group, shuffle_seed=(cfg.seed, self.micro_step)
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()  # a no-op until the last micro-batch of the step
                self.optimizer.zero_grad()
            self.stats.add(loss, logps)
        self.scheduler.step()
        self.global_step += 1
        step = self.global_step
        self.progress.update()
        if step % cfg.log_every == 0 or step == self.total_steps:
            record = {"step": step, "split": "train", **self.stats.read(accelerator, self.paired)}
            record["epoch"] = self.micro_step / self.schedule.per_epoch
            record["lr"] = self.scheduler.get_last_lr()[0]
            record["time_s"] = time.perf_counter() - self.start_time
            self.progress.set_postfix(loss=f"{record['loss']:.4f}")
            self.metrics.append(record)
        if self.eval_examples and step % cfg.eval_every == 0 and step < self.total_steps:
            self.evaluate()
        if cfg.save_every and step % cfg.save_every == 0:
            options = training_options(cfg)
            state = TrainerState(step, self.micro_step, self.metrics.size(), options=options)
            save_checkpoint(accelerator, self.out, state, self.stats)

    def evaluate(self) -> PreferenceLogps:
        """Score the held-out examples under policy and reference, and log the loss and
        :func:`~.report.preference_metrics` on them."""
        logps = score_examples(
            self.accelerator,
            self.model,
            self.eval_examples,
            self.cfg.eval_batch_size,
            self.tokenizer.pad_token_id,
        )
        record: dict[str, Any] = {"step": self.global_step, "split": "eval"}
        record["loss"] = preference_loss(self.loss, logps).item()
        self.metrics.append(record | preference_metrics(logps))
        return logps

    def finish(self) -> TrainResult:
        """At ``max_steps``: the final evaluation, then the adapter and tokenizer in
        ``OUTPUT_DIR/adapter`` (after the last checkpoint: a run killed here redoes exactly
        this). Before it (``stop_after``): nothing."""
        self.progress.close()
        finished = self.global_step == self.total_steps
        eval_logps = None
        if finished:
            eval_logps = self.evaluate() if self.eval_examples else None
            # gathers FSDP shards (all processes)
            state_dict = self.accelerator.get_state_dict(self.model)
            if self.accelerator.is_main_process:
                self.peft_model.save_pretrained(
                    str(self.out / "adapter"), state_dict=state_dict, save_embedding_layers=False
                )
                self.tokenizer.save_pretrained(self.out / "adapter")
        return TrainResult(
            self.global_step,
            finished,
            eval_logps,
            self.paired,
            len(self.train_examples),
            len(self.eval_examples),
            self.reference_time_s,
        )
