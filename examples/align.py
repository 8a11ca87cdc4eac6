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
``quantiles.png`` (chosen vs rejected quantile curves on the held-out data).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import set_seed
from aot_examples import toy
from aot_examples.data import (
    Batch,
    BatchSchedule,
    Example,
    PairedExample,
    collate,
    load_examples,
    split_examples,
)
from aot_examples.modeling import load_policy, load_tokenizer, reference_logps, sequence_logps
from aot_examples.report import PreferenceLogps, format_table, preference_metrics, quantile_figure
from aot_examples.toy import ToyConfig
from peft import PeftModel
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import get_scheduler

import aot_losses
from aot_losses import baselines
from aot_losses.ot import SortKind
from aot_losses.penalties import PenaltyName

LOSSES = ("aot_paired", "aot_unpaired", "dpo", "ipo", "kto")
PAIRED_LOSSES = ("aot_paired", "dpo", "ipo")  # the others also take paired data, as unpaired
DEFAULT_BETA = {"aot_paired": 0.01, "aot_unpaired": 0.01, "dpo": 0.1, "ipo": 0.1, "kto": 0.1}
#: Each loss's beta on the embedded task: the best of the per-method sweep (0.03 to 10) of
#: ``benchmarks/alignment.py`` (docs/alignment.md). AOT's is its least-squares margin, DPO's and
#: KTO's a logistic scale, IPO's sets the target margin 1 / (2 beta).
EMBEDDED_BETA = {"aot_paired": 4.0, "aot_unpaired": 4.0, "dpo": 1.0, "ipo": 0.1, "kto": 4.0}


