"""Constraints that code can verify on a completion's text, and the rules that split it.

Every rule is exact and documented on its function; the rules a reader could argue about:

* **Words** (:func:`words`): the text split at whitespace, keeping the pieces that hold at least
  one letter or digit. Hyphens, apostrophes and inner punctuation do not split a word
  (``"well-known"``, ``"don't"``, ``"3.14"``, ``"U.S."``, ``"end.Next"`` are one word each);
  pieces of punctuation alone (``"-"``, ``"—"``, ``"..."``, a bullet marker) are no word.
* **Sentences** (:func:`sentences`): a sentence ends at a run of ``.``, ``!`` or ``?`` (with
  any closing quotes or brackets right after it) followed by whitespace or the end of the text,
  and at every line break; the pieces that hold a word are the sentences. There is no list of
  abbreviations: ``"Dr. Smith"`` and ``"e.g. this"`` are two sentences each, ``"3.14"`` and
  ``"example.com"`` do not end one (no whitespace after the dot).
* **A given word** (:func:`mentions`): case-insensitive, bounded by characters that are not
  letters, digits or ``_``: ``"rain"`` is in ``"Rain,"``, ``"rain's"`` and ``"rain-soaked"``,
  not in ``"rainy"`` or ``"brain"``.
* **First and last word** (:func:`first_word`, :func:`last_word`): the first or last of
  :func:`words`, without the characters that are not letters or digits at its ends
  (``"**Yes,"`` is ``"Yes"``), compared case-insensitively.
* **Bullet points** (:func:`bullet_points`): lines whose first non-blank character is ``-``,
  ``*`` or ``•``, followed by whitespace and then more text; numbered lines are no bullets.

A completion with no word satisfies no constraint (:meth:`Constraint.satisfied`): silence does
not obey "do not use commas".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "Constraint",
    "Kind",
    "all_lowercase",
    "bullet_points",
    "ends_with",
    "first_word",
    "last_word",
    "mentions",
    "no_commas",
    "sentences",
    "starts_with",
    "words",
]

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*(?:\s+|$)|\n")
_BULLET = re.compile(r"^[ \t]*[-*•][ \t]+\S", re.MULTILINE)


def words(text: str) -> list[str]:
    """The whitespace-separated pieces of ``text`` that hold a letter or a digit.

    Example:
        >>> words("A well-known fact: don't  panic -- 3.14!")
        ['A', 'well-known', 'fact:', "don't", 'panic', '3.14!']
    """
    return [piece for piece in text.split() if any(c.isalnum() for c in piece)]


def sentences(text: str) -> list[str]:
    """The sentences of ``text``: pieces between sentence ends (a run of ``.!?`` and closing
    quotes or brackets, then whitespace or the end; or a line break) that hold a word.

    Example:
        >>> sentences("Hi there! Pi is 3.14. Dr. Who?\\n- a list item")
        ['Hi there!', 'Pi is 3.14.', 'Dr.', 'Who?', '- a list item']
    """
    return [piece.strip() for piece in _SENTENCE_END.split(text) if words(piece)]


def mentions(text: str, word: str) -> bool:
    """Whether ``word`` occurs in ``text``, case-insensitively, with no letter, digit or ``_``
    right before or after it.

    Example:
        >>> mentions("Rain-soaked streets", "rain"), mentions("A rainy day", "rain")
        (True, False)
    """
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def _bare(word: str) -> str:
    """``word`` without the characters that are not letters or digits at its ends."""
    start = next(i for i, c in enumerate(word) if c.isalnum())
    end = next(i for i in range(len(word), 0, -1) if word[i - 1].isalnum())
    return word[start:end]


def first_word(text: str) -> str:
    """The first of :func:`words`, bare of punctuation at its ends; ``""`` without words.

    Example:
        >>> first_word('  **"Yes," she said.')
        'Yes'
    """
    found = words(text)
    return _bare(found[0]) if found else ""


def last_word(text: str) -> str:
    """The last of :func:`words`, bare of punctuation at its ends; ``""`` without words.

    Example:
        >>> last_word("Find your peace...)")
        'peace'
    """
    found = words(text)
    return _bare(found[-1]) if found else ""


def at_most_words(text: str, n: int) -> bool:
    """At most ``n`` :func:`words`."""
    return len(words(text)) <= n


def at_least_words(text: str, n: int) -> bool:
    """At least ``n`` :func:`words`."""
    return len(words(text)) >= n


def at_most_sentences(text: str, n: int) -> bool:
    """At most ``n`` :func:`sentences`."""
    return len(sentences(text)) <= n


def all_lowercase(text: str) -> bool:
    """No uppercase letter (``str.isupper`` of each character; digits and symbols are free)."""
    return not any(c.isupper() for c in text)


def includes_word(text: str, word: str) -> bool:
    """``word`` occurs (:func:`mentions`)."""
    return mentions(text, word)


def avoids_word(text: str, word: str) -> bool:
    """``word`` does not occur (:func:`mentions`)."""
    return not mentions(text, word)


def starts_with(text: str, word: str) -> bool:
    """The :func:`first_word` is ``word``, case-insensitively."""
    return first_word(text).casefold() == word.casefold()


def ends_with(text: str, word: str) -> bool:
    """The :func:`last_word` is ``word``, case-insensitively."""
    return last_word(text).casefold() == word.casefold()


def bullet_points(text: str) -> int:
    """The number of bullet lines: first non-blank character ``-``, ``*`` or ``•``, then
    spaces or tabs, then a non-blank character.

    Example:
        >>> bullet_points("Tips:\\n- sleep\\n  * eat\\n-run\\n1. read\\n**bold**")
        2
    """
    return len(_BULLET.findall(text))


def exactly_bullets(text: str, n: int) -> bool:
    """Exactly ``n`` :func:`bullet_points`."""
    return bullet_points(text) == n


def no_commas(text: str) -> bool:
    """No ``,`` (the ASCII comma) anywhere."""
    return "," not in text


@dataclass(frozen=True)
class Kind:
    """One kind of constraint: how the prompt states it (``instruction``, formatted with the
    constraint's ``argument``), its checker, and its family (two constraints of one prompt
    come from different families, so that they never contradict each other)."""

    instruction: str
    check: Callable[..., bool]
    family: str


#: Every kind of constraint, by name.
KINDS: dict[str, Kind] = {
    "at_most_words": Kind("Answer in at most {} words.", at_most_words, "length"),
    "at_least_words": Kind("Answer in at least {} words.", at_least_words, "length"),
    "at_most_sentences": Kind("Answer in at most {} sentences.", at_most_sentences, "structure"),
    "lowercase": Kind("Use only lowercase letters.", all_lowercase, "case"),
    "include_word": Kind("Include the word '{}'.", includes_word, "include"),
    "avoid_word": Kind("Do not use the word '{}'.", avoids_word, "avoid"),
    "start_with": Kind("Start your answer with the word '{}'.", starts_with, "start"),
    "end_with": Kind("End your answer with the word '{}'.", ends_with, "end"),
    "bullets": Kind("Answer with exactly {} bullet points.", exactly_bullets, "structure"),
    "no_commas": Kind("Do not use any commas.", no_commas, "punctuation"),
}


@dataclass(frozen=True)
class Constraint:
    """A constraint of kind ``kind`` (a name of :data:`KINDS`) with its ``argument`` (a count
    or a word; ``None`` for kinds without one)."""

    kind: str
    argument: int | str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")

    @property
    def instruction(self) -> str:
        """The sentence of the prompt that states the constraint."""
        return KINDS[self.kind].instruction.format(self.argument)

    def satisfied(self, completion: str) -> bool:
        """Whether ``completion`` meets the constraint; never when it has no word."""
        if not words(completion):
            return False
        args: tuple[Any, ...] = () if self.argument is None else (self.argument,)
        return KINDS[self.kind].check(completion, *args)
