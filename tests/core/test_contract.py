"""One contract, run over every public differentiable function on every device (kornia's
``BaseTester`` and torchmetrics' ``MetricTester`` in spirit): the losses, ``ot_1d`` and the
sorts, read from their modules' ``__all__``. A smoke test, the bad-input messages, float64
gradcheck and gradgradcheck, dtype and device kept, ``torch.compile`` (one graph) equal to eager,
and the ``nn.Module`` wrapper equal to the function. Each function's own formulas and oracles
are tested in its own file."""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

import pytest
import torch
from torch import Tensor, nn

import aot_losses
import aot_losses.baselines
import aot_losses.losses
import aot_losses.ot
import aot_losses.sorting
from aot_losses import (
    SoftSort,
    aot_paired_loss,
    aot_unpaired_loss,
    hard_sort,
    ot_1d,
    soft_rank,
    soft_sort,
)
from aot_losses.baselines import dpo_loss, ipo_loss, kto_loss, preference_margins, slic_loss
from aot_losses.nn import (
    AOTPairedLoss,
    AOTUnpairedLoss,
    DPOLoss,
    IPOLoss,
    KTOLoss,
    SLiCLoss,
)
from aot_losses.ot import SortKind
from aot_losses.sorting import Backend, Regularization

from ..helpers import TOLERANCES, assert_close, random_logps

LOGPS = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
)


