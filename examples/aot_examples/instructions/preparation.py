"""Preparing the instructions task once: the reference's scored samples, cached and resumable,
and the preference records built from them.

:func:`prepare` samples ``samples_per_prompt`` completions of every training and validation
prompt from the reference, scores them (:func:`~.task.reward`) and appends them to
``samples_{split}.jsonl``, one line per prompt, generation call by generation call; a run
killed midway continues where it stopped and writes the same file as an uninterrupted run
(each call's seed depends only on its index). The constructions of
:mod:`aot_examples.preferences` then write ``{kind}_{split}.jsonl`` for every kind of
:data:`~aot_examples.preferences.DATA_KINDS`. Every method and seed reuses these files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data import write_jsonl
from ..preferences import CELL_DATA, DATA_KINDS, ScoredSample, construct_all, data_stats
from ..sampling import batch_seed, prompts_per_call, sample_completions
from .evaluation import reward_stats
from .task import InstructionPrompt, InstructionsConfig, Split, Splits, make_splits, reward

__all__ = [
    "CELL_DATA",
    "DATA_SPLITS",
    "Prepared",
    "model_fingerprint",
    "prepare",
    "scored_samples",
]

#: The splits that get preference data: ``train`` to learn from, ``validation`` for the
#: loop's held-out loss (its ``paired`` file: best-vs-worst pairs of held-out topics).
DATA_SPLITS: tuple[Split, ...] = ("train", "validation")

#: Offsets of each split's sampling seed from the config's seed.
_SPLIT_SEED = {"train": 1, "validation": 2}


@dataclass(frozen=True)
class Prepared:
    """A prepared task: its config, prompts, and where its data lie.

    Attributes:
        config: the task's config.
        splits: the prompts of every split (``splits.test`` for the reward evaluation).
        cache_dir: the directory of the cache.
        stats: counts of what each construction wrote, and the reference's reward
            statistics on its own samples (``{split}_reference_reward_mean``, ``_cvar10``,
            ``_zero_reward_share``, prompts as units).
    """

    config: InstructionsConfig
    splits: Splits
    cache_dir: Path
    stats: dict[str, float]

    def dataset(self, kind: str, split: Split = "train") -> Path:
        """The JSONL records of ``kind`` (one of :data:`~aot_examples.preferences.DATA_KINDS`:
        ``"paired"`` best vs worst, ``"unpaired"`` every sample labelled by reward 1,
        ``"noisy"``, ``"thumbs"``) on ``split`` (``"train"`` or ``"validation"``)."""
        if kind not in DATA_KINDS or split not in DATA_SPLITS:
            raise ValueError(
                f"kind must be one of {DATA_KINDS} and split one of {DATA_SPLITS}, got "
                f"{kind!r} and {split!r}"
            )
        return self.cache_dir / f"{kind}_{split}.jsonl"


def model_fingerprint(model: PreTrainedModel | PeftModel) -> str:
    """sha256 of the names, dtypes, shapes and bytes of the model's weights, without LoRA
    adapters: the same weights give the same key whatever file they came from, bare or
    wrapped in a ``PeftModel``."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    digest = hashlib.sha256()
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")  # a layer that LoRA wraps
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_lines(path: Path, prompts: Sequence[InstructionPrompt]) -> list[str]:
    """The lines of ``path`` that hold, in order, the samples of ``prompts``' first ones;
    reading stops at the first line that is cut, unreadable or of another prompt."""
    kept: list[str] = []
    if not path.exists():
        return kept
    with path.open(encoding="utf-8") as file:
        for line, prompt in zip(file, prompts, strict=False):
            try:
                if line.endswith("\n") and json.loads(line)["prompt"]["text"] == prompt.text:
                    kept.append(line)
                    continue
            except (json.JSONDecodeError, KeyError, TypeError):
                pass
            break
    return kept


def _reference(model: PreTrainedModel | PeftModel) -> contextlib.AbstractContextManager[Any]:
    """The reference: a ``PeftModel`` with its adapters disabled, any other model as it is."""
    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()


