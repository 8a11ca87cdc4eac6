"""Property-test reference for 1-D optimal transport, soft sorts and the AOT losses.

Exact oracles, hypothesis strategies and checkers that anyone who writes a 1-D OT loss, a
Wasserstein distance, a soft sort or an AOT loss can point at their code. Everything here is
NumPy float64 (and pure Python where exactness needs it), independent of the library's torch
code: array-likes and torch tensors in, Python floats or float64 arrays out. Needs the extra
``aot-losses[testing]`` (numpy, scipy, hypothesis); ``import aot_losses`` never imports it.

Oracles:

* :func:`reference_ot_1d`, :func:`reference_ot_plan`, :func:`reference_ot_grad`: the OT cost
  OT_h(mu_u, mu_v) = integral_0^1 h(Q_u(t) - Q_v(t)) dt, its optimal coupling and its gradient
  (Danskin) for a convex penalty h, any sizes, nonnegative weights (zeros allowed);
* :func:`reference_soft_sort`, :func:`reference_soft_rank`: Blondel et al.'s permutahedron
  projection (torchsort's conventions) by a sequential pool-adjacent-violators in Python floats;
* :func:`trl_aot_loss` (the paper's Appendix-B code and TRL's ``"aot"`` / ``"aot_unpaired"``
  branches, transcribed) and :func:`reference_aot_loss` (the OT formula of the margins).

Strategies: :func:`ot_cases` (:class:`OTCase`). Checkers: :func:`check_ot_1d`,
:func:`check_soft_sort`, :func:`check_aot_loss`; each runs a hypothesis property test and raises
``AssertionError`` with the shrunk counterexample, the expected and the received value.

Example:
    >>> import numpy as np
    >>> from scipy.stats import wasserstein_distance
    >>> from aot_losses.testing import check_ot_1d
    >>> def w1(u, v, u_weights, v_weights):  # yours: forgets the weights
    ...     return wasserstein_distance(u, v)
    >>> check_ot_1d(w1, penalty=np.abs, seed=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    AssertionError: check_ot_1d: the value differs from the exact OT cost...
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, Literal, NamedTuple, TypeAlias

import torch

from ._validation import check_choice, check_label_smoothing, check_positive, describe

try:
    import numpy as np
    import numpy.typing as npt
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
except ImportError as error:
    raise ImportError(
        f"aot_losses.testing needs numpy, scipy and hypothesis ({error}); install them with "
        "pip install 'aot-losses[testing]'"
    ) from error

__all__ = [
    "OTCase",
    "check_aot_loss",
    "check_ot_1d",
    "check_soft_sort",
    "ot_cases",
    "reference_aot_loss",
    "reference_ot_1d",
    "reference_ot_grad",
    "reference_ot_plan",
    "reference_penalty",
    "reference_penalty_derivative",
    "reference_soft_rank",
    "reference_soft_sort",
    "trl_aot_loss",
]

FloatArray: TypeAlias = "npt.NDArray[np.float64]"
IndexArray: TypeAlias = "npt.NDArray[np.intp]"
#: A NumPy-elementwise function of a float64 array.
ArrayFunction: TypeAlias = Callable[[FloatArray], Any]
#: A name of :mod:`aot_losses.penalties` or a NumPy-elementwise convex callable.
PenaltyLike: TypeAlias = "str | ArrayFunction"
Method: TypeAlias = Literal["quantile", "lp"]
ArrayKind: TypeAlias = Literal["numpy", "torch"]
Regularization: TypeAlias = Literal["l2", "kl"]

# ------------------------------------------------------------------------------- inputs


def _array(x: object, name: str) -> FloatArray:
    """``x`` (array-like or tensor) as a non-empty, finite, 1-D float64 array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        array = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a 1-D array of real numbers; got {describe(x)}") from error
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite; got {array.tolist()}")
    return array


def _weights(w: object, name: str, size: int, samples: str) -> FloatArray | None:
    """Weights of ``size`` atoms: nonnegative, finite, not all zero; ``None`` stays None."""
    if w is None:
        return None
    array = _array(w, name)
    if array.shape != (size,):
        raise ValueError(
            f"{name} must have one weight per atom of {samples}, shape ({size},); "
            f"got shape {array.shape}"
        )
    if (array < 0).any() or not array.any():
        raise ValueError(f"{name} must be nonnegative and not all zero; got {array.tolist()}")
    return array


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


# ------------------------------------------------------------------------------- penalties


def _sigmoid(z: FloatArray) -> FloatArray:
    """1 / (1 + exp(-z)), to a few ulps for every z (no overflow, no cancellation)."""
    e = np.exp(-np.abs(z))
    out: FloatArray = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out


def _logistic(x: FloatArray, beta: float, eps: float) -> FloatArray:
    value: FloatArray = np.logaddexp(0.0, -beta * x)
    if eps:  # only then: eps * logaddexp(0, beta x) would be 0 * inf for huge beta x
        value = (1.0 - eps) * value + eps * np.logaddexp(0.0, beta * x)
    return value


def _logistic_slope(x: FloatArray, beta: float, eps: float) -> FloatArray:
    slope = -_sigmoid(-beta * x)
    if eps:
        slope = (1.0 - eps) * slope + eps * _sigmoid(beta * x)
    return beta * slope


def _hinge_slope(x: FloatArray, beta: float, eps: float) -> FloatArray:
    out: FloatArray = np.where(x < beta, -1.0, 0.0)  # torch's relu'(0) = 0 at the kink
    return out


#: name -> (h, h') with the meanings of aot_losses.penalties, as f(x, beta, eps) in NumPy.
_PENALTIES: dict[str, tuple[Callable[..., FloatArray], Callable[..., FloatArray]]] = {
    "logistic": (_logistic, _logistic_slope),
    "squared_hinge": (
        lambda x, beta, eps: np.maximum(beta - x, 0.0) ** 2,
        lambda x, beta, eps: -2.0 * np.maximum(beta - x, 0.0),
    ),
    "hinge": (lambda x, beta, eps: np.maximum(beta - x, 0.0), _hinge_slope),
    "least_squares": (lambda x, beta, eps: (beta - x) ** 2, lambda x, beta, eps: 2.0 * (x - beta)),
}


