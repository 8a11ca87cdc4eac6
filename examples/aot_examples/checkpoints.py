"""Saving and resuming a run: ``OUTPUT_DIR/checkpoints/step-NNNNNNN/``.

A checkpoint is accelerate's state (adapter, optimizer, scheduler, RNGs) plus
``trainer_state.json``, written last and atomically, whose presence marks it complete: the
position in the data, the size of ``metrics.jsonl`` at that point, and every process's running
training statistics. A run is finished once ``summary.json`` exists (written last, atomically).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from torch import Tensor, nn

from .tracking import MetricsLog, RunningStats

SUMMARY = "summary.json"


@dataclass
class TrainerState:
    """Where a run stands: optimizer steps and micro-batches done, the bytes of
    ``metrics.jsonl`` written so far, and every process's :class:`RunningStats` sums."""

    step: int = 0
    micro_step: int = 0
    metrics_bytes: int = 0
    running_sums: list[list[float]] | None = None


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a kill leaves the old
    file or the new one, never half of it."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def complete_checkpoints(out: Path) -> list[Path]:
    """The checkpoints in ``out`` that have their ``trainer_state.json``, oldest first."""
    return sorted(p.parent for p in (out / "checkpoints").glob("step-*/trainer_state.json"))


def existing_run(out: Path) -> Path | None:
    """What marks ``out`` as holding an unfinished run: its newest checkpoint."""
    done = complete_checkpoints(out)
    return done[-1] if done else None


def keep_trainable_weights(
    models: list[nn.Module], weights: list[dict[str, Tensor]], _dir: str
) -> None:
    """``save_state`` hook: checkpoint only trainable tensors (the LoRA adapter), not the frozen
    base model. (With FSDP, accelerate saves the sharded model itself and skips this.)"""
    for model, state in zip(models, weights, strict=False):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        for name in [n for n in state if n not in trainable]:
            del state[name]


def save_checkpoint(
    accelerator: Accelerator, out: Path, state: TrainerState, stats: RunningStats
) -> None:
    """Save ``state`` with accelerate's state and every process's statistics (all processes
    call this)."""
    path = out / "checkpoints" / f"step-{state.step:07d}"
    accelerator.save_state(str(path))
    state = dataclasses.replace(state, running_sums=stats.gather(accelerator))
    if accelerator.is_main_process:
        write_atomically(path / "trainer_state.json", json.dumps(dataclasses.asdict(state)))
    accelerator.wait_for_everyone()


def restore_checkpoint(
    accelerator: Accelerator, out: Path, stats: RunningStats, metrics: MetricsLog
) -> TrainerState:
    """Load the newest complete checkpoint in ``out`` (none: a fresh state) and cut
    ``metrics.jsonl`` back to what it held then, so the resumed log reads like an uninterrupted
    one; says what it did."""
    done = complete_checkpoints(out)
    if not done:
        accelerator.print(f"no checkpoint in {out}; starting from scratch")
        state = TrainerState()
    else:
        accelerator.load_state(str(done[-1]), strict=False)  # strict=False: the adapter only
        state = TrainerState(**json.loads((done[-1] / "trainer_state.json").read_text()))
        if state.running_sums is not None:
            stats.load(state.running_sums, accelerator.process_index)
        accelerator.print(f"resumed from {done[-1]}")
    dropped, partial = metrics.truncate(state.metrics_bytes)
    if dropped:
        accelerator.print(
            f"{metrics.path}: dropped {dropped} line(s) logged after the checkpoint"
            + (" (the last one half-written)" if partial else "")
        )
    return state
