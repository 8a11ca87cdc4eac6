"""Preference data: loading and checking JSONL records, tokenizing, padding, batch order.

Two record formats, with TRL's field names:

* paired: ``{"prompt": ..., "chosen": ..., "rejected": ...}``;
* unpaired: ``{"prompt": ..., "completion": ..., "label": true|false}`` (``true`` = desirable).

Each text is either a string (TRL's "standard" format) or a list of chat messages
``[{"role": ..., "content": ...}, ...]`` ("conversational" format). Extra fields are ignored;
whitespace-only lines are not records. Any other malformed line raises :class:`DataError`
naming the file and the line; nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

Messages: TypeAlias = list[dict[str, str]]
Text: TypeAlias = str | Messages
Format: TypeAlias = Literal["paired", "unpaired"]

FIELDS: dict[Format, tuple[str, ...]] = {
    "paired": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
}


class DataError(ValueError):
    """A malformed preference record; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class PairedExample:
    """One prompt with a preferred (``chosen``) and a dispreferred (``rejected``) completion."""

    prompt: Text
    chosen: Text
    rejected: Text


@dataclass(frozen=True)
class UnpairedExample:
    """One prompt and completion with a binary label (``True`` = desirable)."""

    prompt: Text
    completion: Text
    label: bool


Example: TypeAlias = PairedExample | UnpairedExample


# --------------------------------------------------------------------------------------------
# Loading and checking
# --------------------------------------------------------------------------------------------


def _check_text(value: Any, field: str, where: str) -> Text:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field {field!r} is empty")
        return value
    if isinstance(value, list):
        if not value:
            raise DataError(f"{where}: field {field!r} is an empty list of messages")
        for i, message in enumerate(value):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise DataError(
                    f"{where}: field {field!r}, message {i}: expected an object with string "
                    f"'role' and 'content', got {message!r:.80}"
                )
        return value
    raise DataError(
        f"{where}: field {field!r} must be a string or a list of chat messages, "
        f"got {type(value).__name__}"
    )


def detect_format(record: Mapping[str, Any], where: str) -> Format:
    """``"paired"`` if the record has ``chosen``/``rejected``, ``"unpaired"`` if it has
    ``completion``/``label``; :class:`DataError` otherwise."""
    keys = set(record)
    if keys & {"chosen", "rejected"}:
        return "paired"
    if keys & {"completion", "label"}:
        return "unpaired"
    raise DataError(
        f"{where}: cannot tell the format: expected fields prompt/chosen/rejected (paired) or "
        f"prompt/completion/label (unpaired), got {sorted(keys)}"
    )


def parse_record(record: Mapping[str, Any], fmt: Format, where: str) -> Example:
    """Check one decoded record of format ``fmt`` and return it as an example.

    Raises:
        DataError: a missing field, a wrong type, an empty text, a non-bool label, or string
            and conversational texts mixed in one record.
    """
    for field in FIELDS[fmt]:
        if field not in record:
            raise DataError(f"{where}: missing field {field!r} ({fmt} format)")
    texts = [_check_text(record[f], f, where) for f in FIELDS[fmt] if f != "label"]
    if len({isinstance(t, str) for t in texts}) > 1:
        raise DataError(f"{where}: strings and chat-message lists are mixed in one record")
    if fmt == "paired":
        return PairedExample(*texts)
    label = record["label"]
    if not isinstance(label, bool):
        raise DataError(f"{where}: field 'label' must be true or false, got {label!r:.40}")
    return UnpairedExample(texts[0], texts[1], label)


def parse_records(records: Iterable[tuple[str, Any]]) -> list[Example]:
    """Check ``(where, record)`` items; the first record fixes the format for all.

    Raises:
        DataError: a record that is not an object, or see :func:`parse_record`.
    """
    examples: list[Example] = []
    fmt: Format | None = None
    for where, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        fmt = fmt or detect_format(record, where)
        examples.append(parse_record(record, fmt, where))
    return examples


def read_jsonl(path: str | Path) -> list[Example]:
    """Read and check a paired or unpaired JSONL file (see the module docstring).

    Raises:
        DataError: malformed JSON or record, ``file:line:`` first; a file with no records.
    """
    path = Path(path)

    def lines() -> Iterable[tuple[str, Any]]:
        with path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{where}: invalid JSON ({error.msg})") from error

    examples = parse_records(lines())
    if not examples:
        raise DataError(f"{path}: no records")
    return examples