def _resolve(
    penalty: object, beta: object, label_smoothing: object, slope: bool
) -> ArrayFunction | None:
    """Check the penalty options as :func:`aot_losses.get_penalty` does; return h (or h' when
    ``slope``) of a named penalty, None for a callable."""
    beta = check_positive(beta, "beta")
    eps = check_label_smoothing(label_smoothing)
    if callable(penalty):
        if eps:
            raise ValueError(
                "label_smoothing applies to the 'logistic' penalty only; got "
                f"label_smoothing={eps} with a callable penalty"
            )
        return None
    if not isinstance(penalty, str):
        raise TypeError(
            f"penalty must be a name or a NumPy-elementwise callable; got {describe(penalty)}"
        )
    check_choice(penalty, "penalty", _PENALTIES)
    if eps and penalty != "logistic":
        raise ValueError(
            "label_smoothing applies to the 'logistic' penalty only; got "
            f"label_smoothing={eps} with penalty={penalty!r}"
        )
    f = _PENALTIES[penalty][1 if slope else 0]

    def h(x: FloatArray) -> FloatArray:
        return f(np.asarray(x, dtype=np.float64), beta, eps)

    return h


def reference_penalty(
    penalty: PenaltyLike, *, beta: float = 0.01, label_smoothing: float = 0.0
) -> ArrayFunction:
    """The penalty h as a NumPy float64 function, with the meanings of :mod:`aot_losses.penalties`.

    ``logistic``: (1 - eps) log(1 + exp(-beta x)) + eps log(1 + exp(beta x)) by
    ``numpy.logaddexp`` (exact to a few ulps, no overflow); ``squared_hinge``:
    max(beta - x, 0)^2; ``hinge``: max(beta - x, 0); ``least_squares``: (beta - x)^2.

    Args:
        penalty: a name of :mod:`aot_losses.penalties`, or a NumPy-elementwise callable
            (returned as is; ``beta`` is not applied to it).
        beta: scale (logistic) or margin (the others); a finite number > 0.
        label_smoothing: eps in [0, 0.5), logistic only.

    Returns:
        h: float64 array -> float64 array, elementwise.

    Raises:
        ValueError: unknown name, beta <= 0, label_smoothing outside [0, 0.5) or given with a
            penalty other than logistic.
        TypeError: ``penalty`` is neither a string nor a callable.

    Example:
        >>> import numpy as np
        >>> from aot_losses.testing import reference_penalty
        >>> reference_penalty("logistic", beta=1.0)(np.array([-800.0, 800.0]))  # no overflow
        array([800.,   0.])
    """
    h = _resolve(penalty, beta, label_smoothing, slope=False)
    return penalty if h is None else h  # type: ignore[return-value]  # None: a callable


def reference_penalty_derivative(
    penalty: PenaltyLike,
    *,
    beta: float = 0.01,
    label_smoothing: float = 0.0,
    derivative: ArrayFunction | None = None,
) -> ArrayFunction:
    """h' as a NumPy float64 function (for Danskin's gradients).

    ``logistic``: beta (eps sigma(beta x) - (1 - eps) sigma(-beta x)); ``squared_hinge``:
    -2 max(beta - x, 0); ``hinge``: -1 for x < beta, else 0 (at the kink x = beta, torch's
    subgradient of ``relu``); ``least_squares``: -2 (beta - x).

    Args:
        penalty: a name of :mod:`aot_losses.penalties` or a callable; a callable needs
            ``derivative``.
        beta: as in :func:`reference_penalty`.
        label_smoothing: as in :func:`reference_penalty`.
        derivative: h' of a callable penalty (NumPy-elementwise); not allowed with a name.

    Returns:
        h': float64 array -> float64 array, elementwise.

    Raises:
        ValueError: as :func:`reference_penalty`; a callable penalty without ``derivative``, or a
            named one with it.
        TypeError: as :func:`reference_penalty`; ``derivative`` is not callable.

    Example:
        >>> import numpy as np
        >>> from aot_losses.testing import reference_penalty_derivative
        >>> reference_penalty_derivative("hinge", beta=1.0)(np.array([0.0, 1.0, 2.0]))
        array([-1.,  0.,  0.])
    """
    h_prime = _resolve(penalty, beta, label_smoothing, slope=True)
    if derivative is not None and not callable(derivative):
        raise TypeError(f"derivative must be a callable or None; got {describe(derivative)}")
    if h_prime is None:
        if derivative is None:
            raise ValueError(
                "a callable penalty needs derivative= (its derivative h', NumPy-elementwise) "
                "for gradients; got derivative=None"
            )
        return derivative
    if derivative is not None:
        raise ValueError(f"derivative applies to a callable penalty only; got penalty={penalty!r}")
    return h_prime


def _evaluate(h: ArrayFunction, x: FloatArray, name: str = "penalty") -> FloatArray:
    """h(x) as a float64 array of x's shape."""
    out = np.asarray(h(x), dtype=np.float64)
    if out.shape != x.shape:
        raise TypeError(
            f"{name} must be elementwise: for an input of shape {x.shape} it returned shape "
            f"{out.shape}"
        )
    return out


# ------------------------------------------------------------------------------- 1-D OT


class _Coupling(NamedTuple):
    """A transport plan as its nonzero entries: mass ``mass[k]`` from atom ``rows[k]`` of u to
    atom ``cols[k]`` of v (original indices); the masses sum to 1."""

    rows: IndexArray
    cols: IndexArray
    mass: FloatArray


