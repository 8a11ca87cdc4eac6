"""Global-batch gathering across ``torch.distributed`` ranks, with autograd.

The AOT losses sort a batch; with data parallelism each rank holds only its share of the batch.
:func:`gather_concat_many` concatenates every rank's shares of several tensors (and of their
weights) in rank order, so that each rank can sort the whole (global) batch, and routes gradients
back so that the usual data-parallel gradient averaging (DDP, FSDP) yields exactly the gradient of
the loss on the concatenated batch; :func:`gather_concat` does it for one tensor.

Why the gradient is exact. Let ``x_r`` be rank ``r``'s share, ``X = concat(x_0, ..., x_{W-1})``
and ``L(X)`` the global loss, computed identically on each of the ``W`` ranks. The backward of the
gather sums the incoming gradient over ranks and keeps the own slice, so rank ``r`` receives
``sum_k dL/dx_r = W dL/dx_r`` and, through its local computation of ``x_r`` from the parameters
``theta``, the local gradient ``g_r = W (dL/dx_r)(dx_r/dtheta)``. Averaging over ranks gives
``(1/W) sum_r g_r = sum_r (dL/dx_r)(dx_r/dtheta) = dL/dtheta``.

Communication per call, whatever the number of tensors gathered together (``W`` ranks, tensor
``i`` holding ``n_ir`` elements per leading index on rank ``r``, ``N_i = sum_r n_ir``): at most
two collectives forward and one backward.

* forward, one ``all_gather`` of 14 int64 per tensor and rank (its local size, dtype, whether it
  needs a gradient, its leading shape, whether weights come with it and their dtype, or, from a
  rank whose own checks of its inputs failed, the kind and length of its error message), then one
  ``all_gather`` of all the rank's tensors and weights flattened into one buffer, padded to the
  largest rank's (the padding is sliced away); nothing more when every buffer is empty;
* backward, one ``all_reduce`` (sum) of the global gradients of the tensors that need one, packed
  into one buffer, then each rank keeps its own slices (all-reduce works on every backend and
  PyTorch release, where gloo long lacked reduce-scatter).

All are latency-bound for loss-sized tensors (one scalar per sample). With a single rank nothing
is communicated.

Every call is a collective: all ranks of the group must call it the same number of times and in
the same order, with the same tensors (dtype and leading shape of each), weights for the same
ones; with gradient accumulation each micro-batch is gathered (and sorted) together with the same
micro-batch index of the other ranks.

Bad input on one rank never leaves the others waiting. A rank whose own checks of its inputs
fail (a wrong shape, a NaN, a negative weight: the checks inside :func:`local_checks`) sends its
error in place of its metadata; the ranks then gather the error messages in place of the data,
and every rank raises the same error, naming the rank at fault. Disagreements between ranks are
found from the metadata and raised on every rank alike as well.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["check_process_group", "gather_concat", "gather_concat_many", "local_checks"]

# The dtypes that can be gathered; the metadata exchange carries dtypes as indices into _CODED
# (so that an unsupported dtype on one rank is reported on every rank instead of leaving the
# others waiting).
_GATHERABLE: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_CODED: tuple[torch.dtype, ...] = (
    *_GATHERABLE,
    *(torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool),
    *(torch.complex64, torch.complex128),
)
# Metadata per rank and tensor: number of dims, local size, dtype code, needs-grad flag, leading
# dims (padded with -1), then whether weights come with it and their dtype code. A rank whose
# local checks failed sends instead a row of the same width starting with -(1 + the index of the
# error's class in _REPORTED) and the length of its UTF-8 message (a negative number of dims
# marks the row).
_HEADER = 4
_MAX_LEADING_DIMS = 8
_WIDTH = _HEADER + _MAX_LEADING_DIMS + 2
# The errors of a rank's local checks that are reported to, and raised on, every rank.
_REPORTED: tuple[type[Exception], ...] = (ValueError, TypeError)


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

    :func:`gather_concat_many` of the one tensor ``x``, without weights. Shares may have
    different sizes along the last dimension, including 0; the result holds exactly the ranks'
    elements (no padding). The backward sums the incoming gradient over the ranks and returns
    each rank its own slice: when every rank computes the same loss of the result and the
    gradients are then averaged over ranks (DDP, FSDP), the average equals the gradient of that
    loss on the concatenated batch (see the module docstring for the proof).

    Communication: one ``all_gather`` of 14 int64 per rank, then one ``all_gather`` of the shares
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
        RuntimeError, TypeError, ValueError: as :func:`gather_concat_many`.

    Example:
        Not run here (it needs a process group). On 2 ranks holding ``x = tensor([1., 2.])``
        and ``x = tensor([3.])``, both with ``requires_grad=True``::

            g = gather_concat(x, torch.distributed.group.WORLD, name="x")
            # g == tensor([1., 2., 3.]) on both ranks
            g.sum().backward()
            # x.grad == tensor([2., 2.]) on rank 0 and tensor([2.]) on rank 1: each rank's
            # slice of the gradient, summed over the 2 ranks; DDP's average then gives 1 each
    """
    (gathered,), _ = gather_concat_many([x], group, names=[name])
    return gathered


