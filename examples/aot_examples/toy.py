"""The embedded task: a tiny GPT-2 learns to sort letters from flawed demonstrations.

A prompt is a random string of letters followed by ``=`` (``"dbca="``); the correct completion
is the letters sorted (``"abcd"``). The ground-truth reward of a completion is graded and exact:
the share of positions that hold the right letter, ``#{i : y_i = t_i} / max(|y|, |t|)`` with
``t`` the sorted prompt (1.0 iff the completion is exactly right).

Stages, each reusable on its own (``prepare`` chains and caches the first two):

1. :func:`pretrain_reference` builds a character-level tokenizer and a tiny GPT-2 from
   ``GPT2Config`` and fine-tunes it (SFT) on demonstrations of which a share
   ``reversed_share`` is sorted the wrong way round (a bad habit) and a share ``mistake_share``
   carries 1-2 mistakes (two neighbours swapped, a wrong letter). The model learns the task,
   the habit and the mistakes, so its samples spread over good and bad completions.
2. :func:`build_preference_data` samples completions from that reference on training prompts,
   scores them, and writes paired JSONL (best vs worst sample of a prompt) and unpaired JSONL
   (every sample, labelled desirable iff exactly right).
3. the generic loop in ``align.py`` aligns LoRA adapters on that data.
4. :func:`evaluate_policy` samples from the reference and from the aligned policy on held-out
   prompts and reports mean reward, win rate and a KL(policy || reference) estimate, and the
   stochastic dominance of chosen over rejected implicit rewards on the held-out pairs.

Prompts of the training, evaluation (held-out pairs) and test (held-out reward) splits are
disjoint, and the SFT demonstrations avoid the held-out ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordLevel
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .data import Batch, collate, read_jsonl, write_jsonl
from .modeling import load_tokenizer, sequence_logps
from .report import PreferenceLogps, preference_metrics

SEPARATOR = "="


@dataclass(frozen=True)
class ToyConfig:
    """Everything that defines the embedded task, the reference model and its data.

    The artifacts built from a config are cached; a different config rebuilds them.
    """

    seed: int = 0
    alphabet: str = "abcdefghij"
    min_letters: int = 3
    max_letters: int = 6
    reversed_share: float = 0.5  # share of SFT demonstrations sorted the wrong way round
    mistake_share: float = 0.3  # share of SFT demonstrations with 1-2 mistakes
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    sft_steps: int = 600
    sft_batch_size: int = 32
    sft_learning_rate: float = 3e-3
    train_prompts: int = 1024  # preference data for alignment
    eval_prompts: int = 256  # held-out preference pairs (eval loss, FSD diagnostics, figure)
    test_prompts: int = 512  # held-out prompts for the reward evaluation
    samples_per_prompt: int = 4  # completions sampled per prompt to build preferences
    test_samples_per_prompt: int = 4
    temperature: float = 1.0

    @property
    def max_new_tokens(self) -> int:
        return self.max_letters + 2


def target(prompt: str) -> str:
    """The correct completion: the prompt's letters, sorted."""
    return "".join(sorted(prompt.removesuffix(SEPARATOR)))


def reward(prompt: str, completion: str) -> float:
    """Share of positions with the right letter, over the longer of completion and target."""
    t = target(prompt)
    return sum(a == b for a, b in zip(completion, t, strict=False)) / max(len(completion), len(t))


def corrupt(text: str, rng: random.Random, alphabet: str) -> str:
    """1 or 2 typical mistakes: swap two neighbours, or replace a letter.

    Mistakes keep the length: with dropped or doubled letters, the worst samples were mostly
    short ones, and every loss learned "longer is better" instead of sorting better.
    """
    letters = list(text)
    for _ in range(rng.choice((1, 2))):
        i = rng.randrange(len(letters))
        if rng.random() < 0.5 and i + 1 < len(letters):
            letters[i], letters[i + 1] = letters[i + 1], letters[i]
        else:
            letters[i] = rng.choice(alphabet.replace(letters[i], ""))
    return "".join(letters)


@dataclass(frozen=True)
class Splits:
    """Disjoint prompt sets (each prompt ends with the separator)."""

    train: list[str]
    eval: list[str]
    test: list[str]


