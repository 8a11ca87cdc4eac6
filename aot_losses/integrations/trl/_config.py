"""The configs of the TRL trainers: TRL's ``DPOConfig`` / ``KTOConfig`` with the ``aot_*``
options, checked when the config is built."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import get_args

from trl.trainer.dpo_config import DPOConfig
from trl.trainer.kto_config import KTOConfig

from ..._validation import check_choice, check_positive
from ...ot import SortKind, resolve_options
from ...penalties import PENALTIES, PenaltyName
from ...sorting import Backend, Regularization
from ._objective import TransportKeywords

__all__ = [
    "AOT_LOSS_TYPES",
    "AOTConfig",
    "AOTOptions",
    "AOTUnpairedConfig",
    "transport_keywords",
]

AOT_LOSS_TYPES = ("aot", "aot_unpaired")
"""TRL's ``DPOTrainer`` loss types that :class:`AOTTrainer` computes with ``aot_losses``."""


@dataclass
class AOTOptions:
    """The ``aot_*`` fields shared by :class:`AOTConfig` and :class:`AOTUnpairedConfig`."""

    aot_penalty: PenaltyName = field(
        default="logistic",
        metadata={
            "help": "Convex penalty h of the AOT loss: 'logistic' (TRL's; beta is a scale, "
            "label_smoothing applies), 'squared_hinge', 'hinge' or 'least_squares' (beta is a "
            "margin)."
        },
    )
    aot_sort: SortKind = field(
        default="hard",
        metadata={"help": "'hard' (exact order statistics, TRL's) or 'soft' (Blondel et al.)."},
    )
    aot_regularization_strength: float = field(
        default=0.1,
        metadata={"help": "Soft-sort regularization strength (> 0; the paper used 0.1)."},
    )
    aot_regularization: Regularization = field(
        default="l2", metadata={"help": "Soft-sort regularization: 'l2' or 'kl'."}
    )
    aot_sort_backend: Backend = field(
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


def transport_keywords(
    options: AOTOptions, *, beta: float, label_smoothing: float
) -> TransportKeywords:
    """The options of :func:`aot_losses.ot_1d` that a config sets (``beta`` and
    ``label_smoothing`` keep TRL's names and meanings)."""
    return TransportKeywords(
        penalty=options.aot_penalty,
        beta=beta,
        label_smoothing=label_smoothing,
        sort=options.aot_sort,
        regularization=options.aot_regularization,
        regularization_strength=options.aot_regularization_strength,
        sort_backend=options.aot_sort_backend,
    )


def _check_options(
    options: AOTOptions, *, beta: float, label_smoothing: float, disable_dropout: bool
) -> None:
    """Raise ``ValueError`` / ``TypeError`` / ``ImportError`` for a bad ``aot_*`` option (the
    messages name the config's fields), then resolve the options as :func:`aot_losses.ot_1d`
    will (its errors name ``beta`` and ``label_smoothing``, TRL's names)."""
    check_choice(options.aot_penalty, "aot_penalty", PENALTIES)
    check_choice(options.aot_sort, "aot_sort", get_args(SortKind))
    check_positive(options.aot_regularization_strength, "aot_regularization_strength")
    check_choice(options.aot_regularization, "aot_regularization", get_args(Regularization))
    check_choice(options.aot_sort_backend, "aot_sort_backend", get_args(Backend))
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
            "aot_sort_backend='torchsort' needs torchsort: pip install --no-build-isolation "
            "torchsort (or use aot_sort_backend='torch', which gives the same values)"
        )
    keywords = transport_keywords(options, beta=beta, label_smoothing=label_smoothing)
    resolve_options(**keywords, reduction="mean")
    if options.aot_sort_across_accumulation and not disable_dropout:
        raise ValueError(
            "aot_sort_across_accumulation=True needs disable_dropout=True: it computes the "
            "margins of the step's micro-batches in a first forward pass and relies on the "
            "second pass reproducing them; got disable_dropout=False"
        )


@dataclass
class AOTConfig(AOTOptions, DPOConfig):
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
class AOTUnpairedConfig(AOTOptions, KTOConfig):
    """TRL's ``KTOConfig`` with the AOT options, for :class:`AOTUnpairedTrainer`.

    ``loss_type`` is ``"aot_unpaired"`` (its only value): the loss is
    :func:`aot_losses.aot_unpaired_loss` between the desirable and the undesirable completions of
    a batch. ``beta`` keeps its role (logistic scale or margin). ``desirable_weight`` and
    ``undesirable_weight`` must stay 1.0: in KTO they rebalance the per-completion losses of
    data with more completions of one label than of the other; the AOT loss compares the two
    sides as distributions of total mass 1 each, whatever their counts, so the imbalance is
    already balanced and a weight on one side would change nothing. The other ``KTOConfig``
    fields keep their meanings; no KL estimate is computed.

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
                    f"{name} must be 1.0 for AOTUnpairedTrainer; got {getattr(self, name)!r}. "
                    "In KTO, desirable_weight and undesirable_weight rebalance the "
                    "per-completion losses when the data have more completions of one label "
                    "than of the other (TRL's recommended ranges are for that loss). The AOT "
                    "unpaired loss compares the desirable and the undesirable log-ratios as two "
                    "distributions of total mass 1 each, whatever their counts: the imbalance "
                    "is already balanced, and a weight on one side would change nothing. Leave "
                    "both at 1.0"
                )
        _check_options(
            self, beta=self.beta, label_smoothing=0.0, disable_dropout=self.disable_dropout
        )