def gather_concat_many(
    tensors: Sequence[Tensor],
    group: dist.ProcessGroup | None,
    *,
    names: Sequence[str],
    weights: Sequence[Tensor | None] | None = None,
    weight_names: Sequence[str] | None = None,
) -> tuple[list[Tensor], list[Tensor | None]]:
    """Concatenate every rank's shares of several tensors, and of their weights, in rank order,
    in one gather, with autograd.

    Each tensor is gathered as by :func:`gather_concat` (along the last dimension, shares of any
    size including 0, the backward summing the gradient over ranks and keeping the own slice),
    but all of them, and their weights, travel in one buffer: a loss of several samples pays
    the latency of the collectives once. The weights are data, detached: they are gathered
    with the samples, expanded to their shape, and get no gradient.

    Communication, whatever the number of tensors: one ``all_gather`` of 14 int64 per tensor
    and rank (the metadata of every tensor and its weights), then one ``all_gather`` of all the
    rank's tensors and weights flattened into one buffer of their promoted dtype (exact for
    each of them), padded to the largest rank's; none more when every rank's buffer is empty.
    Backward (when some tensor needs a gradient), one ``all_reduce`` of the global gradients of
    the tensors that need one, packed into one buffer (float32 for float16 / bfloat16 tensors,
    float64 with any float64 one). Every call is a collective: all ranks of ``group`` must call
    it, in the same order. With a single rank nothing is communicated and the tensors and
    weights are returned themselves.

    Args:
        tensors: this rank's shares, tensor ``i`` of shape ``(..., n_i)``, a floating dtype
            (float16, bfloat16, float32, float64), all on the device the group communicates on
            (CPU for gloo, the current CUDA device for NCCL). For each tensor, the dtype, the
            leading shape ``(...)`` (at most 8 dims) and whether it needs a gradient must agree
            across ranks; ``n_i`` may differ and may be 0. The tensors may differ from each
            other in dtype, leading shape and size.
        group: the process group (``torch.distributed.group.WORLD`` or a result of
            ``torch.distributed.new_group``); ``None`` means the default group.
        names: the tensors' names, for error messages.
        weights: ``None`` (no weights), or one entry per tensor: ``None`` or its weights,
            broadcastable to its shape, of a floating dtype (which may differ across ranks).
            Every rank must give weights for the same tensors.
        weight_names: the weights' names, for error messages (default ``"weights of <name>"``).

    Returns:
        ``(gathered, gathered_weights)``: tensor ``i`` gathered, of shape ``(..., N_i)`` with
        ``N_i`` the sum of the ranks' ``n_i``, in its dtype and on its device; its weights
        gathered, of the same shape, in the promoted dtype of every tensor and weight (of all
        ranks), or ``None``. Identical on every rank.

    Raises:
        RuntimeError: ``torch.distributed`` is unavailable or not initialized (raised before any
            communication); ranks disagree on whether a tensor requires a gradient (the
            backward is a collective, so it must run on every rank or on none).
        TypeError: ``group`` is not a process group (raised before any communication); a
            tensor or weight is not a tensor on some rank; a tensor's or weight's dtype is not
            one of the four above on some rank; ranks disagree on a tensor's dtype ("x has
            dtype float32 on rank 0 but bfloat16 on rank 1").
        ValueError: this process is not a member of ``group`` (raised before any
            communication); on some rank, ``names``, ``weights`` or ``weight_names`` do not
            match ``tensors``, tensors or weights lie on different devices, weights do not
            broadcast to their tensor's shape, a tensor is 0-D or has more than 8 leading dims;
            ranks disagree on a tensor's leading shape, or on whether its weights are given.

        All but the process-group errors are raised on every rank alike, after the metadata
        exchange, so that no rank is left waiting in a collective; an error of one rank's own
        arguments (see :func:`local_checks`) reads ``"on rank R of the W in the group: ..."``.
        Ranks are numbered within ``group``.

    Example:
        Not run here (it needs a process group). On 2 ranks holding ``u = tensor([1., 2.])``,
        ``v = tensor([5.])`` and ``u = tensor([3.])``, ``v = tensor([], dtype=torch.float32)``::

            (gu, gv), (wu, wv) = gather_concat_many(
                [u, v], torch.distributed.group.WORLD, names=["u", "v"],
                weights=[torch.ones_like(u), None],
            )
            # gu == tensor([1., 2., 3.]), gv == tensor([5.]), wu == tensor([1., 1., 1.]),
            # wv is None, on both ranks
    """
    group = check_process_group(group)
    weights = [None] * len(tensors) if weights is None else list(weights)
    if weight_names is None:
        weight_names = [f"weights of {name}" for name in names]
    with local_checks(group, gathered=len(tensors), like=tensors[0] if tensors else None):
        _check_arguments(tensors, names, weights, weight_names)
    if dist.get_world_size(group) == 1:
        _check_rows([_metadata(tensors, weights)], names, weight_names)
        return list(tensors), weights
    rows = _exchange(_metadata(tensors, weights), group, tensors[0].device)
    if any(row[0] < 0 for row in rows):
        raise _agreed_error(rows, b"", group, tensors[0].device)
    _check_rows(rows, names, weight_names)
    plan = _Plan.of(rows, group)
    given = [
        w.detach().expand_as(x) for x, w in zip(tensors, weights, strict=True) if w is not None
    ]
    # torch types Function.apply without annotations.
    outputs = _GatherConcat.apply(plan, *tensors, *given)  # type: ignore[no-untyped-call]
    gathered: list[Tensor] = list(outputs[: len(tensors)])
    gathered_weights = iter(outputs[len(tensors) :])
    return gathered, [None if w is None else next(gathered_weights) for w in weights]