def _opt(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class AlignConfig:
    """Every option of a run; the command-line flags are these names with dashes."""

    output_dir: str = field(metadata={"help": "logs, checkpoints, adapter and summary go here"})
    model: str | None = _opt(None, "hub name or local path; none: the embedded task")
    dataset: str | None = _opt(None, "JSONL file or hub dataset; none: the embedded task")
    dataset_split: str = _opt("train", "hub split of --dataset")
    eval_dataset: str | None = _opt(None, "held-out JSONL/hub dataset (default: split --dataset)")
    eval_split: str = _opt("test", "hub split of --eval-dataset")
    eval_fraction: float = _opt(0.05, "share of --dataset held out when no --eval-dataset")
    loss: str = _opt("aot_paired", "preference loss", choices=LOSSES)
    beta: float | None = _opt(
        None, "loss scale or margin (default: 0.01 AOT, 0.1 others; embedded task: EMBEDDED_BETA)"
    )
    penalty: PenaltyName = field(  # not _opt: ruff's RUF009 flags it on a Literal-typed field
        default="logistic",
        metadata={"help": "AOT penalty h", "choices": get_args(PenaltyName)},
    )
    sort: SortKind = field(
        default="hard", metadata={"help": "AOT sorting", "choices": get_args(SortKind)}
    )
    regularization_strength: float = _opt(0.1, "soft-sort regularization strength")
    label_smoothing: float = _opt(0.0, "label smoothing (AOT logistic, DPO)")
    global_sort: bool = _opt(True, "AOT: sort the global batch over all processes")
    max_length: int = _opt(1024, "max tokens of prompt + completion")
    max_prompt_length: int = _opt(512, "max prompt tokens (prompts keep their end)")
    per_device_batch_size: int = _opt(8, "pairs (paired) or completions (unpaired) per process")
    eval_batch_size: int = _opt(16, "per-process batch size for evaluation")
    gradient_accumulation_steps: int = _opt(1, "micro-batches per optimizer step")
    learning_rate: float = _opt(5e-5, "peak learning rate")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm")
    lr_scheduler: str = _opt("cosine", "transformers.get_scheduler name")
    warmup_steps: int = _opt(10, "linear warmup steps")
    num_epochs: int = _opt(1, "epochs over --dataset (ignored with --max-steps)")
    max_steps: int | None = _opt(None, "optimizer steps (sets the LR schedule's length)")
    stop_after: int | None = _opt(None, "stop after this step without changing the schedule")
    log_every: int = _opt(10, "log training metrics every N steps")
    eval_every: int = _opt(100, "evaluate every N steps (and at the end)")
    save_every: int | None = _opt(None, "checkpoint every N steps")
    resume: bool = _opt(False, "resume from the latest checkpoint in --output-dir")
    lora_r: int = _opt(16, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA alpha")
    lora_dropout: float = _opt(0.0, "LoRA dropout")
    lora_target_modules: str = _opt("all-linear", "comma-separated module names or all-linear")
    dtype: str = _opt("float32", "weight dtype", choices=("float32", "bfloat16", "float16"))
    mixed_precision: str | None = _opt(
        None, "no|fp16|bf16 (default: accelerate config)", choices=("no", "fp16", "bf16")
    )
    gradient_checkpointing: bool = _opt(False, "recompute activations to save memory")
    seed: int = _opt(0, "seed of the data order and global RNGs")
    toy_cache_dir: str | None = _opt(None, "embedded task cache (default: OUTPUT_DIR/toy)")
    toy: ToyConfig = field(default_factory=ToyConfig)  # the embedded task (Python API only)

    @property
    def loss_beta(self) -> float:
        return DEFAULT_BETA[self.loss] if self.beta is None else self.beta

    @classmethod
    def embedded(cls, output_dir: str, **overrides: Any) -> AlignConfig:
        """The embedded task's settings (:data:`EMBEDDED_DEFAULTS`), updated by ``overrides``."""
        return cls(output_dir=output_dir, **{**EMBEDDED_DEFAULTS, **overrides})


EMBEDDED_DEFAULTS: dict[str, Any] = {
    "penalty": "least_squares",  # with the paper's logistic, beta = 0.01, see docs/examples.md
    "max_length": 32,
    "max_prompt_length": 16,
    "per_device_batch_size": 64,
    "eval_batch_size": 256,
    "learning_rate": 5e-4,
    "warmup_steps": 10,
    "max_steps": 150,
    "log_every": 10,
    "eval_every": 50,
    "lora_r": 8,
    "lora_alpha": 16,
}


# --------------------------------------------------------------------------------------------
# Losses and log-probs
# --------------------------------------------------------------------------------------------


def preference_loss(
    cfg: AlignConfig, logps: PreferenceLogps, process_group: dist.ProcessGroup | None = None
) -> Tensor:
    """``cfg.loss`` from aot_losses on the four log-prob tensors."""
    args = (
        logps.policy_chosen,
        logps.policy_rejected,
        logps.reference_chosen,
        logps.reference_rejected,
    )
    beta = cfg.loss_beta
    if cfg.loss in ("aot_paired", "aot_unpaired"):
        loss_fn = (
            aot_losses.aot_paired_loss if cfg.loss == "aot_paired" else aot_losses.aot_unpaired_loss
        )
        return loss_fn(
            *args,
            beta=beta,
            penalty=cfg.penalty,
            label_smoothing=cfg.label_smoothing,
            sort=cfg.sort,
            regularization_strength=cfg.regularization_strength,
            process_group=process_group,
        )
    if cfg.loss == "dpo":
        return baselines.dpo_loss(*args, beta=beta, label_smoothing=cfg.label_smoothing)
    if cfg.loss == "ipo":
        return baselines.ipo_loss(*args, beta=beta)
    return baselines.kto_loss(*args, beta=beta)


def batch_logps(
    model: nn.Module, peft_model: PeftModel, batch: Batch, paired: bool
) -> PreferenceLogps:
    """Policy log-probs (with gradient) and reference log-probs (adapters off, no gradient)."""
    reference = reference_logps(model, peft_model, batch)
    policy = sequence_logps(model, batch)
    c = batch.chosen
    return PreferenceLogps(policy[c], policy[~c], reference[c], reference[~c], paired)


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: nn.Module,
    peft_model: PeftModel,
    examples: Sequence[Example],
    tokenize: Callable[[Sequence[Example]], Batch],
    batch_size: int,
) -> PreferenceLogps:
    """Log-probs of all ``examples``, each process scoring a strided share, gathered on all.

    Every process runs the same number of equal-size forward passes (FSDP needs this): the
    shorter shares are padded with a repeated example, dropped after the gather.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    per_rank = -(-len(examples) // world)
    index = list(range(rank, len(examples), world))
    valid = [1.0] * len(index) + [0.0] * (per_rank - len(index))
    index += index[:1] * (per_rank - len(index))
    rows = []
    model.eval()
    for start in range(0, per_rank, batch_size):
        ids = index[start : start + batch_size]
        batch = tokenize([examples[i] for i in ids]).to(accelerator.device)
        policy = sequence_logps(model, batch)
        reference = reference_logps(model, peft_model, batch)
        paired_rows = len(batch.chosen) // len(ids)  # 2 rows per pair, 1 per unpaired example
        rows.append(
            torch.stack(
                [
                    torch.tensor(ids * paired_rows, dtype=torch.float64),
                    torch.tensor(
                        valid[start : start + batch_size] * paired_rows, dtype=torch.float64
                    ),
                    batch.chosen.double().cpu(),
                    policy.double().cpu(),
                    reference.double().cpu(),
                ],
                dim=1,
            )
        )
    model.train()
    table = accelerator.gather(torch.cat(rows).to(accelerator.device)).cpu()
    table = table[table[:, 1] == 1]
    table = table[table[:, 0].argsort(stable=True)]  # chosen i and rejected i line up
    c = table[:, 2] == 1
    paired = isinstance(examples[0], PairedExample)
    return PreferenceLogps(table[c, 3], table[~c, 3], table[c, 4], table[~c, 4], paired)


# --------------------------------------------------------------------------------------------
# Logs and checkpoints
# --------------------------------------------------------------------------------------------


class RunningStats:
    """Training statistics summed over micro-batches since the last log, kept on the device
    (no host sync per step) and summed over processes when read."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(7, dtype=torch.float64, device=device)

    def add(self, loss: Tensor, logps: PreferenceLogps) -> None:
        chosen, rejected = (r.detach().double() for r in logps.rewards)
        correct = (chosen > rejected).sum() if logps.paired else chosen.new_zeros(())
        one = chosen.new_ones(())
        self.sums += torch.stack(
            [
                loss.detach().double(),
                one,
                chosen.sum(),
                one * len(chosen),
                rejected.sum(),
                one * len(rejected),
                correct,
            ]
        )

    def read(self, accelerator: Accelerator, paired: bool) -> dict[str, float]:
        loss, n, chosen, n_chosen, rejected, n_rejected, correct = accelerator.reduce(
            self.sums, "sum"
        ).tolist()
        self.sums.zero_()
        out = {
            "loss": loss / n,
            "rewards/chosen": chosen / n_chosen,
            "rewards/rejected": rejected / n_rejected,
            "rewards/margin": chosen / n_chosen - rejected / n_rejected,
        }
        if paired:
            out["rewards/accuracy"] = correct / n_chosen
        return out


def log_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def keep_trainable_weights(
    models: list[nn.Module], weights: list[dict[str, Tensor]], _dir: str
) -> None:
    """``save_state`` hook: checkpoint only trainable tensors (the LoRA adapter), not the frozen
    base model. (With FSDP, accelerate saves the sharded model itself and skips this.)"""
    for model, state in zip(models, weights, strict=False):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        for name in [n for n in state if n not in trainable]:
            del state[name]


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, micro_step: int) -> None:
    """Adapter, optimizer, scheduler and RNG states (accelerate), then the position in the
    data as ``trainer_state.json``, written last: its presence marks a complete checkpoint."""
    path = out / "checkpoints" / f"step-{step:07d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        state = {"step": step, "micro_step": micro_step}
        (path / "trainer_state.json").write_text(json.dumps(state))
    accelerator.wait_for_everyone()


