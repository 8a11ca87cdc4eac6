"""Tokenizing preference examples once, truncated to the run's lengths.

:func:`encode_examples` turns every record into token ids before training starts: each text is
tokenized once (not again every time its example is batched), the ids kept are already
truncated (a long record costs one tokenization, then only its kept tokens), and an example
that cannot be scored is an error naming its ``file:line`` before the first step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from .data import DataError, Example, PairedExample, Text

__all__ = [
    "EncodedExample",
    "check_lengths",
    "encode",
    "encode_examples",
    "render_prompt",
    "require_eos",
]


def require_eos(tokenizer: PreTrainedTokenizerBase, where: str = "the tokenizer") -> None:
    """Raises ValueError if ``tokenizer`` has no EOS token: a completion ends with it (without a
    chat template), padding falls back to it, and sampling stops at it.

    ``where`` names the tokenizer in the message (``"--model NAME"``)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"{where}: the tokenizer has no EOS token (eos_token is None), which ends every "
            "completion: set one (tokenizer.eos_token = ...) and save the tokenizer, or use a "
            "model whose tokenizer has one"
        )


def check_lengths(max_length: int, max_prompt_length: int) -> None:
    """Raises ValueError unless ``1 <= max_prompt_length < max_length``: a prompt keeps at least
    one token (the first completion token is scored given it) and a completion at least one."""
    if max_prompt_length < 1:
        raise ValueError(f"--max-prompt-length must be at least 1, got {max_prompt_length}")
    if max_prompt_length >= max_length:
        raise ValueError(
            f"--max-prompt-length ({max_prompt_length}) must be below --max-length "
            f"({max_length}): a completion needs at least one token"
        )


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Text) -> str:
    """The prompt as the model reads it: with a chat template, a user turn (or the given chat
    messages) followed by the assistant's generation prompt; without one, the text itself.
    Training (:func:`encode`) and sampling both go through it, so they condition alike."""
    if tokenizer.chat_template is None:
        if not isinstance(prompt, str):
            raise ValueError(
                "conversational (chat message) data needs a tokenizer with a chat template"
            )
        return prompt
    user = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return str(tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True))


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Text,
    completions: Sequence[Text],
    *,
    max_length: int,
    max_prompt_length: int,
) -> tuple[list[int], list[list[int]]]:
    """Token ids of a prompt and of each of its completions, truncated.

    Without a chat template, string texts are tokenized as they are (the prompt with the
    tokenizer's special tokens, e.g. BOS) and EOS ends each completion. With one, the prompt
    becomes a user turn (``add_generation_prompt=True``) and a completion the assistant turn;
    the completion's ids are those of the full conversation past the prompt's text, so they
    include the template's end-of-turn tokens.

    Truncation keeps the *last* ``max_prompt_length`` prompt tokens (the end of the prompt is
    the context closest to the answer) and the *first* ``max_length - len(prompt)`` tokens of
    each completion (log-probs stay those of a prefix of the true completion), so prompt plus
    completion never exceed ``max_length``.

    Raises:
        ValueError: lengths that break ``1 <= max_prompt_length < max_length``; a prompt or a
            completion without tokens (nothing to condition on, or nothing to score); chat
            messages without a chat template; a template that renders the prompt differently
            with and without the completion.
    """
    check_lengths(max_length, max_prompt_length)
    if tokenizer.chat_template is None:
        if not all(isinstance(text, str) for text in (prompt, *completions)):
            raise ValueError(
                "conversational (chat message) data needs a tokenizer with a chat template"
            )
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = [
            [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
            for text in completions
        ]
    else:
        user = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        prompt_text = render_prompt(tokenizer, prompt)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion_ids = []
        for text in completions:
            turn = [{"role": "assistant", "content": text}] if isinstance(text, str) else text
            full_text = str(tokenizer.apply_chat_template(user + turn, tokenize=False))
            if not full_text.startswith(prompt_text):
                raise ValueError(
                    "the chat template renders the prompt differently with and without the "
                    "completion; cannot tell where the completion starts"
                )
            tail = full_text[len(prompt_text) :]
            completion_ids.append(tokenizer(tail, add_special_tokens=False)["input_ids"])
    if not prompt_ids:
        raise ValueError("the prompt has no tokens")
    if not all(completion_ids):
        raise ValueError("a completion has no tokens")
    prompt_ids = prompt_ids[max(len(prompt_ids) - max_prompt_length, 0) :]
    return prompt_ids, [ids[: max_length - len(prompt_ids)] for ids in completion_ids]


@dataclass(frozen=True)
class EncodedExample:
    """The truncated token ids of one example: its prompt, and its completions with their labels
    (a pair: chosen then rejected, labels ``(True, False)``; unpaired: one completion)."""

    prompt: Tensor
    completions: tuple[Tensor, ...]
    labels: tuple[bool, ...]


def encode_examples(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int,
) -> list[EncodedExample]:
    """:func:`encode` every example once (ids stored as int32 tensors).

    Raises:
        ValueError: a tokenizer without an EOS token (:func:`require_eos`), before any example
            is encoded.
        DataError: an example :func:`encode` refuses, named by its ``source`` (``file:line``).
    """
    require_eos(tokenizer)
    encoded = []
    for example in examples:
        completions: tuple[Text, ...]
        labels: tuple[bool, ...]
        if isinstance(example, PairedExample):
            completions, labels = (example.chosen, example.rejected), (True, False)
        else:
            completions, labels = (example.completion,), (example.label,)
        try:
            prompt, ids = encode(
                tokenizer,
                example.prompt,
                completions,
                max_length=max_length,
                max_prompt_length=max_prompt_length,
            )
        except ValueError as error:
            raise DataError(f"{example.source or 'an example'}: {error}") from error
        encoded.append(
            EncodedExample(
                torch.tensor(prompt, dtype=torch.int32),
                tuple(torch.tensor(i, dtype=torch.int32) for i in ids),
                labels,
            )
        )
    return encoded