@contextlib.contextmanager
def local_checks(
    process_group: dist.ProcessGroup | None, *, gathered: int, like: object
) -> Iterator[None]:
    """Run this rank's checks of its inputs to a later :func:`gather_concat_many` call, so that
    a ``ValueError`` or ``TypeError`` they raise is raised on every rank alike, promptly.

    On the rank whose checks raise, the block's error is sent through the first collective of
    the gather that the other ranks have entered (in place of this rank's metadata); the ranks
    then gather the error messages (in place of the data), and each raises the error of the
    lowest rank at fault, with the same type and the message ``"on rank R of the W in the group:
    <message>"``. Nothing is communicated when the checks pass (the gather's own two collectives
    carry the verdict), nor with a group of one rank or without a group, where the error is
    raised as it is.

    Args:
        process_group: the group of the gather that follows the block (as
            :func:`check_process_group` takes it), or ``None`` when none follows (a local loss).
        gathered: the number of tensors that gather concatenates on the other ranks.
        like: a tensor on the device the gather communicates on (typically the first tensor
            passed to the gather or the one it is computed from); the CPU when not a tensor.

    Raises:
        ValueError, TypeError: the block's, as above. Errors of other types propagate from this
            rank alone.

    Example:
        Not run here (it needs a process group). On every rank::

            with local_checks(group, gathered=1, like=x):
                if not torch.isfinite(x).all():
                    raise ValueError("x must be finite")
            (gathered,), _ = gather_concat_many([x], group, names=["x"])
            # a NaN in x on rank 1 raises, on every rank:
            # ValueError: on rank 1 of the 2 in the group: x must be finite
    """
    try:
        yield
    except _REPORTED as error:
        if process_group is None:
            raise
        group = check_process_group(process_group)
        if dist.get_world_size(group) == 1:
            raise
        kind = next(k for k, cls in enumerate(_REPORTED, start=1) if isinstance(error, cls))
        message = str(error).encode()
        row = [-kind, len(message), *[0] * (gathered * _WIDTH - 2)]
        device = like.device if isinstance(like, Tensor) else torch.device("cpu")
        raise _agreed_error(_exchange(row, group, device), message, group, device) from error


