"""AOT in TRL: drop-in subclasses of TRL's ``DPOTrainer`` and ``KTOTrainer``.

* :class:`AOTTrainer` / :class:`AOTConfig` take the place of ``trl.DPOTrainer`` /
  ``trl.DPOConfig``. TRL's loss types ``"aot"`` (paired) and ``"aot_unpaired"`` keep their
  meanings (both on paired batches: ``"aot"`` transports the policy's chosen-minus-rejected
  margins onto the reference's, ``"aot_unpaired"`` the chosen log-ratios onto the rejected
  ones), and so do ``beta``, ``label_smoothing``, ``loss_weights`` and every other TRL option.
  With the defaults the trainer trains exactly as TRL does; the ``aot_*`` options add the other
  penalties, the soft sort, and sorting the global batch of all processes and of all the
  gradient-accumulation micro-batches of an optimizer step.
* :class:`AOTUnpairedTrainer` / :class:`AOTUnpairedConfig` take the place of ``trl.KTOTrainer``
  / ``trl.KTOConfig`` on unpaired data (``prompt``, ``completion``, ``label``): the loss is
  :func:`aot_losses.aot_unpaired_loss` between the ``n`` desirable and the ``m`` undesirable
  completions of a batch, ``n != m``.

How the loss is replaced (TRL 1.16 computes every DPO loss inside one ``_compute_loss``, with no
smaller hook): the trainers override ``_compute_loss`` and call TRL's own, which builds the
batch, runs the policy and the reference and logs its metrics, with the weights of its AOT terms
set to 0 (their value and gradient are then exactly 0); they read the margins TRL computed (the
two tensors each of TRL's AOT branches sorts, recorded by a ``TorchFunctionMode`` watching
``torch.sort``; for KTO, the per-token log-probs of the policy and reference forwards, recorded by
forward hooks and summed as TRL sums them) and add ``loss_weight x ot_1d(u, v, ...)``.
:func:`aot_losses.ot_1d` on the margins ``u``, ``v`` is what :func:`aot_losses.aot_paired_loss`
and :func:`aot_losses.aot_unpaired_loss` compute from the four log-prob tensors. The trainers
check at every step that TRL produced the tensors they expect and raise ``RuntimeError``
otherwise (a TRL outside the tested range, see :data:`TESTED_TRL_VERSIONS`).

See ``docs/trl.md``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .._validation import check_choice, check_positive
from ..diagnostics import fsd_violation, quantile_curves
from ..distributed import gather_concat_many
from ..ot import ot_1d
from ..penalties import PENALTIES, PenaltyName, get_penalty

try:
    import trl
    from packaging.version import Version
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.kto_config import KTOConfig
    from trl.trainer.kto_trainer import KTOTrainer
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "aot_losses.integrations.trl needs TRL: pip install 'aot-losses[trl]'"
    ) from error

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
    from peft import PeftConfig, PeftModel
    from transformers import (
        BitsAndBytesConfig,
        DataCollator,
        EvalPrediction,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        ProcessorMixin,
        TrainerCallback,
    )

    EvalDataset: TypeAlias = (
        Dataset
        | IterableDataset
        | DatasetDict
        | IterableDatasetDict
        | dict[str, Dataset | IterableDataset]
    )

__all__ = [
    "AOT_LOSS_TYPES",
    "QUANTILE_LEVELS",
    "TESTED_TRL_VERSIONS",
    "AOTConfig",
    "AOTTrainer",
    "AOTUnpairedConfig",
    "AOTUnpairedTrainer",
]

TESTED_TRL_VERSIONS = ">=1.16.0,<1.17"
"""The TRL releases these trainers are tested with (also the pin of the ``[trl]`` extra)."""

AOT_LOSS_TYPES = ("aot", "aot_unpaired")
"""TRL's ``DPOTrainer`` loss types that :class:`AOTTrainer` computes with ``aot_losses``."""

QUANTILE_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
"""Levels t of the logged quantile margins ``fsd/margin_q{100 t}`` = Q_u(t) - Q_v(t)."""

if not Version("1.16.0") <= Version(trl.__version__) < Version("1.17"):
    warnings.warn(
        f"aot_losses.integrations.trl is tested with trl{TESTED_TRL_VERSIONS}; found trl "
        f"{trl.__version__}. The trainers check TRL's loss computation at every step and raise "
        "RuntimeError if it changed.",
        UserWarning,
        stacklevel=2,
    )


