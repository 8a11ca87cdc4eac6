"""Preference records built from a reference model's scored samples, for any task with an
exact reward in [0, 1].

A task samples completions per prompt from its reference and scores them
(:class:`ScoredSample`); each construction below turns the scored samples into one kind of
record (:data:`CONSTRUCTIONS`), so that another construction (other pairings, noisy labels,
other prompts) is one more function:

* :func:`best_vs_worst_pairs` (``paired``): paired records, the best sample of a prompt
  against its worst;
* :func:`labelled_samples` (``unpaired``): unpaired records, every sample, desirable iff its
  reward is 1;
* :func:`noisy_pairs` (``noisy``): paired records, a random pair of a prompt's samples
  labelled by a Bradley-Terry draw on a noisy reward, then flipped at a fixed rate (chosen and
  rejected overlap);
* :func:`thumbs_up_down` (``thumbs``): unpaired records from disjoint prompts (one sample per
  prompt), desirable iff the noisy reward clears its upper quartile (1 desirable to 3
  undesirable).

The noise comes from one fixed data seed, so every run sees the same records. Every record
keeps the exact rewards of its completions (fields that the loaders ignore): for analysis,
never for training.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from typing import Any

__all__ = [
    "CELL_DATA",
    "CONSTRUCTIONS",
    "DATA_KINDS",
    "DATA_SEED",
    "REWARD_NOISE",
    "Records",
    "ScoredSample",
    "best_vs_worst_pairs",
    "construct_all",
    "data_stats",
    "labelled_samples",
    "noisy_pairs",
    "thumbs_up_down",
]


@dataclass(frozen=True)
class ScoredSample:
    """A sampled completion of a prompt and its exact reward."""

    prompt: str
    completion: str
    reward: float


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


#: The seed of every noise draw of :func:`noisy_pairs` and :func:`thumbs_up_down`.
DATA_SEED = 0
#: Standard deviation of the Gaussian noise added to the exact reward before labelling.
REWARD_NOISE = 0.1


def noisy_pairs(
    scored: Sequence[Sequence[ScoredSample]],
    *,
    seed: int = DATA_SEED,
    noise: float = REWARD_NOISE,
    temperature: float = 0.1,
    flip_rate: float = 0.2,
) -> list[dict[str, Any]]:
    """Per prompt, 2 of its samples with different texts, labelled by a noisy annotator.

    The pair is drawn uniformly among the pairs of samples whose texts differ (as drawing 2
    samples until their texts differ); prompts whose samples are all one text give no pair.
    Each sample gets a noisy reward ``r + N(0, noise^2)``; the first is preferred with
    probability ``sigmoid((r~1 - r~2) / temperature)`` (a Bradley-Terry draw), and the label is
    then flipped with probability ``flip_rate``. Pairs of equal exact reward are labelled at
    random. Each prompt draws the same number of random numbers, in prompt order, from
    ``random.Random(seed)``.

    Returns:
        Paired records with the exact rewards (``chosen_reward``, ``rejected_reward``), the
        noisy ones (``chosen_noisy_reward``, ``rejected_noisy_reward``) and ``flipped``.
    """
    rng = random.Random(seed)
    pairs = []
    for samples in scored:
        candidates = [(a, b) for a, b in combinations(samples, 2) if a.completion != b.completion]
        if not candidates:
            continue
        pair = rng.choice(candidates)
        noisy = [s.reward + rng.gauss(0.0, noise) for s in pair]
        # sigmoid(x) = (1 + tanh(x / 2)) / 2, without overflow at any temperature
        first_preferred = (
            rng.random() < (1 + math.tanh((noisy[0] - noisy[1]) / temperature / 2)) / 2
        )
        flipped = rng.random() < flip_rate
        c, r = (0, 1) if first_preferred != flipped else (1, 0)
        pairs.append(
            {
                "prompt": pair[c].prompt,
                "chosen": pair[c].completion,
                "rejected": pair[r].completion,
                "chosen_reward": pair[c].reward,
                "rejected_reward": pair[r].reward,
                "chosen_noisy_reward": noisy[c],
                "rejected_noisy_reward": noisy[r],
                "flipped": flipped,
            }
        )
    return pairs


def thumbs_up_down(
    scored: Sequence[Sequence[ScoredSample]],
    *,
    seed: int = DATA_SEED,
    noise: float = REWARD_NOISE,
) -> list[dict[str, Any]]:
    """Thumbs-up/down data from disjoint prompts: per prompt its first sample only, desirable
    iff its noisy reward ``r + N(0, noise^2)`` exceeds theta, the 75th percentile of those
    noisy rewards over all the prompts (linear interpolation between order statistics, as
    NumPy's default): about 1 desirable to 3 undesirable. The noise is drawn from
    ``random.Random(seed)`` in prompt order.

    Returns:
        Unpaired records with the exact ``reward``, the ``noisy_reward`` and ``threshold``.
    """
    rng = random.Random(seed)
    firsts = [samples[0] for samples in scored if samples]
    noisy = [s.reward + rng.gauss(0.0, noise) for s in firsts]
    if len(noisy) < 2:
        raise ValueError(f"thumbs_up_down needs at least 2 prompts with a sample, got {len(noisy)}")
    theta = statistics.quantiles(noisy, n=4, method="inclusive")[2]
    return [
        {
            "prompt": s.prompt,
            "completion": s.completion,
            "label": value > theta,
            "reward": s.reward,
            "noisy_reward": value,
            "threshold": theta,
        }
        for s, value in zip(firsts, noisy, strict=True)
    ]


Records = list[dict[str, Any]]
#: Every kind of preference record the task writes (``{kind}_{split}.jsonl``) and its
#: construction: ``paired`` and ``unpaired`` are the defaults of paired and unpaired losses.
CONSTRUCTIONS: dict[str, Callable[[Sequence[Sequence[ScoredSample]]], Records]] = {
    "paired": best_vs_worst_pairs,
    "unpaired": labelled_samples,
    "noisy": noisy_pairs,
    "thumbs": thumbs_up_down,
}
DATA_KINDS = tuple(CONSTRUCTIONS)


def construct_all(
    scored: Sequence[Sequence[ScoredSample]], *, seed: int = DATA_SEED
) -> dict[str, Records]:
    """Every kind of record of :data:`CONSTRUCTIONS` from ``scored``, the noise of
    :func:`noisy_pairs` and :func:`thumbs_up_down` drawn with ``seed`` (the data seed)."""
    seeded = {
        "noisy": partial(noisy_pairs, seed=seed),
        "thumbs": partial(thumbs_up_down, seed=seed),
    }
    return {kind: seeded.get(kind, make)(scored) for kind, make in CONSTRUCTIONS.items()}


#: The data cells of the studies and the kind of records each trains on: ``best_vs_worst``
#: (:func:`best_vs_worst_pairs`), ``noisy`` (:func:`noisy_pairs`) and ``unpaired``
#: (:func:`thumbs_up_down`: about 1 desirable to 3 undesirable).
CELL_DATA = {"best_vs_worst": "paired", "noisy": "noisy", "unpaired": "thumbs"}


def data_stats(split: str, prompts: int, records: dict[str, Records], empty: int) -> dict[str, int]:
    """Counts of what each construction wrote (and left out) for one split."""
    paired, unpaired = records["paired"], records["unpaired"]
    noisy, thumbs = records["noisy"], records["thumbs"]
    return {
        f"{split}_pairs": len(paired),
        f"{split}_prompts_without_pair": prompts - len(paired),
        f"{split}_unpaired": len(unpaired),
        f"{split}_unpaired_desirable": sum(bool(r["label"]) for r in unpaired),
        f"{split}_empty_samples_left_out": empty,
        f"{split}_noisy_pairs": len(noisy),
        f"{split}_noisy_pairs_truly_better": sum(
            r["chosen_reward"] > r["rejected_reward"] for r in noisy
        ),
        f"{split}_noisy_pairs_truly_tied": sum(
            r["chosen_reward"] == r["rejected_reward"] for r in noisy
        ),
        f"{split}_noisy_labels_flipped": sum(bool(r["flipped"]) for r in noisy),
        f"{split}_thumbs": len(thumbs),
        f"{split}_thumbs_desirable": sum(bool(r["label"]) for r in thumbs),
    }