def _exchange(row: list[int], group: dist.ProcessGroup, device: torch.device) -> list[list[int]]:
    """The metadata collective: every rank's ``row`` (all of one width), in rank order."""
    local = torch.tensor(row, dtype=torch.int64, device=device)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    rows: list[list[int]] = torch.stack(parts).tolist()
    return rows


def _agreed_error(
    rows: list[list[int]], message: bytes, group: dist.ProcessGroup, device: torch.device
) -> Exception:
    """The error every rank raises when some ``rows`` of the metadata exchange report failed
    local checks: the UTF-8 messages (``message`` from this rank, empty if its checks passed)
    are gathered in one collective, and the lowest failed rank's makes the error."""
    failed = [r for r, row in enumerate(rows) if row[0] < 0]
    local = torch.zeros(max(1, *(rows[r][1] for r in failed)), dtype=torch.uint8)
    local[: len(message)] = torch.tensor(list(message), dtype=torch.uint8)
    parts = [torch.empty_like(local, device=device) for _ in rows]
    dist.all_gather(parts, local.to(device), group=group)
    first = failed[0]
    text = bytes(parts[first][: rows[first][1]].tolist()).decode()
    also = f" (rank(s) {failed[1:]} failed too)" if len(failed) > 1 else ""
    kind = _REPORTED[-rows[first][0] - 1]
    return kind(f"on rank {first} of the {len(rows)} in the group{also}: {text}")


def _check_arguments(
    tensors: Sequence[Tensor],
    names: Sequence[str],
    weights: Sequence[Tensor | None],
    weight_names: Sequence[str],
) -> None:
    """The checks of :func:`gather_concat_many` that need no communication."""
    if not tensors or not len(tensors) == len(names) == len(weights) == len(weight_names):
        raise ValueError(
            "gather_concat_many needs at least one tensor, and one name, one weight entry and "
            f"one weight name per tensor; got {len(tensors)} tensor(s), {len(names)} name(s), "
            f"{len(weights)} weight entries and {len(weight_names)} weight name(s)"
        )
    for x, name in zip(tensors, names, strict=True):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    device = tensors[0].device
    for x, name, w, w_name in zip(tensors, names, weights, weight_names, strict=True):
        if x.device != device:
            raise ValueError(
                f"{name} must be on the same device as {names[0]} ({device}); got {x.device}"
            )
        if w is None:
            continue
        if not isinstance(w, Tensor):
            raise TypeError(f"{w_name} must be a torch.Tensor or None; got {type(w).__name__}")
        if w.device != device:
            raise ValueError(
                f"{w_name} must be on the same device as {names[0]} ({device}); got {w.device}"
            )
        trailing = x.shape[x.dim() - w.dim() :]
        if w.dim() > x.dim() or any(
            a not in (1, b) for a, b in zip(w.shape, trailing, strict=True)
        ):
            raise ValueError(
                f"{w_name} must broadcast to the shape of {name} {tuple(x.shape)}; got shape "
                f"{tuple(w.shape)}"
            )


