"""Padded batches of encoded examples, and the resumable order of micro-batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .data import Example, PairedExample, UnpairedExample
from .tokenization import EncodedExample


@dataclass
class Batch:
    """Right-padded sequences ``prompt + completion``.

    Attributes:
        input_ids: ``(N, T)`` token ids, padded on the right.
        attention_mask: ``(N, T)``, 1 on real tokens.
        completion_mask: ``(N, T)``, 1 on completion tokens (the tokens that are scored).
        chosen: ``(N,)`` bool, ``True`` for chosen/desirable rows. Paired batches hold the B
            chosen rows first, then the B rejected rows in the same order.
        reference_logps: ``(N,)`` float32, the reference's log-prob of each row's completion
            when the examples carry it (``None`` otherwise).
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    chosen: Tensor
    reference_logps: Tensor | None = None

    @classmethod
    def from_ids(
        cls,
        rows: Sequence[tuple[Sequence[int] | Tensor, Sequence[int] | Tensor]],
        chosen: Sequence[bool],
        pad_id: int,
    ) -> Batch:
        """Pad ``(prompt_ids, completion_ids)`` rows on the right into one batch."""
        width = max(len(p) + len(c) for p, c in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (prompt, completion) in enumerate(rows):
            n, m = len(prompt), len(completion)
            input_ids[i, :n] = torch.as_tensor(prompt)
            input_ids[i, n : n + m] = torch.as_tensor(completion)
            attention_mask[i, : n + m] = 1
            completion_mask[i, n : n + m] = 1
        return cls(
            input_ids, attention_mask, completion_mask, torch.tensor(chosen, dtype=torch.bool)
        )

    def to(self, device: torch.device | str) -> Batch:
        reference = self.reference_logps
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.completion_mask.to(device),
            self.chosen.to(device),
            None if reference is None else reference.to(device),
        )


def collate(examples: Sequence[EncodedExample], pad_id: int) -> Batch:
    """Pad encoded examples of one format into a :class:`Batch`: row ``j * B + i`` is
    completion ``j`` of example ``i`` (for pairs: the chosen rows, then the rejected rows),
    with the examples' reference log-probs when all of them carry theirs."""
    per_example = {len(e.completions) for e in examples}
    if len(per_example) > 1:
        raise TypeError("cannot mix paired and unpaired examples in one batch")
    (count,) = per_example
    rows = [(e.prompt, e.completions[j]) for j in range(count) for e in examples]
    chosen = [e.labels[j] for j in range(count) for e in examples]
    batch = Batch.from_ids(rows, chosen, pad_id)
    references = [e.reference_logps for e in examples]
    if all(r is not None for r in references):
        values = [r[j] for j in range(count) for r in references if r is not None]
        batch.reference_logps = torch.tensor(values, dtype=torch.float32)
    return batch


class BatchSchedule:
    """A deterministic, resumable order of micro-batches, sharded over ranks.

    Examples are drawn from one or more *streams* (paired data: one stream; unpaired data:
    desirable and undesirable examples, so that each micro-batch holds a fixed number of each).
    Epoch ``e`` shuffles every stream with seed ``seed + e``; micro-batch ``k`` of an epoch
    takes the next ``sizes[s] * world_size`` items of stream ``s`` and gives rank ``r`` its
    ``r``-th slice. Leftovers that do not fill a micro-batch are skipped in that epoch (a
    different few each epoch). Micro-batch ``k`` overall is therefore a pure function of
    ``k``: resuming needs only the number of micro-batches consumed.
    """

    def __init__(
        self,
        streams: Sequence[Sequence[int]],
        sizes: Sequence[int],
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.streams = [list(s) for s in streams]
        self.sizes = list(sizes)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_epoch = min(
            len(s) // (b * world_size) for s, b in zip(self.streams, self.sizes, strict=True)
        )
        if self.per_epoch == 0:
            raise ValueError(
                f"too few examples ({[len(s) for s in self.streams]}) for one micro-batch of "
                f"{self.sizes} per rank on {world_size} rank(s)"
            )
        self._epoch = -1
        self._orders: list[list[int]] = []

    @classmethod
    def for_examples(
        cls, examples: Sequence[Example], batch_size: int, *, seed: int, rank: int, world_size: int
    ) -> BatchSchedule:
        """One stream of pairs; or, for unpaired data, desirable and undesirable streams with
        ``batch_size`` split between them in the data's proportion (at least 1 of each)."""
        if isinstance(examples[0], PairedExample):
            return cls(
                [range(len(examples))], [batch_size], seed=seed, rank=rank, world_size=world_size
            )
        good = [i for i, e in enumerate(examples) if isinstance(e, UnpairedExample) and e.label]
        bad = [i for i, e in enumerate(examples) if isinstance(e, UnpairedExample) and not e.label]
        if not good or not bad or batch_size < 2:
            raise ValueError(
                f"unpaired training needs desirable and undesirable examples and a batch size of "
                f"at least 2; got {len(good)} desirable, {len(bad)} undesirable, batch size "
                f"{batch_size}"
            )
        n_good = min(max(round(batch_size * len(good) / len(examples)), 1), batch_size - 1)
        sizes = [n_good, batch_size - n_good]
        return cls([good, bad], sizes, seed=seed, rank=rank, world_size=world_size)

    def indices(self, micro_step: int, *, all_ranks: bool = False) -> list[int]:
        """This rank's example indices in micro-batch ``micro_step`` (counted from 0); with
        ``all_ranks``, every rank's."""
        epoch, k = divmod(micro_step, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = [
                [s[i] for i in torch.randperm(len(s), generator=generator).tolist()]
                for s in self.streams
            ]
            self._epoch = epoch
        out: list[int] = []
        for order, b in zip(self._orders, self.sizes, strict=True):
            start = (k * self.world_size + (0 if all_ranks else self.rank)) * b
            out += order[start : start + b * (self.world_size if all_ranks else 1)]
        return out

    def used(self, micro_steps: int) -> set[int]:
        """The examples that micro-batches ``0 .. micro_steps - 1`` draw, on any rank."""
        return {i for m in range(micro_steps) for i in self.indices(m, all_ranks=True)}