def _integer_weights(weights: FloatArray | None, size: int) -> list[int]:
    """Exact integers proportional to ``weights`` (floats are dyadic rationals); ones if None."""
    if weights is None:
        return [1] * size
    ratios = [float(w).as_integer_ratio() for w in weights]
    common = max(denominator for _, denominator in ratios)  # powers of two: the lcm is the max
    return [numerator * (common // denominator) for numerator, denominator in ratios]


def _monotone_coupling(
    u: FloatArray, v: FloatArray, u_weights: FloatArray | None, v_weights: FloatArray | None
) -> _Coupling:
    """The north-west-corner coupling of the sorted atoms, on the merged cumulative-weight grid
    computed exactly in integers: with cumulative weights A_i of u's sorted atoms (total A) and
    B_j of v's (total B), the cut points A_i B and B_j A share the scale A B; the interval
    (t_prev, t] is covered by the first atom of each side whose cut point is >= t. Only the
    final division of each length by A B rounds (Python's int / int is correctly rounded)."""
    order_u, order_v = np.argsort(u, kind="stable"), np.argsort(v, kind="stable")
    cum_u = list(accumulate(_integer_weights(_take(u_weights, order_u), len(u))))
    cum_v = list(accumulate(_integer_weights(_take(v_weights, order_v), len(v))))
    total = cum_u[-1] * cum_v[-1]
    grid_u = [c * cum_v[-1] for c in cum_u]
    grid_v = [c * cum_u[-1] for c in cum_v]
    rows, cols, mass = [], [], []
    previous = 0
    for cut in sorted(set(grid_u).union(grid_v)):
        if cut == previous:  # the cut point 0 of leading zero weights
            continue
        # bisect_left finds the first cut point >= cut: an atom of positive weight
        rows.append(int(order_u[bisect_left(grid_u, cut)]))
        cols.append(int(order_v[bisect_left(grid_v, cut)]))
        mass.append((cut - previous) / total)
        previous = cut
    return _Coupling(np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp), np.array(mass))


def _take(weights: FloatArray | None, order: IndexArray) -> FloatArray | None:
    return None if weights is None else weights[order]


def _lp_coupling(
    u: FloatArray,
    v: FloatArray,
    u_weights: FloatArray | None,
    v_weights: FloatArray | None,
    h: ArrayFunction,
) -> _Coupling:
    """An optimal plan of min <C, P> over the transport polytope, C_ij = h(u_i - v_j), by
    scipy's HiGHS on the full coupling of the atoms of positive weight (one redundant
    marginal row dropped)."""
    try:
        from scipy import sparse
        from scipy.optimize import linprog
    except ImportError as error:
        raise ImportError(
            f"method='lp' needs scipy ({error}); install it with pip install 'aot-losses[testing]'"
        ) from error
    p = np.ones(len(u)) if u_weights is None else u_weights
    q = np.ones(len(v)) if v_weights is None else v_weights
    rows, cols = np.flatnonzero(p), np.flatnonzero(q)
    p, q = p[rows] / p[rows].sum(), q[cols] / q[cols].sum()
    n, m = len(rows), len(cols)
    cost = _evaluate(h, u[rows][:, None] - v[cols][None, :])
    row_sums = sparse.kron(sparse.eye(n), np.ones((1, m)), format="csr")
    col_sums = sparse.kron(np.ones((1, n)), sparse.eye(m), format="csr")
    result = linprog(
        cost.ravel(),
        A_eq=sparse.vstack([row_sums, col_sums[:-1]]).tocsr(),
        b_eq=np.concatenate([p, q[:-1]]),
        bounds=(0, None),
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if result.status != 0:
        raise RuntimeError(
            f"HiGHS did not solve the transport LP: {result.message} (costs from "
            f"{cost.min():.3g} to {cost.max():.3g}; the LP needs a moderate range of costs, "
            "method='quantile' does not)"
        )
    plan = np.asarray(result.x, dtype=np.float64).reshape(n, m)
    i, j = np.nonzero(plan > 0)
    return _Coupling(rows[i], cols[j], plan[i, j])


class _Transport(NamedTuple):
    u: FloatArray
    v: FloatArray
    h: ArrayFunction
    coupling: _Coupling

    def differences(self) -> FloatArray:
        return self.u[self.coupling.rows] - self.v[self.coupling.cols]

    def cost(self) -> float:
        terms = self.coupling.mass * _evaluate(self.h, self.differences())
        return math.fsum(terms.tolist())


def _transport(
    u: object,
    v: object,
    penalty: PenaltyLike,
    beta: float,
    label_smoothing: float,
    u_weights: object,
    v_weights: object,
    method: object,
) -> _Transport:
    """Check the arguments of the public OT references; solve for an optimal coupling."""
    h = reference_penalty(penalty, beta=beta, label_smoothing=label_smoothing)
    check_choice(method, "method", ("quantile", "lp"))
    u_array, v_array = _array(u, "u"), _array(v, "v")
    a = _weights(u_weights, "u_weights", len(u_array), "u")
    b = _weights(v_weights, "v_weights", len(v_array), "v")
    if method == "lp":
        coupling = _lp_coupling(u_array, v_array, a, b, h)
    else:
        coupling = _monotone_coupling(u_array, v_array, a, b)
    return _Transport(u_array, v_array, h, coupling)


def reference_ot_1d(
    u: object,
    v: object,
    penalty: PenaltyLike,
    *,
    beta: float = 0.01,
    label_smoothing: float = 0.0,
    u_weights: object = None,
    v_weights: object = None,
    method: Method = "quantile",
) -> float:
    """The exact 1-D OT cost OT_h(mu_u, mu_v) = integral_0^1 h(Q_u(t) - Q_v(t)) dt.

    mu_u puts mass proportional to ``u_weights[i]`` on ``u[i]`` (uniform when None), likewise
    mu_v. Two independent methods:

    * ``"quantile"`` (default): the monotone coupling, exact for convex h. The merged grid of
      cumulative weights is built in exact integer arithmetic (so cut points that coincide
      coincide exactly; zero weights give no interval), each interval length is rounded once,
      h is evaluated once per interval at u_(i) - v_(j), and the terms are summed by
      ``math.fsum``. Error: a few ulps of sum_k |length_k h(d_k)|, plus the rounding of each
      d_k (|h'(d_k) d_k| ulp/2); independent of n and m. O((n + m) log(n + m)).
    * ``"lp"``: scipy's ``linprog`` (HiGHS) on the n x m transport polytope with cost
      C_ij = h(u_i - v_j): optimal for any cost, convex or not (for a non-convex h it is the
      true OT cost, which the sorting formula overestimates), but O(n m) variables (keep
      n m below about 10^4) and accurate to HiGHS' feasibility tolerance (1e-10, relative
      to the marginals) times the costs' scale. Use it to cross-check ``"quantile"`` or for
      non-convex costs.

    On moderate costs the two agree to 1e-9 (tested).

    Args:
        u: samples of the first measure, shape ``(n,)``; array-like or tensor, finite.
        v: samples of the second measure, shape ``(m,)``.
        penalty: a name of :mod:`aot_losses.penalties` (same meaning of ``beta`` and
            ``label_smoothing``) or a NumPy-elementwise convex callable (``beta`` not applied).
        beta: scale (logistic) or margin (the others).
        label_smoothing: eps in [0, 0.5), logistic only.
        u_weights: nonnegative weights, shape ``(n,)``, not all zero, need not sum to 1;
            ``None``: uniform.
        v_weights: the same for ``v``, shape ``(m,)``.
        method: ``"quantile"`` or ``"lp"``.

    Returns:
        The OT cost, a Python float.

    Raises:
        ValueError: empty, non-1-D or non-finite samples; negative, all-zero or mis-shaped
            weights; bad penalty options or method.
        TypeError: inputs that are not arrays of numbers; a bad penalty.
        ImportError: ``method="lp"`` without scipy.
        RuntimeError: HiGHS fails (``"lp"``).

    Example:
        >>> from aot_losses.testing import reference_ot_1d
        >>> # quantile pairs (1, 0), (1, 2), (3, 2), (3, 4) on intervals 1/3, 1/6, 1/6, 1/3
        >>> reference_ot_1d([3.0, 1.0], [0.0, 2.0, 4.0], "least_squares", beta=1.0)
        2.0
        >>> round(reference_ot_1d([3.0, 1.0], [0.0, 2.0, 4.0], "least_squares", beta=1.0,
        ...                       method="lp"), 12)
        2.0
    """
    return _transport(u, v, penalty, beta, label_smoothing, u_weights, v_weights, method).cost()


def reference_ot_plan(
    u: object,
    v: object,
    penalty: PenaltyLike = "least_squares",
    *,
    beta: float = 0.01,
    label_smoothing: float = 0.0,
    u_weights: object = None,
    v_weights: object = None,
    method: Method = "quantile",
) -> FloatArray:
    """An optimal coupling P, shape ``(n, m)``, entries summing to 1, marginals the normalized
    weights; the cost is sum_ij P_ij h(u_i - v_j).

    ``"quantile"``: the monotone (north-west-corner) coupling, optimal for every convex h
    (``penalty`` is then only checked; ties are broken by position). ``"lp"``: HiGHS' plan for
    this penalty. Arguments as :func:`reference_ot_1d`. The plan is unique when the atoms of
    each side are distinct and h is strictly convex.

    Returns:
        The plan as a float64 array in the original order of ``u`` (rows) and ``v`` (columns).

    Raises:
        As :func:`reference_ot_1d`.

    Example:
        >>> from aot_losses.testing import reference_ot_plan
        >>> reference_ot_plan([3.0, 1.0], [0.0, 2.0, 4.0]) * 6
        array([[0., 1., 2.],
               [2., 1., 0.]])
    """
    problem = _transport(u, v, penalty, beta, label_smoothing, u_weights, v_weights, method)
    plan = np.zeros((len(problem.u), len(problem.v)))
    np.add.at(plan, (problem.coupling.rows, problem.coupling.cols), problem.coupling.mass)
    return plan


def _danskin(problem: _Transport, h_prime: ArrayFunction) -> tuple[FloatArray, ...]:
    """Danskin's gradients of the cost w.r.t. u and v for the problem's plan, and the scale of
    each (sum_j P_ij |h'(u_i - v_j)|, for tolerances)."""
    rows, cols, mass = problem.coupling
    slope = mass * _evaluate(h_prime, problem.differences(), "derivative")
    n, m = len(problem.u), len(problem.v)
    grad_u, grad_v, scale_u, scale_v = np.zeros(n), np.zeros(m), np.zeros(n), np.zeros(m)
    np.add.at(grad_u, rows, slope)
    np.add.at(grad_v, cols, -slope)
    np.add.at(scale_u, rows, np.abs(slope))
    np.add.at(scale_v, cols, np.abs(slope))
    return grad_u, grad_v, scale_u, scale_v


def reference_ot_grad(
    u: object,
    v: object,
    penalty: PenaltyLike,
    *,
    beta: float = 0.01,
    label_smoothing: float = 0.0,
    u_weights: object = None,
    v_weights: object = None,
    derivative: ArrayFunction | None = None,
    method: Method = "quantile",
) -> tuple[FloatArray, FloatArray]:
    """Danskin's gradient of OT_h w.r.t. the sample positions, from an optimal plan P:

        d OT / d u_i = sum_j P_ij h'(u_i - v_j),   d OT / d v_j = -sum_i P_ij h'(u_i - v_j).

    It is the gradient when the plan is unique (distinct atoms on each side, h strictly
    convex) and h is differentiable there; with ties, the sum over a tied group of positive-
    weight atoms is still the derivative of moving the group together (what a checker should
    compare); atoms of weight zero get 0. Arguments as :func:`reference_ot_1d`, plus:

    Args:
        derivative: h' for a callable penalty (NumPy-elementwise); named penalties have theirs
            (:func:`reference_penalty_derivative`).

    Returns:
        ``(grad_u, grad_v)``, float64 arrays of shapes ``(n,)`` and ``(m,)``.

    Raises:
        As :func:`reference_ot_1d`; ValueError for a callable penalty without ``derivative``.

    Example:
        >>> from aot_losses.testing import reference_ot_grad
        >>> grad_u, grad_v = reference_ot_grad([1.0, 3.0], [0.0, 0.0], "least_squares", beta=1.0)
        >>> grad_u  # d/du_i (1/2) (1 - u_i)^2
        array([0., 2.])
    """
    h_prime = reference_penalty_derivative(
        penalty, beta=beta, label_smoothing=label_smoothing, derivative=derivative
    )
    problem = _transport(u, v, penalty, beta, label_smoothing, u_weights, v_weights, method)
    grad_u, grad_v, _, _ = _danskin(problem, h_prime)
    return grad_u, grad_v


# ------------------------------------------------------------------------------- soft sort


def _soft_blocks(
    a: Sequence[float], s: float, regularization: str, rank: bool, slack: float = 0.0
) -> list[tuple[int, int]]:
    """The blocks [lo, hi) of positions of the ascending values ``a`` that the isotonic
    regression pools, by a sequential stack PAV (torchsort's conventions). ``slack`` > 0 pools
    also near-ties of the fitted values (to detect an input next to a block boundary)."""

    def lse(values: Sequence[float]) -> float:
        top = max(values)
        return top + math.log(math.fsum(math.exp(t - top) for t in values))

    def fitted(lo: int, hi: int) -> float:  # fitted value of positions [lo, hi), decreasing
        seg = a[lo:hi]
        if regularization == "l2":
            mean = math.fsum(seg) / len(seg)
            return mean - (lo + hi) / (2 * s) if not rank else (lo + hi) / 2 - mean / s
        if not rank:
            return -lse([-t for t in seg]) - lo / s + math.log(-math.expm1(-(hi - lo) / s))
        return math.log((hi - lo) * (lo + hi + 1)) - lse([t / s for t in seg])

    stack: list[tuple[int, int]] = []
    for i in range(len(a)):
        stack.append((i, i + 1))
        while len(stack) > 1 and fitted(*stack[-1]) >= fitted(*stack[-2]) - slack:
            (_, hi), (lo, _) = stack.pop(), stack.pop()
            stack.append((lo, hi))
    return stack


def _soft_sorted(
    a: Sequence[float], s: float, regularization: str, blocks: list[tuple[int, int]]
) -> list[float]:
    """The soft sort of the ascending values ``a`` given its blocks: per block B = [lo, hi),
    l2: mean_B(a) + (i - mean_B(i)) / s (the stable form); kl: -lse_B(-a) + (i - lo) / s +
    g(|B|) - g(1) with g(k) = log(1 - exp(-k / s))."""
    out = [0.0] * len(a)
    for lo, hi in blocks:
        seg, size = a[lo:hi], hi - lo
        if regularization == "l2":
            mean, center = math.fsum(seg) / size, (lo + hi - 1) / 2
            for i in range(lo, hi):
                out[i] = mean + (i - center) / s
        else:
            top = max(-t for t in seg)
            lse = top + math.log(math.fsum(math.exp(-t - top) for t in seg))
            g = math.log(math.expm1(-size / s) / math.expm1(-1 / s))
            for i in range(lo, hi):
                out[i] = -lse + (i - lo) / s + g
    return out


def _soft_input(x: object, regularization_strength: object, regularization: object) -> list[float]:
    check_positive(regularization_strength, "regularization_strength")
    check_choice(regularization, "regularization", ("l2", "kl"))
    return sorted(_array(x, "x").tolist())


def reference_soft_sort(
    x: object, regularization_strength: float = 1.0, regularization: Regularization = "l2"
) -> FloatArray:
    """Blondel et al.'s soft sort (ascending) of a 1-D input, in Python float64 arithmetic.

    The projection of rho / s (rho = (1, ..., n), s = ``regularization_strength``) onto the
    permutahedron of ``x`` with l2 or KL regularization, as torchsort's ``soft_sort`` defines
    it, solved by a sequential pool-adjacent-violators on the sorted values a. For ``"l2"``,
    per block B: out_i = mean_B(a) + (i - mean_B(i)) / s.

    Args:
        x: the values, shape ``(n,)``, finite.
        regularization_strength: s > 0 (small: the hard sort; large: an affine ramp).
        regularization: ``"l2"`` or ``"kl"``.

    Returns:
        The soft-sorted values, float64, shape ``(n,)``, non-decreasing.

    Raises:
        ValueError: empty, non-1-D or non-finite ``x``; s not a finite number > 0; a bad
            ``regularization``.
        TypeError: ``x`` is not numeric; s not a number.

    Example:
        >>> from aot_losses.testing import reference_soft_sort
        >>> reference_soft_sort([3.0, 1.0, 2.0], 2.0)
        array([1.5, 2. , 2.5])
    """
    a = _soft_input(x, regularization_strength, regularization)
    s = float(regularization_strength)
    return np.array(_soft_sorted(a, s, regularization, _soft_blocks(a, s, regularization, False)))


def reference_soft_rank(
    x: object, regularization_strength: float = 1.0, regularization: Regularization = "l2"
) -> FloatArray:
    """Blondel et al.'s soft rank of a 1-D input (ranks 1..n, 1 for the smallest), in Python
    float64 arithmetic, as torchsort's ``soft_rank`` defines it: the projection of x / s onto
    the permutahedron of rho. For ``"l2"``, the element at sorted position i (0-based) of block
    B gets mean_B(i) + 1 + (a_i - mean_B(a)) / s; for ``"kl"``, softmax_B(a / s)_i sum_B(i + 1).

    Args and Raises: as :func:`reference_soft_sort`.

    Returns:
        The soft ranks in the order of ``x``, float64, shape ``(n,)``.

    Example:
        >>> from aot_losses.testing import reference_soft_rank
        >>> reference_soft_rank([3.0, 1.0, 2.0], 2.0)
        array([2.5, 1.5, 2. ])
    """
    a = _soft_input(x, regularization_strength, regularization)
    s = float(regularization_strength)
    rank_of = {}  # tied values always share a block, hence a rank
    for lo, hi in _soft_blocks(a, s, regularization, True):
        seg, size = a[lo:hi], hi - lo
        mean = math.fsum(seg) / size
        top = max(seg)
        normalizer = math.fsum(math.exp((t - top) / s) for t in seg)
        for i in range(lo, hi):
            if regularization == "l2":
                rank_of[a[i]] = (lo + hi - 1) / 2 + 1 + (a[i] - mean) / s
            else:
                share = math.exp((a[i] - top) / s) / normalizer
                rank_of[a[i]] = share * size * (lo + hi + 1) / 2
    return np.array([rank_of[t] for t in _array(x, "x").tolist()])


def _soft_sort_jacobian(
    x: FloatArray, s: float, regularization: str, blocks: list[tuple[int, int]]
) -> FloatArray:
    """d out_i / d x_k for the soft sort with the given blocks of the sorted values: for k at
    sorted position p in i's block B, 1 / |B| (l2) or softmax_B(-a)_p (kl); else 0."""
    order = np.argsort(x, kind="stable")
    a = x[order]
    jacobian = np.zeros((len(x), len(x)))
    for lo, hi in blocks:
        if regularization == "l2":
            share = np.full(hi - lo, 1.0 / (hi - lo))
        else:
            e = np.exp(-(a[lo:hi] - a[lo:hi].min()))
            share = e / e.sum()
        jacobian[lo:hi][:, order[lo:hi]] = share
    return jacobian


# ------------------------------------------------------------------------------- AOT losses


_LOGPS = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
)


def _margins(logps: Sequence[object], paired: bool) -> tuple[FloatArray, FloatArray]:
    """u and v of the AOT losses: paired, chosen-minus-rejected under the policy and under the
    reference; unpaired, policy-minus-reference over the chosen and over the rejected."""
    pc, pr, rc, rr = (_array(x, name) for x, name in zip(logps, _LOGPS, strict=True))
    first, second = ((pc, pr), (rc, rr)) if paired else ((pc, rc), (pr, rr))
    for left, right in (first, second):
        if left.shape != right.shape:
            pairing = "paired" if paired else "unpaired"
            raise ValueError(
                f"the {pairing} AOT loss subtracts log-probs of the same shape; got shapes "
                f"{[x.shape for x in (pc, pr, rc, rr)]}"
            )
    return first[0] - first[1], second[0] - second[1]


def trl_aot_loss(
    policy_chosen_logps: object,
    policy_rejected_logps: object,
    reference_chosen_logps: object,
    reference_rejected_logps: object,
    *,
    beta: float = 0.01,
    label_smoothing: float = 0.0,
    paired: bool = True,
) -> float:
    """The paper's Appendix-B code and TRL's ``DPOTrainer`` loss types ``"aot"`` (paired) and
    ``"aot_unpaired"``, transcribed to NumPy float64:

        d = sort(u) - sort(v),  loss = mean(-(1 - eps) log sigma(beta d) - eps log sigma(-beta d))

    with u, v the margins (paired: u = policy_chosen - policy_rejected, v = reference_chosen -
    reference_rejected; unpaired: u = policy_chosen - reference_chosen, v = policy_rejected -
    reference_rejected), -log sigma by ``numpy.logaddexp`` (exact, as TRL's ``logsigmoid``).
    Sizes must be equal and there are no weights: that is all the original covers.

    Args:
        policy_chosen_logps: shape ``(B,)``, and the other three likewise.
        beta: the logistic scale (the paper's default 0.01).
        label_smoothing: eps (cDPO's conservative smoothing).
        paired: ``"aot"`` (True) or ``"aot_unpaired"`` (False).

    Returns:
        The loss, a Python float.

    Raises:
        ValueError: shapes that differ, non-finite values, bad beta or label_smoothing.
        TypeError: non-numeric inputs.

    Example:
        >>> from aot_losses.testing import trl_aot_loss
        >>> # u = (4, 1), v = (2, 1): sorted differences (0, 2)
        >>> round(trl_aot_loss([-5.0, -7.0], [-9.0, -8.0], [-6.0, -7.0], [-8.0, -8.0], beta=1.0), 4)
        0.41
    """
    u, v = _margins(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
         reference_rejected_logps),
        paired,
    )  # fmt: skip
    if u.shape != v.shape:
        raise ValueError(
            f"the unpaired TRL loss needs as many chosen as rejected samples; got {u.shape[0]} "
            f"and {v.shape[0]}"
        )
    h = reference_penalty("logistic", beta=beta, label_smoothing=label_smoothing)
    return math.fsum(_evaluate(h, np.sort(u) - np.sort(v)).tolist()) / len(u)


