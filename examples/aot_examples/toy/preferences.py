"""Preference data of the embedded task, built from the reference model's scored samples.

:func:`score_samples` draws completions per prompt from the reference and scores them with the
exact reward; each construction below turns the scored samples into one kind of record, so that
another construction (other pairings, noisy labels, other prompts) is one more function:

* :func:`best_vs_worst_pairs`: paired records, the best sample of a prompt against its worst;
* :func:`labelled_samples`: unpaired records, every sample, desirable iff exactly right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase

from ..data import write_jsonl
from ..modeling import load_tokenizer
from .reference import sample
from .task import Splits, ToyConfig, decode, reward


@dataclass(frozen=True)
class ScoredSample:
    """A sampled completion of a prompt and its exact reward."""

    prompt: str
    completion: str
    reward: float


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


def best_vs_worst_pairs(scored: Sequence[Sequence[ScoredSample]]) -> list[dict[str, Any]]:
    """Per prompt, the best sample (chosen) against the worst (rejected), ties broken by the
    text; prompts whose samples all score the same give no pair."""
    pairs = []
    for samples in scored:
        ranked = [(s.reward, s.completion) for s in samples]
        if ranked and max(ranked)[0] > min(ranked)[0]:
            (best, chosen), (worst, rejected) = max(ranked), min(ranked)
            pairs.append(
                {
                    "prompt": samples[0].prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "chosen_reward": best,
                    "rejected_reward": worst,
                }
            )
    return pairs


def labelled_samples(scored: Sequence[Sequence[ScoredSample]]) -> list[dict[str, Any]]:
    """Every sample as an unpaired record, ``label`` = exactly right (reward 1)."""
    return [
        {
            "prompt": s.prompt,
            "completion": s.completion,
            "label": s.reward == 1.0,
            "reward": s.reward,
        }
        for samples in scored
        for s in samples
    ]


def build_preference_data(
    cfg: ToyConfig, splits: Splits, reference_dir: Path, data_dir: Path
) -> dict[str, int]:
    """Score the reference's samples on the train and eval prompts and write
    ``paired_{split}.jsonl`` (:func:`best_vs_worst_pairs`) and ``unpaired_{split}.jsonl``
    (:func:`labelled_samples`) into ``data_dir``. Returns the counts of what was written and
    left out."""
    tokenizer = load_tokenizer(str(reference_dir))
    model = GPT2LMHeadModel.from_pretrained(reference_dir).eval()
    stats: dict[str, int] = {}
    for split, prompts, seed in (("train", splits.train, 1), ("eval", splits.eval, 2)):
        scored, empty = score_samples(cfg, model, tokenizer, prompts, cfg.seed * 1000 + seed)
        paired, unpaired = best_vs_worst_pairs(scored), labelled_samples(scored)
        write_jsonl(data_dir / f"paired_{split}.jsonl", paired)
        write_jsonl(data_dir / f"unpaired_{split}.jsonl", unpaired)
        stats |= {
            f"{split}_pairs": len(paired),
            f"{split}_prompts_without_pair": len(prompts) - len(paired),
            f"{split}_unpaired": len(unpaired),
            f"{split}_unpaired_desirable": sum(bool(r["label"]) for r in unpaired),
            f"{split}_empty_samples_left_out": empty,
        }
    return stats