def _metadata(tensors: Sequence[Tensor], weights: Sequence[Tensor | None]) -> list[int]:
    """This rank's row of the metadata exchange, ``_WIDTH`` ints per tensor: number of dims,
    size of the last dim (0 when 0-D), dtype code (-1 when not in _CODED), needs-grad flag,
    leading dims padded with -1; whether weights are given, their dtype code (-1 if not)."""
    row: list[int] = []
    for x, w in zip(tensors, weights, strict=True):
        leading = list(x.shape[:-1])[:_MAX_LEADING_DIMS]
        needs_grad = x.requires_grad and torch.is_grad_enabled()
        entry = [x.dim(), x.shape[-1] if x.dim() else 0, _code(x.dtype), int(needs_grad), *leading]
        entry += [-1] * (_HEADER + _MAX_LEADING_DIMS - len(entry))
        row += [*entry, int(w is not None), -1 if w is None else _code(w.dtype)]
    return row


def _check_rows(rows: list[list[int]], names: Sequence[str], weight_names: Sequence[str]) -> None:
    """Raise, identically on every rank, if a rank's share of a tensor or of its weights cannot
    be gathered, or if ranks disagree on a tensor's dtype, leading shape, whether it needs a
    gradient or whether its weights are given."""
    for i, (name, w_name) in enumerate(zip(names, weight_names, strict=True)):
        _check_entries([row[i * _WIDTH : (i + 1) * _WIDTH] for row in rows], name, w_name)


def _check_entries(entries: list[list[int]], name: str, w_name: str) -> None:
    """:func:`_check_rows` for one tensor: ``entries`` holds its metadata on each rank."""
    for r, entry in enumerate(entries):
        ndim, code = entry[0], entry[2]
        _check_gatherable(code, name, r)
        if not 1 <= ndim <= _MAX_LEADING_DIMS + 1:
            raise ValueError(
                f"{name} must have between 1 and {_MAX_LEADING_DIMS + 1} dimensions to be "
                f"gathered across ranks; got {ndim} on rank {r}"
            )
    first = entries[0]
    for r, entry in enumerate(entries[1:], start=1):
        if entry[2] != first[2]:
            raise TypeError(
                f"{name} must have the same dtype on every rank; {name} has dtype "
                f"{_dtype_name(first[2])} on rank 0 but {_dtype_name(entry[2])} on rank {r}"
            )
        if _leading(entry) != _leading(first):
            raise ValueError(
                f"{name} must have the same leading shape (all dimensions but the last) on every "
                f"rank; got {_leading(first)} on rank 0 but {_leading(entry)} on rank {r}"
            )
    grad_ranks = [r for r, entry in enumerate(entries) if entry[3]]
    if 0 < len(grad_ranks) < len(entries):
        raise RuntimeError(
            f"{name} must require a gradient on every rank or on none (the backward of the "
            f"gather is a collective); it does on rank(s) {grad_ranks} of {len(entries)} only. "
            "Compute it the same way on every rank, or under torch.no_grad() on every rank"
        )
    weighted_ranks = [r for r, entry in enumerate(entries) if entry[-2]]
    if 0 < len(weighted_ranks) < len(entries):
        raise ValueError(
            f"{w_name} must be given on every rank of process_group or on none; it is on "
            f"rank(s) {weighted_ranks} of {len(entries)} only"
        )
    for r in weighted_ranks:
        _check_gatherable(entries[r][-1], w_name, r)


def _check_gatherable(code: int, name: str, rank: int) -> None:
    if code < 0 or _CODED[code] not in _GATHERABLE:
        raise TypeError(
            f"{name} must have dtype float16, bfloat16, float32 or float64 to be gathered "
            f"across ranks; got {_dtype_name(code)} on rank {rank}"
        )


def _code(dtype: torch.dtype) -> int:
    return _CODED.index(dtype) if dtype in _CODED else -1


def _dtype_name(code: int) -> str:
    return str(_CODED[code]).removeprefix("torch.") if code >= 0 else "an unsupported dtype"


def _leading(entry: list[int]) -> tuple[int, ...]:
    return tuple(entry[_HEADER : _HEADER + entry[0] - 1])


