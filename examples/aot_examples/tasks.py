"""The tasks of ``examples/align.py``: each builds its preference data before training (from
its reference model's own scored samples, cached) and measures the aligned policy by its exact
reward after it.

* ``toy`` (:class:`ToyTask`), the embedded task, the default without ``--model`` and
  ``--dataset``: a tiny GPT-2 that sorts letters (:mod:`aot_examples.toy`);
* ``instructions`` (:class:`InstructionsTask`): ``--model`` follows instructions with
  verifiable constraints (:mod:`aot_examples.instructions`).

:func:`prepare_task` returns the run's task (``None`` on the user's own data); its
:meth:`~Task.training_config` points the loop at the task's model and data, and its
:meth:`~Task.evaluate` gives the entries it adds to ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from . import instructions, toy
from .config import EMBEDDED_BETA, AlignConfig
from .losses import PAIRED_LOSSES
from .modeling import ModelSource, load_adapter, load_tokenizer

__all__ = [
    "InstructionsTask",
    "Task",
    "ToyTask",
    "load_instructions_config",
    "prepare_task",
]


class Task(Protocol):
    """A prepared task."""

    def training_config(self, cfg: AlignConfig) -> AlignConfig:
        """``cfg`` with the task's model, training and held-out data (and defaults)."""
        ...

    def evaluate(self, cfg: AlignConfig, out: Path) -> dict[str, Any]:
        """The entries of ``summary.json`` that measure the adapter in ``out/adapter``."""
        ...


@dataclass(frozen=True)
class ToyTask:
    """The embedded task, prepared (:func:`aot_examples.toy.prepare`)."""

    artifacts: toy.Artifacts

    def training_config(self, cfg: AlignConfig) -> AlignConfig:
        """The SFT reference; ``--toy-data`` records (default: paired for paired losses,
        unpaired otherwise); each loss's :data:`~aot_examples.config.EMBEDDED_BETA`."""
        kind = cfg.toy_data or ("paired" if cfg.loss in PAIRED_LOSSES else "unpaired")
        return dataclasses.replace(
            cfg,
            model=str(self.artifacts.reference_dir),
            dataset=str(self.artifacts.dataset(kind, "train")),
            eval_dataset=str(self.artifacts.dataset(kind, "eval")),
            beta=EMBEDDED_BETA[cfg.loss] if cfg.beta is None else cfg.beta,
        )

    def evaluate(self, cfg: AlignConfig, out: Path) -> dict[str, Any]:
        """The task's config and data counts, and :func:`aot_examples.toy.evaluate_policy` on
        ``--toy-eval-prompts``."""
        summary = {"toy": dataclasses.asdict(self.artifacts.config)}
        summary["toy_data"] = self.artifacts.data_stats
        return summary | toy.evaluate_policy(self.artifacts, out / "adapter", cfg.toy_eval_prompts)


def load_instructions_config(path: str | None) -> instructions.InstructionsConfig:
    """The ``InstructionsConfig`` in the JSON file ``path`` (an object of its fields; the
    others keep their defaults); the defaults when ``path`` is ``None``.

    Raises:
        ValueError: unreadable JSON, not an object, a field that is not one of its own, or a
            value it refuses; the message names ``--task-config``.
    """
    if path is None:
        return instructions.InstructionsConfig()
    try:
        fields = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--task-config {path}: cannot read it ({error})") from error
    names = {f.name for f in dataclasses.fields(instructions.InstructionsConfig)}
    if not isinstance(fields, dict) or not set(fields) <= names:
        raise ValueError(
            f"--task-config {path}: expected a JSON object of InstructionsConfig fields "
            f"{sorted(names)}"
        )
    try:
        return instructions.InstructionsConfig(**fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--task-config {path}: {error}") from error


#: The file of the instructions task's reward quantile figure, in ``OUTPUT_DIR``.
REWARD_FIGURE = "reward_quantiles.png"


@dataclass(frozen=True)
class InstructionsTask:
    """The instructions task, prepared on ``--model``
    (:func:`aot_examples.instructions.prepare`)."""

    source: ModelSource
    tokenizer: PreTrainedTokenizerBase
    prepared: instructions.Prepared
    device: Any

    def training_config(self, cfg: AlignConfig) -> AlignConfig:
        """The records of ``--task-data`` (default: ``best_vs_worst`` for paired losses,
        ``unpaired`` otherwise), held out: the same kind on the validation prompts."""
        cell = cfg.task_data or ("best_vs_worst" if cfg.loss in PAIRED_LOSSES else "unpaired")
        kind = instructions.CELL_DATA[cell]
        return dataclasses.replace(
            cfg,
            task_data=cell,
            dataset=str(self.prepared.dataset(kind, "train")),
            eval_dataset=str(self.prepared.dataset(kind, "validation")),
        )

    def evaluate(self, cfg: AlignConfig, out: Path) -> dict[str, Any]:
        """The adapter against its reference on the test prompts
        (:func:`aot_examples.instructions.evaluate`: mean reward, CVaR 10 %, share of prompts
        at reward 0, KL), each sampling ``samples_per_prompt`` completions per prompt with the
        task's settings and one seed; and the figure of their reward quantiles
        (``reward_quantiles.png``)."""
        task = self.prepared.config
        policy = load_adapter(self.source, out / "adapter").to(self.device)
        metrics, policy_rewards, reference_rewards = instructions.evaluate(
            policy,
            self.tokenizer,
            self.prepared.splits.test,
            samples_per_prompt=task.samples_per_prompt,
            seed=task.seed * 1000 + 3,
            max_new_tokens=task.max_new_tokens,
            temperature=task.temperature,
            batch_size=task.batch_size,
        )
        instructions.reward_quantile_figure(policy_rewards, reference_rewards, out / REWARD_FIGURE)
        summary = {
            "instructions": dataclasses.asdict(task),
            "instructions_data": self.prepared.stats,
        }
        rewards = {"policy": policy_rewards.tolist(), "reference": reference_rewards.tolist()}
        return summary | metrics | {"reward_figure": REWARD_FIGURE, "rewards": rewards}


def prepare_task(cfg: AlignConfig, accelerator: Accelerator) -> Task | None:
    """The run's task, prepared (the main process first, the others then reuse its cache);
    ``None`` for the user's own data. The instructions task loads ``--model`` (its weights key
    the cache, ``--task-cache-dir``, default ``OUTPUT_DIR/instructions``) and samples from it
    only what the cache lacks for that model and task."""
    out = Path(cfg.output_dir)
    if cfg.task == "instructions":
        if cfg.model is None:
            raise ValueError("--task instructions needs --model")
        task_config = load_instructions_config(cfg.task_config)
        source = ModelSource.resolve(cfg.model)
        tokenizer = load_tokenizer(source)
        with accelerator.main_process_first():
            model = source.load_model().to(accelerator.device)
            cache = cfg.task_cache_dir or out / "instructions"
            prepared = instructions.prepare(model, tokenizer, task_config, cache)
        del model
        return InstructionsTask(source, tokenizer, prepared, accelerator.device)
    if cfg.model is None:
        with accelerator.main_process_first():
            artifacts = toy.prepare(
                toy.ToyConfig.load(cfg.toy_config), cfg.toy_cache_dir or out / "toy"
            )
        return ToyTask(artifacts)
    return None
