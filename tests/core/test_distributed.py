"""Global-batch sorting across ranks: gloo process groups of 2 and 3 CPU processes.

Each process group is spawned once per module (startup dominates the cost); every rank runs all
the scenarios below and saves what it measured, and the tests compare the numbers in the parent.
The oracle is the same loss computed in a single process on the concatenated batch: the loss must
be equal on every rank, and the rank-averaged gradient of a shared parameter (what DDP and FSDP
compute) must equal the single-process gradient, to 1e-9 relative in float64.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from aot_losses import (
    aot_paired_loss,
    aot_unpaired_loss,
    get_value_checks,
    ot_1d,
    set_value_checks,
)
from aot_losses.distributed import check_process_group, gather_concat, gather_concat_many

from ..helpers import assert_close

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

F64 = torch.float64
FEATURES = 3  # the shared parameter is a vector of this size (or an nn.Linear over it)
BETA = 0.5  # large enough that the logistic penalty is far from linear on these margins
HARD: dict[str, Any] = {"sort": "hard"}
# The paper's strength 0.1 leaves these well-separated samples exactly hard-sorted; 1.0 does not.
SOFT: dict[str, Any] = {"sort": "soft", "regularization_strength": 1.0}
SPAWN_TIMEOUT_S = 240.0
COLLECTIVE_TIMEOUT = timedelta(seconds=30)  # a desynchronized scenario fails instead of hanging

# Local batch sizes per rank, with unequal and empty shares. Paired: number of pairs per rank.
# Unpaired: (chosen per rank, rejected per rank); a rank may have chosen but no rejected samples.
PAIRED_SIZES = {2: [[1, 7], [0, 5]], 3: [[3, 0, 5]]}
UNPAIRED_SIZES = {2: [([0, 5], [4, 0]), ([3, 6], [2, 2])], 3: [([4, 0, 2], [1, 5, 0])]}
DATA_PARALLEL_WORLD = 2  # the group size whose processes also build DDP and FSDP2 models
GATHER_SIZES = {2: [[3, 1], [0, 4], [0, 0]], 3: [[2, 0, 3], [0, 0, 0]]}

Result = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Data: every rank builds the same global batch from a seed and takes its slice of it.


def _bounds(sizes: list[int], rank: int) -> slice:
    return slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))


def _samples(total: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Features of ``total`` responses (policy log-prob = features @ w) and reference log-probs."""
    features = torch.randn(total, FEATURES, generator=gen, dtype=F64)
    return features, 3 * torch.randn(total, generator=gen, dtype=F64)


def _weights(total: int, gen: torch.Generator) -> Tensor:
    w = torch.rand(total, generator=gen, dtype=F64) + 0.1
    w[::4] = 0.0  # zero weights are allowed; a rank holding only sample 0 has all-zero weights
    return w