def restore_checkpoint(accelerator: Accelerator, out: Path) -> tuple[int, int]:
    """Load the newest complete checkpoint in ``out``; returns ``(step, micro_step)``, or
    ``(0, 0)`` when there is none. Metrics logged after it (by the interrupted run) are
    dropped from ``metrics.jsonl``, so the resumed log reads like an uninterrupted one."""
    done = sorted(p.parent for p in (out / "checkpoints").glob("step-*/trainer_state.json"))
    if not done:
        accelerator.print(f"no checkpoint in {out}; starting from scratch")
        return 0, 0
    accelerator.load_state(str(done[-1]), strict=False)  # strict=False: the adapter only
    state = json.loads((done[-1] / "trainer_state.json").read_text())
    metrics_file = out / "metrics.jsonl"
    if accelerator.is_main_process and metrics_file.exists():
        lines = metrics_file.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["step"] <= state["step"]]
        metrics_file.write_text("".join(line + "\n" for line in kept))
    accelerator.print(f"resumed from {done[-1]}")
    return state["step"], state["micro_step"]


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """Where :func:`train` stopped, and the last evaluation's log-probs."""

    step: int
    finished: bool
    eval_logps: PreferenceLogps | None
    train_examples: int
    eval_examples: int


def load_data(cfg: AlignConfig) -> tuple[list[Example], list[Example]]:
    """Train and eval examples (eval: ``eval_dataset``, else a split of ``dataset``), checked
    against the loss."""
    if cfg.dataset is None:
        raise ValueError("no dataset given")
    train_examples = load_examples(cfg.dataset, cfg.dataset_split)
    eval_examples: list[Example] = []
    if cfg.eval_dataset is not None:
        eval_examples = load_examples(cfg.eval_dataset, cfg.eval_split)
    elif cfg.eval_fraction > 0:
        train_examples, eval_examples = split_examples(train_examples, cfg.eval_fraction, cfg.seed)
    paired = isinstance(train_examples[0], PairedExample)
    if cfg.loss in PAIRED_LOSSES and not paired:
        raise ValueError(f"--loss {cfg.loss} needs paired data (prompt/chosen/rejected)")
    if eval_examples and isinstance(eval_examples[0], PairedExample) != paired:
        raise ValueError("--dataset and --eval-dataset have different formats")
    return train_examples, eval_examples


