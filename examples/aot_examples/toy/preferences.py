"""Preference data of the embedded task, built from the reference model's scored samples.

:func:`score_samples` draws completions per prompt from the reference and scores them with the
exact reward; the constructions of :mod:`aot_examples.preferences` turn them into records
(best vs worst pairs, every sample labelled, and the noisy and thumbs-up/down data of the
pre-registered study, docs/preregistration.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase

from ..data import write_jsonl
from ..modeling import load_tokenizer
from ..preferences import (
    DATA_KINDS,
    ScoredSample,
    construct_all,
    data_stats,
    noisy_pairs,
    thumbs_up_down,
)
from .reference import sample
from .task import Splits, ToyConfig, decode, reward

__all__ = [  # the generic names that the toy's users import from here, and the toy's own
    "DATA_KINDS",
    "ScoredSample",
    "build_preference_data",
    "noisy_pairs",
    "score_samples",
    "thumbs_up_down",
]


def score_samples(
    cfg: ToyConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    seed: int,
) -> tuple[list[list[ScoredSample]], int]:
    """``samples_per_prompt`` samples of each prompt from ``model``, scored; per prompt, in
    sampling order. Empty samples (EOS first) are left out: the loaders reject empty
    completions. Returns the samples and the number left out."""
    ids = sample(
        model,
        tokenizer,
        prompts,
        num_samples=cfg.samples_per_prompt,
        seed=seed,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
    )
    texts = [decode(tokenizer, i) for i in ids]
    k = cfg.samples_per_prompt
    scored = [
        [ScoredSample(prompt, text, reward(prompt, text)) for text in texts[i * k : (i + 1) * k]]
        for i, prompt in enumerate(prompts)
    ]
    kept = [[s for s in samples if s.completion] for samples in scored]
    return kept, len(texts) - sum(map(len, kept))


def build_preference_data(
    cfg: ToyConfig, splits: Splits, reference_dir: Path, data_dir: Path
) -> dict[str, int]:
    """Score the reference's samples on the train and eval prompts and write
    ``{kind}_{split}.jsonl`` into ``data_dir`` for every construction of
    :data:`CONSTRUCTIONS`, the samples and the noise seeded by ``cfg.data_seed`` (data seed 0:
    sampling seeds ``1000 seed + 1`` and ``+ 2``, noise seed 0). Returns the counts of what was
    written and left out."""
    tokenizer = load_tokenizer(str(reference_dir))
    model = GPT2LMHeadModel.from_pretrained(reference_dir).eval()
    stats: dict[str, int] = {}
    for split, prompts, seed in (("train", splits.train, 1), ("eval", splits.eval, 2)):
        sampling_seed = cfg.seed * 1000 + 10 * cfg.data_seed + seed
        scored, empty = score_samples(cfg, model, tokenizer, prompts, sampling_seed)
        records = construct_all(scored, seed=cfg.data_seed)
        for kind, kind_records in records.items():
            write_jsonl(data_dir / f"{kind}_{split}.jsonl", kind_records)
        stats |= data_stats(split, len(prompts), records, empty)
    return stats