def _loss_and_grad(
    loss_of: Callable[[Tensor], Tensor], w0: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The loss as a function of the shared parameter ``w``, and its gradient."""
    w = w0.to(dtype, copy=True).requires_grad_()
    loss = loss_of(w)
    loss.backward()
    assert w.grad is not None
    return loss.detach(), w.grad


def _rank_average(grad: Tensor) -> Tensor:
    """What DDP/FSDP do with the local gradients: their mean over ranks."""
    total = grad.to(F64, copy=True)
    dist.all_reduce(total)
    return total / dist.get_world_size()


def _paired_check(
    rank: int, sizes: list[int], *, weighted: bool, sort: dict[str, Any], dtype: torch.dtype
) -> Result:
    gen = torch.Generator().manual_seed(100 + sum(sizes))
    total = sum(sizes)
    feats_c, ref_c = _samples(total, gen)
    feats_r, ref_r = _samples(total, gen)
    weights = _weights(total, gen)
    w0 = torch.randn(FEATURES, generator=gen, dtype=F64)

    def loss_of(part: slice, group: dist.ProcessGroup | None) -> Callable[[Tensor], Tensor]:
        def f(w: Tensor) -> Tensor:
            return aot_paired_loss(
                feats_c[part].to(dtype) @ w,
                feats_r[part].to(dtype) @ w,
                ref_c[part].to(dtype),
                ref_r[part].to(dtype),
                beta=BETA,
                **sort,
                weights=weights[part].to(dtype) if weighted else None,
                process_group=group,
            )

        return f

    loss, grad = _loss_and_grad(loss_of(_bounds(sizes, rank), dist.group.WORLD), w0, dtype)
    ref_loss, ref_grad = _loss_and_grad(loss_of(slice(None), None), w0, dtype)
    label = f"paired sizes={sizes} weighted={weighted} sort={sort} {dtype}"
    return {
        "label": label,
        "loss": loss,
        "grad": _rank_average(grad),
        "ref_loss": ref_loss,
        "ref_grad": ref_grad.to(F64),
        "dtype": dtype,
    }


def _unpaired_check(
    rank: int,
    sizes: tuple[list[int], list[int]],
    *,
    weighted: bool,
    sort: dict[str, Any],
    dtype: torch.dtype,
) -> Result:
    chosen, rejected = sizes
    gen = torch.Generator().manual_seed(200 + sum(chosen) + 7 * sum(rejected))
    feats_c, ref_c = _samples(sum(chosen), gen)
    feats_r, ref_r = _samples(sum(rejected), gen)
    weights_c, weights_r = _weights(sum(chosen), gen), _weights(sum(rejected), gen)
    w0 = torch.randn(FEATURES, generator=gen, dtype=F64)

    def loss_of(
        part_c: slice, part_r: slice, group: dist.ProcessGroup | None
    ) -> Callable[[Tensor], Tensor]:
        def f(w: Tensor) -> Tensor:
            return aot_unpaired_loss(
                feats_c[part_c].to(dtype) @ w,
                feats_r[part_r].to(dtype) @ w,
                ref_c[part_c].to(dtype),
                ref_r[part_r].to(dtype),
                beta=BETA,
                **sort,
                chosen_weights=weights_c[part_c].to(dtype) if weighted else None,
                rejected_weights=weights_r[part_r].to(dtype) if weighted else None,
                process_group=group,
            )

        return f

    local = loss_of(_bounds(chosen, rank), _bounds(rejected, rank), dist.group.WORLD)
    loss, grad = _loss_and_grad(local, w0, dtype)
    ref_loss, ref_grad = _loss_and_grad(loss_of(slice(None), slice(None), None), w0, dtype)
    label = f"unpaired chosen={chosen} rejected={rejected} weighted={weighted} sort={sort} {dtype}"
    return {
        "label": label,
        "loss": loss,
        "grad": _rank_average(grad),
        "ref_loss": ref_loss,
        "ref_grad": ref_grad.to(F64),
        "dtype": dtype,
    }


# --------------------------------------------------------------------------------------------
# Scenarios: each runs on every rank of the group, returns what it measured.


def scenario_gather(rank: int, world: int) -> list[Result]:
    """gather_concat directly: exact values, rank order, leading dims, every dtype, and the
    backward summing over ranks (each rank's loss weights the global tensor differently)."""
    out = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for sizes in GATHER_SIZES[world]:
            total = sum(sizes)
            glob = torch.arange(2 * total, dtype=dtype).reshape(2, total)
            x = glob[:, _bounds(sizes, rank)].clone().requires_grad_()
            gathered = gather_concat(x, dist.group.WORLD, name="x")
            coeff = torch.arange(2 * total, dtype=dtype).reshape(2, total) * (rank + 1)
            (gathered * coeff).sum().backward()
            assert x.grad is not None
            # sum over ranks k of coeff_k = arange * (1 + 2 + ... + world), on the own slice
            expected = glob * (world * (world + 1) // 2)
            with torch.no_grad():
                no_grad = gather_concat(x, dist.group.WORLD, name="x")
            out.append(
                {
                    "label": f"{dtype} sizes={sizes}",
                    "gathered": gathered.detach(),
                    "expected": glob,
                    "grad": x.grad,
                    "expected_grad": expected[:, _bounds(sizes, rank)],
                    "no_grad_requires_grad": no_grad.requires_grad,
                }
            )
    return out


def scenario_paired(rank: int, world: int) -> list[Result]:
    return [
        _paired_check(rank, sizes, weighted=weighted, sort=HARD, dtype=F64)
        for sizes in PAIRED_SIZES[world]
        for weighted in (False, True)
    ]


def scenario_unpaired(rank: int, world: int) -> list[Result]:
    return [
        _unpaired_check(rank, sizes, weighted=weighted, sort=HARD, dtype=F64)
        for sizes in UNPAIRED_SIZES[world]
        for weighted in (False, True)
    ]


def scenario_soft_sort(rank: int, world: int) -> list[Result]:
    """sort="soft": the soft sort runs on the gathered global batch. Each check also records the
    hard-sort loss of the same batch, to show that the soft sort changed the result."""
    out = []
    for check, sizes in (
        (_paired_check, PAIRED_SIZES[world][-1]),
        (_unpaired_check, UNPAIRED_SIZES[world][0]),
    ):
        for weighted in (False, True):
            soft = check(rank, sizes, weighted=weighted, sort=SOFT, dtype=F64)
            hard = check(rank, sizes, weighted=weighted, sort=HARD, dtype=F64)
            out.append({**soft, "hard_ref_loss": hard["ref_loss"]})
    return out


def scenario_low_precision(rank: int, world: int) -> list[Result]:
    """float32 / bfloat16: the distributed loss against the single-process loss in that dtype."""
    return [
        check(rank, sizes, weighted=True, sort=HARD, dtype=dtype)
        for dtype in (torch.float32, torch.bfloat16)
        for check, sizes in (
            (_paired_check, PAIRED_SIZES[world][0]),
            (_unpaired_check, UNPAIRED_SIZES[world][0]),
        )
    ]


def scenario_reductions(rank: int, world: int) -> list[Result]:
    """reduction="none" / "sum" see the global quantile intervals on every rank."""
    sizes = PAIRED_SIZES[world][0]
    gen = torch.Generator().manual_seed(300)
    u, v = torch.randn(2, sum(sizes), generator=gen, dtype=F64)
    zeros = torch.zeros(sum(sizes), dtype=F64)
    part = _bounds(sizes, rank)
    out = []
    for reduction in ("none", "sum"):
        args = (u, zeros, v, zeros)
        kwargs = {"beta": BETA, "reduction": reduction}
        local = aot_paired_loss(*(a[part] for a in args), process_group=dist.group.WORLD, **kwargs)
        out.append(
            {"label": reduction, "loss": local, "ref_loss": aot_paired_loss(*args, **kwargs)}
        )
    return out


def _linear_pair(gen: torch.Generator) -> tuple[nn.Linear, nn.Linear]:
    """Two copies of an nn.Linear initialized from ``gen``, the same on every rank."""
    model = nn.Linear(FEATURES, 1, dtype=F64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))
    reference = nn.Linear(FEATURES, 1, dtype=F64)
    reference.load_state_dict(model.state_dict())
    return model, reference


def _data_parallel_check(rank: int, world: int, *, paired: bool, wrapper: str) -> Result:
    """nn.Linear maps fixed features to the policy log-probs, wrapped in DDP or FSDP2; after
    backward its gradient (averaged over ranks by the wrapper) is the single-process gradient."""
    if paired:
        chosen = rejected = PAIRED_SIZES[world][-1]
    else:
        chosen, rejected = UNPAIRED_SIZES[world][0]
    gen = torch.Generator().manual_seed(400 + int(paired))
    feats_c, ref_c = _samples(sum(chosen), gen)
    feats_r, ref_r = _samples(sum(rejected), gen)
    model, reference = _linear_pair(gen)
    loss_fn = aot_paired_loss if paired else aot_unpaired_loss

    def loss_of(
        net: nn.Module, part_c: slice, part_r: slice, group: dist.ProcessGroup | None
    ) -> Tensor:
        # one forward over the chosen and the rejected responses, as DPO-style trainers do
        logps = net(torch.cat((feats_c[part_c], feats_r[part_r]))).squeeze(-1)
        n_c = feats_c[part_c].shape[0]
        return loss_fn(
            logps[:n_c], logps[n_c:], ref_c[part_c], ref_r[part_r], beta=BETA, process_group=group
        )

    if wrapper == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        net: nn.Module = DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        net = fully_shard(model)
    loss = loss_of(net, _bounds(chosen, rank), _bounds(rejected, rank), dist.group.WORLD)
    loss.backward()
    ref_loss = loss_of(reference, slice(None), slice(None), None)
    ref_loss.backward()
    grads = [p.grad for p in model.parameters()]
    if wrapper == "fsdp":  # sharded DTensor gradients
        grads = [g.full_tensor() for g in grads]
    return {
        "label": f"{wrapper} paired={paired} chosen={chosen} rejected={rejected}",
        "loss": loss.detach(),
        "ref_loss": ref_loss.detach(),
        "grads": grads,
        "ref_grads": [p.grad for p in reference.parameters()],
    }


def _ddp_no_sync_accumulation_check(rank: int, world: int) -> Result:
    """Gradient accumulation under DDP: micro-batch 0 inside ``no_sync()`` (DDP skips its
    all-reduce), micro-batch 1 outside; the gather's backward collective runs on both."""
    from torch.nn.parallel import DistributedDataParallel

    gen = torch.Generator().manual_seed(600)
    model, reference = _linear_pair(gen)
    ddp = DistributedDataParallel(model)
    micro_sizes = [PAIRED_SIZES[world][-1], list(reversed(PAIRED_SIZES[world][-1]))]
    for step, sizes in enumerate(micro_sizes):
        feats_c, ref_c = _samples(sum(sizes), gen)
        feats_r, ref_r = _samples(sum(sizes), gen)
        part = _bounds(sizes, rank)
        with ddp.no_sync() if step == 0 else contextlib.nullcontext():
            loss = aot_paired_loss(
                ddp(feats_c[part]).squeeze(-1),
                ddp(feats_r[part]).squeeze(-1),
                ref_c[part],
                ref_r[part],
                beta=BETA,
                process_group=dist.group.WORLD,
            )
            (loss / len(micro_sizes)).backward()
        ref_loss = aot_paired_loss(
            reference(feats_c).squeeze(-1), reference(feats_r).squeeze(-1), ref_c, ref_r, beta=BETA
        )
        (ref_loss / len(micro_sizes)).backward()
    return {
        "label": f"ddp no_sync accumulation over {micro_sizes}",
        "loss": loss.detach(),
        "ref_loss": ref_loss.detach(),
        "grads": [p.grad for p in model.parameters()],
        "ref_grads": [p.grad for p in reference.parameters()],
    }


def scenario_data_parallel(rank: int, world: int) -> list[Result]:
    """Real DistributedDataParallel and FSDP2 (fully_shard) modules. Run in one group size only:
    constructing either imports torch._dynamo (~8 s per process on a loaded 2-core machine)."""
    if world != DATA_PARALLEL_WORLD:
        return []
    return [
        *(
            _data_parallel_check(rank, world, paired=paired, wrapper=wrapper)
            for wrapper in ("ddp", "fsdp")
            for paired in (True, False)
        ),
        _ddp_no_sync_accumulation_check(rank, world),
    ]


def scenario_accumulation(rank: int, world: int) -> list[Result]:
    """Gradient accumulation: micro-batch k of every rank is sorted together, and the accumulated
    rank-averaged gradient is the mean of the single-process gradients of the global micro-batches.
    """
    micro_sizes = PAIRED_SIZES[world]
    gen = torch.Generator().manual_seed(500)
    w = torch.randn(FEATURES, generator=gen, dtype=F64).requires_grad_()
    ref_w = w.detach().clone().requires_grad_()
    losses, ref_losses = [], []
    for sizes in micro_sizes:
        feats_c, ref_c = _samples(sum(sizes), gen)
        feats_r, ref_r = _samples(sum(sizes), gen)
        part = _bounds(sizes, rank)
        loss = aot_paired_loss(
            feats_c[part] @ w,
            feats_r[part] @ w,
            ref_c[part],
            ref_r[part],
            beta=BETA,
            process_group=dist.group.WORLD,
        )
        (loss / len(micro_sizes)).backward()
        ref_loss = aot_paired_loss(feats_c @ ref_w, feats_r @ ref_w, ref_c, ref_r, beta=BETA)
        (ref_loss / len(micro_sizes)).backward()
        losses.append(loss.detach())
        ref_losses.append(ref_loss.detach())
    assert w.grad is not None and ref_w.grad is not None
    return [
        {
            "label": f"accumulation over {micro_sizes}",
            "loss": torch.stack(losses),
            "ref_loss": torch.stack(ref_losses),
            "grad": _rank_average(w.grad),
            "ref_grad": ref_w.grad,
        }
    ]


def scenario_subgroup(rank: int, world: int) -> list[Result]:
    """A new_group of ranks 0 and world-1; the rank outside it gets a ValueError."""
    group = dist.new_group([0, world - 1])
    x = torch.full((rank + 1,), float(rank), dtype=F64)
    try:
        return [{"gathered": gather_concat(x, group, name="x")}]
    except ValueError as err:
        return [{"error": str(err)}]


def _capture(fn: Callable[[], object]) -> Result:
    try:
        fn()
    except Exception as err:
        return {"type": type(err).__name__, "message": str(err)}
    return {"type": None, "message": ""}


def scenario_errors(rank: int, world: int) -> list[Result]:
    """Ranks that disagree: every rank raises the same error, and the group stays usable."""
    world_group = dist.group.WORLD
    x = torch.ones(2, 3)
    cases: dict[str, Callable[[], object]] = {
        "dtype": lambda: gather_concat(
            x.to(torch.bfloat16 if rank == 1 else torch.float32), world_group, name="u"
        ),
        "leading_shape": lambda: gather_concat(
            torch.ones(2 + (rank == 1), 3), world_group, name="u"
        ),
        "requires_grad": lambda: gather_concat(
            x.clone().requires_grad_(rank != 1), world_group, name="u"
        ),
        "unsupported_dtype": lambda: gather_concat(
            x.to(torch.int64 if rank == 1 else torch.float32), world_group, name="u"
        ),
        "loss_dtype": lambda: aot_paired_loss(
            *(torch.zeros(3, dtype=torch.bfloat16 if rank == 1 else torch.float32),) * 4,
            process_group=world_group,
        ),
        "not_a_group": lambda: check_process_group("WORLD"),
        "weights_on_some_ranks": lambda: aot_unpaired_loss(
            *(torch.zeros(3),) * 4,
            chosen_weights=torch.ones(3) if rank == 0 else None,
            process_group=world_group,
        ),
    }
    out = [{"case": case, **_capture(fn)} for case, fn in cases.items()]
    after = gather_concat(torch.full((1,), float(rank)), world_group, name="after")
    out.append({"case": "after", "type": None, "message": str(after.tolist())})
    return out


def scenario_ot_1d_leading(rank: int, world: int) -> list[Result]:
    """ot_1d with a leading batch dim, u's weights of shape (n,) broadcast along it and v
    unweighted, both sides needing a gradient (so both travel in the packed backward), float64
    and float32 samples. The weights' dtype differs between ranks (float64 on even ranks,
    float32 on odd ones; the values are exact in float32): the packed buffer takes their
    promoted dtype on every rank."""
    chosen, rejected = UNPAIRED_SIZES[world][0]
    gen = torch.Generator().manual_seed(700)
    feats_u = torch.randn(2, sum(chosen), FEATURES, generator=gen, dtype=F64)
    feats_v = torch.randn(2, sum(rejected), FEATURES, generator=gen, dtype=F64)
    u_weights = _weights(sum(chosen), gen).to(torch.float32).to(F64)
    w0 = torch.randn(FEATURES, generator=gen, dtype=F64)
    weights_dtype = torch.float32 if rank % 2 else F64

    def loss_of(
        part_u: slice, part_v: slice, group: dist.ProcessGroup | None, dtype: torch.dtype
    ) -> Callable[[Tensor], Tensor]:
        def f(w: Tensor) -> Tensor:
            costs = ot_1d(
                feats_u[:, part_u].to(dtype) @ w,
                -(feats_v[:, part_v].to(dtype) @ w),
                beta=BETA,
                u_weights=u_weights[part_u].to(weights_dtype if group else F64),
                process_group=group,
            )
            assert costs.shape == (2,)
            return costs @ torch.tensor([1.0, 3.0], dtype=dtype)

        return f

    out = []
    for dtype in (F64, torch.float32):
        local = loss_of(_bounds(chosen, rank), _bounds(rejected, rank), dist.group.WORLD, dtype)
        loss, grad = _loss_and_grad(local, w0, dtype)
        ref_loss, ref_grad = _loss_and_grad(
            loss_of(slice(None), slice(None), None, dtype), w0, dtype
        )
        out.append(
            {
                "label": f"ot_1d leading (2,) u={chosen} v={rejected} {dtype}",
                "loss": loss,
                "grad": _rank_average(grad),
                "ref_loss": ref_loss,
                "ref_grad": ref_grad.to(F64),
                "dtype": dtype,
            }
        )
    return out


# The ProcessGroup methods through which torch.distributed's Python collectives (all_gather,
# all_gather_into_tensor, all_reduce, broadcast, barrier, ...) reach the backend.
PROCESS_GROUP_COLLECTIVES = (
    "allgather",
    "allgather_coalesced",
    "allgather_into_tensor_coalesced",
    "all_gather_single",
    "all_gather_single_coalesced",
    "_allgather_base",
    "allreduce",
    "allreduce_coalesced",
    "alltoall",
    "alltoall_base",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "broadcast",
    "gather",
    "scatter",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_single",
    "reduce_scatter_single_coalesced",
    "reduce_scatter_tensor_coalesced",
    "_reduce_scatter_base",
    "send",
    "recv",
    "recv_anysource",
)


@contextlib.contextmanager
def _counted_collectives() -> Iterator[list[str]]:
    """Record the name of every collective any process group runs inside the block, whichever
    torch.distributed function issued it, by wrapping the ProcessGroup methods they call."""
    calls: list[str] = []
    # the class's own entries (pybind11 instancemethod descriptors), put back as they were
    originals = {
        name: method
        for name, method in vars(dist.ProcessGroup).items()
        if name in PROCESS_GROUP_COLLECTIVES
    }

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: dist.ProcessGroup, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return method.__get__(self)(*args, **kwargs)

        return wrapper

    for name, method in originals.items():
        setattr(dist.ProcessGroup, name, counted(name, method))
    try:
        yield calls
    finally:
        for name, method in originals.items():
            setattr(dist.ProcessGroup, name, method)


def _counts(label: str, loss_of: Callable[[], Tensor], expected: tuple[int, int]) -> Result:
    """The collectives run by one loss call (forward) and by its backward."""
    with _counted_collectives() as forward:
        loss = loss_of()
    with _counted_collectives() as backward:
        if loss.requires_grad:
            loss.backward()
    return {"label": label, "forward": forward, "backward": backward, "expected": expected}


def scenario_collectives(rank: int, world: int) -> list[Result]:
    """How many collectives a global-batch loss call runs: the counter first sees one call of
    each common collective; then paired and unpaired losses and ot_1d (unequal and empty
    shares, weights, leading dims, bfloat16, no gradient) each run 2 forward (metadata, data)
    and 1 backward; a group of one rank runs none."""
    group = dist.group.WORLD
    x = torch.zeros(2)
    parts = [torch.empty_like(x) for _ in range(world)]
    with _counted_collectives() as calibration:
        dist.all_gather(parts, x, group=group)
        dist.all_gather_into_tensor(torch.empty(2 * world), x, group=group)
        dist.all_reduce(x, group=group)
        dist.broadcast(x, src=0, group=group)
    out: list[Result] = [
        {"label": "calibration", "forward": calibration, "backward": [], "expected": (4, 0)}
    ]
    sizes = PAIRED_SIZES[world][-1]
    chosen, rejected = UNPAIRED_SIZES[world][0]
    gen = torch.Generator().manual_seed(800)

    def logps(n: int, dtype: torch.dtype = F64, grad: bool = True) -> Tensor:
        return torch.randn(n, generator=gen, dtype=dtype).requires_grad_(grad)

    n, n_c, n_r = sizes[rank], chosen[rank], rejected[rank]
    paired = [logps(n), logps(n), logps(n, grad=False), logps(n, grad=False)]
    unpaired = [logps(n_c), logps(n_r), logps(n_c, grad=False), logps(n_r, grad=False)]
    low = [t.detach().to(torch.bfloat16).requires_grad_(t.requires_grad) for t in unpaired]
    weights = torch.rand(n, generator=gen, dtype=F64)
    chosen_weights = torch.rand(n_c, generator=gen, dtype=torch.float32)
    rejected_weights = torch.rand(n_r, generator=gen, dtype=F64)
    u = torch.randn(2, n_c, generator=gen, dtype=F64, requires_grad=True)
    v = torch.randn(2, n_r, generator=gen, dtype=F64, requires_grad=True)
    cases: dict[str, Callable[[], Tensor]] = {
        "paired": lambda: aot_paired_loss(*paired, process_group=group),
        "paired weighted soft": lambda: aot_paired_loss(
            *paired, weights=weights, sort="soft", process_group=group
        ),
        "unpaired weighted": lambda: aot_unpaired_loss(
            *unpaired,
            chosen_weights=chosen_weights,
            rejected_weights=rejected_weights,
            process_group=group,
        ),
        "unpaired bfloat16": lambda: aot_unpaired_loss(*low, process_group=group),
        "ot_1d leading dims, u weighted": lambda: ot_1d(
            u, v, u_weights=chosen_weights, process_group=group
        ).sum(),
    }
    for label, fn in cases.items():
        out.append(_counts(label, fn, (2, 1)))
    with torch.no_grad():
        out.append(
            _counts(
                "paired under no_grad",
                lambda: aot_paired_loss(*paired, process_group=group),
                (2, 0),
            )
        )
    solo = dist.new_group([0])  # every rank must call new_group
    if rank == 0:
        solo_logps = [logps(3), logps(2), logps(3, grad=False), logps(2, grad=False)]
        out.append(
            _counts(
                "unpaired weighted, a group of one rank",
                lambda: aot_unpaired_loss(
                    *solo_logps, chosen_weights=torch.rand(3, generator=gen), process_group=solo
                ),
                (0, 0),
            )
        )
    return out


def scenario_packed_errors(rank: int, world: int) -> list[Result]:
    """Disagreements found by the packed gather's metadata exchange, raised on every rank alike:
    weights given for v on some ranks only, a margin that needs a gradient on some ranks only,
    a weight dtype that cannot be gathered; the group stays usable after each."""
    group = dist.group.WORLD
    x = torch.ones(3)
    cases: dict[str, Callable[[], object]] = {
        "rejected_weights_on_some_ranks": lambda: aot_unpaired_loss(
            x, x, x, x, rejected_weights=x if rank == world - 1 else None, process_group=group
        ),
        "policy_grad_on_some_ranks": lambda: aot_paired_loss(
            x.clone().requires_grad_(rank == 0), x, x, x, process_group=group
        ),
        "weights_dtype": lambda: gather_concat_many(
            [x],
            group,
            names=["u"],
            weights=[x.to(torch.int64 if rank == 1 else torch.float32)],
        ),
    }
    out = [{"case": case, **_capture(fn)} for case, fn in cases.items()]
    (after,), _ = gather_concat_many([torch.full((1,), float(rank))], group, names=["after"])
    out.append({"case": "after", "type": None, "message": str(after.tolist())})
    return out


def scenario_local_errors(rank: int, world: int) -> list[Result]:
    """Rank 1's own inputs fail their checks (a NaN log-prob, a negative weight, a wrong length
    or dtype, in the losses, ot_1d and gather_concat_many) while the other ranks' pass: every
    rank raises the same error, naming rank 1, in the gather's two forward collectives, and the
    group stays usable. Each case starts after a barrier and is timed on every rank."""
    group = dist.group.WORLD
    bad = rank == 1
    x = torch.linspace(-2.0, 0.0, 3, dtype=F64)
    nan = torch.tensor([-2.0, float("nan"), 0.0], dtype=F64)
    weights = torch.tensor([1.0, -1.0 if bad else 1.0, 1.0], dtype=F64)
    not_a_tensor: Any = x.tolist() if bad else x
    cases: dict[str, Callable[[], object]] = {
        "nan_logp": lambda: aot_paired_loss(nan if bad else x, x, x, x, process_group=group),
        "negative_weight": lambda: aot_unpaired_loss(
            x, x, x, x, rejected_weights=weights, process_group=group
        ),
        "wrong_length": lambda: aot_paired_loss(x, x[:2] if bad else x, x, x, process_group=group),
        "ot_1d_dtype": lambda: ot_1d(x, x.float() if bad else x, process_group=group),
        "gather_weights_shape": lambda: gather_concat_many(
            [x], group, names=["u"], weights=[torch.ones(5 if bad else 3)]
        ),
        "gather_not_a_tensor": lambda: gather_concat(not_a_tensor, group, name="u"),
        "ranks_0_and_last": lambda: aot_unpaired_loss(
            x, x[:2] if rank == world - 1 else x, x, nan if rank == 0 else x, process_group=group
        ),
    }
    out = []
    for case, fn in cases.items():
        dist.barrier(group=group)
        start = time.monotonic()
        with _counted_collectives() as calls:
            result = _capture(fn)
        out.append({"case": case, **result, "elapsed": time.monotonic() - start, "calls": calls})
    after = gather_concat(torch.full((1,), float(rank)), group, name="after")
    out.append({"case": "after", "type": None, "message": str(after.tolist())})
    return out


def scenario_one_rank_group_error(rank: int, world: int) -> list[Result]:
    """A group of one rank: a NaN log-prob raises the check's own error, communicating nothing."""
    solo = dist.new_group([0])  # every rank must call new_group
    if rank != 0:
        return []
    nan = torch.tensor([-2.0, float("nan"), 0.0], dtype=F64)
    with _counted_collectives() as calls:
        result = _capture(lambda: aot_paired_loss(nan, nan, nan, nan, process_group=solo))
    return [{**result, "calls": calls}]


def scenario_value_checks_never(rank: int, world: int) -> list[Result]:
    """With value checks off, a NaN log-prob on rank 1 raises nowhere: it reaches the loss,
    NaN on every rank."""
    x = torch.linspace(-2.0, 0.0, 3, dtype=F64)
    pc = torch.tensor([-2.0, float("nan"), 0.0], dtype=F64) if rank == 1 else x
    saved = get_value_checks()
    set_value_checks("never")
    try:
        loss = aot_paired_loss(pc, x, x, x, process_group=dist.group.WORLD)
    finally:
        set_value_checks(saved)
    return [{"loss": loss}]


SCENARIOS: dict[str, Callable[[int, int], list[Result]]] = {
    name.removeprefix("scenario_"): fn
    for name, fn in globals().items()
    if name.startswith("scenario_")
}


# --------------------------------------------------------------------------------------------
# Process management.


def _worker(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=COLLECTIVE_TIMEOUT,
    )
    results: dict[str, Any] = {}
    try:
        for name, scenario in SCENARIOS.items():
            try:
                results[name] = scenario(rank, world)
            except Exception:
                results[name] = traceback.format_exc()
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()


def _spawn(world: int, tmp: Path) -> list[dict[str, Any]]:
    """Run every scenario on a fresh gloo group of ``world`` processes; one result dict per rank."""
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(rank, world, str(tmp / "store"), str(tmp)), daemon=True)
        for rank in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
    for rank in hung:
        procs[rank].kill()
        procs[rank].join()
    if hung:
        pytest.fail(f"ranks {hung} of {world} did not finish within {SPAWN_TIMEOUT_S} s")
    failed = [(rank, p.exitcode) for rank, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        pytest.fail(f"worker processes exited with (rank, exit code) {failed}")
    return [torch.load(tmp / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def group_results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    world: int = request.param
    return world, _spawn(world, tmp_path_factory.mktemp(f"world{world}"))


def _scenario(group_results: tuple[int, list[dict[str, Any]]], name: str) -> list[list[Result]]:
    """The named scenario's results, one list per rank; fails with a rank's traceback."""
    _, ranks = group_results
    for rank, results in enumerate(ranks):
        if isinstance(results[name], str):
            pytest.fail(f"scenario {name!r} raised on rank {rank}:\n{results[name]}")
    return [results[name] for results in ranks]


def _assert_loss_and_grad_match(per_rank: list[list[Result]]) -> None:
    for checks in per_rank:
        for c in checks:
            msg = c["label"]
            assert c["loss"].dtype == c.get("dtype", F64), msg
            assert_close(c["loss"], c["ref_loss"], c.get("dtype", F64))
            assert_close(c["grad"], c["ref_grad"], c.get("dtype", F64))
    # every rank got bit-identical losses
    for checks in per_rank[1:]:
        for c, c0 in zip(checks, per_rank[0], strict=True):
            assert torch.equal(c["loss"], c0["loss"]), c["label"]


# --------------------------------------------------------------------------------------------
# Tests.


@pytest.mark.multiprocess
def test_gather_concat_values_and_gradient(group_results):
    for checks in _scenario(group_results, "gather"):
        for c in checks:
            assert torch.equal(c["gathered"], c["expected"]), c["label"]
            assert c["gathered"].dtype == c["expected"].dtype, c["label"]
            assert torch.equal(c["grad"], c["expected_grad"]), c["label"]
            assert not c["no_grad_requires_grad"], c["label"]


@pytest.mark.multiprocess
def test_paired_loss_matches_single_process(group_results):
    _assert_loss_and_grad_match(_scenario(group_results, "paired"))


@pytest.mark.multiprocess
def test_unpaired_loss_matches_single_process(group_results):
    _assert_loss_and_grad_match(_scenario(group_results, "unpaired"))


@pytest.mark.multiprocess
def test_soft_sort_matches_single_process(group_results):
    per_rank = _scenario(group_results, "soft_sort")
    _assert_loss_and_grad_match(per_rank)
    for c in per_rank[0]:
        assert abs(float(c["ref_loss"] - c["hard_ref_loss"])) > 1e-3, c["label"]


@pytest.mark.multiprocess
def test_low_precision_matches_single_process(group_results):
    _assert_loss_and_grad_match(_scenario(group_results, "low_precision"))


@pytest.mark.multiprocess
def test_reductions_see_the_global_batch(group_results):
    for checks in _scenario(group_results, "reductions"):
        for c in checks:
            assert c["loss"].shape == c["ref_loss"].shape, c["label"]
            assert_close(c["loss"], c["ref_loss"])


@pytest.mark.multiprocess
def test_ddp_and_fsdp_gradients_match_single_process(group_results):
    if group_results[0] != DATA_PARALLEL_WORLD:
        pytest.skip(f"DDP and FSDP run in the {DATA_PARALLEL_WORLD}-rank group only")
    per_rank = _scenario(group_results, "data_parallel")
    assert [c["label"].split()[0] for c in per_rank[0]] == ["ddp", "ddp", "fsdp", "fsdp", "ddp"]
    for checks in per_rank:
        for c in checks:
            assert_close(c["loss"], c["ref_loss"])
            for grad, ref_grad in zip(c["grads"], c["ref_grads"], strict=True):
                assert_close(grad, ref_grad)


@pytest.mark.multiprocess
def test_gradient_accumulation(group_results):
    _assert_loss_and_grad_match(_scenario(group_results, "accumulation"))


@pytest.mark.multiprocess
def test_new_group_and_non_member(group_results):
    world, _ = group_results
    per_rank = _scenario(group_results, "subgroup")
    expected = [0.0] + [float(world - 1)] * world
    for rank in (0, world - 1):
        assert per_rank[rank][0]["gathered"].tolist() == expected
    for rank in range(1, world - 1):
        assert "not among the group's ranks" in per_rank[rank][0]["error"]


@pytest.mark.multiprocess
def test_rank_disagreement_raises_on_every_rank(group_results):
    world, _ = group_results
    per_rank = _scenario(group_results, "errors")
    expected = {
        "dtype": ("TypeError", "u has dtype float32 on rank 0 but bfloat16 on rank 1"),
        "leading_shape": ("ValueError", "got (2,) on rank 0 but (3,) on rank 1"),
        "requires_grad": ("RuntimeError", "must require a gradient on every rank or on none"),
        "unsupported_dtype": ("TypeError", "got int64 on rank 1"),
        "loss_dtype": ("TypeError", "has dtype float32 on rank 0 but bfloat16 on rank 1"),
        "not_a_group": ("TypeError", "process_group must be a torch.distributed.ProcessGroup"),
        "weights_on_some_ranks": (
            "ValueError",
            "u_weights must be given on every rank of process_group or on none",
        ),
        "after": (None, str([float(r) for r in range(world)])),
    }
    for results in per_rank:
        assert [r["case"] for r in results] == list(expected)
        for r in results:
            kind, fragment = expected[r["case"]]
            assert r["type"] == kind, r
            assert fragment in r["message"], r


@pytest.mark.multiprocess
def test_ot_1d_leading_dims_and_mixed_weight_dtypes_match_single_process(group_results):
    _assert_loss_and_grad_match(_scenario(group_results, "ot_1d_leading"))


@pytest.mark.multiprocess
def test_at_most_two_collectives_forward_and_one_backward(group_results):
    per_rank = _scenario(group_results, "collectives")
    # rank 0 also ran the loss on a group of one rank
    assert [len(checks) for checks in per_rank] == [8] + [7] * (len(per_rank) - 1)
    for checks in per_rank:
        calibration, *calls = checks
        assert len(calibration["forward"]) == 4, calibration  # the counter sees each collective
        for c in calls:
            assert (len(c["forward"]), len(c["backward"])) == c["expected"], c
            assert len(c["forward"]) <= 2 and len(c["backward"]) <= 1, c
            assert set(c["forward"]) <= {"allgather"} and set(c["backward"]) <= {"allreduce"}, c


@pytest.mark.multiprocess
def test_packed_gather_disagreements_raise_on_every_rank(group_results):
    world, _ = group_results
    expected = {
        "rejected_weights_on_some_ranks": (
            "ValueError",
            f"v_weights must be given on every rank of process_group or on none; it is on "
            f"rank(s) [{world - 1}] of {world} only",
        ),
        "policy_grad_on_some_ranks": (
            "RuntimeError",
            f"u must require a gradient on every rank or on none (the backward of the gather is "
            f"a collective); it does on rank(s) [0] of {world} only",
        ),
        "weights_dtype": (
            "TypeError",
            "weights of u must have dtype float16, bfloat16, float32 or float64 to be gathered "
            "across ranks; got int64 on rank 1",
        ),
        "after": (None, str([float(r) for r in range(world)])),
    }
    for results in _scenario(group_results, "packed_errors"):
        assert [r["case"] for r in results] == list(expected)
        for r in results:
            kind, fragment = expected[r["case"]]
            assert r["type"] == kind, r
            assert fragment in r["message"], r


@pytest.mark.multiprocess
def test_one_ranks_bad_input_raises_on_every_rank_promptly(group_results):
    """Without the agreement, rank 1 raised alone and the others waited in the gather until the
    group's timeout."""
    world, _ = group_results
    prefix = f"on rank 1 of the {world} in the group: "
    expected = {
        "nan_logp": ("ValueError", prefix + "policy_chosen_logps must be finite; got 1 NaN"),
        "negative_weight": (
            "ValueError",
            prefix + "rejected_weights must be nonnegative; got minimum -1.0",
        ),
        "wrong_length": (
            "ValueError",
            prefix + "policy_rejected_logps must have the same length as policy_chosen_logps",
        ),
        "ot_1d_dtype": ("TypeError", prefix + "v must have the same dtype as u (torch.float64)"),
        "gather_weights_shape": (
            "ValueError",
            prefix + "weights of u must broadcast to the shape of u (3,); got shape (5,)",
        ),
        "gather_not_a_tensor": ("TypeError", prefix + "u must be a torch.Tensor; got list"),
        "ranks_0_and_last": (
            "ValueError",
            f"on rank 0 of the {world} in the group (rank(s) [{world - 1}] failed too): "
            "reference_rejected_logps must be finite",
        ),
        "after": (None, str([float(r) for r in range(world)])),
    }
    per_rank = _scenario(group_results, "local_errors")
    for results in per_rank:
        assert [r["case"] for r in results] == list(expected)
        for r in results:
            kind, start = expected[r["case"]]
            assert r["type"] == kind, r
            assert r["message"].startswith(start), r
            if kind is not None:
                assert r["elapsed"] < COLLECTIVE_TIMEOUT.total_seconds() / 3, r
                assert r["calls"] == ["allgather", "allgather"], r  # metadata, then messages
    for results in per_rank[1:]:
        assert [r["message"] for r in results] == [r["message"] for r in per_rank[0]]


@pytest.mark.multiprocess
def test_one_rank_group_raises_the_error_as_it_is(group_results):
    (result,) = _scenario(group_results, "one_rank_group_error")[0]
    assert result["type"] == "ValueError", result
    assert result["message"].startswith("policy_chosen_logps must be finite"), result
    assert result["calls"] == [], result


@pytest.mark.multiprocess
def test_value_checks_never_lets_a_nan_reach_every_rank(group_results):
    for (result,) in _scenario(group_results, "value_checks_never"):
        assert torch.isnan(result["loss"]), result


def test_not_initialized_raises_before_any_communication():
    assert not dist.is_initialized()
    x = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"torch\.distributed is not initialized"):
        gather_concat(x, None, name="u")
    with pytest.raises(
        RuntimeError, match=r"process_group was given but torch\.distributed is not"
    ):
        aot_paired_loss(x, x, x, x, process_group=object())  # type: ignore[arg-type]