def train(accelerator: Accelerator, cfg: AlignConfig) -> TrainResult:
    """Align ``cfg.model`` on ``cfg.dataset``; returns after ``max_steps`` (or ``stop_after``).

    Each optimizer step runs ``gradient_accumulation_steps`` micro-batches; a micro-batch is
    ``per_device_batch_size`` examples on each process. AOT losses sort the *global*
    micro-batch (all processes) unless ``global_sort`` is off.
    """
    if cfg.model is None:
        raise ValueError("no model given")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.jsonl"
    set_seed(cfg.seed)  # python, numpy, torch: the LoRA initialization
    tokenizer = load_tokenizer(cfg.model)
    train_examples, eval_examples = load_data(cfg)
    paired = isinstance(train_examples[0], PairedExample)

    def tokenize(examples: Sequence[Example]) -> Batch:
        return collate(
            examples, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length
        )

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
        train_examples,
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

    step, micro_step = restore_checkpoint(accelerator, out) if cfg.resume else (0, 0)
    if step == 0 and accelerator.is_main_process:
        metrics_file.write_text("")
    stats = RunningStats(accelerator.device)
    eval_logps = None
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
            batch = tokenize([train_examples[i] for i in schedule.indices(micro_step)])
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
            if accelerator.is_main_process:
                log_metrics(metrics_file, record)
        if eval_examples and (step % cfg.eval_every == 0 or step == total_steps):
            eval_logps = evaluate(
                accelerator, model, peft_model, eval_examples, tokenize, cfg.eval_batch_size
            )
            loss = preference_loss(cfg, eval_logps)
            if accelerator.is_main_process:
                metrics = {"loss": loss.item(), **preference_metrics(eval_logps)}
                log_metrics(metrics_file, {"step": step, "split": "eval", **metrics})
        if cfg.save_every and step % cfg.save_every == 0:
            save_checkpoint(accelerator, out, step, micro_step)
    progress.close()

    if step == total_steps:
        state_dict = accelerator.get_state_dict(model)  # gathers FSDP shards (all processes)
        if accelerator.is_main_process:
            peft_model.save_pretrained(out / "adapter", state_dict=state_dict)
            tokenizer.save_pretrained(out / "adapter")
    return TrainResult(
        step, step == total_steps, eval_logps, len(train_examples), len(eval_examples)
    )


# --------------------------------------------------------------------------------------------
# A whole run: the embedded task or user data, then the summary
# --------------------------------------------------------------------------------------------


