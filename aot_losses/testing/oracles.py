"""Exact oracles: 1-D optimal transport, soft sorts and the AOT losses in NumPy float64.

Independent of the library's torch code (pure Python where exactness needs it): array-likes and
torch tensors in, Python floats or float64 arrays out. Needs numpy (scipy for ``method="lp"``)
and not hypothesis.

* :func:`reference_ot_1d`, :func:`reference_ot_plan`, :func:`reference_ot_grad`: the OT cost
  OT_h(mu_u, mu_v) = integral_0^1 h(Q_u(t) - Q_v(t)) dt, its optimal coupling and its gradient
  (Danskin) for a convex penalty h, any sizes, nonnegative weights (zeros allowed);
* :func:`reference_penalty`, :func:`reference_penalty_derivative`: the named penalties and
  their derivatives;
* :func:`reference_soft_sort`, :func:`reference_soft_rank`: Blondel et al.'s permutahedron
  projection (torchsort's conventions) by a sequential pool-adjacent-violators in Python floats;
* :func:`trl_aot_loss` (the paper's Appendix-B code and TRL's ``"aot"`` / ``"aot_unpaired"``
  branches, transcribed) and :func:`reference_aot_loss` (the OT formula of the margins).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, Literal, NamedTuple, TypeAlias

import torch

from .._validation import check_choice, check_label_smoothing, check_positive, describe

#: How to get the kit's dependencies (aot-losses is installed from a checkout or a git URL).
_INSTALL = (
    'install the extra [testing]: pip install -e ".[testing]" in a checkout of aot-losses, or '
    'pip install "aot-losses[testing] @ git+<this repository\'s URL>"'
)

try:
    import numpy as np
    import numpy.typing as npt
except ImportError as error:
    raise ImportError(f"aot_losses.testing needs numpy ({error}); {_INSTALL}") from error

__all__ = [
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


def _hinge_left_slope(x: FloatArray, beta: float, eps: float) -> FloatArray:
    out: FloatArray = np.where(x <= beta, -1.0, 0.0)
    return out


def _squared_hinge_slope(x: FloatArray, beta: float, eps: float) -> FloatArray:
    out: FloatArray = -2.0 * np.maximum(beta - x, 0.0)
    return out


def _least_squares_slope(x: FloatArray, beta: float, eps: float) -> FloatArray:
    out: FloatArray = 2.0 * (x - beta)
    return out


#: name -> (h, h'_+, h'_-), the penalty and its right and left derivatives (equal where h is
#: differentiable; h'_+ is torch's subgradient at a kink), with the meanings of
#: aot_losses.penalties, as f(x, beta, eps) in NumPy.
_PENALTIES: dict[str, tuple[Callable[..., FloatArray], ...]] = {
    "logistic": (_logistic, _logistic_slope, _logistic_slope),
    "squared_hinge": (
        lambda x, beta, eps: np.maximum(beta - x, 0.0) ** 2,
        _squared_hinge_slope,
        _squared_hinge_slope,
    ),
    "hinge": (lambda x, beta, eps: np.maximum(beta - x, 0.0), _hinge_slope, _hinge_left_slope),
    "least_squares": (
        lambda x, beta, eps: (beta - x) ** 2,
        _least_squares_slope,
        _least_squares_slope,
    ),
}
_VALUE, _RIGHT_SLOPE, _LEFT_SLOPE = range(3)


def _resolve(
    penalty: object, beta: object, label_smoothing: object, part: int
) -> ArrayFunction | None:
    """Check the penalty options as :func:`aot_losses.get_penalty` does; return the ``part``
    (h, h'_+ or h'_-) of a named penalty, None for a callable."""
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
    f = _PENALTIES[penalty][part]

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
    h = _resolve(penalty, beta, label_smoothing, _VALUE)
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
    -2 max(beta - x, 0); ``hinge``: -1 for x < beta, else 0 (at the kink x = beta, the right
    derivative, torch's subgradient of ``relu``); ``least_squares``: -2 (beta - x).

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
    h_prime = _resolve(penalty, beta, label_smoothing, _RIGHT_SLOPE)
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


def _one_sided_slopes(
    penalty: PenaltyLike,
    beta: float,
    label_smoothing: float,
    derivative: ArrayFunction | None,
) -> tuple[ArrayFunction, ArrayFunction]:
    """(h'_-, h'_+), the left and right derivatives of a named penalty (they differ at a kink);
    a callable penalty's ``derivative`` serves as both."""
    right = reference_penalty_derivative(
        penalty, beta=beta, label_smoothing=label_smoothing, derivative=derivative
    )
    left = _resolve(penalty, beta, label_smoothing, _LEFT_SLOPE)
    return (right if left is None else left), right


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
        raise ImportError(f"method='lp' needs scipy ({error}); {_INSTALL}") from error
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
    compare); atoms of weight zero get 0. Where a difference sits on a kink of h (the hinge at
    x = beta) it takes h' as given (a named penalty's right derivative, torch's convention);
    any sum_j P_ij g_ij with g_ij between the left and right derivatives is a subgradient too.
    Arguments as :func:`reference_ot_1d`, plus:

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
    also near-ties of the fitted values (to detect an input next to a block boundary).

    A block's fitted value is c + d / s with c and d of the size of a and n; the pool test
    compares min(s, 1) times it, s c + d when s < 1: the same order, and no 1 / s or a / s
    that overflows when s is tiny."""

    def lse(values: Sequence[float], t: float = 1.0) -> float:  # t log sum exp(values / t)
        top = max(values)
        return top + t * math.log(math.fsum(math.exp((v - top) / t) for v in values))

    def fitted(lo: int, hi: int) -> float:  # min(s, 1) x the fitted value of [lo, hi)
        seg, size = a[lo:hi], hi - lo
        if regularization == "l2":
            mean = math.fsum(seg) / size
            c, d = ((lo + hi) / 2, -mean) if rank else (mean, -(lo + hi) / 2)
        elif rank:
            c, d = math.log(size * (lo + hi + 1)), -lse(seg, s)
        else:
            c, d = math.log(-math.expm1(-size / s)) - lse([-t for t in seg]), -lo
        return s * c + d if s < 1 else c + d / s

    slack *= min(s, 1.0)
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


def _soft_ranks(
    a: Sequence[float], s: float, regularization: str, blocks: list[tuple[int, int]]
) -> dict[float, float]:
    """The soft rank of each of the ascending values ``a`` given its blocks (tied values always
    share a block, hence a rank): per block B = [lo, hi), l2: mean_B(i) + 1 + (a_i - mean_B(a))
    / s, with a_i - mean_B(a) computed from the differences to a_lo (exactly 0 for ties); kl:
    softmax_B(a / s)_i sum_B(i + 1)."""
    rank_of = {}
    for lo, hi in blocks:
        seg, size = a[lo:hi], hi - lo
        offset = math.fsum(t - seg[0] for t in seg) / size  # mean_B(a) - a_lo
        top = max(seg)
        normalizer = math.fsum(math.exp((t - top) / s) for t in seg)
        for t in seg:
            if regularization == "l2":
                rank_of[t] = (lo + hi - 1) / 2 + 1 + ((t - seg[0]) - offset) / s
            else:
                rank_of[t] = math.exp((t - top) / s) / normalizer * size * (lo + hi + 1) / 2
    return rank_of


def _soft(x: object, regularization_strength: float, regularization: str, rank: bool) -> FloatArray:
    """The soft sort (ascending) or the soft ranks (in the order of ``x``); a ValueError where
    the result leaves float64's range."""
    s = check_positive(regularization_strength, "regularization_strength")
    check_choice(regularization, "regularization", ("l2", "kl"))
    values = _array(x, "x").tolist()
    a = sorted(values)
    try:
        blocks = _soft_blocks(a, s, regularization, rank)
        if rank:
            rank_of = _soft_ranks(a, s, regularization, blocks)
            out = np.array([rank_of[t] for t in values])
        else:
            out = np.array(_soft_sorted(a, s, regularization, blocks))
    except OverflowError:  # math.fsum of values near 1.8e308
        out = np.array([math.inf])
    if not np.isfinite(out).all():
        raise ValueError(
            f"the soft {'rank' if rank else 'sort'} of x with regularization_strength={s!r} "
            "leaves float64's range: it needs n * max|x| and, where values pool, n / s below "
            f"1.8e308; got n = {len(a)}, max|x| = {max(abs(a[0]), abs(a[-1]))!r}"
        )
    return out