def reference_aot_loss(
    policy_chosen_logps: object,
    policy_rejected_logps: object,
    reference_chosen_logps: object,
    reference_rejected_logps: object,
    *,
    paired: bool = True,
    penalty: PenaltyLike = "logistic",
    beta: float = 0.01,
    label_smoothing: float = 0.0,
    weights: object = None,
    chosen_weights: object = None,
    rejected_weights: object = None,
) -> float:
    """The AOT loss as the paper defines it (Melnyk et al. 2024, Section 3): the exact OT cost
    :func:`reference_ot_1d` between the margins u and v (see :func:`trl_aot_loss`), for any
    penalty, unequal sizes (unpaired) and weights. With the defaults it equals
    :func:`trl_aot_loss`.

    Args:
        policy_chosen_logps: shape ``(B,)`` paired or ``(n,)`` unpaired; the other three
            likewise (rejected ones ``(m,)`` unpaired).
        paired: pAOT (True) or uAOT (False).
        penalty: as :func:`reference_ot_1d`.
        beta: as :func:`reference_ot_1d`.
        label_smoothing: as :func:`reference_ot_1d`.
        weights: per-pair weights ``(B,)``, paired only.
        chosen_weights: weights of the chosen samples ``(n,)``, unpaired only.
        rejected_weights: weights of the rejected samples ``(m,)``, unpaired only.

    Returns:
        The loss, a Python float.

    Raises:
        ValueError: as :func:`reference_ot_1d`; weights of the other pairing.

    Example:
        >>> from aot_losses.testing import reference_aot_loss
        >>> round(reference_aot_loss([-5.0, -7.0], [-9.0, -8.0], [-6.0, -7.0], [-8.0, -8.0],
        ...                          beta=1.0), 4)
        0.41
    """
    if paired and (chosen_weights is not None or rejected_weights is not None):
        raise ValueError("chosen_weights and rejected_weights are for paired=False; use weights")
    if not paired and weights is not None:
        raise ValueError("weights is for paired=True; use chosen_weights and rejected_weights")
    u, v = _margins(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
         reference_rejected_logps),
        paired,
    )  # fmt: skip
    a, b = (weights, weights) if paired else (chosen_weights, rejected_weights)
    return reference_ot_1d(
        u, v, penalty, beta=beta, label_smoothing=label_smoothing, u_weights=a, v_weights=b
    )


