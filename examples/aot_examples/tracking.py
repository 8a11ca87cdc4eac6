"""Training statistics between logs, and the metrics log ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

from .losses import PreferenceLogps


class RunningStats:
    """Training statistics summed over micro-batches since the last log, kept on the device
    (no host sync per step) and summed over processes when read.

    The sums are per process and survive a resume: a checkpoint stores every process's row
    (:meth:`gather`), and each process loads its own back (:meth:`load`), so the first log
    after a resume averages the same steps as an uninterrupted run.
    """

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
        """Means since the last read over all processes; resets the sums."""
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

    def gather(self, accelerator: Accelerator) -> list[list[float]]:
        """Every process's sums, row ``r`` for process ``r`` (a collective: all processes)."""
        rows: list[list[float]] = accelerator.gather(self.sums[None]).tolist()
        return rows

    def load(self, rows: list[list[float]], rank: int) -> None:
        """Restore this process's sums from the rows of :meth:`gather`."""
        self.sums.copy_(torch.tensor(rows[rank], dtype=torch.float64))


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended by the main process only.

    Its size in bytes marks a position: a checkpoint records it, and a resume cuts the file back
    to it (:meth:`truncate`), dropping whatever the interrupted run logged later, a half-written
    last line included.
    """

    def __init__(self, path: Path, *, writer: bool) -> None:
        self.path, self.writer = path, writer

    def append(self, record: dict[str, Any]) -> None:
        if self.writer:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> tuple[int, bool]:
        """Cut the file back to ``size`` bytes (creating it empty when ``size`` is 0); returns
        the number of lines dropped and whether the last of them was half-written.

        Raises:
            ValueError: the file is shorter than ``size`` (it lost lines that a checkpoint saw).
        """
        if not self.writer:
            return 0, False
        current = self.size()
        if current < size:
            raise ValueError(
                f"{self.path} has {current} bytes, fewer than the {size} it had at the "
                "checkpoint: it was cut or replaced, so the resumed log would miss records"
            )
        self.path.touch()
        with self.path.open("r+b") as file:
            file.seek(size)
            tail = file.read()
            file.truncate(size)
        return len(tail.splitlines()), not tail.endswith(b"\n") and bool(tail)
