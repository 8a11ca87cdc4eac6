"""The reference model of the embedded task: SFT on flawed demonstrations, and sampling.

:func:`pretrain_reference` builds a character-level tokenizer and a tiny GPT-2 from
``GPT2Config`` and fine-tunes it (SFT) on demonstrations of which a share ``reversed_share`` is
sorted the wrong way round (a bad habit) and a share ``mistake_share`` carries 1-2 mistakes (two
neighbours swapped, a wrong letter). The model learns the task, the habit and the mistakes, so
its samples spread over good and bad completions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..batching import Batch
from ..modeling import sequence_logps
from .task import (
    Splits,
    ToyConfig,
    build_model,
    build_tokenizer,
    corrupt,
    random_prompt,
    target,
    token_ids,
)


def pretrain_reference(cfg: ToyConfig, splits: Splits, out_dir: Path) -> None:
    """SFT a fresh tiny GPT-2 on noisy demonstrations; save model and tokenizer to ``out_dir``."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed + 1)
    tokenizer = build_tokenizer(cfg.alphabet)
    model = build_model(cfg, tokenizer)
    held_out = set(splits.eval) | set(splits.test)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft_learning_rate, weight_decay=0.0)
    warmup = max(cfg.sft_steps // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 1.0) * (1 - s / cfg.sft_steps)
    )
    model.train()
    progress = tqdm(range(cfg.sft_steps), desc="SFT reference", dynamic_ncols=True)
    for _ in progress:
        rows = []
        for _ in range(cfg.sft_batch_size):
            prompt = random_prompt(rng, cfg)
            while prompt in held_out:
                prompt = random_prompt(rng, cfg)
            answer = target(prompt)
            if rng.random() < cfg.reversed_share:
                answer = answer[::-1]
            if rng.random() < cfg.mistake_share:
                answer = corrupt(answer, rng, cfg.alphabet)
            rows.append(
                (
                    token_ids(tokenizer, prompt),
                    [*token_ids(tokenizer, answer), tokenizer.eos_token_id],
                )
            )
        batch = Batch.from_ids(rows, [True] * len(rows), tokenizer.pad_token_id)
        loss = -sequence_logps(model, batch).sum() / batch.completion_mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@torch.no_grad()
def sample(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    num_samples: int,
    seed: int,
    temperature: float,
    max_new_tokens: int,
    greedy: bool = False,
    batch_size: int = 512,
) -> list[list[int]]:
    """Completion token ids (ending with EOS unless cut at ``max_new_tokens``), row
    ``i * num_samples + j`` being sample ``j`` of prompt ``i``.

    Ancestral sampling at ``temperature`` (no top-k/top-p), seeded without touching the global
    RNG; the pad and unknown tokens are never sampled.
    """
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=temperature if not greedy else None,
        top_k=0 if not greedy else None,
        top_p=1.0 if not greedy else None,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=[tokenizer.pad_token_id, tokenizer.unk_token_id],
    )
    rows = [p for p in prompts for _ in range(num_samples)]
    out: list[list[int]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(rows), batch_size):
            encoded = [token_ids(tokenizer, p) for p in rows[start : start + batch_size]]
            width = max(map(len, encoded))  # left padding: generation continues every row
            input_ids = torch.tensor(
                [[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded]
            )
            attention_mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
            generated = model.generate(  # type: ignore[operator]  # PeftModel: via __getattr__
                input_ids=input_ids, attention_mask=attention_mask, generation_config=config
            )[:, width:].tolist()
            for ids in generated:
                end = (
                    ids.index(tokenizer.eos_token_id) + 1
                    if tokenizer.eos_token_id in ids
                    else len(ids)
                )
                out.append(ids[:end])
    return out