@dataclass(frozen=True)
class _Plan:
    """What every rank knows after the metadata exchange, per tensor ``i``: its local size on
    each rank, leading shape, dtype, whether it needs a gradient and whether weights come with
    it; and the dtype of the packed buffer."""

    group: dist.ProcessGroup
    rank: int
    sizes: list[list[int]]
    leading: list[tuple[int, ...]]
    dtypes: list[torch.dtype]
    needs_grad: list[bool]
    weighted: list[bool]
    packed: torch.dtype

    @staticmethod
    def of(rows: list[list[int]], group: dist.ProcessGroup) -> _Plan:
        """The plan of checked metadata ``rows`` (one per rank)."""
        entries = [
            [row[i * _WIDTH : (i + 1) * _WIDTH] for row in rows]
            for i in range(len(rows[0]) // _WIDTH)
        ]
        dtypes = [_CODED[e[0][2]] for e in entries]
        weighted = [bool(e[0][-2]) for e in entries]
        weight_dtypes = [
            _CODED[row[-1]] for e, w in zip(entries, weighted, strict=True) if w for row in e
        ]
        return _Plan(
            group=group,
            rank=dist.get_rank(group),
            sizes=[[row[1] for row in e] for e in entries],
            leading=[_leading(e[0]) for e in entries],
            dtypes=dtypes,
            needs_grad=[bool(e[0][3]) for e in entries],
            weighted=weighted,
            packed=functools.reduce(torch.promote_types, dtypes + weight_dtypes),
        )


class _GatherConcat(torch.autograd.Function):
    """One padded all_gather of the packed tensors and weights forward; one all_reduce (sum) of
    the packed gradients and a slice per tensor backward."""

    @staticmethod
    def forward(ctx: FunctionCtx, plan: _Plan, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.plan = plan  # type: ignore[attr-defined]
        # the buffer holds the tensors, then the given weights (expanded to their tensor's shape)
        slots = [*range(len(plan.dtypes)), *(i for i, w in enumerate(plan.weighted) if w)]
        counts = [[math.prod(plan.leading[i]) * n for n in plan.sizes[i]] for i in slots]
        width = max(map(sum, zip(*counts, strict=True)))
        local = torch.cat([t.to(plan.packed).reshape(-1) for t in tensors])
        parts = [local] * len(counts[0])
        if width > 0:
            padded = local.new_zeros(width)
            padded[: local.numel()] = local
            parts = [torch.empty_like(padded) for _ in parts]
            dist.all_gather(parts, padded, group=plan.group)
        offsets = [0] * len(parts)
        outputs = []
        for i, count in zip(slots, counts, strict=True):
            pieces = []
            for r, (part, n) in enumerate(zip(parts, plan.sizes[i], strict=True)):
                pieces.append(part[offsets[r] : offsets[r] + count[r]].view(*plan.leading[i], n))
                offsets[r] += count[r]
            outputs.append(torch.cat(pieces, dim=-1))
        samples = [outputs[i].to(dtype) for i, dtype in enumerate(plan.dtypes)]
        weights = outputs[len(samples) :]
        no_grad = [x for x, flag in zip(samples, plan.needs_grad, strict=True) if not flag]
        ctx.mark_non_differentiable(*no_grad, *weights)
        return (*samples, *weights)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        plan: _Plan = ctx.plan
        needing = [i for i, flag in enumerate(plan.needs_grad) if flag]
        # Low-precision gradients are summed in float32: one rounding instead of one per rank.
        dtype = functools.reduce(
            torch.promote_types, [plan.dtypes[i] for i in needing], torch.float32
        )
        total = torch.cat([grads[i].to(dtype).reshape(-1) for i in needing])
        if total.numel() > 0:
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=plan.group)
        result: list[Tensor | None] = [None] * (1 + len(grads))  # the plan, then the inputs
        offset = 0
        for i in needing:
            n_global = sum(plan.sizes[i])
            count = math.prod(plan.leading[i]) * n_global
            grad = total[offset : offset + count].view(*plan.leading[i], n_global)
            offset += count
            start = sum(plan.sizes[i][: plan.rank])
            result[1 + i] = grad[..., start : start + plan.sizes[i][plan.rank]].to(plan.dtypes[i])
        return tuple(result)
