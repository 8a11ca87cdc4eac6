"""Checkers: property tests that point hypothesis at your code and the exact oracles.

:func:`check_ot_1d` (a 1-D OT cost and its gradients), :func:`check_soft_sort` (a soft sort
and its Jacobian) and :func:`check_aot_loss` (an AOT loss). Each runs a fixed sweep of the
smallest cases (n <= 3, every pattern of ties) and then a hypothesis property test, and raises
``AssertionError`` with the counterexample (shrunk if drawn), the expected and the received
value.
Needs hypothesis (the extra ``[testing]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias

import torch

from .._validation import check_choice, describe
from .oracles import (
    _INSTALL,
    ArrayFunction,
    FloatArray,
    PenaltyLike,
    Regularization,
    _danskin,
    _one_sided_slopes,
    _soft_blocks,
    _soft_sort_jacobian,
    _Transport,
    _transport,
    reference_aot_loss,
    reference_penalty,
    reference_soft_sort,
    trl_aot_loss,
)

try:
    import numpy as np
    from hypothesis import HealthCheck, Phase, Verbosity, example, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
except ImportError as error:
    raise ImportError(
        f"aot_losses.testing.checkers needs hypothesis ({error}); {_INSTALL}"
    ) from error

from .strategies import (
    OTCase,
    _aot_cases,
    _AOTCase,
    _small_aot_cases,
    _small_ot_cases,
    _small_soft_sort_cases,
    _soft_sort_cases,
    _SoftSortCase,
    ot_cases,
)

__all__ = ["check_aot_loss", "check_ot_1d", "check_soft_sort"]

ArrayKind: TypeAlias = Literal["numpy", "torch"]


def _check_run_options(
    rtol: object, atol: object, max_examples: object, seed: object, max_size: object = 1
) -> None:
    """Check the options shared by the checkers."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a real number >= 0; got {describe(value)}")
        if not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    for name, count in (("max_examples", max_examples), ("max_size", max_size)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{name} must be a positive int; got {describe(count)}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None; got {describe(seed)}")


def _run(
    prop: Callable[[Any], None],
    strategy: st.SearchStrategy[Any],
    max_examples: int,
    seed: int | None,
    small_cases: Sequence[object] = (),
) -> None:
    """Run ``prop`` on each of ``small_cases`` (in order), then as a hypothesis test of
    ``max_examples`` cases; the first failure is re-raised, shrunk if it is a drawn case. A
    ``seed`` overrides a loaded profile's ``derandomize``; without one, the profile decides."""
    test = given(strategy)(prop)
    for case in reversed(small_cases):  # hypothesis runs the outermost example first
        test = example(case)(test)
    test = settings(
        derandomize=settings().derandomize if seed is None else False,
        max_examples=max_examples,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        phases=[phase for phase in Phase if phase is not Phase.explain],
    )(test)
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    test()


def _convert(x: FloatArray | None, array: str, grad: bool = False) -> Any:
    """A copy of ``x`` as the candidate gets it: a float64 array or tensor."""
    if x is None:
        return None
    if array == "torch":
        return torch.tensor(x, dtype=torch.float64, requires_grad=grad)
    return x.copy()


def _scalar(value: object, checker: str, case: object) -> float:
    """The candidate's result as a float (a float, a NumPy scalar or a 0-d tensor)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return float(value.detach())
    if not isinstance(value, torch.Tensor) and np.ndim(value) == 0:  # type: ignore[arg-type]
        return float(value)  # type: ignore[arg-type]
    raise AssertionError(
        f"{checker}: the candidate must return a scalar (a float, a NumPy scalar or a 0-d "
        f"tensor); got {describe(value)}\n  case: {case!r}"
    )


def _call(
    checker: str, candidate: Callable[..., Any], case: object, *args: Any, **kwargs: Any
) -> Any:
    """Call the candidate; an exception it raises is a failure on this case."""
    try:
        return candidate(*args, **kwargs)
    except Exception as error:
        raise AssertionError(
            f"{checker}: the candidate raised {type(error).__name__}: {error}\n  case: {case!r}"
        ) from error


def _plain(x: object) -> object:
    """NumPy values as Python floats and lists (exact reprs, no dtype noise)."""
    return x.tolist() if isinstance(x, (np.ndarray, np.generic)) else x


def _mismatch(
    checker: str, what: str, case: object, expected: object, got: object, tolerance: str
) -> AssertionError:
    return AssertionError(
        f"{checker}: {what}\n  case:     {case!r}\n  expected: {_plain(expected)!r}\n"
        f"  got:      {_plain(got)!r}\n  ({tolerance})"
    )


def _tied_groups(x: FloatArray, weights: FloatArray | None) -> list[list[int]]:
    """Indices of equal values of positive weight (their gradients are compared summed: how a
    tie is broken is arbitrary); each zero-weight atom alone (its gradient is 0)."""
    groups: dict[float, list[int]] = {}
    alone = []
    for i, value in enumerate(x.tolist()):
        if weights is not None and weights[i] == 0:
            alone.append([i])
        else:
            groups.setdefault(value, []).append(i)
    return list(groups.values()) + alone


def _grouped_mismatch(
    got: FloatArray,
    low: FloatArray,
    high: FloatArray,
    scale: FloatArray,
    groups: list[list[int]],
    rtol: float,
    atol: float,
) -> tuple[list[object], list[float]] | None:
    """The group sums (expected, got) if one lies outside [low, high] by more than
    atol + rtol * scale (summed per group); an expected sum is a float, or [low, high] where
    these differ."""
    sums = [[math.fsum(x[g].tolist()) for g in groups] for x in (got, low, high, scale)]
    sums_got, sums_low, sums_high, sums_scale = sums
    for g, lo, hi, s in zip(sums_got, sums_low, sums_high, sums_scale, strict=True):
        if not lo - (atol + rtol * s) <= g <= hi + atol + rtol * s:
            bounds = zip(sums_low, sums_high, strict=True)
            return [lo if lo == hi else [lo, hi] for lo, hi in bounds], sums_got
    return None


def check_ot_1d(
    candidate: Callable[..., Any],
    penalty: PenaltyLike = "least_squares",
    *,
    beta: float = 1.0,
    label_smoothing: float = 0.0,
    unequal_sizes: bool = True,
    weights: bool = True,
    gradients: bool = False,
    array: ArrayKind = "numpy",
    max_examples: int = 100,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    seed: int | None = None,
    derivative: ArrayFunction | None = None,
    cases: st.SearchStrategy[OTCase] | None = None,
) -> None:
    """Property-test ``candidate(u, v, u_weights, v_weights) -> scalar``, a 1-D OT cost with
    the penalty h, against :func:`reference_ot_1d` on :func:`ot_cases`.

    The candidate gets float64 NumPy arrays (``array="numpy"``) or float64 tensors
    (``array="torch"``), weights ``None`` for a uniform side, and returns a float, a NumPy
    scalar or a 0-d tensor. Each case must satisfy
    ``|got - expected| <= max(rtol * max(|got|, |expected|), atol)`` (``math.isclose``).
    With ``gradients=True`` (needs ``array="torch"``) ``u`` and ``v`` require grad and the
    candidate's gradients must equal Danskin's (:func:`reference_ot_grad`), summed over each
    group of tied atoms of positive weight (tie-breaking is arbitrary), 0 for atoms of zero
    weight, within ``atol + rtol * sum_j P_ij |h'(u_i - v_j)|``. Where differences sit on a
    kink of h (the hinge at x = beta) any subgradient passes: the sum for u_i may be anywhere
    in [sum_j P_ij h'_-(u_i - v_j), sum_j P_ij h'_+(u_i - v_j)] (left and right derivatives;
    a callable penalty's ``derivative`` serves as both), so ``torch.clamp(1 - x, min=0)``
    (slope -1 at the kink) and ``torch.maximum(1 - x, torch.zeros_like(x))`` (-1/2) pass as
    the hinge. A candidate that raises on a case fails on
    it. The cases: first a fixed sweep of every pattern of ties of n, m <= 3 values (unless
    ``cases`` is given), then ``max_examples`` drawn ones.

    Args:
        candidate: the function under test; bind its penalty and options yourself.
        penalty: the h the candidate computes: a name of :mod:`aot_losses.penalties` or a
            NumPy-elementwise convex callable (``beta`` not applied).
        beta: scale (logistic) or margin (the others) of a named penalty.
        label_smoothing: eps of the logistic penalty.
        unequal_sizes: draw n != m.
        weights: draw weighted cases.
        gradients: also check the gradients of the value w.r.t. ``u`` and ``v``.
        array: ``"numpy"`` or ``"torch"``.
        max_examples: number of cases.
        rtol: relative tolerance.
        atol: absolute tolerance.
        seed: makes the run reproducible (``None``: hypothesis' random); for the same program:
            hypothesis also draws constants from the loaded modules of your project.
        derivative: h' of a callable penalty, for ``gradients=True``.
        cases: a strategy of :class:`OTCase` to use instead of the sweep and
            ``ot_cases(weights=weights, unequal_sizes=unequal_sizes)`` (to narrow the range).

    Returns:
        None when every case passes.

    Raises:
        AssertionError: the counterexample (shrunk if drawn), the expected and the received
            value (or gradient).
        ValueError: bad options (``gradients=True`` with ``array="numpy"``, a callable penalty
            with ``gradients=True`` and no ``derivative``, tolerances < 0, ...).
        TypeError: options of the wrong type.

    Example:
        >>> import torch
        >>> from aot_losses import ot_1d
        >>> from aot_losses.testing import check_ot_1d
        >>> def candidate(u, v, u_weights, v_weights):
        ...     return ot_1d(u, v, "hinge", beta=1.0, u_weights=u_weights, v_weights=v_weights)
        >>> check_ot_1d(candidate, "hinge", array="torch", gradients=True, max_examples=20)
    """
    reference_penalty(penalty, beta=beta, label_smoothing=label_smoothing)
    check_choice(array, "array", ("numpy", "torch"))
    _check_run_options(rtol, atol, max_examples, seed)
    slopes: tuple[ArrayFunction, ArrayFunction] | None = None
    if gradients:
        if array != "torch":
            raise ValueError(
                "gradients=True reads u.grad and v.grad: it needs array='torch'; "
                f"got array={array!r}"
            )
        slopes = _one_sided_slopes(penalty, beta, label_smoothing, derivative)
    if cases is None:
        strategy = ot_cases(weights=weights, unequal_sizes=unequal_sizes)
        small_cases = _small_ot_cases(unequal_sizes, weights)
    else:
        strategy, small_cases = cases, []
    checker = "check_ot_1d"
    tolerance = f"rtol={rtol}, atol={atol}; penalty={penalty!r}, beta={beta}"
    if label_smoothing:
        tolerance += f", label_smoothing={label_smoothing}"

    def prop(case: OTCase) -> None:
        problem = _transport(
            case.u, case.v, penalty, beta, label_smoothing, case.u_weights, case.v_weights,
            "quantile",
        )  # fmt: skip
        expected = problem.cost()
        u, v = _convert(case.u, array, gradients), _convert(case.v, array, gradients)
        a, b = _convert(case.u_weights, array), _convert(case.v_weights, array)
        result = _call(checker, candidate, case, u, v, a, b)
        got = _scalar(result, checker, case)
        if not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            what = "the value differs from the exact OT cost"
            raise _mismatch(checker, what, case, expected, got, tolerance)
        if slopes is not None:
            _check_ot_gradients(problem, slopes, case, result, u, v, rtol, atol, tolerance)

    _run(prop, strategy, max_examples, seed, small_cases)


def _check_ot_gradients(
    problem: _Transport,
    slopes: tuple[ArrayFunction, ArrayFunction],
    case: OTCase,
    result: object,
    u: torch.Tensor,
    v: torch.Tensor,
    rtol: float,
    atol: float,
    tolerance: str,
) -> None:
    checker = "check_ot_1d"
    if not isinstance(result, torch.Tensor) or not result.requires_grad:
        raise AssertionError(
            f"{checker}: gradients=True needs a 0-d tensor that requires grad; got "
            f"{describe(result)}\n  case: {case!r}"
        )
    grads = torch.autograd.grad(result, (u, v), allow_unused=True)
    # Danskin with h'_- and with h'_+: the bounds of the subgradients (d/dv has the sign -)
    left_u, left_v, left_scale_u, left_scale_v = _danskin(problem, slopes[0])
    right_u, right_v, right_scale_u, right_scale_v = _danskin(problem, slopes[1])
    for side, grad, x, w, low, high, scale in (
        ("u", grads[0], case.u, case.u_weights, left_u, right_u, (left_scale_u, right_scale_u)),
        ("v", grads[1], case.v, case.v_weights, right_v, left_v, (left_scale_v, right_scale_v)),
    ):
        got = np.zeros(len(x)) if grad is None else grad.detach().double().numpy()
        groups = _tied_groups(x, w)
        wrong = _grouped_mismatch(got, low, high, np.maximum(*scale), groups, rtol, atol)
        if wrong is not None:
            what = (
                f"the gradient w.r.t. {side} differs from Danskin's, summed over the groups "
                f"of tied atoms {groups} (at a kink of h: any value in [low, high])"
            )
            raise _mismatch(checker, what, case, wrong[0], wrong[1], tolerance)


def check_soft_sort(
    candidate: Callable[..., Any],
    *,
    regularization: Regularization = "l2",
    gradients: bool = False,
    array: ArrayKind = "torch",
    max_size: int = 12,
    max_examples: int = 100,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    seed: int | None = None,
) -> None:
    """Property-test ``candidate(x, regularization_strength) -> (n,)``, an ascending soft sort
    of a 1-D float64 ``x`` (Blondel et al. 2020, torchsort's conventions), against the exact
    properties of the permutahedron projection and :func:`reference_soft_sort`.

    Checked on each case, in this order (tolerance ``atol + rtol * (max|x| + max|out|)``,
    scaled by the transform): the output is non-decreasing; ``"l2"`` only: the sum of ``x`` is
    kept, the output majorizes the hard sort (its cumulative sums are >= the sorted ones,
    equal at the end), it is the hard sort when s <= 1 / (largest gap), and
    ss(a x, s / a) = a ss(x, s); permutation invariance; ss(x + c) = ss(x) + c; equality with
    the float64 PAV reference. With ``gradients=True`` (``array="torch"``) the Jacobian must
    be the reference's (per block B of the sorted values: 1 / |B| for l2, softmax_B(-a) for
    kl, times the sorting permutation; columns of tied values summed), except next to a block
    boundary where it jumps. The cases: first a fixed sweep (every pattern of ties of n <= 3
    values at strengths 0.5, 1, 2, 10), then ``max_examples`` drawn ones.

    Args:
        candidate: the soft sort under test, called as ``candidate(x, s)``.
        regularization: ``"l2"`` or ``"kl"``, the one the candidate computes.
        gradients: also check the Jacobian (row by row, ``torch.autograd.grad``).
        array: the candidate gets a float64 tensor (``"torch"``, the default: soft sorts are
            PyTorch code) or a NumPy array (``"numpy"``).
        max_size: largest n.
        max_examples: number of cases.
        rtol: relative tolerance.
        atol: absolute tolerance.
        seed: makes the run reproducible (as in :func:`check_ot_1d`).

    Returns:
        None when every case passes.

    Raises:
        AssertionError: the property that fails, the case (shrunk if drawn), expected and got.
        ValueError, TypeError: bad options.

    Example:
        >>> import torch
        >>> from aot_losses import soft_sort
        >>> from aot_losses.testing import check_soft_sort
        >>> def candidate(x, s):
        ...     return soft_sort(x, regularization_strength=s)
        >>> check_soft_sort(candidate, gradients=True, max_examples=20)
    """
    check_choice(regularization, "regularization", ("l2", "kl"))
    check_choice(array, "array", ("numpy", "torch"))
    _check_run_options(rtol, atol, max_examples, seed, max_size)
    if gradients and array != "torch":
        raise ValueError(
            f"gradients=True differentiates the candidate: it needs array='torch'; got {array!r}"
        )
    checker = "check_soft_sort"
    tolerance = f"rtol={rtol}, atol={atol}; regularization={regularization!r}"

    def run(case: _SoftSortCase, x: FloatArray, s: float) -> FloatArray:
        out = _call(checker, candidate, case, _convert(x, array), s)
        if isinstance(out, torch.Tensor):
            out = out.detach()
        got = np.asarray(out, dtype=np.float64)
        if got.shape != x.shape:
            raise AssertionError(
                f"{checker}: the candidate must return shape {x.shape}; got {got.shape}\n"
                f"  case: {case!r}"
            )
        return got

    def prop(case: _SoftSortCase) -> None:
        x, s, n = case.x, case.regularization_strength, len(case.x)
        out = run(case, x, s)
        hard = np.sort(x)
        tol = atol + rtol * (np.abs(x).max() + np.abs(out).max())

        def require(ok: object, what: str, expected: object, got: object) -> None:
            if not ok:
                raise _mismatch(checker, what, case, expected, got, tolerance)

        require((np.diff(out) >= -tol).all(), "the output decreases", "sorted", out)
        if regularization == "l2":
            total = math.fsum(x.tolist())
            require(abs(out.sum() - total) <= tol * n, "the sum of x changed", total, out.sum())
            cum_hard, cum_out = np.cumsum(hard), np.cumsum(out)
            majorizes = (cum_out >= cum_hard - tol * n).all()
            require(majorizes, "it does not majorize the hard sort", cum_hard, cum_out)
            if n == 1 or s * np.diff(hard).max() <= 1:
                hard_sort = (np.abs(out - hard) <= tol).all()
                require(hard_sort, "it is not the hard sort, yet s <= 1 / largest gap", hard, out)
            a = case.scale
            scaled = run(case, a * x, s / a)
            homogeneous = (np.abs(scaled - a * out) <= a * tol).all()
            require(homogeneous, "ss(a x, s / a) != a ss(x, s)", a * out, scaled)
        shuffled = run(case, x[case.permutation], s)
        require((np.abs(shuffled - out) <= tol).all(), "ss(x[permutation]) != ss(x)", out, shuffled)
        c = case.shift
        moved = run(case, x + c, s)
        shifted = (np.abs(moved - (out + c)) <= tol + rtol * abs(c)).all()
        require(shifted, "ss(x + c) != ss(x) + c", out + c, moved)
        expected = reference_soft_sort(x, s, regularization)
        exact = (np.abs(out - expected) <= tol).all()
        require(exact, "it differs from the reference soft sort", expected, out)
        if gradients:
            _check_soft_sort_jacobian(candidate, case, regularization, rtol, atol, tolerance)

    _run(prop, _soft_sort_cases(max_size), max_examples, seed, _small_soft_sort_cases(max_size))


def _check_soft_sort_jacobian(
    candidate: Callable[..., Any],
    case: _SoftSortCase,
    regularization: str,
    rtol: float,
    atol: float,
    tolerance: str,
) -> None:
    x, s = case.x, case.regularization_strength
    a = sorted(x.tolist())
    blocks = _soft_blocks(a, s, regularization, False)
    slack = 1e-6 * (1 + max(abs(t) for t in a) + len(a) / s)
    if _soft_blocks(a, s, regularization, False, slack) != blocks:
        return  # next to a block boundary: the Jacobian jumps there
    expected = _soft_sort_jacobian(x, s, regularization, blocks)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = _call("check_soft_sort", candidate, case, xt, s)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise AssertionError(
            "check_soft_sort: gradients=True needs a tensor that requires grad; got "
            f"{describe(out)}\n  case: {case!r}"
        )
    rows = [
        torch.autograd.grad(out[i], xt, retain_graph=True, allow_unused=True)[0]
        for i in range(len(x))
    ]
    got = np.stack([np.zeros(len(x)) if r is None else r.double().numpy() for r in rows])
    groups = _tied_groups(x, None)
    want = np.stack([expected[:, g].sum(1) for g in groups], 1)
    have = np.stack([got[:, g].sum(1) for g in groups], 1)
    if not bool((np.abs(have - want) <= atol + rtol * np.abs(want).sum(1, keepdims=True)).all()):
        what = f"the Jacobian differs (columns of tied values {groups} summed)"
        raise _mismatch("check_soft_sort", what, case, want.tolist(), have.tolist(), tolerance)


def check_aot_loss(
    candidate: Callable[..., Any],
    paired: bool = True,
    *,
    penalty: PenaltyLike = "logistic",
    beta: float = 0.01,
    label_smoothing: float = 0.0,
    unequal_sizes: bool = True,
    weights: bool = False,
    array: ArrayKind = "torch",
    max_size: int = 16,
    max_examples: int = 100,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    seed: int | None = None,
) -> None:
    """Property-test ``candidate(policy_chosen_logps, policy_rejected_logps,
    reference_chosen_logps, reference_rejected_logps, **weights) -> scalar``, an AOT loss,
    against the paper's formula.

    The reference is :func:`trl_aot_loss` (the paper's Appendix-B code, TRL's ``"aot"`` /
    ``"aot_unpaired"``) where it applies, the logistic penalty on equal sizes without weights,
    and :func:`reference_aot_loss` (the OT cost of the margins) elsewhere. Log-probs are drawn
    in [-500, 0] with ties; paired cases have four tensors of one size B, unpaired ones n
    chosen and m rejected (``unequal_sizes``). With ``weights=True`` half of the cases pass
    ``weights=`` (paired) or ``chosen_weights=`` and ``rejected_weights=`` (unpaired) as
    keywords, the names of :func:`aot_losses.aot_paired_loss` and
    :func:`aot_losses.aot_unpaired_loss`; so those functions, with the default options, are
    candidates as they are. Tolerance: ``math.isclose`` with ``rtol``, ``atol``. The cases:
    first a fixed sweep (margins from every two patterns of ties of n, m <= 3 values, in
    opposite orders; weighted too with ``weights``), then ``max_examples`` drawn ones.

    Args:
        candidate: the loss under test.
        paired: pAOT (True) or uAOT (False).
        penalty: the penalty the candidate computes (name or NumPy callable).
        beta: its scale or margin (the paper's default 0.01).
        label_smoothing: eps of the logistic penalty.
        unequal_sizes: unpaired only: draw n != m.
        weights: draw weighted cases.
        array: ``"torch"`` (the default: AOT losses are PyTorch code) or ``"numpy"``.
        max_size: largest batch.
        max_examples: number of cases.
        rtol: relative tolerance.
        atol: absolute tolerance.
        seed: makes the run reproducible (as in :func:`check_ot_1d`).

    Returns:
        None when every case passes.

    Raises:
        AssertionError: the counterexample (shrunk if drawn), expected and got.
        ValueError, TypeError: bad options.

    Example:
        >>> from aot_losses import aot_unpaired_loss
        >>> from aot_losses.testing import check_aot_loss
        >>> check_aot_loss(aot_unpaired_loss, paired=False, max_examples=20)
    """
    reference_penalty(penalty, beta=beta, label_smoothing=label_smoothing)
    check_choice(array, "array", ("numpy", "torch"))
    _check_run_options(rtol, atol, max_examples, seed, max_size)
    for name, flag in (("paired", paired), ("unequal_sizes", unequal_sizes), ("weights", weights)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool; got {describe(flag)}")
    checker = "check_aot_loss"
    tolerance = f"rtol={rtol}, atol={atol}; paired={paired}, penalty={penalty!r}, beta={beta}"
    if label_smoothing:
        tolerance += f", label_smoothing={label_smoothing}"

    def prop(case: _AOTCase) -> None:
        pc, pr, rc, rr = case.logps
        if penalty == "logistic" and not case.options and len(pc) == len(pr):
            expected = trl_aot_loss(
                pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing, paired=paired
            )
        else:
            expected = reference_aot_loss(
                pc, pr, rc, rr, paired=paired, penalty=penalty, beta=beta,
                label_smoothing=label_smoothing, **case.options,
            )  # fmt: skip
        tensors = [_convert(x, array) for x in case.logps]
        options = {k: _convert(w, array) for k, w in case.options.items()}
        got = _scalar(_call(checker, candidate, case, *tensors, **options), checker, case)
        if not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            what = "the loss differs from the paper's formula"
            raise _mismatch(checker, what, case, expected, got, tolerance)

    strategy = _aot_cases(paired, unequal_sizes, weights, max_size)
    small_cases = _small_aot_cases(paired, unequal_sizes, weights, max_size)
    _run(prop, strategy, max_examples, seed, small_cases)