@dataclass
class _AOTOptions:
    """The ``aot_*`` fields shared by :class:`AOTConfig` and :class:`AOTUnpairedConfig`."""

    aot_penalty: PenaltyName = field(
        default="logistic",
        metadata={
            "help": "Convex penalty h of the AOT loss: 'logistic' (TRL's; beta is a scale, "
            "label_smoothing applies), 'squared_hinge', 'hinge' or 'least_squares' (beta is a "
            "margin)."
        },
    )
    aot_sort: Literal["hard", "soft"] = field(
        default="hard",
        metadata={"help": "'hard' (exact order statistics, TRL's) or 'soft' (Blondel et al.)."},
    )
    aot_regularization_strength: float = field(
        default=0.1,
        metadata={"help": "Soft-sort regularization strength (> 0; the paper used 0.1)."},
    )
    aot_regularization: Literal["l2", "kl"] = field(
        default="l2", metadata={"help": "Soft-sort regularization: 'l2' or 'kl'."}
    )
    aot_sort_backend: Literal["torch", "torchsort", "sinkhorn"] = field(
        default="torch",
        metadata={"help": "Soft-sort backend: 'torch', 'torchsort' or 'sinkhorn'."},
    )
    aot_global_sort: bool = field(
        default=False,
        metadata={
            "help": "Sort the global batch of all processes together (exact gradients under DDP, "
            "FSDP and DeepSpeed averaging) instead of each process's micro-batch."
        },
    )
    aot_sort_across_accumulation: bool = field(
        default=False,
        metadata={
            "help": "Also sort the gradient_accumulation_steps micro-batches of one optimizer "
            "step together (exact; costs one extra forward of the policy and of the reference "
            "per micro-batch, without gradients). Needs disable_dropout=True."
        },
    )


def _check_options(
    options: _AOTOptions, *, beta: float, label_smoothing: float, disable_dropout: bool
) -> None:
    """Raise ``ValueError`` / ``TypeError`` / ``ImportError`` for a bad ``aot_*`` option."""
    check_choice(options.aot_penalty, "aot_penalty", PENALTIES)
    check_choice(options.aot_sort, "aot_sort", ("hard", "soft"))
    check_positive(options.aot_regularization_strength, "aot_regularization_strength")
    check_choice(options.aot_regularization, "aot_regularization", ("l2", "kl"))
    check_choice(options.aot_sort_backend, "aot_sort_backend", ("torch", "torchsort", "sinkhorn"))
    for name in ("aot_global_sort", "aot_sort_across_accumulation"):
        value = getattr(options, name)
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool; got {value!r} ({type(value).__name__})")
    if options.aot_sort_backend == "sinkhorn" and options.aot_regularization != "l2":
        raise ValueError(
            "aot_sort_backend='sinkhorn' supports aot_regularization='l2' only; got "
            f"aot_regularization={options.aot_regularization!r}"
        )
    if (
        options.aot_sort == "soft"
        and options.aot_sort_backend == "torchsort"
        and importlib.util.find_spec("torchsort") is None
    ):
        raise ImportError(
            "aot_sort_backend='torchsort' needs torchsort: pip install 'aot-losses[torchsort]' "
            "(or use aot_sort_backend='torch', which gives the same values)"
        )
    # beta and label_smoothing keep TRL's names; get_penalty's errors name them
    get_penalty(options.aot_penalty, beta=beta, label_smoothing=label_smoothing)
    if options.aot_sort_across_accumulation and not disable_dropout:
        raise ValueError(
            "aot_sort_across_accumulation=True needs disable_dropout=True: it computes the "
            "margins of the step's micro-batches in a first forward pass and relies on the "
            "second pass reproducing them; got disable_dropout=False"
        )


