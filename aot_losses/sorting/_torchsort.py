"""Adapter to torchsort (https://github.com/teddykoker/torchsort), an optional C++/CUDA backend.

torchsort takes 2-D input (it sorts the last dimension), sorts ascending only, has no bfloat16
kernel and loops forever on float16 input from about n = 2100; the callers reshape, negate and
check dtypes so that it is only given what it handles.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._first_order import first_order_only

__all__ = [
    "torchsort_soft",
]


def _import_torchsort() -> Any:
    try:
        import torchsort
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "backend='torchsort' needs the optional torchsort package, built against the torch "
            "you have: `pip install --no-build-isolation torchsort`; or use backend='torch'"
        ) from err
    return torchsort


def torchsort_soft(x: Tensor, strength: float, regularization: str, *, rank: bool) -> Tensor:
    """torchsort's ascending ``soft_sort`` (or ``soft_rank``) of the rows of a 2-D ``x``.

    Second derivatives: exact (zero) for ``"l2"``; for ``"kl"`` a backward under
    ``create_graph=True`` raises ``RuntimeError`` (torchsort's would be silently wrong).

    Range: torchsort divides by the strength in ``x``'s dtype, so it must be at least
    ``max(tiny, n / max)`` of that dtype's ``finfo`` (float32: about 1.2e-38), and ``|x| / s``
    must stay finite there; within that, its float32 error grows like ``n / s x 6e-8``.

    Raises:
        ImportError: torchsort is not installed.
        TypeError: ``x`` is float16 or bfloat16 (torchsort has no bfloat16 kernel and hangs on
            float16 from about n = 2100).
        ValueError: the strength is below that range, or ``x`` is a meta tensor.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(
            f"backend='torchsort' supports float32 and float64 only; got {x.dtype} (torchsort "
            "has no bfloat16 kernel and loops forever on float16 from n = 2100); cast to "
            "float32 or use backend='torch'"
        )
    info = torch.finfo(x.dtype)
    low = max(info.tiny, x.shape[-1] / info.max)
    if strength < low:
        raise ValueError(
            f"backend='torchsort' computes in {x.dtype}: regularization_strength must be at "
            f"least {low:.3g} there (it divides by it: a smaller one gives NaN); got "
            f"{strength!r}; use float64 or backend='torch'"
        )
    if x.device.type == "meta":
        raise ValueError("x must not be a meta tensor with backend='torchsort' (no meta kernel)")
    torchsort = _import_torchsort()
    fn = torchsort.soft_rank if rank else torchsort.soft_sort
    if regularization == "kl":  # its KL backward is not differentiable again, silently
        x = first_order_only(x, "backend='torchsort' with regularization='kl'")
    out: Tensor = fn(x, regularization=regularization, regularization_strength=strength)
    return out
