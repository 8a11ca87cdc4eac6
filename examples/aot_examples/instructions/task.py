"""The instructions task: prompts of a topic and one or two verifiable constraints, their
disjoint splits, and the exact reward.

A prompt is a short request on a topic followed by its constraints' sentences
(``"Describe the ocean. Do not use the word 'ocean'. Answer in at most 15 words."``). The
reward of a completion is the share of the prompt's constraints it satisfies
(:func:`reward`), in {0, 1/2, 1} with two constraints.

Splits are disjoint by *topic*: the topics are shuffled with the config's seed and dealt to
the test, validation and training splits (:data:`TOPIC_SPLIT`), so held-out prompts ask about
topics the training data never saw, with the same kinds of constraints. Prompts are therefore
disjoint as texts too.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from .constraints import KINDS, Constraint

__all__ = [
    "ARGUMENTS",
    "SPLITS",
    "TOPICS",
    "TOPIC_SPLIT",
    "InstructionPrompt",
    "InstructionsConfig",
    "Split",
    "Splits",
    "make_splits",
    "reward",
]

Split: TypeAlias = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")

#: The topics: a request, and the words an answer to it most likely uses (the arguments of
#: ``avoid_word``).
TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Describe the ocean.", ("ocean", "water")),
    ("Describe a forest.", ("forest", "trees")),
    ("Describe a rainy day.", ("rain", "day")),
    ("Describe a busy city street.", ("city", "street")),
    ("Describe a desert.", ("desert", "sand")),
    ("Describe a snowy mountain.", ("snow", "mountain")),
    ("Describe a sunset.", ("sun", "sky")),
    ("Describe your favorite food.", ("food", "delicious")),
    ("Describe a quiet library.", ("library", "books")),
    ("Describe a summer garden.", ("garden", "flowers")),
    ("Describe a thunderstorm.", ("storm", "thunder")),
    ("Describe an old castle.", ("castle", "walls")),
    ("Describe a train journey.", ("train", "journey")),
    ("Describe a birthday party.", ("birthday", "party")),
    ("Describe a farm in spring.", ("farm", "spring")),
    ("Describe the night sky.", ("stars", "night")),
    ("Describe a coffee shop.", ("coffee", "shop")),
    ("Describe a football match.", ("football", "game")),
    ("Describe a river.", ("river", "water")),
    ("Describe a school classroom.", ("school", "students")),
    ("Describe a hospital.", ("hospital", "patients")),
    ("Describe an airport.", ("airport", "flights")),
    ("Describe a beach in summer.", ("beach", "summer")),
    ("Describe a winter morning.", ("winter", "cold")),
    ("Describe a market.", ("market", "people")),
    ("Describe a volcano.", ("volcano", "lava")),
    ("Describe a cat.", ("cat", "cats")),
    ("Describe a dog.", ("dog", "dogs")),
    ("Describe an island.", ("island", "sea")),
    ("Describe a kitchen.", ("kitchen", "food")),
    ("Describe a museum.", ("museum", "art")),
    ("Describe a zoo.", ("zoo", "animals")),
    ("Explain how bread is made.", ("bread", "flour")),
    ("Explain why the sky is blue.", ("sky", "light")),
    ("Explain how plants grow.", ("plants", "sunlight")),
    ("Explain what a computer does.", ("computer", "data")),
    ("Explain how rain forms.", ("rain", "water")),
    ("Explain how a bicycle works.", ("bicycle", "wheels")),
    ("Explain what the internet is.", ("internet", "computers")),
    ("Explain how bees make honey.", ("bees", "honey")),
    ("Explain why we need sleep.", ("sleep", "body")),
    ("Explain how a car engine works.", ("engine", "fuel")),
    ("Explain what money is for.", ("money", "goods")),
    ("Explain how the moon affects tides.", ("moon", "tides")),
    ("Explain what a vaccine does.", ("vaccine", "immune")),
    ("Explain how recycling helps.", ("recycling", "waste")),
    ("Explain why exercise is healthy.", ("exercise", "health")),
    ("Explain how a camera works.", ("camera", "light")),
    ("Explain what a volcano is.", ("volcano", "magma")),
    ("Explain how fish breathe.", ("fish", "water")),
    ("Explain how a rainbow forms.", ("rainbow", "light")),
    ("Explain what gravity is.", ("gravity", "force")),
    ("Explain how a battery works.", ("battery", "energy")),
    ("Explain why leaves change color.", ("leaves", "color")),
    ("Explain what a library is for.", ("library", "books")),
    ("Explain how airplanes fly.", ("airplanes", "air")),
    ("Explain how to boil an egg.", ("egg", "water")),
    ("Explain what a map shows.", ("map", "places")),
    ("Explain why reading is useful.", ("reading", "books")),
    ("Explain how a clock keeps time.", ("clock", "time")),
    ("Explain what photosynthesis is.", ("plants", "sunlight")),
    ("Explain how a phone call works.", ("phone", "signal")),
    ("Explain why people keep pets.", ("pets", "people")),
    ("Explain what an election is.", ("election", "vote")),
    ("Give advice for sleeping well.", ("sleep", "bed")),
    ("Give tips for learning a language.", ("language", "practice")),
    ("Give advice for a job interview.", ("interview", "job")),
    ("Give tips for saving money.", ("money", "save")),
    ("Give advice for staying healthy.", ("health", "exercise")),
    ("Give tips for studying for an exam.", ("study", "exam")),
    ("Give advice for a first day at school.", ("school", "day")),
    ("Give tips for cooking pasta.", ("pasta", "water")),
    ("Give advice for traveling abroad.", ("travel", "country")),
    ("Give tips for growing tomatoes.", ("tomatoes", "plants")),
    ("Give advice for making friends.", ("friends", "people")),
    ("Give tips for writing an essay.", ("essay", "writing")),
    ("Give advice for staying calm.", ("calm", "breathe")),
    ("Give tips for keeping a room clean.", ("room", "clean")),
    ("Give advice for running a marathon.", ("marathon", "running")),
    ("Give tips for taking good photos.", ("photos", "light")),
    ("Give advice for a long flight.", ("flight", "water")),
    ("Give tips for caring for a dog.", ("dog", "food")),
    ("Give advice for public speaking.", ("speech", "audience")),
    ("Give tips for drinking more water.", ("water", "drink")),
    ("Tell me about the history of tea.", ("tea", "china")),
    ("Tell me about elephants.", ("elephants", "animals")),
    ("Tell me about the Moon.", ("moon", "earth")),
    ("Tell me about chess.", ("chess", "game")),
    ("Tell me about the violin.", ("violin", "music")),
    ("Tell me about penguins.", ("penguins", "birds")),
    ("Tell me about the Olympic Games.", ("olympic", "games")),
    ("Tell me about chocolate.", ("chocolate", "cocoa")),
    ("Tell me about the sun.", ("sun", "star")),
    ("Tell me about honeybees.", ("bees", "honey")),
    ("Tell me about the pyramids of Egypt.", ("pyramids", "egypt")),
    ("Tell me about dinosaurs.", ("dinosaurs", "years")),
)

#: How many topics each held-out split gets; the training split gets the others.
TOPIC_SPLIT: dict[Split, int] = {"test": 16, "validation": 16}

#: The arguments each kind of constraint draws from (``avoid_word``: the topic's words).
ARGUMENTS: dict[str, tuple[int | str | None, ...]] = {
    "at_most_words": (15, 25, 35),
    "at_least_words": (30, 40),
    "at_most_sentences": (2, 3),
    "lowercase": (None,),
    "include_word": ("purple", "mirror", "window", "friend", "silver", "candle", "history"),
    "start_with": ("Yes", "Honestly", "Today", "First", "Imagine", "Well"),
    "end_with": ("peace", "done", "forever", "today", "tomorrow", "goodbye"),
    "bullets": (2, 3, 4),
    "no_commas": (None,),
}


@dataclass(frozen=True)
class InstructionPrompt:
    """A request on a topic and its constraints; ``text`` is what the model reads."""

    topic: str
    constraints: tuple[Constraint, ...]

    @property
    def text(self) -> str:
        return " ".join([self.topic, *(c.instruction for c in self.constraints)])

    def to_json(self) -> dict[str, Any]:
        """A JSON object of the prompt (``text``, ``topic``, ``constraints``)."""
        return {
            "text": self.text,
            "topic": self.topic,
            "constraints": [[c.kind, c.argument] for c in self.constraints],
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> InstructionPrompt:
        """The prompt of :meth:`to_json`'s object."""
        constraints = tuple(Constraint(kind, argument) for kind, argument in record["constraints"])
        return cls(record["topic"], constraints)