@dataclass(frozen=True)
class Case:
    """A function under the contract: its positional tensors (names, last-dimension sizes,
    which get gradients), a non-default call's options and its module form. ``reduces``: it
    reduces the last dimension (``reduction=``), or returns the shape of its first tensor;
    ``rejects_non_finite``: NaN and infinity raise while value checks run."""

    name: str
    function: Callable[..., Tensor]
    names: tuple[str, ...] = LOGPS
    sizes: tuple[int, ...] = (6, 6, 6, 6)
    leading: tuple[int, ...] = ()
    differentiable: tuple[int, ...] = (0, 1)
    options: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)  # weight option -> its size
    module: type[nn.Module] | None = None
    reduces: bool = True
    rejects_non_finite: bool = True

    def inputs(self, dtype: torch.dtype, device: torch.device, seed: int = 0) -> list[Tensor]:
        return random_logps(self.sizes, seed, dtype=dtype, device=device, leading=self.leading)

    def call_options(self, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(99)
        weights = {
            name: (torch.rand(n, generator=gen, dtype=torch.float64) + 0.1).to(dtype).to(device)
            for name, n in self.weights.items()
        }
        return {**self.options, **weights}


def _of_x(
    name: str, function: Callable[..., Tensor], rejects_non_finite: bool = True, **options: Any
) -> Case:
    """A case of a function of one tensor ``x`` (3, 6) whose result keeps its shape."""
    return Case(
        name,
        function,
        names=("x",),
        sizes=(6,),
        leading=(3,),
        differentiable=(0,),
        options=options,
        reduces=False,
        rejects_non_finite=rejects_non_finite,
    )


CASES = [
    Case("aot_paired", aot_paired_loss, options={"beta": 0.5}, module=AOTPairedLoss),
    Case(
        "aot_paired_weighted_soft",
        aot_paired_loss,
        options={
            "beta": 0.5,
            "penalty": "squared_hinge",
            "sort": SoftSort(regularization_strength=2.0),
        },
        weights={"weights": 6},
        module=AOTPairedLoss,
    ),
    Case(
        "aot_unpaired_unequal_weighted",
        aot_unpaired_loss,
        sizes=(6, 4, 6, 4),
        options={"beta": 0.3, "penalty": "least_squares"},
        weights={"chosen_weights": 6, "rejected_weights": 4},
        module=AOTUnpairedLoss,
    ),
    Case(
        "aot_unpaired_soft_kl",
        aot_unpaired_loss,
        sizes=(5, 7, 5, 7),
        options={"sort": "soft", "regularization": "kl", "regularization_strength": 0.5},
        module=AOTUnpairedLoss,
    ),
    Case(
        "ot_1d",
        ot_1d,
        names=("u", "v"),
        sizes=(5, 7),
        leading=(2,),
        options={"penalty": "hinge", "beta": 0.2},
        weights={"u_weights": 5},
    ),
    Case("dpo", dpo_loss, options={"beta": 0.3, "label_smoothing": 0.1}, module=DPOLoss),
    Case("ipo", ipo_loss, options={"beta": 0.4}, module=IPOLoss),
    Case("slic", slic_loss, options={"margin": 0.5}, module=SLiCLoss),
    Case(
        "kto",
        kto_loss,
        sizes=(5, 3, 5, 3),
        options={"beta": 0.3, "desirable_weight": 2.0, "kl": 0.1},  # z0 held fixed: not a gradient
        module=KTOLoss,
    ),
    Case("preference_margins", preference_margins, reduces=False),
    _of_x("soft_sort", soft_sort, regularization_strength=0.7),
    _of_x(
        "soft_sort_kl_descending",
        soft_sort,
        regularization="kl",
        regularization_strength=2.0,
        descending=True,
    ),
    _of_x("soft_rank_dim0", soft_rank, regularization_strength=3.0, dim=0),
    _of_x("soft_rank_kl", soft_rank, regularization="kl", regularization_strength=2.0),
    _of_x("hard_sort", hard_sort, rejects_non_finite=False, descending=True),  # NaN sorts last
]
cases = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


def call(
    case: Case, inputs: list[Any], device: torch.device, dtype: torch.dtype = torch.float64
) -> Tensor:
    return case.function(*inputs, **case.call_options(dtype, device))


@cases
def test_smoke(case: Case, device: torch.device) -> None:
    inputs = case.inputs(torch.float64, device)
    value = call(case, inputs, device)
    assert value.shape == (case.leading if case.reduces else inputs[0].shape)
    assert bool(torch.isfinite(value).all())
    if not case.reduces:
        return
    per_term = case.function(*inputs, **case.call_options(torch.float64, device), reduction="none")
    total = case.function(*inputs, **case.call_options(torch.float64, device), reduction="sum")
    assert_close(per_term.mean(-1), value)
    assert_close(per_term.sum(-1), total)


def _at_second(value: float) -> Callable[[Tensor], Tensor]:
    """A transform that puts ``value`` at index 1 of the last dimension."""
    return lambda t: torch.where(torch.arange(t.shape[-1], device=t.device) == 1, value, t)


BAD = {
    "a list": (lambda t: t.tolist(), TypeError, "must be a torch.Tensor"),
    "integers": (lambda t: t.long(), TypeError, "must have a floating-point dtype"),
    "another dtype": (lambda t: t.float(), TypeError, "must have the same dtype as"),
    "another device": (lambda t: t.to("meta"), ValueError, "must be on the same device as"),
    "a NaN": (_at_second(math.nan), ValueError, "must be finite"),
    "an infinity": (_at_second(math.inf), ValueError, "must be finite"),
    "minus infinity": (_at_second(-math.inf), ValueError, "must be finite"),
}
#: The bad inputs that apply to a function: "another dtype" and "another device" need two
#: tensors; non-finite values are an error where the function rejects them.
BAD_CASES = [
    pytest.param(case, bad, id=f"{case.name}-{bad}")
    for case in CASES
    for bad in BAD
    if (len(case.names) > 1 or bad not in ("another dtype", "another device"))
    and (case.rejects_non_finite or BAD[bad][2] != "must be finite")
]


@pytest.mark.parametrize(("case", "bad"), BAD_CASES)
def test_bad_input_names_the_argument(
    case: Case, bad: str, device: torch.device, value_checks: None
) -> None:
    aot_losses.set_value_checks("always")  # the NaN check reads values, on CUDA too
    transform, error, message = BAD[bad]
    for i, name in enumerate(case.names):
        inputs: list[Any] = case.inputs(torch.float64, device)
        inputs[i] = transform(inputs[i])
        with pytest.raises(error, match=message) as raised:
            call(case, inputs, device)
        assert name in str(raised.value), (name, str(raised.value))


@cases
def test_gradcheck_and_gradgradcheck_float64(case: Case, device: torch.device) -> None:
    inputs = case.inputs(torch.float64, device, seed=1)
    grad = [inputs[i].requires_grad_() for i in case.differentiable]

    def fn(*args: Tensor) -> Tensor:
        full = list(inputs)
        for i, arg in zip(case.differentiable, args, strict=True):
            full[i] = arg
        return call(case, full, device)

    assert torch.autograd.gradcheck(fn, grad)
    assert torch.autograd.gradgradcheck(fn, grad)


@cases
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_dtype_and_device_kept(case: Case, dtype: torch.dtype, device: torch.device) -> None:
    inputs = case.inputs(dtype, device)
    for t in inputs[:2]:
        t.requires_grad_()
    value = call(case, inputs, device, dtype)
    assert value.dtype == dtype and value.device.type == device.type
    value.sum().backward()
    assert inputs[0].grad is not None and inputs[0].grad.dtype == dtype
    exact = call(
        case, [t.detach().double() for t in inputs], device, dtype
    )  # the same rounded inputs
    assert_close(value, exact, dtype)


@cases
def test_torch_compile_equals_eager(case: Case, device: torch.device) -> None:
    """One graph (``fullgraph=True``; ``aot_eager``: no C++ compiler needed, and it traces the
    fake and autograd registrations of the soft sort's custom op): value and gradient equal
    eager mode's. The gradient is that of a weighted sum of the result (a plain sum of a soft
    sort is the sum of its input, of soft ranks a constant)."""
    torch._dynamo.reset()
    inputs = case.inputs(torch.float64, device, seed=2)
    options = case.call_options(torch.float64, device)

    def fn(first: Tensor) -> Tensor:
        return case.function(first, *inputs[1:], **options)

    eager, compiled = inputs[0].clone().requires_grad_(), inputs[0].clone().requires_grad_()
    expected = fn(eager)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(compiled)
    weights = torch.linspace(1, 2, expected.numel(), dtype=expected.dtype, device=device)
    (expected * weights.view(expected.shape)).sum().backward()
    (got * weights.view(got.shape)).sum().backward()
    assert_close(got, expected)
    assert_close(compiled.grad, eager.grad)


@pytest.mark.parametrize("case", [c for c in CASES if c.module is not None], ids=lambda c: c.name)
def test_module_wrapper_equals_the_function(case: Case, device: torch.device) -> None:
    assert case.module is not None
    inputs = case.inputs(torch.float64, device, seed=3)
    options = case.call_options(torch.float64, device)
    tensors = {k: v for k, v in options.items() if isinstance(v, Tensor)}
    module = case.module(**{k: v for k, v in options.items() if k not in tensors})
    assert_close(module(*inputs, **tensors), case.function(*inputs, **options))
    for name, value in options.items():
        if name not in tensors:
            assert f"{name}={value!r}" in repr(module)
    with pytest.raises(TypeError, match="unexpected option 'betta'"):
        case.module(betta=1.0)


#: The modules whose public functions that return a tensor are under the contract.
CONTRACT_MODULES = (aot_losses.losses, aot_losses.ot, aot_losses.baselines, aot_losses.sorting)


def test_every_public_function_is_under_the_contract() -> None:
    """A new public loss (or sort, or any function of these modules' ``__all__`` that returns
    a tensor) gets a case here; so does every module of :mod:`aot_losses.nn`."""
    public = {
        function
        for module in CONTRACT_MODULES
        for name in module.__all__
        if inspect.isfunction(function := getattr(module, name))
        and inspect.signature(function).return_annotation in ("Tensor", Tensor)
    }
    assert {c.function for c in CASES} == public
    assert {aot_paired_loss, soft_sort, hard_sort, preference_margins} <= public
    modules = {c.module for c in CASES if c.module is not None}
    public = {getattr(aot_losses.nn, name) for name in aot_losses.nn.__all__}
    assert modules == public
    assert set(TOLERANCES) == {torch.float64, torch.float32, torch.bfloat16, torch.float16}


def test_one_vocabulary_for_the_options() -> None:
    """``Backend`` and ``Regularization`` (:mod:`aot_losses.sorting`) and ``SortKind``
    (:mod:`aot_losses.ot`, inside ``SortLike``) are defined once and name every option that
    takes them; the keywords of ``ot_1d`` and the losses become options in one call."""
    spelled = {
        "regularization": "Regularization",
        "sort_backend": "Backend",
        "sort": "SortLike",
    }
    functions = [aot_paired_loss, aot_unpaired_loss, ot_1d, soft_sort, soft_rank, SoftSort]
    for function in functions:
        for name, parameter in inspect.signature(function).parameters.items():
            if name in spelled:
                assert parameter.annotation == spelled[name], (function, name)
    assert inspect.signature(soft_sort).parameters["backend"].annotation == "Backend"
    assert get_args(Backend) == ("torch", "torchsort", "sinkhorn")
    assert get_args(Regularization) == ("l2", "kl")
    assert get_args(SortKind) == ("hard", "soft")
    calls = [
        node
        for module in (aot_losses.ot, aot_losses.losses, aot_losses.nn)
        for node in ast.walk(ast.parse(inspect.getsource(module)))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "resolve_options"
    ]
    assert len(calls) == 1
