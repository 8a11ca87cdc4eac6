"""Saving and resuming a run: ``OUTPUT_DIR/checkpoints/step-NNNNNNN/``.

A checkpoint is accelerate's state (adapter, optimizer, scheduler, RNGs) plus
``trainer_state.json``, written last and atomically, whose presence marks it complete: the
position in the data, the size of ``metrics.jsonl`` at that point, every process's running
training statistics, and the run's training options (a resume must use the same). A run is
finished once ``summary.json`` exists (written last, atomically). A damaged JSON file is an
error naming it and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import Tensor, nn

from .tracking import MetricsLog, RunningStats

__all__ = [
    "STATE",
    "SUMMARY",
    "TrainerState",
    "check_same_options",
    "complete_checkpoints",
    "existing_run",
    "keep_trainable_weights",
    "latest_checkpoint",
    "read_json",
    "read_summary",
    "restore_checkpoint",
    "save_checkpoint",
    "write_atomically",
]

SUMMARY = "summary.json"
STATE = "trainer_state.json"


def read_json(path: Path, remedy: str) -> Any:
    """``path``'s JSON; a file that is not JSON is a ValueError naming it and ``remedy``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is damaged (not JSON: {error}): {remedy}") from error


def read_summary(out: Path) -> dict[str, Any]:
    """A finished run's ``summary.json``."""
    remedy = (
        "the run finished but its summary cannot be read; delete the file and run the same "
        "command with --resume (it redoes the final evaluation and the summary, after the "
        "training left since the newest checkpoint, if any), or use another --output-dir"
    )
    summary = read_json(out / SUMMARY, remedy)
    if not isinstance(summary, dict):
        raise ValueError(f"{out / SUMMARY} is damaged (not a JSON object): {remedy}")
    return summary


@dataclass
class TrainerState:
    """Where a run stands: optimizer steps and micro-batches done, the bytes of
    ``metrics.jsonl`` written so far, every process's :class:`RunningStats` sums, and the
    run's training options (``None`` in checkpoints that predate them)."""

    step: int = 0
    micro_step: int = 0
    metrics_bytes: int = 0
    running_sums: list[list[float]] | None = None
    options: dict[str, Any] | None = None

    @classmethod
    def load(cls, checkpoint: Path) -> TrainerState:
        """The state saved in ``checkpoint``; ValueError naming the file if it is damaged."""
        remedy = (
            f"delete {checkpoint} to resume from the checkpoint before it (or from the "
            "start), or start again in another --output-dir"
        )
        fields = read_json(checkpoint / STATE, remedy)
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(fields, dict) or not {"step", "micro_step"} <= set(fields) <= names:
            raise ValueError(
                f"{checkpoint / STATE} is damaged (expected an object of {sorted(names)}): {remedy}"
            )
        return cls(**fields)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a kill leaves the old
    file or the new one, never half of it."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def complete_checkpoints(out: Path) -> list[Path]:
    """The checkpoints in ``out`` that have their ``trainer_state.json``, oldest first."""
    return sorted(p.parent for p in (out / "checkpoints").glob(f"step-*/{STATE}"))


def existing_run(out: Path) -> Path | None:
    """What marks ``out`` as holding an unfinished run: its newest checkpoint."""
    done = complete_checkpoints(out)
    return done[-1] if done else None


def latest_checkpoint(out: Path) -> tuple[Path, TrainerState] | None:
    """The newest complete checkpoint in ``out`` and its state (``None``: no checkpoint)."""
    newest = existing_run(out)
    return None if newest is None else (newest, TrainerState.load(newest))


def check_same_options(
    checkpoint: Path, saved: Mapping[str, Any] | None, options: Mapping[str, Any]
) -> None:
    """Raises ValueError naming each option whose value in ``options`` differs from the one
    ``checkpoint`` was written with (``saved``; ``None``: a checkpoint without them, not
    checked). Options are JSON-compared, by their flag names."""
    if saved is None:
        return
    now = json.loads(json.dumps(dict(options)))
    changed = [
        f"--{name.replace('_', '-')} {saved.get(name)} (now {now.get(name)})"
        for name in sorted(set(saved) | set(now))
        if saved.get(name) != now.get(name)
    ]
    if changed:
        raise ValueError(
            f"--resume: {checkpoint} was written with other training options: "
            f"{', '.join(changed)}; resume with the checkpoint's options, or train anew in "
            "another --output-dir"
        )


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
        write_atomically(path / STATE, json.dumps(dataclasses.asdict(state)))
    accelerator.wait_for_everyone()


def restore_checkpoint(
    accelerator: Accelerator,
    checkpoint: tuple[Path, TrainerState] | None,
    stats: RunningStats,
    metrics: MetricsLog,
) -> TrainerState:
    """Load ``checkpoint`` (:func:`latest_checkpoint`; ``None``: a fresh state) and cut
    ``metrics.jsonl`` back to what it held then, so the resumed log reads like an uninterrupted
    one; says what it did."""
    if checkpoint is None:
        accelerator.print(f"no checkpoint in {metrics.path.parent}; starting from scratch")
        state = TrainerState()
    else:
        path, state = checkpoint
        accelerator.load_state(str(path), strict=False)  # strict=False: the adapter only
        if state.running_sums is not None:
            stats.load(state.running_sums, accelerator.process_index)
        accelerator.print(f"resumed from {path}")
    dropped, partial = metrics.truncate(state.metrics_bytes)
    if dropped:
        accelerator.print(
            f"{metrics.path}: dropped {dropped} line(s) logged after the checkpoint"
            + (" (the last one half-written)" if partial else "")
        )
    return state
