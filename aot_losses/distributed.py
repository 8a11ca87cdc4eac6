"""Global-batch gathering across ``torch.distributed`` ranks, with autograd.

The AOT losses sort a batch; with data parallelism each rank holds only its share of the batch.
:func:`gather_concat` concatenates every rank's share in rank order so that each rank can sort the
whole (global) batch, and routes gradients back so that the usual data-parallel gradient averaging
(DDP, FSDP) yields exactly the gradient of the loss on the concatenated batch.

Why the gradient is exact. Let ``x_r`` be rank ``r``'s share, ``X = concat(x_0, ..., x_{W-1})``
and ``L(X)`` the global loss, computed identically on each of the ``W`` ranks. The backward of
:func:`gather_concat` sums the incoming gradient over ranks and keeps the own slice, so rank ``r``
receives ``sum_k dL/dx_r = W dL/dx_r`` and, through its local computation of ``x_r`` from the
parameters ``theta``, the local gradient ``g_r = W (dL/dx_r)(dx_r/dtheta)``. Averaging over ranks
gives ``(1/W) sum_r g_r = sum_r (dL/dx_r)(dx_r/dtheta) = dL/dtheta``.

Communication per :func:`gather_concat` call (``W`` ranks, ``n_r`` elements per leading index on
rank ``r``, ``N = sum_r n_r``): forward, one ``all_gather`` of 12 int64 per rank (local size,
dtype, whether a gradient is needed, leading shape), then one ``all_gather`` of
``max_r n_r`` elements per rank and leading index (the shares padded to the largest; the padding
is sliced away); backward, one ``all_reduce`` (sum) of the ``N``-element global gradient per
leading index, then a slice (all-reduce works on every backend and PyTorch release, where gloo long
lacked reduce-scatter). All are latency-bound for loss-sized tensors (one scalar per sample).

Every call is a collective: all ranks of the group must call it the same number of times and in
the same order, with the same dtype and leading shape; with gradient accumulation each micro-batch
is gathered (and sorted) together with the same micro-batch index of the other ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["check_process_group", "gather_concat"]

# The dtypes that can be gathered; the metadata exchange carries dtypes as indices into _CODED
# (so that an unsupported dtype on one rank is reported on every rank instead of leaving the
# others waiting).
_GATHERABLE: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_CODED: tuple[torch.dtype, ...] = (
    *_GATHERABLE,
    *(torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool),
    *(torch.complex64, torch.complex128),
)
# Metadata per rank: number of dims, local size, dtype code, needs-grad flag, leading dims.
_HEADER = 4
_MAX_LEADING_DIMS = 8


def check_process_group(group: object, *, name: str = "process_group") -> dist.ProcessGroup:
    """Check that ``group`` is a process group this process belongs to, without communicating.

    Args:
        group: a ``torch.distributed`` process group (``torch.distributed.group.WORLD`` or a
            result of ``torch.distributed.new_group``), or ``None`` for the default group.
        name: the argument's name, for error messages.

    Returns:
        The group (the default group when ``group`` is ``None``).

    Raises:
        RuntimeError: ``torch.distributed`` is unavailable in this build of PyTorch, or no process
            group has been initialized (``torch.distributed.init_process_group``).
        TypeError: ``group`` is not a process group.
        ValueError: this process is not a member of ``group``.

    Example:
        >>> import torch.distributed as dist
        >>> dist.is_initialized()  # a single process, without init_process_group
        False
        >>> check_process_group(dist.group.WORLD)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        RuntimeError: process_group was given but torch.distributed is not initialized; ...
    """
    if not dist.is_available():
        raise RuntimeError(
            f"{name} was given but torch.distributed is not available in this build of PyTorch"
        )
    if not dist.is_initialized():
        raise RuntimeError(
            f"{name} was given but torch.distributed is not initialized; call "
            "torch.distributed.init_process_group first (or pass process_group=None to use the "
            "local batch)"
        )
    if group is None:
        group = dist.group.WORLD
    if group is dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(
            f"{name} must be a process group that this process belongs to; got the "
            f"non-member placeholder that torch.distributed.new_group returns on rank "
            f"{dist.get_rank()}, which is not among the group's ranks"
        )
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"{name} must be a torch.distributed.ProcessGroup (for example "
            f"torch.distributed.group.WORLD); got {group!r} ({type(group).__name__})"
        )
    return group


def gather_concat(x: Tensor, group: dist.ProcessGroup | None, *, name: str) -> Tensor:
    """Concatenate every rank's ``x`` along the last dimension, in rank order, with autograd.

    Shares may have different sizes along the last dimension, including 0; the result holds
    exactly the ranks' elements (no padding). The backward sums the incoming gradient over the
    ranks and returns each rank its own slice: when every rank computes the same loss of the
    result and the gradients are then averaged over ranks (DDP, FSDP), the average equals the
    gradient of that loss on the concatenated batch (see the module docstring for the proof).

    Communication: one ``all_gather`` of 12 int64 per rank, then one ``all_gather`` of the shares
    padded to the largest; backward, one ``all_reduce`` of the global gradient (accumulated in
    float32 for float16 / bfloat16 inputs). Every call is a collective: all ranks of ``group``
    must call it, in the same order. With a single rank it returns ``x`` itself.

    Args:
        x: this rank's share, shape ``(..., n_local)``, a floating dtype (float16, bfloat16,
            float32, float64) on the device the group communicates on (CPU for gloo, the current
            CUDA device for NCCL). The dtype and the leading shape ``(...)`` (at most 8 dims) must
            agree across ranks; ``n_local`` may differ and may be 0.
        group: the process group (``torch.distributed.group.WORLD`` or a result of
            ``torch.distributed.new_group``); ``None`` means the default group.
        name: the argument's name, for error messages.

    Returns:
        Shape ``(..., N)`` with ``N`` the sum of the ranks' ``n_local``, ``x``'s dtype and device,
        identical on every rank.

    Raises:
        RuntimeError: ``torch.distributed`` is unavailable or not initialized (raised before any
            communication); ranks disagree on whether ``x`` requires a gradient (the backward is
            a collective, so it must run on every rank or on none).
        TypeError: ``group`` is not a process group or ``x`` not a tensor (raised before any
            communication); ``x``'s dtype is not one of the four above on some rank; ranks
            disagree on the dtype ("x has dtype float32 on rank 0 but bfloat16 on rank 1").
        ValueError: this process is not a member of ``group`` (raised before any
            communication); ``x`` is 0-D or has more than 8 leading dims on some rank; ranks
            disagree on the leading shape.

        Errors about the tensors are raised on every rank alike, after the metadata exchange,
        so that no rank is left waiting in a collective. Ranks are numbered within ``group``.

    Example:
        Not run here (it needs a process group). On 2 ranks holding ``x = tensor([1., 2.])``
        and ``x = tensor([3.])``, both with ``requires_grad=True``::

            g = gather_concat(x, torch.distributed.group.WORLD, name="x")
            # g == tensor([1., 2., 3.]) on both ranks
            g.sum().backward()
            # x.grad == tensor([2., 2.]) on rank 0 and tensor([2.]) on rank 1: each rank's
            # slice of the gradient, summed over the 2 ranks; DDP's average then gives 1 each
    """
    group = check_process_group(group)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    world = dist.get_world_size(group)
    if world == 1:
        _check_rows([_metadata(x)], name)
        return x
    local = torch.tensor(_metadata(x), dtype=torch.int64, device=x.device)
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local, group=group)
    rows: list[list[int]] = torch.stack(parts).tolist()
    _check_rows(rows, name)
    sizes = [row[1] for row in rows]
    start = sum(sizes[: dist.get_rank(group)])
    # torch types Function.apply without annotations.
    result: Tensor = _GatherConcat.apply(x, group, sizes, start)  # type: ignore[no-untyped-call]
    return result


def _metadata(x: Tensor) -> list[int]:
    """This rank's row of the metadata exchange: number of dims, size of the last dim (0 when
    0-D), dtype code (-1 when not in _CODED), needs-grad flag, leading dims padded with -1."""
    leading = list(x.shape[:-1])[:_MAX_LEADING_DIMS]
    needs_grad = x.requires_grad and torch.is_grad_enabled()
    code = _CODED.index(x.dtype) if x.dtype in _CODED else -1
    row = [x.dim(), x.shape[-1] if x.dim() else 0, code, int(needs_grad), *leading]
    return row + [-1] * (_HEADER + _MAX_LEADING_DIMS - len(row))


def _check_rows(rows: list[list[int]], name: str) -> None:
    """Raise, identically on every rank, if a rank's share cannot be gathered or if ranks
    disagree on dtype, leading shape or whether a gradient is needed."""
    for r, row in enumerate(rows):
        ndim, code = row[0], row[2]
        if code < 0 or _CODED[code] not in _GATHERABLE:
            raise TypeError(
                f"{name} must have dtype float16, bfloat16, float32 or float64 to be gathered "
                f"across ranks; got {_dtype_name(code)} on rank {r}"
            )
        if not 1 <= ndim <= _MAX_LEADING_DIMS + 1:
            raise ValueError(
                f"{name} must have between 1 and {_MAX_LEADING_DIMS + 1} dimensions to be "
                f"gathered across ranks; got {ndim} on rank {r}"
            )
    first = rows[0]
    for r, row in enumerate(rows[1:], start=1):
        if row[2] != first[2]:
            raise TypeError(
                f"{name} must have the same dtype on every rank; {name} has dtype "
                f"{_dtype_name(first[2])} on rank 0 but {_dtype_name(row[2])} on rank {r}"
            )
        if _leading(row) != _leading(first):
            raise ValueError(
                f"{name} must have the same leading shape (all dimensions but the last) on every "
                f"rank; got {_leading(first)} on rank 0 but {_leading(row)} on rank {r}"
            )
    grad_ranks = [r for r, row in enumerate(rows) if row[3]]
    if 0 < len(grad_ranks) < len(rows):
        raise RuntimeError(
            f"{name} must require a gradient on every rank or on none (the backward of the "
            f"gather is a collective); it does on rank(s) {grad_ranks} of {len(rows)} only. "
            "Compute it the same way on every rank, or under torch.no_grad() on every rank"
        )


def _dtype_name(code: int) -> str:
    return str(_CODED[code]).removeprefix("torch.") if code >= 0 else "an unsupported dtype"


def _leading(row: list[int]) -> tuple[int, ...]:
    return tuple(row[_HEADER : _HEADER + row[0] - 1])


class _GatherConcat(torch.autograd.Function):
    """Padded all_gather forward; all_reduce (sum) and slice backward."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: Tensor, group: dist.ProcessGroup, sizes: list[int], start: int
    ) -> Tensor:
        ctx.group = group  # type: ignore[attr-defined]
        ctx.span = (start, start + x.shape[-1])  # type: ignore[attr-defined]
        ctx.dtype = x.dtype  # type: ignore[attr-defined]
        leading = x.shape[:-1]
        width = max(sizes)
        if width == 0 or leading.numel() == 0:
            return x.new_empty((*leading, sum(sizes)))
        padded = x.new_zeros((*leading, width))
        padded[..., : x.shape[-1]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([p[..., :n] for p, n in zip(parts, sizes, strict=True)], dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        start, stop = ctx.span
        if grad.numel() == 0:
            return grad[..., start:stop].to(ctx.dtype), None, None, None
        # Low-precision gradients are summed in float32: one rounding instead of one per rank.
        reduce_dtype = torch.float32 if ctx.dtype in (torch.float16, torch.bfloat16) else ctx.dtype
        total = grad.to(reduce_dtype, memory_format=torch.contiguous_format, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total[..., start:stop].to(ctx.dtype), None, None, None
