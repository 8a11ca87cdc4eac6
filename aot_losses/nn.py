"""``nn.Module`` wrappers: options are fixed at construction, ``forward`` only calls the function.

Example:
    >>> import torch
    >>> loss_fn = AOTPairedLoss(beta=1.0, penalty="squared_hinge")
    >>> loss_fn
    AOTPairedLoss(beta=1.0, penalty='squared_hinge')
    >>> pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-2.0]), torch.zeros(1), torch.zeros(1)
    >>> loss_fn(pc, pr, rc, rr)
    tensor(0.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from .baselines import (
    dpo_loss,
    dpo_options,
    ipo_loss,
    ipo_options,
    kto_loss,
    kto_options,
    slic_loss,
    slic_options,
)
from .losses import aot_paired_loss, aot_unpaired_loss
from .ot import resolve_options

__all__ = [
    "AOTPairedLoss",
    "AOTUnpairedLoss",
    "DPOLoss",
    "IPOLoss",
    "KTOLoss",
    "SLiCLoss",
]


class _FunctionalLoss(nn.Module):
    """Holds keyword options of ``function``; ``forward(*tensors, **per_call)`` calls it.

    The options are checked at construction by ``check_options`` (the function's own checks of
    them, given the function's defaults for the rest), so a bad one fails here, not at the
    first forward. Tensors and process groups given as options are checked per call.
    """

    function: ClassVar[Callable[..., Tensor]]
    check_options: ClassVar[Callable[..., object]]

    def __init__(self, **options: Any) -> None:
        super().__init__()
        parameters = inspect.signature(type(self).function).parameters.values()
        defaults = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}
        self._tensors = tuple(p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD)
        for name in options:
            if name not in defaults:
                raise TypeError(
                    f"{type(self).__name__} got an unexpected option {name!r}; "
                    f"expected one of {list(defaults)}"
                )
        checked = inspect.signature(type(self).check_options).parameters
        type(self).check_options(
            **{k: v for k, v in {**defaults, **options}.items() if k in checked}
        )
        self.options = options

    def forward(self, *tensors: Tensor, **per_call: Any) -> Tensor:
        """The function of the log-prob tensors (positional or by name) and the options (those
        given here override the module's for this call)."""
        by_name = [name for name in self._tensors[len(tensors) :] if name in per_call]
        if len(tensors) + len(by_name) != len(self._tensors):
            got = f"{len(tensors)} positional and {', '.join(by_name)} by name"
            raise TypeError(
                f"{type(self).__name__} takes {len(self._tensors)} tensors "
                f"({', '.join(self._tensors)}); got {got if by_name else len(tensors)}"
            )
        return type(self).function(*tensors, **{**self.options, **per_call})

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class AOTPairedLoss(_FunctionalLoss):
    """Module form of :func:`aot_losses.aot_paired_loss` (same keyword options)."""

    function = staticmethod(aot_paired_loss)
    check_options = staticmethod(resolve_options)


class AOTUnpairedLoss(_FunctionalLoss):
    """Module form of :func:`aot_losses.aot_unpaired_loss` (same keyword options)."""

    function = staticmethod(aot_unpaired_loss)
    check_options = staticmethod(resolve_options)


class DPOLoss(_FunctionalLoss):
    """Module form of :func:`aot_losses.baselines.dpo_loss`."""

    function = staticmethod(dpo_loss)
    check_options = staticmethod(dpo_options)


class IPOLoss(_FunctionalLoss):
    """Module form of :func:`aot_losses.baselines.ipo_loss`."""

    function = staticmethod(ipo_loss)
    check_options = staticmethod(ipo_options)


class SLiCLoss(_FunctionalLoss):
    """Module form of :func:`aot_losses.baselines.slic_loss`."""

    function = staticmethod(slic_loss)
    check_options = staticmethod(slic_options)


class KTOLoss(_FunctionalLoss):
    """Module form of :func:`aot_losses.baselines.kto_loss`."""

    function = staticmethod(kto_loss)
    check_options = staticmethod(kto_options)
