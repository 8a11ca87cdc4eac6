"""Input checks whose messages name the argument, what was expected and what came.

Two kinds of checks:

* **metadata checks** (type, dtype, shape, device, option names and ranges) always run; they read
  no tensor values and never synchronize a device;
* **value checks** (non-finite inputs, negative or all-zero weights) read tensor values. On the CPU
  they are cheap and run by default; on an accelerator they would force a host-device sync every
  step, so there they run only when enabled with :func:`set_value_checks` ``("always")``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = [
    "Reduction",
    "ValueChecks",
    "check_choice",
    "check_finite",
    "check_int",
    "check_label_smoothing",
    "check_logps",
    "check_positive",
    "check_real",
    "check_reduction",
    "check_same_device",
    "check_same_dtype",
    "check_tensor",
    "check_weights",
    "describe",
    "get_value_checks",
    "reduce",
    "set_value_checks",
    "values_checked",
]

ValueChecks = Literal["auto", "always", "never"]
Reduction = Literal["mean", "sum", "none"]

_value_checks: ValueChecks = "auto"


def set_value_checks(mode: ValueChecks) -> None:
    """Choose when checks that read tensor values run.

    Args:
        mode: ``"auto"`` (default): on CPU tensors only, where they cost no device sync;
            ``"always"``: on every device (one host-device sync per checked call on accelerators);
            ``"never"``: skip them (non-finite inputs then propagate to a NaN loss).

    Raises:
        ValueError: ``mode`` is not one of the three names.
    """
    global _value_checks
    check_choice(mode, "mode", get_args(ValueChecks))
    _value_checks = mode


def get_value_checks() -> ValueChecks:
    """Return the current mode set by :func:`set_value_checks`."""
    return _value_checks


def values_checked(x: Tensor) -> bool:
    if _value_checks == "never" or torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():  # vmap/grad: values are not concrete
        return False
    return _value_checks == "always" or x.device.type == "cpu"


def describe(x: object) -> str:
    """A short description of a received value for error messages."""
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)}, dtype {x.dtype}, on {x.device}"
    return f"{x!r} ({type(x).__name__})"


def check_choice(value: object, name: str, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {expected}; got {value!r}")


def check_real(value: object, name: str, expected: str) -> float:
    """Raise ``TypeError`` unless ``value`` is a real number of any kind (Python, NumPy or
    ``fractions``; not a bool); return it as a float. ``expected`` says what is wanted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}; got {describe(value)}")
    return float(value)


def check_int(value: object, name: str, expected: str = "an int") -> int:
    """Raise ``TypeError`` unless ``value`` is an integer of any kind (Python or NumPy; not a
    bool); return it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}; got {describe(value)}")
    return int(value)


def check_positive(value: object, name: str) -> float:
    """Raise unless ``value`` is a finite real number > 0; return it as a float."""
    number = check_real(value, name, "a positive real number")
    if not (number > 0 and number < math.inf):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return number


def check_label_smoothing(value: object) -> float:
    """Raise unless ``0 <= value < 0.5`` (conservative label smoothing as in cDPO)."""
    number = check_real(value, "label_smoothing", "a real number in [0, 0.5)")
    if not 0.0 <= number < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5); got {value!r}")
    return number


def check_tensor(
    x: object, name: str, *, ndim: int | None = None, min_ndim: int = 0, allow_empty: bool = False
) -> Tensor:
    """Check that ``x`` is a floating-point tensor with the given dimensionality, non-empty
    unless ``allow_empty`` (a rank's share of a global batch may be empty)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {describe(x)}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64); "
            f"got {x.dtype}"
        )
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.dim() < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s); got shape {tuple(x.shape)}"
        )
    if x.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty; got shape {tuple(x.shape)}")
    return x


def check_same_device(tensors: dict[str, Tensor]) -> None:
    """Raise ``ValueError`` unless every tensor lies on the same device."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} must be on the same device as {first_name} ({first.device}); "
                f"got {t.device}"
            )


def check_same_dtype(tensors: dict[str, Tensor]) -> None:
    """Raise ``TypeError`` unless every tensor has the same dtype."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} must have the same dtype as {first_name} ({first.dtype}); got {t.dtype}"
            )