def reference_soft_sort(
    x: object, regularization_strength: float = 1.0, regularization: Regularization = "l2"
) -> FloatArray:
    """Blondel et al.'s soft sort (ascending) of a 1-D input, in Python float64 arithmetic.

    The projection of rho / s (rho = (1, ..., n), s = ``regularization_strength``) onto the
    permutahedron of ``x`` with l2 or KL regularization, as torchsort's ``soft_sort`` defines
    it, solved by a sequential pool-adjacent-violators on the sorted values a. For ``"l2"``,
    per block B: out_i = mean_B(a) + (i - mean_B(i)) / s. It is exactly the hard sort when
    s <= 1 / (largest gap), however small s is (1 / s may overflow: it is never computed).

    Args:
        x: the values, shape ``(n,)``, finite.
        regularization_strength: s > 0 (small: the hard sort; large: an affine ramp).
        regularization: ``"l2"`` or ``"kl"``.

    Returns:
        The soft-sorted values, float64, shape ``(n,)``, non-decreasing.

    Raises:
        ValueError: empty, non-1-D or non-finite ``x``; s not a finite number > 0; a bad
            ``regularization``; a result beyond float64's range (n max|x|, or n / s where
            values pool, above 1.8e308).
        TypeError: ``x`` is not numeric; s not a number.

    Example:
        >>> from aot_losses.testing import reference_soft_sort
        >>> reference_soft_sort([3.0, 1.0, 2.0], 2.0)
        array([1.5, 2. , 2.5])
        >>> reference_soft_sort([3.0, 1.0, 2.0, 2.0], 1e-310)  # the hard sort
        array([1., 2., 2., 3.])
    """
    return _soft(x, regularization_strength, regularization, rank=False)


