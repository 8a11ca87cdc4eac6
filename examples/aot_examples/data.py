"""Preference records: loading and checking JSONL files or hub datasets, the held-out split.

Two record formats, with TRL's field names:

* paired: ``{"prompt": ..., "chosen": ..., "rejected": ...}``;
* unpaired: ``{"prompt": ..., "completion": ..., "label": true|false}`` (``true`` = desirable).

Each text is either a string (TRL's "standard" format) or a list of chat messages
``[{"role": ..., "content": ...}, ...]`` ("conversational" format). Extra fields are ignored;
whitespace-only lines are not records. Any other malformed line raises :class:`DataError`
naming the file and the line (bytes that are not UTF-8 included); nothing is dropped silently.
Each example keeps where it came from (``source``), so that later errors (tokenizing) can name
it too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import torch

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
    source: str = field(default="", compare=False)  # "file:line", for error messages


@dataclass(frozen=True)
class UnpairedExample:
    """One prompt and completion with a binary label (``True`` = desirable)."""

    prompt: Text
    completion: Text
    label: bool
    source: str = field(default="", compare=False)


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
    for name in FIELDS[fmt]:
        if name not in record:
            raise DataError(f"{where}: missing field {name!r} ({fmt} format)")
    texts = [_check_text(record[f], f, where) for f in FIELDS[fmt] if f != "label"]
    if len({isinstance(t, str) for t in texts}) > 1:
        raise DataError(f"{where}: strings and chat-message lists are mixed in one record")
    if fmt == "paired":
        return PairedExample(texts[0], texts[1], texts[2], source=where)
    label = record["label"]
    if not isinstance(label, bool):
        raise DataError(f"{where}: field 'label' must be true or false, got {label!r:.40}")
    return UnpairedExample(texts[0], texts[1], label, source=where)


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
        DataError: bytes that are not UTF-8, malformed JSON or record, ``file:line:`` first; a
            file with no records.
    """
    path = Path(path)

    def lines() -> Iterable[tuple[str, Any]]:
        with path.open("rb") as file:  # decoded line by line, so that errors name the line
            for number, raw in enumerate(file, start=1):
                where = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(
                        f"{where}: not UTF-8 (byte 0x{raw[error.start]:02x} at column "
                        f"{error.start + 1})"
                    ) from error
                if not line.strip():
                    continue
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
    """A seeded random split into (train, eval) with ``ceil(eval_fraction * n)`` eval items.

    Raises:
        ValueError: ``eval_fraction`` outside (0, 1), or a split that leaves no training example.
    """
    if not 0 < eval_fraction < 1:
        raise ValueError(f"--eval-fraction must lie in (0, 1), got {eval_fraction}")
    n_eval = math.ceil(eval_fraction * len(examples))
    if n_eval >= len(examples):
        raise ValueError(
            f"--eval-fraction {eval_fraction} of {len(examples)} example(s) holds out "
            f"{n_eval} and leaves none to train on: give --eval-dataset, more data, or "
            "--eval-fraction 0 (no evaluation)"
        )
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


def check_labels(examples: Sequence[Example], split: str, hint: str = "") -> None:
    """Raises DataError if unpaired ``examples`` lack desirable or undesirable completions:
    unpaired losses, and the metrics that compare chosen with rejected, need both. ``split``
    names the data in the message, ``hint`` ends it. Paired examples always hold both."""
    if not examples or isinstance(examples[0], PairedExample):
        return
    desirable = sum(isinstance(e, UnpairedExample) and e.label for e in examples)
    if 0 < desirable < len(examples):
        return
    raise DataError(
        f"{split} holds {desirable} desirable and {len(examples) - desirable} undesirable "
        "completion(s): unpaired data needs both labels in each split (to train on, and to "
        f"compare chosen with rejected when measuring){hint}"
    )


def load_splits(
    dataset: str,
    dataset_split: str,
    *,
    eval_dataset: str | None,
    eval_split: str,
    eval_fraction: float,
    seed: int,
) -> tuple[list[Example], list[Example]]:
    """Train and eval examples: ``eval_dataset``, or else a seeded ``eval_fraction`` of
    ``dataset`` (none when it is 0); the two must have the same format.

    Raises:
        DataError: see :func:`load_examples`; formats that differ; unpaired data whose training
            or evaluation split lacks one of the labels (:func:`check_labels`), before any
            training.
    """
    train = load_examples(dataset, dataset_split)
    held_out: list[Example] = []
    if eval_dataset is not None:
        held_out = load_examples(eval_dataset, eval_split)
        held_out_name = f"the evaluation data (--eval-dataset {eval_dataset})"
    elif eval_fraction > 0:
        train, held_out = split_examples(train, eval_fraction, seed)
        held_out_name = (
            f"the evaluation data ({len(held_out)} record(s) held out of --dataset {dataset} by "
            f"--eval-fraction {eval_fraction})"
        )
    if held_out and type(held_out[0]) is not type(train[0]):
        raise DataError(
            f"{held_out[0].source} and {train[0].source} have different formats (paired vs "
            "unpaired)"
        )
    check_labels(train, f"the training data (--dataset {dataset})")
    if held_out:
        hint = "; give --eval-dataset, a larger --eval-fraction, or --eval-fraction 0"
        check_labels(held_out, held_out_name, "" if eval_dataset else hint)
    return train, held_out