def make_splits(cfg: ToyConfig) -> Splits:
    """Draw ``train + eval + test`` distinct random prompts, deterministically."""
    rng = random.Random(cfg.seed)
    needed = cfg.train_prompts + cfg.eval_prompts + cfg.test_prompts
    seen: dict[str, None] = {}  # insertion-ordered set
    while len(seen) < needed:
        seen[random_prompt(rng, cfg)] = None
    prompts = list(seen)
    a, b = cfg.train_prompts, cfg.train_prompts + cfg.eval_prompts
    return Splits(prompts[:a], prompts[a:b], prompts[b:])


def random_prompt(rng: random.Random, cfg: ToyConfig) -> str:
    n = rng.randint(cfg.min_letters, cfg.max_letters)
    return "".join(rng.choice(cfg.alphabet) for _ in range(n)) + SEPARATOR


def build_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A character-level tokenizer (one token per character) that needs no download."""
    special = ["<pad>", "<eos>", "<unk>"]
    vocab = {token: i for i, token in enumerate([*special, *alphabet, SEPARATOR])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def build_model(cfg: ToyConfig, tokenizer: PreTrainedTokenizerBase) -> GPT2LMHeadModel:
    """A GPT-2 of ``n_layer`` blocks of width ``n_embd``, without dropout."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=2 * cfg.max_letters + 4,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=2 * cfg.n_embd,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


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
                (_ids(tokenizer, prompt), [*_ids(tokenizer, answer), tokenizer.eos_token_id])
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
            encoded = [_ids(tokenizer, p) for p in rows[start : start + batch_size]]
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


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=True))


def build_preference_data(
    cfg: ToyConfig, splits: Splits, reference_dir: Path, data_dir: Path
) -> dict[str, int]:
    """Sample ``samples_per_prompt`` completions per train/eval prompt from the reference,
    score them, and write ``{paired,unpaired}_{train,eval}.jsonl`` into ``data_dir``.

    Paired: per prompt, the best sample (chosen) against the worst (rejected); prompts whose
    samples all score the same give no pair. Unpaired: every sample, ``label`` = exactly right.
    Empty samples (EOS first) are left out: the loaders reject empty completions. Returns the
    counts of what was written and left out.
    """
    tokenizer = load_tokenizer(str(reference_dir))
    model = GPT2LMHeadModel.from_pretrained(reference_dir).eval()
    stats: dict[str, int] = {}
    for split, prompts, seed in (("train", splits.train, 1), ("eval", splits.eval, 2)):
        ids = sample(
            model,
            tokenizer,
            prompts,
            num_samples=cfg.samples_per_prompt,
            seed=cfg.seed * 1000 + seed,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
        )
        texts = [decode(tokenizer, i) for i in ids]
        paired, unpaired, empty = [], [], 0
        for i, prompt in enumerate(prompts):
            scored = []
            for text in texts[i * cfg.samples_per_prompt : (i + 1) * cfg.samples_per_prompt]:
                if not text:
                    empty += 1
                    continue
                r = reward(prompt, text)
                scored.append((r, text))
                unpaired.append(
                    {"prompt": prompt, "completion": text, "label": r == 1.0, "reward": r}
                )
            if scored and max(scored)[0] > min(scored)[0]:
                (best, chosen), (worst, rejected) = max(scored), min(scored)
                paired.append(
                    {
                        "prompt": prompt,
                        "chosen": chosen,
                        "rejected": rejected,
                        "chosen_reward": best,
                        "rejected_reward": worst,
                    }
                )
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


@dataclass(frozen=True)
class Artifacts:
    """Paths of a prepared task: the SFT reference and the preference data."""

    reference_dir: Path
    data_dir: Path
    data_stats: dict[str, int]

    def dataset(self, kind: str, split: str) -> Path:
        """``kind`` ``"paired"`` or ``"unpaired"``, ``split`` ``"train"`` or ``"eval"``."""
        return self.data_dir / f"{kind}_{split}.jsonl"