def load_examples(name: str, split: str = "train") -> list[Example]:
    """A local JSONL file, or else a Hugging Face hub dataset ``name`` (its ``split``).

    The hub path imports ``datasets`` lazily; rows are checked like JSONL lines and errors
    name ``name[split] row i``.
    """
    if Path(name).exists() or name.endswith((".jsonl", ".json")):
        return read_jsonl(name)
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            f"{name!r} is not a local file; loading it from the hub needs `pip install datasets`"
        ) from error
    rows = datasets.load_dataset(name, split=split)
    examples = parse_records((f"{name}[{split}] row {i}", row) for i, row in enumerate(rows))
    if not examples:
        raise DataError(f"{name}[{split}]: no records")
    return examples


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Write one JSON object per line."""
    with Path(path).open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")


def split_examples(
    examples: Sequence[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded random split into (train, eval) with ``ceil(eval_fraction * n)`` eval items."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
    n_eval = math.ceil(eval_fraction * len(examples))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


# --------------------------------------------------------------------------------------------
# Tokenizing and padding
# --------------------------------------------------------------------------------------------


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Text,
    completion: Text,
    *,
    max_length: int,
    max_prompt_length: int,
) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and of its completion, truncated.

    Without a chat template, string texts are tokenized as they are (the prompt with the
    tokenizer's special tokens, e.g. BOS) and EOS ends the completion. With one, the prompt
    becomes a user turn (``add_generation_prompt=True``) and the completion the assistant turn;
    the completion's ids are those of the full conversation past the prompt's text, so they
    include the template's end-of-turn tokens.

    Truncation keeps the *last* ``max_prompt_length`` prompt tokens (the end of the prompt is
    the context closest to the answer) and the *first* ``max_length - len(prompt)`` completion
    tokens (log-probs stay those of a prefix of the true completion).
    """
    if tokenizer.chat_template is None:
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ValueError(
                "conversational (chat message) data needs a tokenizer with a chat template"
            )
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        completion_ids.append(tokenizer.eos_token_id)
    else:
        user = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        assistant = (
            [{"role": "assistant", "content": completion}]
            if isinstance(completion, str)
            else completion
        )
        prompt_text = str(
            tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        )
        full_text = str(tokenizer.apply_chat_template(user + assistant, tokenize=False))
        if not full_text.startswith(prompt_text):
            raise ValueError(
                "the chat template renders the prompt differently with and without the "
                "completion; cannot tell where the completion starts"
            )
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)[
            "input_ids"
        ]
    prompt_ids = prompt_ids[-max_prompt_length:]
    return prompt_ids, completion_ids[: max_length - len(prompt_ids)]


@dataclass
class Batch:
    """Right-padded sequences ``prompt + completion``.

    Attributes:
        input_ids: ``(N, T)`` token ids, padded on the right.
        attention_mask: ``(N, T)``, 1 on real tokens.
        completion_mask: ``(N, T)``, 1 on completion tokens (the tokens that are scored).
        chosen: ``(N,)`` bool, ``True`` for chosen/desirable rows. Paired batches hold the B
            chosen rows first, then the B rejected rows in the same order.
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    chosen: Tensor

    @classmethod
    def from_ids(
        cls, rows: Sequence[tuple[list[int], list[int]]], chosen: Sequence[bool], pad_id: int
    ) -> Batch:
        """Pad ``(prompt_ids, completion_ids)`` rows on the right into one batch."""
        width = max(len(p) + len(c) for p, c in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (prompt, completion) in enumerate(rows):
            n, m = len(prompt), len(completion)
            input_ids[i, : n + m] = torch.tensor(prompt + completion, dtype=torch.long)
            attention_mask[i, : n + m] = 1
            completion_mask[i, n : n + m] = 1
        return cls(
            input_ids, attention_mask, completion_mask, torch.tensor(chosen, dtype=torch.bool)
        )

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in vars(self).values()))


def collate(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int,
) -> Batch:
    """Tokenize and pad examples of one format into a :class:`Batch`."""
    rows: list[tuple[list[int], list[int]]] = []
    chosen: list[bool] = []
    kw = {"max_length": max_length, "max_prompt_length": max_prompt_length}
    if all(isinstance(e, PairedExample) for e in examples):
        for attr, is_chosen in (("chosen", True), ("rejected", False)):
            rows += [encode(tokenizer, e.prompt, getattr(e, attr), **kw) for e in examples]
            chosen += [is_chosen] * len(examples)
    else:
        for e in examples:
            if not isinstance(e, UnpairedExample):
                raise TypeError("cannot mix paired and unpaired examples in one batch")
            rows.append(encode(tokenizer, e.prompt, e.completion, **kw))
            chosen.append(e.label)
    return Batch.from_ids(rows, chosen, tokenizer.pad_token_id)


# --------------------------------------------------------------------------------------------
# Batch order
# --------------------------------------------------------------------------------------------


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

    def indices(self, micro_step: int) -> list[int]:
        """This rank's example indices in micro-batch ``micro_step`` (counted from 0)."""
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
            start = (k * self.world_size + self.rank) * b
            out += order[start : start + b]
        return out
