"""Sampling completions of chat prompts from a causal LM (a policy or its reference), seeded.

Prompts are rendered by :func:`~aot_examples.tokenization.render_prompt`, the function
training uses, and left-padded into batches (generation continues every row from its last
prompt token). Sampling is ancestral at a temperature (no top-k, no top-p); every batch draws
from a seed derived from the call's seed and the batch's index inside
:func:`torch.random.fork_rng`, so the global random state is left as it was and one seed
gives the same completions again (on the same hardware and batch size). Run it on a
``PeftModel`` for the policy, and inside ``with model.disable_adapter():`` for its reference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .batching import Batch
from .data import Text
from .modeling import sequence_logps
from .tokenization import render_prompt

__all__ = [
    "Completion",
    "batch_seed",
    "completion_logps",
    "prompt_ids",
    "prompts_per_call",
    "sample_completions",
    "stop_ids",
]


@dataclass(frozen=True)
class Completion:
    """A sampled completion: its text (special tokens stripped), its token ids as sampled
    (ending with a stop token, unless cut at ``max_new_tokens``), and whether the model stopped
    by itself (``finished``) rather than being cut."""

    text: str
    token_ids: tuple[int, ...]
    finished: bool


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a call seeded with ``seed``: 63 bits of
    ``sha256("{seed}/{index}")`` (distinct calls and batches draw independent streams)."""
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def prompts_per_call(batch_size: int, samples_per_prompt: int) -> int:
    """Prompts per generation call: ``max(1, batch_size // samples_per_prompt)``, each with
    all its samples."""
    return max(1, batch_size // samples_per_prompt)


def stop_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokens that end a completion: the tokenizer's EOS and the model's generation
    config's ``eos_token_id`` (an id or a list of ids)."""
    ids = {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, list) else {eos}
    return {i for i in ids if i is not None}


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Text) -> list[int]:
    """The token ids of the rendered prompt (no special tokens added beyond the template's)."""
    return list(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    *,
    samples_per_prompt: int,
    seed: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    batch_size: int = 32,
) -> list[list[Completion]]:
    """``samples_per_prompt`` completions of each prompt, in prompt order.

    Each generation call holds :func:`prompts_per_call` prompts with all their samples; call
    ``b`` (0, 1, ...) draws from :func:`batch_seed` ``(seed, b)``.

    Args:
        model: a causal LM, or a ``PeftModel`` (the policy; the reference inside
            ``model.disable_adapter()``). Put it in eval mode first (dropout).
        tokenizer: its tokenizer; prompts go through its chat template when it has one.
        prompts: strings or chat-message lists.
        samples_per_prompt, seed, max_new_tokens: as named.
        temperature: of the ancestral sampling (logits divided by it).
        batch_size: sequences per generation call.

    Returns:
        ``completions[i][j]``: sample ``j`` of prompt ``i``.

    Raises:
        ValueError: a count below 1 or a temperature that is not positive.
    """
    for name, value in (
        ("samples_per_prompt", samples_per_prompt),
        ("max_new_tokens", max_new_tokens),
        ("batch_size", batch_size),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    stops = stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=sorted(stops),
        pad_token_id=pad,
    )
    device = next(model.parameters()).device
    per_call = prompts_per_call(batch_size, samples_per_prompt)
    out: list[list[Completion]] = []
    for call, start in enumerate(range(0, len(prompts), per_call)):
        encoded = [prompt_ids(tokenizer, p) for p in prompts[start : start + per_call]]
        width = max(map(len, encoded))
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
        attention_mask = torch.arange(width) >= torch.tensor([[width - len(e)] for e in encoded])
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(batch_seed(seed, call))
            generated = model.generate(  # type: ignore[operator]  # PeftModel: via __getattr__
                input_ids=input_ids.repeat_interleave(samples_per_prompt, 0),
                attention_mask=attention_mask.long()
                .to(device)
                .repeat_interleave(samples_per_prompt, 0),
                generation_config=config,
            )
        rows = [_completion(ids, stops, tokenizer) for ids in generated[:, width:].tolist()]
        out += [rows[i : i + samples_per_prompt] for i in range(0, len(rows), samples_per_prompt)]
    return out


def _completion(ids: list[int], stops: set[int], tokenizer: PreTrainedTokenizerBase) -> Completion:
    """The row's ids up to its first stop token (included), decoded."""
    end = next((i + 1 for i, token in enumerate(ids) if token in stops), None)
    kept = ids[:end] if end is not None else ids
    text = str(tokenizer.decode(kept, skip_special_tokens=True))
    return Completion(text, tuple(kept), end is not None)


@torch.no_grad()
def completion_logps(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    completions: Sequence[Sequence[Completion]],
    *,
    batch_size: int = 32,
) -> Tensor:
    """log pi(y | x) of each sampled completion's token ids (as sampled, stop token
    included) given its rendered prompt, at temperature 1, by
    :func:`~aot_examples.modeling.sequence_logps`.

    Returns:
        ``(prompts, samples)`` float32 log-probs, on the CPU.
    """
    rows = [
        (prompt_ids(tokenizer, p), list(c.token_ids))
        for p, samples in zip(prompts, completions, strict=True)
        for c in samples
    ]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logps = [
        sequence_logps(model, Batch.from_ids(chunk, [True] * len(chunk), pad).to(device)).cpu()
        for chunk in (rows[i : i + batch_size] for i in range(0, len(rows), batch_size))
    ]
    return torch.cat(logps).view(len(prompts), -1)