def reward(prompt: InstructionPrompt, completion: str) -> float:
    """The share of ``prompt``'s constraints that ``completion`` satisfies (a completion
    without words satisfies none).

    Example:
        >>> p = InstructionPrompt("Describe a cat.", (Constraint("no_commas"),
        ...     Constraint("at_most_words", 3)))
        >>> reward(p, "Cats purr."), reward(p, "Cats purr, sleep and eat."), reward(p, "")
        (1.0, 0.0, 0.0)
    """
    return sum(c.satisfied(completion) for c in prompt.constraints) / len(prompt.constraints)


@dataclass(frozen=True)
class InstructionsConfig:
    """Everything that defines the task's prompts and the reference's preference data.

    The prompts and the scored samples built from a config are cached; another config
    rebuilds them.

    Attributes:
        seed: the topics' split, the prompts and the samples derive from it.
        train_prompts, validation_prompts, test_prompts: prompts per split.
        two_constraint_share: the share of prompts with two constraints (others have one).
        samples_per_prompt: completions sampled per training and validation prompt.
        max_new_tokens, temperature: the sampling of completions (ancestral, no top-k/p).
        batch_size: sequences per generation call.
    """

    seed: int = 0
    train_prompts: int = 256
    validation_prompts: int = 64
    test_prompts: int = 64
    two_constraint_share: float = 0.5
    samples_per_prompt: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("train_prompts", "validation_prompts", "test_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.two_constraint_share <= 1:
            raise ValueError(
                f"two_constraint_share must lie in [0, 1], got {self.two_constraint_share}"
            )
        if self.samples_per_prompt < 2:
            raise ValueError(
                f"samples_per_prompt must be at least 2 (pairs), got {self.samples_per_prompt}"
            )
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def prompt_count(self, split: Split) -> int:
        return int(getattr(self, f"{split}_prompts"))


@dataclass(frozen=True)
class Splits:
    """The prompts of each split; no two splits share a topic."""

    train: list[InstructionPrompt]
    validation: list[InstructionPrompt]
    test: list[InstructionPrompt]

    def __getitem__(self, split: Split) -> list[InstructionPrompt]:
        return list(getattr(self, split))


def _constraints(rng: random.Random, count: int, topic_words: tuple[str, ...]) -> list[Constraint]:
    """``count`` constraints of different families, kinds and arguments drawn uniformly."""
    kinds = list(KINDS)
    chosen: list[Constraint] = []
    while len(chosen) < count:
        kind = rng.choice(kinds)
        if KINDS[kind].family in {KINDS[c.kind].family for c in chosen}:
            continue
        options = topic_words if kind == "avoid_word" else ARGUMENTS[kind]
        chosen.append(Constraint(kind, rng.choice(options)))
    return chosen


def make_splits(cfg: InstructionsConfig) -> Splits:
    """The prompts of every split, a pure function of ``cfg``.

    The topics are shuffled with ``random.Random(cfg.seed)`` and dealt to test, validation
    and train (:data:`TOPIC_SPLIT`). Within a split, prompt ``i`` takes the split's topic
    ``i mod (topics)`` (each topic equally often, up to one) and two constraints with
    probability ``two_constraint_share``, else one; a prompt whose text already occurred is
    drawn again.

    Raises:
        ValueError: a split asks for more distinct prompts than a generous number of draws
            finds.
    """
    topics = list(TOPICS)
    random.Random(cfg.seed).shuffle(topics)
    held_out = TOPIC_SPLIT["test"] + TOPIC_SPLIT["validation"]
    dealt: dict[Split, list[tuple[str, tuple[str, ...]]]] = {
        "test": topics[: TOPIC_SPLIT["test"]],
        "validation": topics[TOPIC_SPLIT["test"] : held_out],
        "train": topics[held_out:],
    }
    prompts: dict[Split, list[InstructionPrompt]] = {}
    for split in SPLITS:
        rng = random.Random(f"{cfg.seed}/{split}")
        wanted, found = cfg.prompt_count(split), dict[str, InstructionPrompt]()
        draws = 0
        while len(found) < wanted:
            if draws == 10 * wanted:
                raise ValueError(
                    f"{split}_prompts: found {len(found)} distinct prompts in {draws} draws, "
                    f"fewer than the {wanted} asked for"
                )
            draws += 1
            topic, topic_words = dealt[split][len(found) % len(dealt[split])]
            count = 2 if rng.random() < cfg.two_constraint_share else 1
            prompt = InstructionPrompt(topic, tuple(_constraints(rng, count, topic_words)))
            found.setdefault(prompt.text, prompt)
        prompts[split] = list(found.values())
    return Splits(prompts["train"], prompts["validation"], prompts["test"])