@dataclass
class AOTConfig(_AOTOptions, DPOConfig):
    """TRL's ``DPOConfig`` with the AOT options; ``loss_type`` defaults to ``["aot"]``.

    Every ``DPOConfig`` field keeps its meaning. ``loss_type`` must include ``"aot"`` or
    ``"aot_unpaired"`` (TRL's meanings: ``"aot"`` transports the policy's chosen-minus-rejected
    log-prob margins onto the reference's, ``"aot_unpaired"`` the chosen policy/reference
    log-ratios onto the rejected ones, both on paired batches); other TRL loss types may be
    listed with them and are combined with ``loss_weights`` as TRL combines them. ``beta`` is
    the logistic scale or the margin of the other penalties; ``label_smoothing`` is the logistic
    penalty's eps (it must then lie in [0, 0.5)).

    Args:
        aot_penalty: ``"logistic"`` (default, TRL's), ``"squared_hinge"``, ``"hinge"`` or
            ``"least_squares"`` (see :mod:`aot_losses.penalties`).
        aot_sort: ``"hard"`` (default, TRL's) or ``"soft"``.
        aot_regularization_strength: soft-sort strength, a finite number > 0 (default 0.1).
        aot_regularization: soft-sort regularization, ``"l2"`` (default) or ``"kl"``.
        aot_sort_backend: soft-sort backend, ``"torch"`` (default), ``"torchsort"`` or
            ``"sinkhorn"`` (l2 only).
        aot_global_sort: sort the global batch of all processes (default ``False``: each
            process sorts its own micro-batch, as TRL does).
        aot_sort_across_accumulation: also sort the micro-batches of one optimizer step
            together (default ``False``); needs ``disable_dropout=True``.
        **kwargs: every ``trl.DPOConfig`` field.

    Raises:
        ValueError: no AOT loss type in ``loss_type``; an unknown ``aot_penalty``, ``aot_sort``,
            ``aot_regularization`` or ``aot_sort_backend``; ``aot_regularization_strength`` not
            a finite number > 0; ``beta`` <= 0; ``label_smoothing`` outside [0, 0.5) or non-zero
            with a penalty other than logistic; ``aot_sort_across_accumulation=True`` with
            ``disable_dropout=False``; any error of ``DPOConfig``.
        TypeError: a non-numeric ``aot_regularization_strength``, ``beta`` or
            ``label_smoothing``, or a non-bool ``aot_global_sort`` /
            ``aot_sort_across_accumulation``.
        ImportError: ``aot_sort="soft"`` with ``aot_sort_backend="torchsort"`` without
            torchsort installed.

    Example:
        >>> from aot_losses.integrations.trl import AOTConfig
        >>> config = AOTConfig(output_dir="out", use_cpu=True, aot_penalty="squared_hinge")
        >>> config.loss_type, config.aot_penalty, config.aot_sort, config.beta
        (['aot'], 'squared_hinge', 'hard', 0.1)
        >>> AOTConfig(output_dir="out", use_cpu=True, aot_sort="soft",
        ...           aot_regularization_strength=0)
        Traceback (most recent call last):
            ...
        ValueError: aot_regularization_strength must be a finite number > 0; got 0
    """

    loss_type: list[str] = field(
        default_factory=lambda: ["aot"],
        metadata={
            "help": "TRL loss types; must include 'aot' or 'aot_unpaired'. Several are combined "
            "with loss_weights as TRL combines them."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[no-untyped-call]  # TRL's is unannotated
        if not any(loss_type in AOT_LOSS_TYPES for loss_type in self.loss_type):
            raise ValueError(
                "loss_type must include 'aot' or 'aot_unpaired' (other TRL loss types may be "
                f"listed with them); got {self.loss_type!r}. Use trl.DPOTrainer for other losses"
            )
        _check_options(
            self,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            disable_dropout=self.disable_dropout,
        )


@dataclass
class AOTUnpairedConfig(_AOTOptions, KTOConfig):
    """TRL's ``KTOConfig`` with the AOT options, for :class:`AOTUnpairedTrainer`.

    ``loss_type`` is ``"aot_unpaired"`` (its only value): the loss is
    :func:`aot_losses.aot_unpaired_loss` between the desirable and the undesirable completions of
    a batch. ``beta`` keeps its role (logistic scale or margin); ``desirable_weight`` and
    ``undesirable_weight`` must stay 1.0 (the AOT loss compares two distributions, each of total
    mass 1, so a weight per side has no effect). The other ``KTOConfig`` fields keep their
    meanings; no KL estimate is computed.

    Args:
        aot_penalty, aot_sort, aot_regularization_strength, aot_regularization,
        aot_sort_backend, aot_global_sort, aot_sort_across_accumulation: as in
            :class:`AOTConfig`.
        **kwargs: every ``trl.KTOConfig`` field.

    Raises:
        ValueError: ``loss_type`` other than ``"aot_unpaired"``; ``desirable_weight`` or
            ``undesirable_weight`` other than 1.0; the errors of :class:`AOTConfig` for the
            ``aot_*`` options and ``beta``.
        TypeError, ImportError: as in :class:`AOTConfig`.

    Example:
        >>> from aot_losses.integrations.trl import AOTUnpairedConfig
        >>> AOTUnpairedConfig(output_dir="out", use_cpu=True, aot_penalty="hinge").loss_type
        'aot_unpaired'
        >>> AOTUnpairedConfig(output_dir="out", use_cpu=True, loss_type="kto")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: loss_type must be 'aot_unpaired' for AOTUnpairedConfig; got 'kto'. ...
    """

    loss_type: str = field(
        default="aot_unpaired",
        metadata={"help": "'aot_unpaired' (the only value): AOT between the two sides."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[no-untyped-call]  # TRL's is unannotated
        if self.loss_type != "aot_unpaired":
            raise ValueError(
                "loss_type must be 'aot_unpaired' for AOTUnpairedConfig; got "
                f"{self.loss_type!r}. Use trl.KTOTrainer for the KTO losses"
            )
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(self, name) != 1.0:
                raise ValueError(
                    f"{name} must be 1.0 for the AOT unpaired loss (each side is a distribution "
                    f"of total mass 1, so a weight per side has no effect); got "
                    f"{getattr(self, name)!r}"
                )
        _check_options(
            self, beta=self.beta, label_smoothing=0.0, disable_dropout=self.disable_dropout
        )


@dataclass(frozen=True)
class _Margins:
    """The two samples one AOT term transports: ``u`` onto ``v`` (``ot_1d(u, v)``)."""

    loss_type: str
    u: Tensor
    v: Tensor


class _SortRecorder(TorchFunctionMode):
    """Records the 1-D tensors of length ``length`` that ``torch.sort`` sorts while active.

    TRL's AOT branches are ``torch.sort`` of the margins (of shape ``(B,)``, ``B`` the batch of
    pairs): two calls per AOT loss type, in the order of ``loss_type``.
    """

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length
        self.inputs: list[Tensor] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is torch.sort and args:
            x = args[0]
            if isinstance(x, Tensor) and x.dim() == 1 and x.shape[0] == self.length:
                self.inputs.append(x)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _recording_log_probs(module: nn.Module | None) -> Iterator[list[Tensor]]:
    """Collect the ``log_probs`` (per-token log-probs of TRL's fused LM head) of each forward
    of ``module`` while the context is open (nothing when ``module`` is ``None``)."""
    calls: list[Tensor] = []
    if module is None:
        yield calls
        return

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        log_probs = getattr(output, "log_probs", None)
        if isinstance(log_probs, Tensor):
            calls.append(log_probs)

    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _checked_args(args: object, expected: type[Any], trl_config: type[Any], trainer: str) -> Any:
    """``args``, or the default config when ``None``; ``TypeError`` for a plain TRL config."""
    if args is None:
        return expected()
    if not isinstance(args, expected):
        raise TypeError(
            f"args must be an {expected.__name__} (a {trl_config.__name__} with the aot_* "
            f"options) for {trainer}; got {type(args).__name__}. Replace "
            f"{trl_config.__name__}(...) by {expected.__name__}(...)"
        )
    return args


def _check_process_group(args: Any) -> None:
    """``aot_global_sort`` with several processes needs an initialized process group."""
    if not args.aot_global_sort or args.world_size == 1:
        return
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"aot_global_sort=True sorts the batches of the {args.world_size} processes of this "
            "run together and needs an initialized torch.distributed process group; none is "
            "initialized. Launch with accelerate launch or torchrun (they initialize it), call "
            "torch.distributed.init_process_group first, or set aot_global_sort=False"
        )


def _global_group(args: Any, accelerator: Any) -> dist.ProcessGroup | None:
    """The group whose batches are sorted together: WORLD under ``aot_global_sort`` with
    several processes, else ``None`` (the local batch)."""
    if not args.aot_global_sort or args.world_size == 1:
        return None
    parallelism = accelerator.parallelism_config
    if parallelism is not None:
        sizes = {name: getattr(parallelism, name, None) or 1 for name in ("tp_size", "cp_size")}
        sizes["sp_size"] = getattr(parallelism, "sp_size", None) or 1
        if any(size > 1 for size in sizes.values()):
            raise ValueError(
                "aot_global_sort=True supports data parallelism (DDP, FSDP, DeepSpeed) only: the "
                "ranks of one model replica hold the same samples; got a parallelism_config with "
                f"{sizes}"
            )
    return dist.group.WORLD


class _AOTObjective:
    """The AOT terms of one trainer: transports margins with :func:`aot_losses.ot_1d`, sorts
    across the step's micro-batches when asked, and logs the FSD diagnostics."""

    def __init__(
        self,
        options: _AOTOptions,
        *,
        beta: float,
        label_smoothing: float,
        weights: Sequence[float],
        process_group: dist.ProcessGroup | None,
        may_be_empty: bool,
    ) -> None:
        self.options = options
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.weights = list(weights)
        self.process_group = process_group
        self.may_be_empty = may_be_empty
        self._step: list[list[_Margins]] | None = None
        self._micro_batch = 0

    def begin_step(self, step: list[list[_Margins]] | None) -> None:
        """Hold the margins of every micro-batch of the coming optimizer step (detached), or
        ``None`` to sort each micro-batch on its own."""
        self._step = step
        self._micro_batch = 0

    def add_to(
        self,
        result: Any,
        margins: list[_Margins],
        *,
        return_outputs: bool,
        training: bool,
        metrics: MutableMapping[str, list[float]],
    ) -> Any:
        """TRL's ``_compute_loss`` result with the AOT terms added to its loss."""
        loss, outputs = result if return_outputs else (result, None)
        loss = loss + self.loss(margins, training=training, metrics=metrics)
        return (loss, outputs) if return_outputs else loss

    def loss(
        self, margins: list[_Margins], *, training: bool, metrics: MutableMapping[str, list[float]]
    ) -> Tensor:
        """The weighted sum of the AOT terms of one micro-batch."""
        step, k = (self._step, self._micro_batch) if training else (None, 0)
        if step is not None:
            if k >= len(step):
                raise RuntimeError(
                    f"aot_sort_across_accumulation: loss call {k + 1} in an optimizer step of "
                    f"{len(step)} micro-batches"
                )
            self._micro_batch += 1
        terms = []
        for j, (m, weight) in enumerate(zip(margins, self.weights, strict=True)):
            u, v = m.u, m.v
            if step is not None:
                u, v = self._with_step(step, k, j, u, v)
            value = self._transport(u, v)
            if step is not None:
                # value: the loss of the step's whole batch; gradient scaled by the number of
                # micro-batches, which the Trainer divides every micro-batch loss by
                value = value.detach() + len(step) * (value - value.detach())
            terms.append(weight * value)
            prefix = "fsd/" if len(margins) == 1 else f"fsd/{m.loss_type}/"
            self._log(prefix, u, v, metrics)
        return sum(terms[1:], terms[0])  # the configs require at least one AOT loss type

    @staticmethod
    def _with_step(
        step: list[list[_Margins]], k: int, j: int, u: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Micro-batch ``k``'s live margins among the step's others (held without gradient)."""
        held = step[k][j]
        if held.u.shape != u.shape or held.v.shape != v.shape:
            raise RuntimeError(
                "aot_sort_across_accumulation: micro-batch "
                f"{k} had margins of shapes {tuple(held.u.shape)}, {tuple(held.v.shape)} in the "
                f"first pass but {tuple(u.shape)}, {tuple(v.shape)} now; the Trainer fed the "
                "micro-batches in another order than get_batch_samples returned them"
            )
        us = [u if i == k else batch[j].u for i, batch in enumerate(step)]
        vs = [v if i == k else batch[j].v for i, batch in enumerate(step)]
        return torch.cat(us), torch.cat(vs)

    def _transport(self, u: Tensor, v: Tensor) -> Tensor:
        """``ot_1d(u, v)`` with the options; 0 (attached to the graph) when a side is empty over
        everything sorted together (unpaired data only)."""
        if self.may_be_empty:
            sizes = torch.tensor([u.numel(), v.numel()], device=u.device)
            if self.process_group is not None:
                dist.all_reduce(sizes, group=self.process_group)
            if int(sizes.min()) == 0:
                return (u.sum() + v.sum()) * 0.0
        options = self.options
        return ot_1d(
            u,
            v,
            options.aot_penalty,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            sort=options.aot_sort,
            regularization=options.aot_regularization,
            regularization_strength=options.aot_regularization_strength,
            sort_backend=options.aot_sort_backend,
            process_group=self.process_group,
        )

    @staticmethod
    def _log(prefix: str, u: Tensor, v: Tensor, metrics: MutableMapping[str, list[float]]) -> None:
        """FSD violation and quantile margins of ``u`` over ``v``, over all processes."""
        u, v = u.detach(), v.detach()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            (u, v), _ = gather_concat_many((u, v), dist.group.WORLD, names=("u", "v"))
        if u.numel() == 0 or v.numel() == 0:
            return
        metrics[f"{prefix}violation"].append(float(fsd_violation(u, v)))
        levels = torch.tensor(QUANTILE_LEVELS, dtype=torch.float64, device=u.device)
        _, qu, qv = quantile_curves(u, v, levels)
        for level, gap in zip(QUANTILE_LEVELS, (qu - qv).tolist(), strict=True):
            metrics[f"{prefix}margin_q{round(100 * level)}"].append(gap)


def _step_margins(
    trainer: Any,
    batches: list[Any],
    loss_and_margins: Callable[[nn.Module, dict[str, Any], bool], tuple[Any, list[_Margins]]],
) -> list[list[_Margins]]:
    """First pass of ``aot_sort_across_accumulation``: the margins of every micro-batch of the
    step, without gradients, leaving TRL's metrics and token count as they were."""
    model = trainer.model_wrapped
    model.train()
    metrics = trainer._metrics["train"]
    saved = {key: list(values) for key, values in metrics.items()}
    tokens = trainer._total_train_tokens
    step = []
    try:
        for batch in batches:
            inputs = trainer._prepare_inputs(batch)
            with torch.no_grad(), trainer.compute_loss_context_manager():
                step.append(loss_and_margins(model, inputs, False)[1])
    finally:
        metrics.clear()
        metrics.update(saved)
        trainer._total_train_tokens = tokens
    return step


class _AOTLoss:
    """What both trainers add to TRL's: the AOT terms on top of TRL's ``_compute_loss`` (whose
    own AOT terms are weighted 0, see ``_trl_loss_and_margins``), and the first pass over an
    optimizer step's micro-batches for ``aot_sort_across_accumulation``. Mixed in before the TRL
    trainer, whose methods ``super()`` reaches."""

    _aot: _AOTObjective
    _metrics: dict[str, Any]
    model: nn.Module | None

    def _trl_loss_and_margins(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool
    ) -> tuple[Any, list[_Margins]]:
        raise NotImplementedError

    def _compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool) -> Any:
        result, margins = self._trl_loss_and_margins(model, inputs, return_outputs)
        training = self.model is not None and self.model.training  # TRL's test of the mode
        return self._aot.add_to(
            result,
            margins,
            return_outputs=return_outputs,
            training=training,
            metrics=self._metrics["train" if training else "eval"],
        )

    def get_batch_samples(
        self, epoch_iterator: Iterator[Any], num_batches: int, device: torch.device
    ) -> tuple[list[Any], Tensor | int | None]:
        batches, num_items_in_batch = super().get_batch_samples(  # type: ignore[misc]
            epoch_iterator, num_batches, device
        )
        accumulate = self._aot.options.aot_sort_across_accumulation and len(batches) > 1
        self._aot.begin_step(
            _step_margins(self, batches, self._trl_loss_and_margins) if accumulate else None
        )
        return batches, num_items_in_batch


class AOTTrainer(_AOTLoss, DPOTrainer):
    """TRL's ``DPOTrainer`` whose ``"aot"`` / ``"aot_unpaired"`` losses come from
    :func:`aot_losses.ot_1d`, with the options of :class:`AOTConfig`.

    The constructor is TRL's (same arguments, same meanings); ``args`` must be an
    :class:`AOTConfig` (``None`` gives ``AOTConfig()``). With the default ``aot_*`` options the
    trainer trains as ``trl.DPOTrainer`` with the same ``loss_type`` (same logged losses and
    parameters up to float rounding, tested in float32 to 1e-5). It logs TRL's metrics plus,
    per AOT loss type, ``fsd/violation`` (:func:`aot_losses.diagnostics.fsd_violation` of
    ``u`` over ``v``) and ``fsd/margin_q10`` ... ``fsd/margin_q90`` (Q_u(t) - Q_v(t) at the
    :data:`QUANTILE_LEVELS`, in log-prob units), computed over all processes (and, with
    ``aot_sort_across_accumulation``, over the step's micro-batches); with both AOT loss types
    the keys are ``fsd/aot/...`` and ``fsd/aot_unpaired/...``.

    Args:
        model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class,
        compute_metrics, callbacks, optimizers, quantization_config, peft_config: as in
            ``trl.DPOTrainer``.

    Raises:
        TypeError: ``args`` is not an :class:`AOTConfig`.
        ValueError: ``aot_global_sort=True`` with several processes and no initialized
            ``torch.distributed`` process group, or with tensor / context / sequence
            parallelism; every error of ``trl.DPOTrainer`` (for example
            ``use_weighting=True`` with an AOT loss type).
        RuntimeError: during training, if TRL did not compute the AOT margins as TRL 1.16 does.

    Example:
        Switching a TRL script (``model``, ``tokenizer`` and a paired ``dataset`` as for
        ``trl.DPOTrainer``)::

            from aot_losses.integrations.trl import AOTConfig, AOTTrainer

            args = AOTConfig(output_dir="out", loss_type="aot", aot_global_sort=True)
            trainer = AOTTrainer(model=model, args=args, train_dataset=dataset,
                                 processing_class=tokenizer)
            trainer.train()
    """

    def __init__(
        self,
        model: str | PreTrainedModel | PeftModel,
        ref_model: PreTrainedModel | None = None,
        args: AOTConfig | None = None,
        data_collator: DataCollator | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: EvalDataset | None = None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        compute_metrics: Callable[[EvalPrediction], dict[str, Any]] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[
            torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None
        ] = (None, None),
        quantization_config: BitsAndBytesConfig | None = None,
        peft_config: PeftConfig | None = None,
    ) -> None:
        args = _checked_args(args, AOTConfig, DPOConfig, "AOTTrainer")
        _check_process_group(args)
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self._aot = _AOTObjective(
            args,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            weights=[
                weight
                for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True)
                if loss_type in AOT_LOSS_TYPES
            ],
            process_group=_global_group(args, self.accelerator),
            may_be_empty=False,
        )

    def _trl_loss_and_margins(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool
    ) -> tuple[Any, list[_Margins]]:
        """TRL's ``_compute_loss`` with its AOT terms weighted 0, and the margins that each of
        its AOT branches sorted."""
        recorder = _SortRecorder(len(inputs["input_ids"]) // 2)  # chosen and rejected stacked
        weights = self.loss_weights
        self.loss_weights = [
            0.0 if loss_type in AOT_LOSS_TYPES else weight
            for loss_type, weight in zip(self.loss_types, weights, strict=True)
        ]
        try:
            with recorder:  # TRL's own, not _AOTLoss's
                result = DPOTrainer._compute_loss(  # type: ignore[no-untyped-call]  # unannotated
                    self, model, inputs, return_outputs
                )
        finally:
            self.loss_weights = weights
        aot_types = [loss_type for loss_type in self.loss_types if loss_type in AOT_LOSS_TYPES]
        if len(recorder.inputs) != 2 * len(aot_types):
            raise RuntimeError(
                f"AOTTrainer expected TRL's DPOTrainer to sort two margins of shape "
                f"({recorder.length},) per AOT loss type ({2 * len(aot_types)} for "
                f"{aot_types}); it sorted {len(recorder.inputs)}. TRL {trl.__version__} computes "
                f"the AOT losses differently from trl{TESTED_TRL_VERSIONS}"
            )
        sorted_ = recorder.inputs
        margins = [
            _Margins(loss_type, sorted_[2 * i], sorted_[2 * i + 1])
            for i, loss_type in enumerate(aot_types)
        ]
        return result, margins


class AOTUnpairedTrainer(_AOTLoss, KTOTrainer):
    """TRL's ``KTOTrainer`` (unpaired data: ``prompt``, ``completion``, ``label``) with the AOT
    unpaired loss :func:`aot_losses.aot_unpaired_loss` in place of the KTO loss.

    In each batch the ``n`` desirable completions (``label=True``) give
    ``u = log pi(y|x) - log pi_ref(y|x)`` and the ``m`` undesirable ones ``v`` (``n != m`` is
    the rule; the quantile grids are merged exactly); the loss is OT_h(u, v) with the options of
    :class:`AOTUnpairedConfig`. When one side is empty over everything sorted together (a batch
    of desirable completions only, say) the AOT loss is undefined and the batch contributes 0.
    TRL's KTO data pipeline, reference handling (``ref_model``, PEFT, precomputed reference
    log-probs) and metrics are kept; no KL estimate is computed. It logs ``fsd/violation`` and
    ``fsd/margin_q*`` as :class:`AOTTrainer` does.

    Args:
        model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class,
        compute_metrics, callbacks, optimizers, quantization_config, peft_config: as in
            ``trl.KTOTrainer``.

    Raises:
        TypeError: ``args`` is not an :class:`AOTUnpairedConfig`.
        ValueError: as :class:`AOTTrainer` for ``aot_global_sort``; every error of
            ``trl.KTOTrainer``.
        RuntimeError: during training, if TRL's forwards did not return the per-token log-probs
            as TRL 1.16 does.

    Example:
        With a dataset of ``{"prompt": ..., "completion": ..., "label": bool}`` rows::

            from aot_losses.integrations.trl import AOTUnpairedConfig, AOTUnpairedTrainer

            args = AOTUnpairedConfig(output_dir="out", aot_penalty="squared_hinge", beta=0.5)
            trainer = AOTUnpairedTrainer(model=model, args=args, train_dataset=dataset,
                                         processing_class=tokenizer)
            trainer.train()
    """

    def __init__(
        self,
        model: str | PreTrainedModel | PeftModel,
        ref_model: PreTrainedModel | None = None,
        args: AOTUnpairedConfig | None = None,
        data_collator: DataCollator | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: EvalDataset | None = None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        compute_metrics: Callable[[EvalPrediction], dict[str, Any]] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[
            torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None
        ] = (None, None),
        quantization_config: BitsAndBytesConfig | None = None,
        peft_config: PeftConfig | None = None,
    ) -> None:
        args = _checked_args(args, AOTUnpairedConfig, KTOConfig, "AOTUnpairedTrainer")
        _check_process_group(args)
        # KTOTrainer knows the loss types "kto" and "apo_zero_unpaired"; the latter is its path
        # without the KL estimate (no KL completions, no KL forwards), whose per-sample losses
        # are weighted 0 below and replaced by the AOT loss
        args.loss_type = "apo_zero_unpaired"
        try:
            super().__init__(
                model=model,
                ref_model=ref_model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
            )
        finally:
            args.loss_type = "aot_unpaired"
        self._aot = _AOTObjective(
            args,
            beta=self.beta,
            label_smoothing=0.0,
            weights=[1.0],
            process_group=_global_group(args, self.accelerator),
            may_be_empty=True,
        )

    def _trl_loss_and_margins(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool
    ) -> tuple[Any, list[_Margins]]:
        """TRL's ``_compute_loss`` with its per-sample losses weighted 0, and the log-ratios of
        the desirable (``u``) and undesirable (``v``) completions, summed as TRL sums them."""
        policy = self.accelerator.unwrap_model(model)
        reference = self.ref_model
        if reference is not None:
            reference = self.accelerator.unwrap_model(reference)
        weights = self.desirable_weight, self.undesirable_weight
        self.desirable_weight = self.undesirable_weight = 0.0
        try:
            with (
                _recording_log_probs(policy) as policy_calls,
                _recording_log_probs(reference) as reference_calls,
            ):
                result = KTOTrainer._compute_loss(  # type: ignore[no-untyped-call]  # unannotated
                    self, model, inputs, return_outputs
                )  # TRL's own, not _AOTLoss's
        finally:
            self.desirable_weight, self.undesirable_weight = weights
        # the reference log-probs: precomputed, or a forward of the reference model, or (PEFT)
        # a second forward of the policy module with its adapters disabled
        reference_in_policy = not self.precompute_ref_logps and reference is None
        policy_forwards = 2 if reference_in_policy else 1
        reference_forwards = int(not self.precompute_ref_logps and reference is not None)
        if len(policy_calls) < policy_forwards or len(reference_calls) < reference_forwards:
            raise RuntimeError(
                "AOTUnpairedTrainer expected TRL's KTOTrainer to run "
                f"{policy_forwards} forward(s) of the policy module and {reference_forwards} of "
                f"the reference model with per-token log-probs; got {len(policy_calls)} and "
                f"{len(reference_calls)}. TRL {trl.__version__} computes the KTO loss "
                f"differently from trl{TESTED_TRL_VERSIONS}"
            )
        seq_len = inputs["input_ids"].size(1) - 1
        logps = policy_calls[0][:, -seq_len:].sum(-1)
        if self.precompute_ref_logps:
            reference_logps = inputs["ref_logps"]
        else:
            calls = policy_calls[1:] if reference_in_policy else reference_calls
            reference_logps = calls[0][:, -seq_len:].sum(-1)
        desirable = torch.as_tensor(inputs["label"], dtype=torch.bool, device=logps.device)
        logratios = logps - reference_logps
        margins = [_Margins("aot_unpaired", logratios[desirable], logratios[~desirable])]
        return result, margins