def check_logps(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    paired: bool,
    allow_empty: bool = False,
) -> dict[str, Tensor]:
    """Check the four per-sequence log-prob tensors: 1-D, floating, one device, one dtype; all of
    one length when ``paired``, else policy and reference of each side of one length. Returns
    them by argument name."""
    tensors = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "reference_chosen_logps": reference_chosen_logps,
        "reference_rejected_logps": reference_rejected_logps,
    }
    for name, t in tensors.items():
        check_tensor(t, name, ndim=1, allow_empty=allow_empty)
    check_same_device(tensors)
    check_same_dtype(tensors)
    groups = [list(tensors)] if paired else [list(tensors)[0::2], list(tensors)[1::2]]
    for first_name, *rest in groups:
        for name in rest:
            if tensors[name].shape != tensors[first_name].shape:
                raise ValueError(
                    f"{name} must have the same length as {first_name} "
                    f"({tensors[first_name].shape[0]}); got {tensors[name].shape[0]}"
                )
    return tensors


def check_finite(x: Tensor, name: str, parts: dict[str, Tensor] | None = None) -> bool:
    """Value check: raise ``ValueError`` if ``x`` holds NaN or infinity; return whether ``x``
    was checked (False when value checks do not run, see :func:`set_value_checks`).

    One float64 sum ``t`` decides (NaN and inf propagate through it, and float64 does not
    overflow on lower-precision inputs; ``t - t == 0`` iff ``t`` is finite); only when it is
    not finite are the elements of ``parts``, the tensors ``x`` was computed from (default:
    ``x`` itself), inspected to name the culprit.
    """
    if not values_checked(x):
        return False
    total = x.sum(dtype=torch.float64)
    if bool(total - total == 0):
        return True
    for part_name, part in (parts or {name: x}).items():
        bad = int((~torch.isfinite(part)).sum())
        if bad:
            raise ValueError(
                f"{part_name} must be finite; got {bad} NaN or infinite value(s) of "
                f"{part.numel()} (aot_losses.set_value_checks('never') lets them propagate "
                "to a NaN loss)"
            )
    return bool(torch.isfinite(x).all())  # finite parts, but the float64 sum overflowed


def check_weights(
    w: object, name: str, like: Tensor, like_name: str, *, allow_zero_sum: bool = False
) -> Tensor:
    """Check sample weights: floating, on ``like``'s device, same shape as ``like`` (or
    broadcastable along leading dimensions), nonnegative, finite and, unless ``allow_zero_sum``
    (a rank's share of a global batch), not all zero."""
    w = check_tensor(w, name, min_ndim=1, allow_empty=like.numel() == 0)
    check_same_device({like_name: like, name: w})
    if w.shape[-1] != like.shape[-1]:
        raise ValueError(
            f"{name} must have one weight per element of {like_name} (last dimension "
            f"{like.shape[-1]}); got shape {tuple(w.shape)}"
        )
    trailing = like.shape[like.dim() - w.dim() :]
    if w.dim() > like.dim() or any(a not in (1, b) for a, b in zip(w.shape, trailing, strict=True)):
        raise ValueError(
            f"{name} must broadcast against {like_name} of shape {tuple(like.shape)}; "
            f"got shape {tuple(w.shape)}"
        )
    if values_checked(w):
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"{name} must be finite; got NaN or infinite weights")
        if bool((w < 0).any()):
            raise ValueError(f"{name} must be nonnegative; got minimum {float(w.min())}")
        if not allow_zero_sum and bool((w.sum(-1) == 0).any()):
            raise ValueError(f"{name} must not be all zero (along the last dimension)")
    return w


def check_reduction(reduction: object) -> Reduction:
    """Raise ``ValueError`` unless ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``."""
    check_choice(reduction, "reduction", get_args(Reduction))
    return reduction  # type: ignore[return-value]


def reduce(losses: Tensor, reduction: Reduction) -> Tensor:
    """Apply a ``torch.nn``-style reduction over the last dimension."""
    if reduction == "mean":
        return losses.mean(-1)
    if reduction == "sum":
        return losses.sum(-1)
    return losses
