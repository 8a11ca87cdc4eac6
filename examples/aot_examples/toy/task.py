"""The embedded task: a prompt of letters, its sorted target, the exact reward, the tiny model.

A prompt is a random string of letters followed by ``=`` (``"dbca="``); the correct completion
is the letters sorted (``"abcd"``). The ground-truth reward of a completion is graded and exact:
the share of positions that hold the right letter, ``#{i : y_i = t_i} / max(|y|, |t|)`` with
``t`` the sorted prompt (1.0 iff the completion is exactly right).
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

SEPARATOR = "="

#: The held-out prompt sets a policy is measured on: ``validation`` is the task's ``eval``
#: prompts (those of the held-out pairs), ``test`` its ``test`` prompts.
PromptSplit: TypeAlias = Literal["validation", "test"]
PROMPT_SPLITS: tuple[PromptSplit, ...] = ("validation", "test")


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
    #: Seeds the reference's samples of the preference data and the constructions' noise
    #: draws; the prompts, the reference and the evaluation samples stay those of ``seed``.
    data_seed: int = 0

    @property
    def max_new_tokens(self) -> int:
        """Sampling budget: the letters, EOS, and one token to spare."""
        return self.max_letters + 2

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt: the letters and the separator."""
        return self.max_letters + 1

    @property
    def context_length(self) -> int:
        """The model's positions: the longest prompt and sample, and one to spare."""
        return self.max_prompt_tokens + self.max_new_tokens + 1

    @classmethod
    def load(cls, path: str | Path | None) -> ToyConfig:
        """The config in the JSON file ``path`` (an object of fields; the others keep their
        defaults); the defaults when ``path`` is ``None``.

        Raises:
            ValueError: unreadable JSON, not an object, or a field that is not one of ours.
        """
        if path is None:
            return cls()
        try:
            fields = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"--toy-config {path}: cannot read it ({error})") from error
        if not isinstance(fields, dict):
            raise ValueError(f"--toy-config {path}: expected a JSON object of ToyConfig fields")
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"--toy-config {path}: ToyConfig has no field(s) {unknown}")
        return cls(**fields)


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
        n_positions=cfg.context_length,
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


def token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=True))
