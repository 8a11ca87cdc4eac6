"""The trainers: the one module that touches TRL's internals (tested with TRL 1.16).

TRL 1.16 computes every DPO and KTO loss inside one ``_compute_loss`` with no smaller hook. The
trainers override ``_compute_loss`` and call TRL's with the weights of its own terms set to 0
(``loss_weights`` of the AOT loss types; ``desirable_weight`` / ``undesirable_weight`` of its
KL-free KTO path, ``loss_type="apo_zero_unpaired"``): their value and gradient are then exactly
0. While TRL's function runs, :class:`_TRLCall` (a ``TorchFunctionMode``) watches the torch
calls made by that function itself, not by the models it runs, and records:

* ``DPOTrainer``: each tensor it passes to ``torch.sort`` together with the name of the local
  variable that holds it and the ``loss_type`` being computed. Its AOT branches sort
  ``logratios`` then ``ref_logratios`` (``"aot"``) and ``chosen_logratios`` then
  ``rejected_logratios`` (``"aot_unpaired"``); these very tensors are the margins ``u``, ``v``.
  Any other sequence raises ``RuntimeError``: a TRL that sorted in another order cannot swap
  the two margins silently.
* ``KTOTrainer``: its locals ``chosen_logps``, ``rejected_logps``, ``ref_chosen_logps`` and
  ``ref_rejected_logps`` when it returns (whatever the reference: a model, the policy without
  its adapter, precomputed log-probs); ``u`` = the desirable log-ratios, ``v`` the undesirable.

The margins go to :class:`~._objective.AOTObjective`, whose loss is added to TRL's.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeAlias, TypeVar

import torch
import torch.distributed as dist
import trl
from packaging.specifiers import SpecifierSet
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from trl.trainer.dpo_config import DPOConfig
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.kto_config import KTOConfig
from trl.trainer.kto_trainer import KTOTrainer

from ._config import AOT_LOSS_TYPES, AOTConfig, AOTUnpairedConfig, transport_keywords
from ._objective import AOTObjective, Margins

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

__all__ = ["TESTED_TRL_VERSIONS", "AOTTrainer", "AOTUnpairedTrainer"]

TESTED_TRL_VERSIONS = ">=1.16.0,<1.17"
"""The TRL releases these trainers are tested with (also the pin of the ``[trl]`` extra)."""


def _check_trl_version(version: str) -> None:
    """Warn unless ``version`` is in :data:`TESTED_TRL_VERSIONS` (PEP 440: the development
    releases and release candidates of 1.17 are outside ``<1.17``)."""
    if not SpecifierSet(TESTED_TRL_VERSIONS).contains(version, prereleases=True):
        warnings.warn(
            f"aot_losses.integrations.trl is tested with trl{TESTED_TRL_VERSIONS}; found trl "
            f"{version}. The trainers check TRL's loss computation at every step and raise "
            "RuntimeError if it changed.",
            UserWarning,
            stacklevel=2,
        )


_check_trl_version(trl.__version__)

#: The sorts of TRL's AOT branches: (loss type, local variable sorted), per AOT loss type.
_AOT_SORTS = {
    "aot": ("logratios", "ref_logratios"),
    "aot_unpaired": ("chosen_logratios", "rejected_logratios"),
}
#: The locals of ``KTOTrainer._compute_loss`` that hold the four log-prob tensors.
_KTO_LOGPS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
_TORCH_SORTS = (torch.sort, Tensor.sort)


@dataclass(frozen=True)
class _Sort:
    """One ``torch.sort`` call of TRL's function: the loss type it was computing, the names of
    the local variables that hold the tensor sorted, and the tensor."""

    loss_type: object
    names: tuple[str, ...]
    tensor: Tensor


class _TRLCall(TorchFunctionMode):
    """Records the torch calls that TRL's ``function`` makes itself (its own frame, not the
    models it runs): its ``torch.sort`` calls (:class:`_Sort`) and its frame, to read its local
    variables once it has returned. About 5 us per torch call made from Python while active."""

    def __init__(self, function: Callable[..., Any]) -> None:
        super().__init__()
        self.function = function
        self.sorts: list[_Sort] = []
        self.frame: FrameType | None = None

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        caller = sys._getframe(1)
        if caller.f_code is self.function.__code__:
            self.frame = caller
            if func in _TORCH_SORTS and args:
                local = caller.f_locals
                names = tuple(name for name, value in local.items() if value is args[0])
                self.sorts.append(_Sort(local.get("loss_type"), names, args[0]))
        return func(*args, **(kwargs or {}))

    def run(self, *args: Any, keep: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
        """``function(*args)`` under the mode; its result and its locals named in ``keep``
        (those it defines) when it returned."""
        try:
            with self:
                result = self.function(*args)
            local = self.frame.f_locals if self.frame is not None else {}
            return result, {name: local[name] for name in keep if name in local}
        finally:
            self.frame = None  # TRL's locals are freed with its frame


def _trl_changed(trainer: str, expected: str, got: str) -> RuntimeError:
    return RuntimeError(
        f"{trainer} expected TRL's {expected}; {got}. TRL {trl.__version__} computes its "
        f"losses differently from trl{TESTED_TRL_VERSIONS}, which this trainer is tested with"
    )


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


def _objective(
    trainer: Any, *, label_smoothing: float, weights: Sequence[float], may_be_empty: bool
) -> AOTObjective:
    """The AOT objective of a trainer built with ``trainer.args``."""
    args = trainer.args
    return AOTObjective(
        transport_keywords(args, beta=trainer.beta, label_smoothing=label_smoothing),
        weights=weights,
        process_group=_global_group(args, trainer.accelerator),
        may_be_empty=may_be_empty,
    )


def _step_margins(
    trainer: Any,
    batches: list[Any],
    loss_and_margins: Callable[[nn.Module, dict[str, Any], bool], tuple[Any, list[Margins]]],
) -> list[list[Margins]]:
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


class _WithoutWeightAdvice(logging.Filter):
    """Drops KTOTrainer's advice on ``desirable_weight`` / ``undesirable_weight`` for data with
    more completions of one label: it is about the KTO loss (see :class:`AOTUnpairedConfig`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "desirable_weight in [" not in record.getMessage()


ConfigT = TypeVar("ConfigT", AOTConfig, AOTUnpairedConfig)


class _AOTLoss(Generic[ConfigT]):
    """What both trainers add to TRL's: the AOT terms on top of TRL's ``_compute_loss`` (whose
    own terms are weighted 0, see ``_trl_loss_and_margins``), and the first pass over an
    optimizer step's micro-batches for ``aot_sort_across_accumulation``. Mixed in before the TRL
    trainer, whose methods ``super()`` reaches."""

    _config: ClassVar[type[AOTConfig | AOTUnpairedConfig]]
    _trl_config: ClassVar[type[DPOConfig | KTOConfig]]
    _aot: AOTObjective
    _metrics: dict[str, Any]
    model: nn.Module | None
    args: Any

    def __init__(
        self,
        model: str | PreTrainedModel | PeftModel,
        ref_model: PreTrainedModel | None = None,
        args: ConfigT | None = None,
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
        """TRL's constructor (the same arguments), with ``args`` checked."""
        args = _checked_args(args, self._config, self._trl_config, type(self).__name__)
        _check_process_group(args)
        with self._constructing(args):
            super().__init__(  # type: ignore[call-arg]  # TRL's trainer, after this mixin
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
        self._aot = self._new_objective()

    @contextlib.contextmanager
    def _constructing(self, args: Any) -> Iterator[None]:
        """Around TRL's constructor."""
        yield

    def _new_objective(self) -> AOTObjective:
        raise NotImplementedError

    def _trl_loss_and_margins(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool
    ) -> tuple[Any, list[Margins]]:
        raise NotImplementedError

    def _compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool) -> Any:
        result, margins = self._trl_loss_and_margins(model, inputs, return_outputs)
        training = self.model is not None and self.model.training  # TRL's test of the mode
        loss, outputs = result if return_outputs else (result, None)
        mode = "train" if training else "eval"
        loss = loss + self._aot.loss(margins, training=training, metrics=self._metrics[mode])
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(
        self, epoch_iterator: Iterator[Any], num_batches: int, device: torch.device
    ) -> tuple[list[Any], Tensor | int | None]:
        batches, num_items_in_batch = super().get_batch_samples(  # type: ignore[misc]
            epoch_iterator, num_batches, device
        )
        accumulate = self.args.aot_sort_across_accumulation and len(batches) > 1
        self._aot.begin_step(
            _step_margins(self, batches, self._trl_loss_and_margins) if accumulate else None
        )
        return batches, num_items_in_batch


class AOTTrainer(_AOTLoss[AOTConfig], DPOTrainer):
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
        RuntimeError: during training, if TRL's AOT branches did not sort the margins as TRL
            1.16 does (which tensors, in which order).

    Example:
        Switching a TRL script (``model``, ``ref_model``, ``tokenizer`` and a paired
        ``dataset`` as for ``trl.DPOTrainer``)::

            from aot_losses.integrations.trl import AOTConfig, AOTTrainer

            args = AOTConfig(output_dir="out", aot_global_sort=True)
            trainer = AOTTrainer(model=model, ref_model=ref_model, args=args,
                                 train_dataset=dataset, processing_class=tokenizer)
            trainer.train()
    """

    _config = AOTConfig
    _trl_config = DPOConfig

    def _new_objective(self) -> AOTObjective:
        weights = zip(self.loss_types, self.loss_weights, strict=True)
        return _objective(
            self,
            label_smoothing=self.label_smoothing,
            weights=[weight for loss_type, weight in weights if loss_type in AOT_LOSS_TYPES],
            may_be_empty=False,
        )

    def _trl_loss_and_margins(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool
    ) -> tuple[Any, list[Margins]]:
        """TRL's ``_compute_loss`` with its AOT terms weighted 0, and the margins that each of
        its AOT branches sorted."""
        weights = self.loss_weights
        self.loss_weights = [
            0.0 if loss_type in AOT_LOSS_TYPES else weight
            for loss_type, weight in zip(self.loss_types, weights, strict=True)
        ]
        call = _TRLCall(DPOTrainer._compute_loss)  # TRL's own, not _AOTLoss's
        try:
            result, _ = call.run(self, model, inputs, return_outputs)
        finally:
            self.loss_weights = weights
        aot_types = [loss_type for loss_type in self.loss_types if loss_type in AOT_LOSS_TYPES]
        expected = [(t, name) for t in aot_types for name in _AOT_SORTS[t]]
        if len(call.sorts) != len(expected) or any(
            s.loss_type != t or name not in s.names
            for s, (t, name) in zip(call.sorts, expected, strict=False)
        ):
            got = [(s.loss_type, "/".join(s.names) or "an unnamed tensor") for s in call.sorts]
            raise _trl_changed(
                "AOTTrainer",
                f"DPOTrainer._compute_loss to sort, as (loss type, variable), {expected}",
                f"it sorted {got}",
            )
        tensors = [s.tensor for s in call.sorts]
        margins = [
            Margins(loss_type, tensors[2 * i], tensors[2 * i + 1])
            for i, loss_type in enumerate(aot_types)
        ]
        return result, margins


class AOTUnpairedTrainer(_AOTLoss[AOTUnpairedConfig], KTOTrainer):
    """TRL's ``KTOTrainer`` (unpaired data: ``prompt``, ``completion``, ``label``) with the AOT
    unpaired loss :func:`aot_losses.aot_unpaired_loss` in place of the KTO loss.

    In each batch the ``n`` desirable completions (``label=True``) give
    ``u = log pi(y|x) - log pi_ref(y|x)`` and the ``m`` undesirable ones ``v`` (``n != m`` is
    the rule; the quantile grids are merged exactly); the loss is OT_h(u, v) with the options of
    :class:`AOTUnpairedConfig`. When one side is empty over everything sorted together (a batch
    of desirable completions only, say) the AOT loss is undefined and the batch contributes 0.
    TRL's KTO data pipeline, reference handling (``ref_model``, PEFT, precomputed reference
    log-probs) and metrics are kept; no KL estimate is computed. It logs ``fsd/violation`` and
    ``fsd/margin_q*`` as :class:`AOTTrainer` does. TRL's advice on ``desirable_weight`` /
    ``undesirable_weight`` for data with more completions of one label is not logged: it is
    about the KTO loss (see :class:`AOTUnpairedConfig`).

    Args:
        model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class,
        compute_metrics, callbacks, optimizers, quantization_config, peft_config: as in
            ``trl.KTOTrainer``.

    Raises:
        TypeError: ``args`` is not an :class:`AOTUnpairedConfig`.
        ValueError: as :class:`AOTTrainer` for ``aot_global_sort``; every error of
            ``trl.KTOTrainer``.
        RuntimeError: during training, if TRL's ``_compute_loss`` did not hold the log-probs
            of the desirable and undesirable completions as TRL 1.16 does.

    Example:
        With a dataset of ``{"prompt": ..., "completion": ..., "label": bool}`` rows::

            from aot_losses.integrations.trl import AOTUnpairedConfig, AOTUnpairedTrainer

            args = AOTUnpairedConfig(output_dir="out", aot_penalty="squared_hinge", beta=0.5)
            trainer = AOTUnpairedTrainer(model=model, ref_model=ref_model, args=args,
                                         train_dataset=dataset, processing_class=tokenizer)
            trainer.train()
    """

    _config = AOTUnpairedConfig
    _trl_config = KTOConfig

    @contextlib.contextmanager
    def _constructing(self, args: Any) -> Iterator[None]:
        """KTOTrainer knows the loss types "kto" and "apo_zero_unpaired"; the latter is its path
        without the KL estimate (no KL completions, no KL forwards), whose per-sample losses are
        weighted 0 in ``_trl_loss_and_margins`` and replaced by the AOT loss. Its advice on the
        side weights is dropped."""
        args.loss_type = "apo_zero_unpaired"
        advice = _WithoutWeightAdvice()
        trl_logger = logging.getLogger(KTOTrainer.__module__)
        trl_logger.addFilter(advice)
        try:
            yield
        finally:
            args.loss_type = "aot_unpaired"
            trl_logger.removeFilter(advice)

    def _new_objective(self) -> AOTObjective:
        return _objective(self, label_smoothing=0.0, weights=[1.0], may_be_empty=True)

    def _trl_loss_and_margins(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool
    ) -> tuple[Any, list[Margins]]:
        """TRL's ``_compute_loss`` with its per-sample losses weighted 0, and the log-ratios of
        the desirable (``u``) and undesirable (``v``) completions."""
        weights = self.desirable_weight, self.undesirable_weight
        self.desirable_weight = self.undesirable_weight = 0.0
        call = _TRLCall(KTOTrainer._compute_loss)  # TRL's own, not _AOTLoss's
        try:
            result, logps = call.run(self, model, inputs, return_outputs, keep=_KTO_LOGPS)
        finally:
            self.desirable_weight, self.undesirable_weight = weights
        desirable = torch.as_tensor(inputs["label"], dtype=torch.bool)
        n, m = int(desirable.sum()), int((~desirable).sum())
        sizes = {name: n if "chosen" in name else m for name in _KTO_LOGPS}
        found = {
            name: tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            for name, value in logps.items()
        }
        if found != {name: (size,) for name, size in sizes.items()}:
            raise _trl_changed(
                "AOTUnpairedTrainer",
                f"KTOTrainer._compute_loss to hold the log-probs of the {n} desirable and {m} "
                f"undesirable completions of the batch in its variables {list(_KTO_LOGPS)}",
                f"it held {found or 'none of them'}",
            )
        chosen, rejected, ref_chosen, ref_rejected = (logps[name] for name in _KTO_LOGPS)
        return result, [Margins("aot_unpaired", chosen - ref_chosen, rejected - ref_rejected)]