# ------------------------------------------------------------------------------- strategies


class OTCase(NamedTuple):
    """One 1-D OT problem: samples ``u`` ``(n,)`` and ``v`` ``(m,)`` (float64 arrays) and their
    weights (float64 arrays of the same shapes, nonnegative, never all zero, or ``None`` for
    uniform). Its repr prints every float exactly."""

    u: FloatArray
    v: FloatArray
    u_weights: FloatArray | None
    v_weights: FloatArray | None

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={None if x is None else x.tolist()}"
            for name, x in zip(self._fields, self, strict=True)
        )
        return f"OTCase({fields})"


_ROUND_VALUES = (0.0, 1.0, -1.0, 0.5, 2.0, -0.5, -2.0)
_DYADIC_WEIGHTS = (1.0, 0.0, 2.0, 0.5, 3.0, 0.25)


def _values(min_value: float, max_value: float) -> st.SearchStrategy[float]:
    """Round numbers (ties, differences on the penalties' kinks), any float in
    [min_value, max_value], and k 10^e for k in [-999, 999], e in [-6, 3] (clipped): small
    differences next to large values in one case (dynamic range)."""
    round_values = [x for x in _ROUND_VALUES if min_value <= x <= max_value] or [min_value]

    def scaled(k: int, e: int) -> float:
        return min(max(k * 10.0**e, min_value), max_value)

    return st.one_of(
        st.sampled_from(round_values),
        st.floats(min_value, max_value, allow_nan=False, allow_subnormal=False),
        st.builds(scaled, st.integers(-999, 999), st.integers(-6, 3)),
    )


