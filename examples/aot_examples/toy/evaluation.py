"""Evaluating an aligned adapter on the embedded task: exact rewards on held-out prompts, and
the implicit rewards of the held-out preference pairs."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from aot_losses import diagnostics

from ..batching import Batch, collate
from ..data import read_jsonl
from ..instructions.evaluation import cvar
from ..losses import PreferenceLogps
from ..modeling import load_adapter, load_tokenizer, sequence_logps
from ..report import preference_metrics
from ..tokenization import encode_examples
from .artifacts import Artifacts
from .reference import sample
from .task import PROMPT_SPLITS, PromptSplit, ToyConfig, decode, make_splits, reward, token_ids

#: The quantile level of the lower tail of the reward (:func:`reward_metrics`).
LOWER_QUANTILE = 0.1
#: The levels t of the FSD violation of the exact reward: 0.01, 0.02, ..., 0.99.
FSD_LEVELS = 99


def reward_metrics(policy: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """The distribution of exact rewards of policy samples against reference samples.

    Args:
        policy, reference: rewards of shape ``(prompts, samples)``: row ``i`` holds the
            samples of prompt ``i``.

    Returns:
        ``{name}_reward_q10`` (the 10 % lower quantile of the pooled per-sample rewards,
        ``Q(t) = inf{y : F(y) >= t}``) and ``{name}_zero_reward_share`` (the share of
        completions with reward 0), for ``name`` ``policy`` and ``reference``; and the FSD
        violation of the policy's rewards against the reference's, the share of levels
        t in {0.01, ..., 0.99} where ``Q_policy(t) < Q_reference(t)`` (0: the policy dominates),
        per prompt and averaged over prompts (``fsd_violation_per_prompt``), and over all
        prompts' samples pooled (``fsd_violation_pooled``).
    """
    if policy.shape != reference.shape or policy.dim() != 2:
        raise ValueError(
            f"policy and reference rewards must have one shape (prompts, samples); got "
            f"{tuple(policy.shape)} and {tuple(reference.shape)}"
        )
    policy, reference = policy.double(), reference.double()
    out: dict[str, float] = {}
    for name, rewards in (("policy", policy), ("reference", reference)):
        pooled = rewards.flatten()
        out[f"{name}_reward_q10"] = diagnostics.quantiles(pooled, [LOWER_QUANTILE]).item()
        out[f"{name}_zero_reward_share"] = (pooled == 0).double().mean().item()
    per_prompt = [
        diagnostics.fsd_violation(p, r, FSD_LEVELS) for p, r in zip(policy, reference, strict=True)
    ]
    out["fsd_violation_per_prompt"] = torch.stack(per_prompt).mean().item()
    out["fsd_violation_pooled"] = diagnostics.fsd_violation(
        policy.flatten(), reference.flatten(), FSD_LEVELS
    ).item()
    return out


def _mean_se(per_prompt: torch.Tensor) -> tuple[float, float]:
    """Mean over prompts and its standard error (``per_prompt``: ``(prompts, samples)``)."""
    means = per_prompt.double().mean(1)
    return means.mean().item(), (means.std(unbiased=True) / math.sqrt(len(means))).item()


@torch.no_grad()
def held_out_pairs(
    cfg: ToyConfig, policy: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: Path
) -> PreferenceLogps:
    """Log-probs of the preference pairs in ``pairs`` (paired JSONL) under the aligned
    ``policy`` and under its reference (adapters off), in one batch (nothing truncated)."""
    lengths = {"max_length": cfg.context_length, "max_prompt_length": cfg.max_prompt_tokens}
    batch = collate(
        encode_examples(read_jsonl(pairs), tokenizer, **lengths), tokenizer.pad_token_id
    )
    logps = sequence_logps(policy, batch)
    with policy.disable_adapter():
        reference = sequence_logps(policy, batch)
    c = batch.chosen
    return PreferenceLogps(logps[c], logps[~c], reference[c], reference[~c], paired=True)


@torch.no_grad()
def evaluate_policy(
    artifacts: Artifacts, adapter_dir: Path, prompts: PromptSplit = "test"
) -> dict[str, Any]:
    """Reference vs aligned policy on held-out prompts (``prompts``: the ``test`` prompts, or
    the ``validation`` prompts, i.e. the task's ``eval`` prompts), and the aligned policy's
    implicit rewards on the held-out preference pairs.

    Both sample ``test_samples_per_prompt`` completions per prompt with the same settings and
    the same seed. Standard errors treat prompts as the independent units (per-prompt means).
    The pairs are the same for every loss (paired or unpaired), so their stochastic-dominance
    diagnostics compare losses on one footing.

    Returns:
        ``reference_reward_mean``/``_se``, ``policy_reward_mean``/``_se``, the paired
        difference ``reward_diff_mean``/``_se``, exact-match rates, ``win_rate``/``_se``
        (policy sample j beats reference sample j on the same prompt; ties count 1/2),
        ``kl_policy_reference``/``_se`` (mean of log pi(y|x) - log pi_ref(y|x) over policy
        samples: an unbiased estimate of the sequence-level KL), greedy-decoding rewards, the
        reward distribution's :func:`reward_metrics`, ``{reference,policy}_reward_cvar10``
        (the CVaR 10 % of the prompts' mean rewards, :func:`~..instructions.evaluation.cvar`),
        ``{reference,policy}_rewards`` (every sample's reward, a list per prompt in the split's
        order), ``prompts`` (the split),
        ``prompt_count``, ``samples_per_prompt``, and ``held_out_pairs``:
        :func:`~aot_examples.report.preference_metrics` of the held-out pairs
        (``artifacts.dataset("paired", "eval")``).
    """
    cfg, reference_dir = artifacts.config, artifacts.reference_dir
    tokenizer = load_tokenizer(str(reference_dir))
    policy = load_adapter(str(reference_dir), adapter_dir)
    if prompts not in PROMPT_SPLITS:
        raise ValueError(f"prompts must be one of {PROMPT_SPLITS}, got {prompts!r}")
    splits = make_splits(cfg)
    texts = splits.test if prompts == "test" else splits.eval
    k = cfg.test_samples_per_prompt

    def rewards(ids: list[list[int]], per_prompt: int) -> torch.Tensor:
        rows = [p for p in texts for _ in range(per_prompt)]
        values = [reward(p, decode(tokenizer, i)) for p, i in zip(rows, ids, strict=True)]
        return torch.tensor(values).view(len(texts), per_prompt)

    def generate_ids(greedy: bool, *, reference: bool) -> list[list[int]]:
        context = policy.disable_adapter() if reference else contextlib.nullcontext()
        with context:
            return sample(
                policy,
                tokenizer,
                texts,
                num_samples=1 if greedy else k,
                seed=cfg.seed * 1000 + 3,
                greedy=greedy,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
            )

    ref_ids, pol_ids = generate_ids(False, reference=True), generate_ids(False, reference=False)
    ref_r, pol_r = rewards(ref_ids, k), rewards(pol_ids, k)
    wins = (pol_r > ref_r).double() + 0.5 * (pol_r == ref_r).double()
    rows = [p for p in texts for _ in range(k)]
    batch = Batch.from_ids(
        [(token_ids(tokenizer, p), ids) for p, ids in zip(rows, pol_ids, strict=True)],
        [True] * len(rows),
        tokenizer.pad_token_id,
    )
    with policy.disable_adapter():
        ref_logps = sequence_logps(policy, batch)
    log_ratio = (sequence_logps(policy, batch) - ref_logps).view(len(texts), k)

    summary: dict[str, Any] = {"prompts": prompts, "prompt_count": len(texts)}
    summary["samples_per_prompt"] = k
    for name, values in (
        ("reference_reward", ref_r),
        ("policy_reward", pol_r),
        ("reward_diff", pol_r - ref_r),
        ("reference_exact_match", (ref_r == 1).double()),
        ("policy_exact_match", (pol_r == 1).double()),
        ("win_rate", wins),
        ("kl_policy_reference", log_ratio),
    ):
        summary[f"{name}_mean"], summary[f"{name}_se"] = _mean_se(values)
    summary |= reward_metrics(pol_r, ref_r)
    for name, values in (("reference", ref_r), ("policy", pol_r)):
        summary[f"{name}_reward_cvar10"] = cvar(values.double().mean(1))
        summary[f"{name}_rewards"] = values.tolist()
    for name, reference in (("reference", True), ("policy", False)):
        summary[f"{name}_greedy_reward_mean"] = (
            rewards(generate_ids(True, reference=reference), 1).mean().item()
        )
    pairs = held_out_pairs(cfg, policy, tokenizer, artifacts.dataset("paired", "eval"))
    summary["held_out_pairs"] = preference_metrics(pairs)
    return summary
