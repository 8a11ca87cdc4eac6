"""Property-test reference for 1-D optimal transport, soft sorts and the AOT losses.

Exact oracles, hypothesis strategies and checkers that anyone who writes a 1-D OT loss, a
Wasserstein distance, a soft sort or an AOT loss can point at their code. Everything here is
NumPy float64 (and pure Python where exactness needs it), independent of the library's torch
code: array-likes and torch tensors in, Python floats or float64 arrays out. Needs the extra
``[testing]`` (numpy, scipy, hypothesis); ``import aot_losses`` never imports it.

Three modules, all names re-exported here:

* :mod:`aot_losses.testing.oracles`: :func:`reference_ot_1d`, :func:`reference_ot_plan`,
  :func:`reference_ot_grad`, :func:`reference_penalty`, :func:`reference_penalty_derivative`,
  :func:`reference_soft_sort`, :func:`reference_soft_rank`, :func:`trl_aot_loss`,
  :func:`reference_aot_loss`; numpy alone (scipy for ``method="lp"``), no hypothesis;
* :mod:`aot_losses.testing.strategies`: :func:`ot_cases` (of :class:`OTCase`), to compose
  with your own hypothesis tests;
* :mod:`aot_losses.testing.checkers`: :func:`check_ot_1d`, :func:`check_soft_sort`,
  :func:`check_aot_loss`; each runs a sweep of the smallest cases and a hypothesis property
  test, and raises ``AssertionError`` with the counterexample, the expected and the received
  value.

The strategies and checkers are imported on first use, so the oracles work without hypothesis.

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

import importlib
from typing import TYPE_CHECKING, Any

from .oracles import (
    reference_aot_loss,
    reference_ot_1d,
    reference_ot_grad,
    reference_ot_plan,
    reference_penalty,
    reference_penalty_derivative,
    reference_soft_rank,
    reference_soft_sort,
    trl_aot_loss,
)

if TYPE_CHECKING:
    from .checkers import check_aot_loss, check_ot_1d, check_soft_sort
    from .strategies import OTCase, ot_cases

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

#: The names that need hypothesis, and their module: imported on first use.
_LAZY = {
    "OTCase": "strategies",
    "ot_cases": "strategies",
    "check_aot_loss": "checkers",
    "check_ot_1d": "checkers",
    "check_soft_sort": "checkers",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
