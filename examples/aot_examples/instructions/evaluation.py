"""Evaluating an aligned policy on the instructions task: the exact reward of its samples and
of its reference's on held-out prompts, the lower tail of that reward, and the KL between the
two.

Prompts are the units: a prompt's reward is the mean over its samples, and the tail metrics
rank prompts by it (:func:`cvar`, :func:`reward_stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from aot_losses import diagnostics

from ..sampling import Completion, completion_logps, sample_completions
from .task import InstructionPrompt, reward

__all__ = ["CVAR_LEVEL", "cvar", "evaluate", "reward_quantile_figure", "reward_stats"]

#: The share of worst prompts whose mean reward is the CVaR (10 %).
CVAR_LEVEL = 0.1


def cvar(values: Tensor, level: float = CVAR_LEVEL) -> float:
    """The conditional value at risk of ``values`` at ``level``: the mean of their worst
    ``level`` share, ``(1 / level) * integral_0^level Q(t) dt`` for the quantile function
    ``Q`` of the empirical distribution (each value of weight ``1 / n``).

    With ``a = level * n`` not an integer, the ``floor(a)`` smallest values count whole and the
    next one with weight ``a - floor(a)``: ``(v_(1) + ... + v_(k) + (a - k) v_(k+1)) / a``,
    ``k = floor(a)``; with ``a < 1``, the smallest value.

    Example:
        >>> cvar(torch.tensor([0.0, 1.0, 0.5, 1.0, 1.0]), 0.3)  # (0 + 0.5 * 0.5) / 1.5
        0.16666666666666666
    """
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"values must be 1-D and not empty, got shape {tuple(values.shape)}")
    if not 0 < level <= 1:
        raise ValueError(f"level must lie in (0, 1], got {level}")
    ordered = values.double().sort().values
    a = level * len(ordered)
    k = min(math.floor(a), len(ordered) - 1)
    return ((ordered[:k].sum() + (a - k) * ordered[k]) / a).item()


def reward_stats(rewards: Tensor, name: str) -> dict[str, float]:
    """``{name}_reward_mean`` (over all samples), ``{name}_reward_se`` (its standard error,
    prompts as the units), ``{name}_reward_cvar10`` (:func:`cvar` of the prompts' mean
    rewards), ``{name}_zero_reward_share`` (the share of prompts whose every sample has reward
    0, i.e. mean 0) of ``rewards`` of shape ``(prompts, samples)``."""
    if rewards.dim() != 2 or rewards.numel() == 0:
        raise ValueError(
            f"rewards must have shape (prompts, samples), not empty; got {tuple(rewards.shape)}"
        )
    per_prompt = rewards.double().mean(1)
    mean, se = _mean_se(per_prompt)
    return {
        f"{name}_reward_mean": mean,
        f"{name}_reward_se": se,
        f"{name}_reward_cvar10": cvar(per_prompt),
        f"{name}_zero_reward_share": (per_prompt == 0).double().mean().item(),
    }


def _mean_se(per_prompt: Tensor) -> tuple[float, float]:
    """The mean of per-prompt values and its standard error (NaN for one prompt)."""
    n = len(per_prompt)
    return per_prompt.mean().item(), per_prompt.std().item() / math.sqrt(n) if n > 1 else math.nan


def _rewards(prompts: Sequence[InstructionPrompt], samples: list[list[Completion]]) -> Tensor:
    return torch.tensor(
        [[reward(p, c.text) for c in row] for p, row in zip(prompts, samples, strict=True)],
        dtype=torch.float64,
    )


@torch.no_grad()
def evaluate(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[InstructionPrompt],
    *,
    samples_per_prompt: int,
    seed: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    batch_size: int = 32,
) -> tuple[dict[str, float], Tensor, Tensor]:
    """The policy (``model`` with its adapters) against its reference (the same model inside
    ``model.disable_adapter()``) on ``prompts``.

    Both sample ``samples_per_prompt`` completions per prompt with the same settings and the
    same seed (:func:`~aot_examples.sampling.sample_completions`).

    Returns:
        ``(metrics, policy_rewards, reference_rewards)``; the rewards have shape
        ``(prompts, samples_per_prompt)`` (float64). ``metrics``: :func:`reward_stats` of
        ``policy`` and ``reference`` (``*_reward_mean``, ``*_reward_se``,
        ``*_reward_cvar10``, ``*_zero_reward_share``); ``*_finished_share``, the share of
        samples that ended by themselves (not cut at ``max_new_tokens``); ``kl``, the mean
        over the policy's samples of ``log pi(y|x) - log pi_ref(y|x)`` summed over the
        sampled completion tokens (stop token included), an unbiased estimate of the
        per-sequence KL(pi || pi_ref) of the completions' first ``max_new_tokens`` tokens when
        ``temperature`` is 1 (log-probs are taken at temperature 1); ``kl_se``, its standard
        error (prompts as units); ``kl_per_token``, ``kl`` over the mean number of sampled
        tokens; ``prompt_count``, ``samples_per_prompt``.
    """
    options: dict[str, Any] = {
        "samples_per_prompt": samples_per_prompt,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "batch_size": batch_size,
    }
    texts = [p.text for p in prompts]
    was_training = model.training
    model.eval()
    policy = sample_completions(model, tokenizer, texts, **options)
    with model.disable_adapter():
        reference = sample_completions(model, tokenizer, texts, **options)
        reference_logps = completion_logps(
            model, tokenizer, texts, policy, batch_size=batch_size
        ).double()
    log_ratio = completion_logps(model, tokenizer, texts, policy, batch_size=batch_size).double()
    log_ratio -= reference_logps
    model.train(was_training)
    policy_rewards, reference_rewards = _rewards(prompts, policy), _rewards(prompts, reference)
    metrics = reward_stats(policy_rewards, "policy") | reward_stats(reference_rewards, "reference")
    for name, samples in (("policy", policy), ("reference", reference)):
        metrics[f"{name}_finished_share"] = sum(c.finished for row in samples for c in row) / (
            len(prompts) * samples_per_prompt
        )
    tokens = sum(len(c.token_ids) for row in policy for c in row) / log_ratio.numel()
    metrics["kl"], metrics["kl_se"] = _mean_se(log_ratio.mean(1))
    metrics["kl_per_token"] = metrics["kl"] / tokens
    metrics["prompt_count"], metrics["samples_per_prompt"] = len(prompts), samples_per_prompt
    return metrics, policy_rewards, reference_rewards


def reward_quantile_figure(
    policy_rewards: Tensor, reference_rewards: Tensor, path: str | Path
) -> None:
    """Save a PNG of the reward's quantile curves, policy against reference: per sample (all
    prompts' samples pooled) and per prompt (mean over its samples); shaded where the policy's
    quantile lies below the reference's (the policy fails to dominate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    panels = (
        (policy_rewards.flatten(), reference_rewards.flatten(), "reward per sample"),
        (policy_rewards.mean(1), reference_rewards.mean(1), "mean reward per prompt"),
    )
    for ax, (u, v, title) in zip(axes, panels, strict=True):
        diagnostics.plot_quantile_curves(
            u.double(), v.double(), ax=ax, labels=("policy", "reference"), title=title
        )
        ax.set_ylabel("reward")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