def run(cfg: AlignConfig) -> dict[str, Any]:
    """Train (after preparing the embedded task when ``cfg.model`` and ``cfg.dataset`` are
    ``None``), evaluate, write ``summary.json`` and ``quantiles.png``, print a table.

    Returns:
        The summary on the main process (``{}`` on the others, and when ``stop_after`` ended
        the run early).
    """
    accelerator = Accelerator(
        # without an accelerator, processes started by torchrun talk over gloo (accelerate
        # would otherwise run each of them alone)
        cpu=not torch.accelerator.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,
    )
    out = Path(cfg.output_dir)
    artifacts = None
    if cfg.model is None and cfg.dataset is None:
        with accelerator.main_process_first():
            artifacts = toy.prepare(cfg.toy, cfg.toy_cache_dir or out / "toy")
        kind = "paired" if cfg.loss in PAIRED_LOSSES else "unpaired"
        cfg = dataclasses.replace(
            cfg,
            model=str(artifacts.reference_dir),
            dataset=str(artifacts.dataset(kind, "train")),
            eval_dataset=str(artifacts.dataset(kind, "eval")),
            beta=EMBEDDED_BETA[cfg.loss] if cfg.beta is None else cfg.beta,
        )
    elif cfg.model is None or cfg.dataset is None:
        raise ValueError("give both --model and --dataset, or neither (the embedded task)")

    start = time.perf_counter()
    result = train(accelerator, cfg)
    accelerator.end_training()
    if not accelerator.is_main_process or not result.finished:
        return {}
    summary: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "steps": result.step,
        "train_examples": result.train_examples,
        "eval_examples": result.eval_examples,
        "train_time_s": time.perf_counter() - start,
    }
    rows: list[list[object]] = []
    if result.eval_logps is not None:
        logps = result.eval_logps
        # Under the reference every implicit reward is 0: only its loss and log-likelihoods.
        ref_c, ref_r = logps.reference_chosen, logps.reference_rejected
        reference = PreferenceLogps(ref_c, ref_r, ref_c, ref_r, logps.paired)
        summary["eval_reference"] = {
            "loss": preference_loss(cfg, reference).item(),
            "logps/chosen": reference.policy_chosen.mean().item(),
            "logps/rejected": reference.policy_rejected.mean().item(),
        }
        summary["eval_policy"] = {
            "loss": preference_loss(cfg, logps).item(),
            **preference_metrics(logps),
        }
        quantile_figure(logps, out / "quantiles.png")
        split = "held-out pairs" if logps.paired else "held-out samples"
        for key, value in summary["eval_policy"].items():
            rows.append([f"{split}: {key}", summary["eval_reference"].get(key), value])
    if artifacts is not None:
        summary["toy_data"] = artifacts.data_stats
        ev = toy.evaluate_policy(cfg.toy, artifacts, out / "adapter")
        summary |= ev
        pm = "{:.4f} ± {:.4f}".format
        rows = [
            [
                "reward (held-out prompts)",
                pm(ev["reference_reward_mean"], ev["reference_reward_se"]),
                pm(ev["policy_reward_mean"], ev["policy_reward_se"]),
            ],
            [
                "exact match",
                pm(ev["reference_exact_match_mean"], ev["reference_exact_match_se"]),
                pm(ev["policy_exact_match_mean"], ev["policy_exact_match_se"]),
            ],
            ["greedy reward", ev["reference_greedy_reward_mean"], ev["policy_greedy_reward_mean"]],
            ["win rate vs reference", None, pm(ev["win_rate_mean"], ev["win_rate_se"])],
            [
                "KL(policy || reference)",
                0.0,
                pm(ev["kl_policy_reference_mean"], ev["kl_policy_reference_se"]),
            ],
            *rows,
        ]
        if result.eval_logps is None or not result.eval_logps.paired:  # unpaired losses
            rows += [[f"held-out pairs: {k}", None, v] for k, v in ev["held_out_pairs"].items()]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_table(["metric", "reference", "aligned policy"], rows))
    return summary


def build_parser() -> argparse.ArgumentParser:
    """Flags generated from :class:`AlignConfig` (``--name-with-dashes``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(AlignConfig):
        if f.name == "toy":
            continue
        flag = "--" + f.name.replace("_", "-")
        help = f.metadata["help"]
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, help=help)
        elif f.type == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help
            )
        else:
            choices = f.metadata.get("choices")
            kind = str if choices else types[str(f.type).split(" | ")[0]]
            parser.add_argument(flag, type=kind, default=f.default, choices=choices, help=help)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> AlignConfig:
    """Command line to config; without --model and --dataset, the embedded task's defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is None and args.dataset is None:
        parser.set_defaults(**EMBEDDED_DEFAULTS)
        args = parser.parse_args(argv)
    return AlignConfig(**vars(args))


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_args(argv)
    if cfg.model is None and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # the embedded model is tiny: more threads only contend
    run(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