def _draw_element(draw: st.DrawFn, values: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    """``values``, or one of up to three values drawn once per case: ties within and across
    the samples of a case."""
    pool = draw(st.lists(values, min_size=1, max_size=3))
    return st.one_of(st.sampled_from(pool), values)


_WEIGHTS = st.one_of(st.sampled_from(_DYADIC_WEIGHTS), st.floats(1e-3, 1e3))


def _draw_weights(draw: st.DrawFn, size: int) -> FloatArray:
    """``size`` weights from a dyadic pool (zeros, coinciding cut points) and [1e-3, 1e3],
    never all zero."""
    w = draw(st.lists(_WEIGHTS, min_size=size, max_size=size))
    if not any(w):
        w[draw(st.integers(0, size - 1))] = 1.0
    return np.array(w)


def ot_cases(
    *,
    min_size: int = 1,
    max_size: int = 10,
    weights: bool = True,
    unequal_sizes: bool = True,
    min_value: float = -1e6,
    max_value: float = 1e6,
) -> st.SearchStrategy[OTCase]:
    """A hypothesis strategy of :class:`OTCase` that covers what 1-D OT code gets wrong.

    * ties within and across the two samples (values drawn from a small per-case pool as well
      as freely), and differences that sit exactly on a penalty's kink (round values 0, +-0.5,
      +-1, +-2 against beta = 1);
    * zero weights, never all zero, from a pool of dyadic numbers (0, 0.25, 0.5, 1, 2, 3) and
      from [1e-3, 1e3]; each side is weighted or uniform (``None``);
    * unequal sizes, including 1 against ``max_size``, and sizes that divide each other:
      with dyadic weights, cut points of the two cumulative-weight grids coincide exactly;
    * a wide dynamic range: any float in [min_value, max_value] (hypothesis spreads them over
      every magnitude) and k 10^e (|k| < 1000, e in [-6, 3]) within one case.

    Args:
        min_size: smallest n and m, >= 1.
        max_size: largest n and m, >= ``min_size``.
        weights: draw weighted cases (else both weights are always ``None``).
        unequal_sizes: draw n != m (else m = n).
        min_value: smallest sample value (finite).
        max_value: largest sample value (finite, > ``min_value``).

    Returns:
        The strategy.

    Raises:
        ValueError: sizes or value bounds out of range.
        TypeError: non-int sizes, non-bool flags.

    Example:
        >>> from aot_losses.testing import ot_cases
        >>> from hypothesis import given
        >>> @given(ot_cases(max_size=4, weights=False))
        ... def test_sizes(case):
        ...     assert case.u_weights is None and 1 <= len(case.u) <= 4
        >>> test_sizes()
    """
    for name, flag in (("weights", weights), ("unequal_sizes", unequal_sizes)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool; got {describe(flag)}")
    for name, size in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"{name} must be an int; got {describe(size)}")
    if not 1 <= min_size <= max_size:
        raise ValueError(
            f"sizes must satisfy 1 <= min_size <= max_size; got {min_size}, {max_size}"
        )
    if not -math.inf < min_value < max_value < math.inf:
        raise ValueError(
            "values must satisfy -inf < min_value < max_value < inf; got "
            f"{min_value!r}, {max_value!r}"
        )
    values = _values(float(min_value), float(max_value))
    sizes = st.integers(min_size, max_size)

    @st.composite
    def cases(draw: st.DrawFn) -> OTCase:
        element = _draw_element(draw, values)
        u = draw(st.lists(element, min_size=min_size, max_size=max_size))
        m = len(u)
        if unequal_sizes:
            shape = draw(st.sampled_from(("equal", "any", "multiple", "one against many")))
            if shape == "any":
                m = draw(sizes)
            elif shape == "multiple":
                m = len(u) * draw(st.integers(1, max_size // len(u)))
            elif shape == "one against many":
                u, m = u[:min_size], max_size
        n = len(u)
        v = draw(st.lists(element, min_size=m, max_size=m))

        def weights_of(size: int) -> FloatArray | None:
            return _draw_weights(draw, size) if weights and draw(st.booleans()) else None

        case = OTCase(np.array(u), np.array(v), weights_of(n), weights_of(m))
        if unequal_sizes and draw(st.booleans()):  # the larger sample first, too
            case = OTCase(case.v, case.u, case.v_weights, case.u_weights)
        return case

    return cases()


# ------------------------------------------------------------------------------- checkers


def _run(
    prop: Callable[[Any], None],
    strategy: st.SearchStrategy[Any],
    max_examples: int,
    seed: int | None,
) -> None:
    """Run ``prop`` as a hypothesis test; the first failure is shrunk and re-raised. A ``seed``
    overrides a loaded profile's ``derandomize``; without one, the profile decides."""
    test = given(strategy)(prop)
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
    expected: FloatArray,
    scale: FloatArray,
    groups: list[list[int]],
    rtol: float,
    atol: float,
) -> tuple[list[float], list[float]] | None:
    """The group sums (expected, got) if one differs by more than atol + rtol * scale."""
    sums_got = [math.fsum(got[g].tolist()) for g in groups]
    sums_expected = [math.fsum(expected[g].tolist()) for g in groups]
    sums_scale = [math.fsum(scale[g].tolist()) for g in groups]
    for e, g, s in zip(sums_expected, sums_got, sums_scale, strict=True):
        if not abs(g - e) <= atol + rtol * s:
            return sums_expected, sums_got
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
    weight, within ``atol + rtol * sum_j P_ij |h'(u_i - v_j)|``. A candidate that raises on a
    case fails on it.

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
        cases: a strategy of :class:`OTCase` to use instead of
            ``ot_cases(weights=weights, unequal_sizes=unequal_sizes)`` (to narrow the range).

    Returns:
        None when every case passes.

    Raises:
        AssertionError: the shrunk counterexample, the expected and the received value (or
            gradient).
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
    h_prime: ArrayFunction | None = None
    if gradients:
        if array != "torch":
            raise ValueError(
                "gradients=True reads u.grad and v.grad: it needs array='torch'; "
                f"got array={array!r}"
            )
        h_prime = reference_penalty_derivative(
            penalty, beta=beta, label_smoothing=label_smoothing, derivative=derivative
        )
    strategy = (
        cases if cases is not None else ot_cases(weights=weights, unequal_sizes=unequal_sizes)
    )
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
        if h_prime is not None:
            _check_ot_gradients(problem, h_prime, case, result, u, v, rtol, atol, tolerance)

    _run(prop, strategy, max_examples, seed)


def _check_ot_gradients(
    problem: _Transport,
    h_prime: ArrayFunction,
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
    expected = _danskin(problem, h_prime)
    for side, grad, x, w, want, scale in (
        ("u", grads[0], case.u, case.u_weights, expected[0], expected[2]),
        ("v", grads[1], case.v, case.v_weights, expected[1], expected[3]),
    ):
        got = np.zeros(len(x)) if grad is None else grad.detach().double().numpy()
        groups = _tied_groups(x, w)
        wrong = _grouped_mismatch(got, want, scale, groups, rtol, atol)
        if wrong is not None:
            what = (
                f"the gradient w.r.t. {side} differs from Danskin's, summed over the groups "
                f"of tied atoms {groups}"
            )
            raise _mismatch(checker, what, case, wrong[0], wrong[1], tolerance)


class _SoftSortCase(NamedTuple):
    x: FloatArray
    regularization_strength: float
    permutation: list[int]
    shift: float
    scale: float

    def __repr__(self) -> str:
        return (
            f"x={self.x.tolist()}, regularization_strength={self.regularization_strength!r} "
            f"(permutation {self.permutation}, shift {self.shift!r}, scale {self.scale!r})"
        )


def _soft_sort_cases(max_size: int) -> st.SearchStrategy[_SoftSortCase]:
    values = _values(-100.0, 100.0)

    @st.composite
    def cases(draw: st.DrawFn) -> _SoftSortCase:
        x = draw(st.lists(_draw_element(draw, values), min_size=1, max_size=max_size))
        s = draw(st.one_of(st.sampled_from((1.0, 0.1, 10.0)), st.floats(0.01, 100.0)))
        permutation = draw(st.permutations(range(len(x))))
        shift = draw(st.one_of(st.just(1.0), st.floats(-100.0, 100.0)))
        scale = draw(st.one_of(st.just(2.0), st.floats(0.1, 10.0)))
        return _SoftSortCase(np.array(x), s, permutation, shift, scale)

    return cases()


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
    boundary where it jumps.

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
        AssertionError: the property that fails, the shrunk case, expected and got.
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

    _run(prop, _soft_sort_cases(max_size), max_examples, seed)


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


class _AOTCase(NamedTuple):
    logps: tuple[FloatArray, FloatArray, FloatArray, FloatArray]
    options: dict[str, FloatArray]

    def __repr__(self) -> str:
        fields = [f"{k}={x.tolist()}" for k, x in zip(_LOGPS, self.logps, strict=True)]
        fields += [f"{k}={x.tolist()}" for k, x in self.options.items()]
        return ", ".join(fields)


def _aot_cases(
    paired: bool, unequal_sizes: bool, weights: bool, max_size: int
) -> st.SearchStrategy[_AOTCase]:
    values = _values(-500.0, 0.0)

    @st.composite
    def cases(draw: st.DrawFn) -> _AOTCase:
        element = _draw_element(draw, values)
        pc = np.array(draw(st.lists(element, min_size=1, max_size=max_size)))
        n = len(pc)
        if paired or not unequal_sizes:
            pr = np.array(draw(st.lists(element, min_size=n, max_size=n)))
        else:
            pr = np.array(draw(st.lists(element, min_size=1, max_size=max_size)))
        m = len(pr)

        def logps(size: int) -> FloatArray:
            return np.array(draw(st.lists(element, min_size=size, max_size=size)))

        rc, rr = logps(n), logps(m)
        options: dict[str, FloatArray] = {}
        if weights and draw(st.booleans()):
            if paired:
                options["weights"] = _draw_weights(draw, n)
            else:
                options["chosen_weights"] = _draw_weights(draw, n)
                options["rejected_weights"] = _draw_weights(draw, m)
        return _AOTCase((pc, pr, rc, rr), options)

    return cases()


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
    candidates as they are. Tolerance: ``math.isclose`` with ``rtol``, ``atol``.

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
        AssertionError: the shrunk counterexample, expected and got.
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

    _run(prop, _aot_cases(paired, unequal_sizes, weights, max_size), max_examples, seed)