def prepare(cfg: ToyConfig, cache_dir: str | Path) -> Artifacts:
    """Build (or reuse from ``cache_dir``) the reference model and the preference data.

    The cache is valid when ``cache_dir/toy_config.json`` equals ``cfg``; otherwise it is
    rebuilt in place.
    """
    cache = Path(cache_dir)
    stamp = cache / "toy_config.json"
    reference_dir, data_dir = cache / "reference", cache / "data"
    stats_file = data_dir / "stats.json"
    wanted = dataclasses.asdict(cfg)
    if not (stamp.exists() and json.loads(stamp.read_text()) == wanted and stats_file.exists()):
        stamp.unlink(missing_ok=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        splits = make_splits(cfg)
        pretrain_reference(cfg, splits, reference_dir)
        stats = build_preference_data(cfg, splits, reference_dir, data_dir)
        stats_file.write_text(json.dumps(stats, indent=2))
        stamp.write_text(json.dumps(wanted, indent=2))
    return Artifacts(reference_dir, data_dir, json.loads(stats_file.read_text()))


def _mean_se(per_prompt: torch.Tensor) -> tuple[float, float]:
    """Mean over prompts and its standard error (``per_prompt``: ``(prompts, samples)``)."""
    means = per_prompt.double().mean(1)
    return means.mean().item(), (means.std(unbiased=True) / math.sqrt(len(means))).item()


@torch.no_grad()
def held_out_pairs(
    policy: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: Path
) -> PreferenceLogps:
    """Log-probs of the preference pairs in ``pairs`` (paired JSONL) under the aligned
    ``policy`` and under its reference (adapters off), in one batch (nothing truncated)."""
    batch = collate(read_jsonl(pairs), tokenizer, max_length=1024, max_prompt_length=512)
    logps = sequence_logps(policy, batch)
    with policy.disable_adapter():
        reference = sequence_logps(policy, batch)
    c = batch.chosen
    return PreferenceLogps(logps[c], logps[~c], reference[c], reference[~c], paired=True)


@torch.no_grad()
def evaluate_policy(cfg: ToyConfig, artifacts: Artifacts, adapter_dir: Path) -> dict[str, Any]:
    """Reference vs aligned policy on the held-out test prompts, and the aligned policy's
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
        samples: an unbiased estimate of the sequence-level KL), greedy-decoding rewards, and
        ``held_out_pairs``: :func:`~aot_examples.report.preference_metrics` of the held-out
        pairs (``artifacts.dataset("paired", "eval")``).
    """
    reference_dir = artifacts.reference_dir
    tokenizer = load_tokenizer(str(reference_dir))
    base = GPT2LMHeadModel.from_pretrained(reference_dir)
    policy = PeftModel.from_pretrained(base, adapter_dir).eval()
    prompts = make_splits(cfg).test
    k = cfg.test_samples_per_prompt

    def rewards(ids: list[list[int]], per_prompt: int) -> torch.Tensor:
        rows = [p for p in prompts for _ in range(per_prompt)]
        values = [reward(p, decode(tokenizer, i)) for p, i in zip(rows, ids, strict=True)]
        return torch.tensor(values).view(len(prompts), per_prompt)

    def generate_ids(greedy: bool, *, reference: bool) -> list[list[int]]:
        context = policy.disable_adapter() if reference else contextlib.nullcontext()
        with context:
            return sample(
                policy,
                tokenizer,
                prompts,
                num_samples=1 if greedy else k,
                seed=cfg.seed * 1000 + 3,
                greedy=greedy,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
            )

    ref_ids, pol_ids = generate_ids(False, reference=True), generate_ids(False, reference=False)
    ref_r, pol_r = rewards(ref_ids, k), rewards(pol_ids, k)
    wins = (pol_r > ref_r).double() + 0.5 * (pol_r == ref_r).double()
    rows = [p for p in prompts for _ in range(k)]
    batch = Batch.from_ids(
        [(_ids(tokenizer, p), ids) for p, ids in zip(rows, pol_ids, strict=True)],
        [True] * len(rows),
        tokenizer.pad_token_id,
    )
    with policy.disable_adapter():
        ref_logps = sequence_logps(policy, batch)
    log_ratio = (sequence_logps(policy, batch) - ref_logps).view(len(prompts), k)

    summary: dict[str, Any] = {"test_prompts": len(prompts), "test_samples_per_prompt": k}
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
    for name, reference in (("reference", True), ("policy", False)):
        summary[f"{name}_greedy_reward_mean"] = (
            rewards(generate_ids(True, reference=reference), 1).mean().item()
        )
    pairs = held_out_pairs(policy, tokenizer, artifacts.dataset("paired", "eval"))
    summary["held_out_pairs"] = preference_metrics(pairs)
    return summary
