"""Refusing second derivatives where a backend would get them wrong silently.

torchsort's KL backward and the Sinkhorn backward are first-order only: differentiated again
(``create_graph=True``: double backward, Hessians, gradient penalties) they would return zero or
wrong second derivatives without an error. :func:`first_order_only` puts an identity in front of
such a backend whose backward raises instead when the graph of the gradient is being built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "first_order_only",
]


class _FirstOrderOnly(torch.autograd.Function):
    """Identity; its backward raises under ``create_graph=True`` (grad mode on in backward)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, what: str) -> Tensor:
        ctx.what = what
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{ctx.what} has first derivatives only: its backward cannot be differentiated "
                "again (create_graph=True, double backward, Hessians); backend='torch' has "
                "exact second derivatives"
            )
        return grad, None


def first_order_only(x: Tensor, what: str) -> Tensor:
    """``x``, behind an identity whose backward refuses to build a graph of the gradient;
    ``what`` names the backend in the error."""
    if not x.requires_grad:
        return x
    out: Tensor = _FirstOrderOnly.apply(x, what)  # type: ignore[no-untyped-call]
    return out