def scored_samples(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[InstructionPrompt],
    path: Path,
    *,
    cfg: InstructionsConfig,
    seed: int,
) -> list[dict[str, Any]]:
    """The reference's scored samples of ``prompts``, cached in ``path`` (JSONL, one line per
    prompt: ``prompt``, ``completions``, ``rewards``, ``finished``); resumable.

    The prompts are sampled in calls of :func:`~aot_examples.sampling.prompts_per_call`
    prompts, call ``c`` with seed :func:`~aot_examples.sampling.batch_seed` ``(seed, c)``.
    The lines of whole calls already in ``path`` are kept, the rest sampled and appended
    call by call, so a killed run resumes at its last finished call.
    """
    per_call = prompts_per_call(cfg.batch_size, cfg.samples_per_prompt)
    kept = _read_lines(path, prompts)
    kept = kept[: len(kept) // per_call * per_call]
    path.write_text("".join(kept), encoding="utf-8")
    was_training = model.training
    model.eval()
    progress = tqdm(
        total=len(prompts), initial=len(kept), desc=f"sampling {path.stem}", dynamic_ncols=True
    )
    with path.open("a", encoding="utf-8") as file, _reference(model), progress:
        for start in range(len(kept), len(prompts), per_call):
            chunk = prompts[start : start + per_call]
            completions = sample_completions(
                model,
                tokenizer,
                [p.text for p in chunk],
                samples_per_prompt=cfg.samples_per_prompt,
                seed=batch_seed(seed, start // per_call),
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                batch_size=cfg.batch_size,
            )
            for prompt, samples in zip(chunk, completions, strict=True):
                record = {
                    "prompt": prompt.to_json(),
                    "completions": [c.text for c in samples],
                    "rewards": [reward(prompt, c.text) for c in samples],
                    "finished": [c.finished for c in samples],
                }
                file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
            progress.update(len(chunk))
    model.train(was_training)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _scored(records: Sequence[dict[str, Any]]) -> tuple[list[list[ScoredSample]], int]:
    """Per prompt, its samples as :class:`~aot_examples.preferences.ScoredSample`, those
    without any non-blank character left out (the loaders refuse them); and how many were."""
    scored = [
        [
            ScoredSample(r["prompt"]["text"], text, value)
            for text, value in zip(r["completions"], r["rewards"], strict=True)
            if text.strip()
        ]
        for r in records
    ]
    return scored, sum(len(r["completions"]) for r in records) - sum(map(len, scored))


def prepare(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: InstructionsConfig,
    cache_dir: str | Path,
) -> Prepared:
    """Build (or reuse from ``cache_dir``) the reference's scored samples and the preference
    records of the training and validation prompts.

    Args:
        model: the reference (a ``PeftModel`` is sampled with its adapters disabled).
        tokenizer: its tokenizer (prompts go through its chat template).
        cfg: the task.
        cache_dir: where the cache lives; created if missing.

    The cache is keyed by ``cfg`` and :func:`model_fingerprint` (``stamp.json``): another
    config or other weights empty it and start over; the same key resumes a build that was
    killed, or reuses a finished one without sampling.

    Returns:
        The prepared task; its files are ``Prepared.dataset(kind, split)``.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    splits = make_splits(cfg)
    key = {"config": dataclasses.asdict(cfg), "model": model_fingerprint(model)}
    stamp, stats_file = cache / "stamp.json", cache / "stats.json"
    if not (stamp.exists() and json.loads(stamp.read_text(encoding="utf-8")) == key):
        stats_file.unlink(missing_ok=True)  # another task or model: start over
        for split in DATA_SPLITS:
            for name in ("samples", *DATA_KINDS):
                (cache / f"{name}_{split}.jsonl").unlink(missing_ok=True)
        stamp.write_text(json.dumps(key, indent=2), encoding="utf-8")
    if not stats_file.exists():  # written last: a killed build resumes its sampling
        stats: dict[str, float] = {}
        for split in DATA_SPLITS:
            records = scored_samples(
                model,
                tokenizer,
                splits[split],
                cache / f"samples_{split}.jsonl",
                cfg=cfg,
                seed=cfg.seed * 1000 + _SPLIT_SEED[split],
            )
            scored, empty = _scored(records)
            data = construct_all(scored)
            for kind, kind_records in data.items():
                write_jsonl(cache / f"{kind}_{split}.jsonl", kind_records)
            rewards = torch.tensor([r["rewards"] for r in records], dtype=torch.float64)
            stats |= data_stats(split, len(records), data, empty)
            stats |= {f"{split}_{k}": v for k, v in reward_stats(rewards, "reference").items()}
        stats_file.write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return Prepared(cfg, splits, cache, json.loads(stats_file.read_text(encoding="utf-8")))
