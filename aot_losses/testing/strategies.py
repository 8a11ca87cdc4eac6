"""Hypothesis strategies of the cases that 1-D OT code, soft sorts and AOT losses get wrong.

:func:`ot_cases` (of :class:`OTCase`) composes with your own hypothesis tests, as
``hypothesis.extra.numpy`` does; the checkers of :mod:`aot_losses.testing.checkers` draw from
it. Needs hypothesis (the extra ``[testing]``).

Every checker also runs a fixed sweep of the smallest cases first, whatever the seed: every
pattern of ties of n <= 3 values (1 / 2 / 3 values: 1 / 2 / 4 patterns), in both orders against
each other, with and without a zero weight; random cases alone reach a mistake that only
shows at n = 2 in a few of ten seeds.
"""

from __future__ import annotations

import math
from itertools import product
from typing import NamedTuple, TypeAlias

from .._validation import describe
from .oracles import _INSTALL, _LOGPS, FloatArray

try:
    import numpy as np
    from hypothesis import strategies as st
except ImportError as error:
    raise ImportError(
        f"aot_losses.testing.strategies needs hypothesis ({error}); {_INSTALL}"
    ) from error

__all__ = ["OTCase", "ot_cases"]


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


# ------------------------------------------------------------------------------- small cases

#: Every pattern of ties of n <= 3 sorted values (1, 2 and 4 of them), as values 0, 1, 2.
_PATTERNS = (
    (0.0,),
    (0.0, 1.0),
    (0.0, 0.0),
    (0.0, 1.0, 2.0),
    (0.0, 0.0, 1.0),
    (0.0, 1.0, 1.0),
    (0.0, 0.0, 0.0),
)


def _small_weights(size: int) -> FloatArray:
    """Weights of the small cases, (1, 0, 2)[:size]: a zero weight from size 2 on."""
    return np.array((1.0, 0.0, 2.0)[:size])


#: Samples x and y of a small case and their weights (None: uniform).
_SmallPair: TypeAlias = tuple[FloatArray, FloatArray, "FloatArray | None", "FloatArray | None"]


def _small_pairs(max_size: int, unequal_sizes: bool, weights: bool) -> list[_SmallPair]:
    """(x, y, x_weights, y_weights) for every two patterns of at most ``max_size`` values, x
    descending and y ascending (opposite orders, so that a missing sort shows); with
    ``weights``, each once more with the weights (1, 0, 2)[:size] on both sides."""
    patterns = [np.array(p) for p in _PATTERNS if len(p) <= max_size]
    out: list[_SmallPair] = []
    for p, q in product(patterns, patterns):
        if len(p) != len(q) and not unequal_sizes:
            continue
        out.append((p[::-1].copy(), q, None, None))
        if weights and max(len(p), len(q)) > 1:
            out.append((p[::-1].copy(), q, _small_weights(len(p)), _small_weights(len(q))))
    return out


def _small_ot_cases(unequal_sizes: bool, weights: bool) -> list[OTCase]:
    """The fixed sweep of :func:`aot_losses.testing.check_ot_1d`: u descending, v ascending,
    values 0, 1, 2 (ties across the samples, differences on the kink x = 1)."""
    return [OTCase(*pair) for pair in _small_pairs(3, unequal_sizes, weights)]


def _small_soft_sort_cases(max_size: int) -> list[_SoftSortCase]:
    """The fixed sweep of :func:`aot_losses.testing.check_soft_sort`: each pattern, descending,
    at strengths below (0.5), at (1) and above (2, 10) 1 / (gap 1)."""
    patterns = [np.array(p[::-1]) for p in _PATTERNS if len(p) <= max_size]
    return [
        _SoftSortCase(x, s, list(range(len(x)))[::-1], 1.0, 2.0)
        for x, s in product(patterns, (0.5, 1.0, 2.0, 10.0))
    ]


def _small_aot_cases(
    paired: bool, unequal_sizes: bool, weights: bool, max_size: int
) -> list[_AOTCase]:
    """The fixed sweep of :func:`aot_losses.testing.check_aot_loss`: margins u = 200 - 100 p
    against v = 200 - 100 q for two patterns p, q in opposite orders (log-probs in
    [-500, 0])."""
    out = []
    for x, y, a, b in _small_pairs(max_size, unequal_sizes and not paired, weights):
        first, second = 100.0 * (0.0 - x), 100.0 * (0.0 - y)  # not -100 x: no -0.0
        base_n, base_m = np.full(len(x), -200.0), np.full(len(y), -200.0)
        if paired:
            logps = (first, base_n, second, base_m)
            options = {} if a is None else {"weights": a}
        else:
            logps = (first, second, base_n, base_m)
            options = {} if a is None or b is None else {"chosen_weights": a, "rejected_weights": b}
        out.append(_AOTCase(logps, options))
    return out