def reference_soft_rank(
    x: object, regularization_strength: float = 1.0, regularization: Regularization = "l2"
) -> FloatArray:
    """Blondel et al.'s soft rank of a 1-D input (ranks 1..n, 1 for the smallest), in Python
    float64 arithmetic, as torchsort's ``soft_rank`` defines it: the projection of x / s onto
    the permutahedron of rho. For ``"l2"``, the element at sorted position i (0-based) of block
    B gets mean_B(i) + 1 + (a_i - mean_B(a)) / s; for ``"kl"``, softmax_B(a / s)_i sum_B(i + 1).
    Tied values share a rank. As s -> 0 the ranks tend to the hard ranks, ties averaged, and
    are exactly those once s is small against the gaps between distinct values, however small
    s is (x / s may overflow: it is never computed).

    Args and Raises: as :func:`reference_soft_sort`.

    Returns:
        The soft ranks in the order of ``x``, float64, shape ``(n,)``.

    Example:
        >>> from aot_losses.testing import reference_soft_rank
        >>> reference_soft_rank([3.0, 1.0, 2.0], 2.0)
        array([2.5, 1.5, 2. ])
        >>> reference_soft_rank([3.0, 1.0, 2.0, 2.0], 1e-310)  # the ranks, ties averaged
        array([4. , 1. , 2.5, 2.5])
    """
    return _soft(x, regularization_strength, regularization, rank=True)


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
