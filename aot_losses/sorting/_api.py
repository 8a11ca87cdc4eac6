"""Public sorting functions and objects: :func:`hard_sort`, :func:`soft_sort`, :func:`soft_rank`
and :class:`SoftSort`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from .._validation import (
    check_choice,
    check_finite,
    check_int,
    check_positive,
    check_real,
    check_tensor,
    describe,
)
from ._isotonic import Regularization, isotonic_soft_sort
from ._sinkhorn import Targets, sinkhorn_soft_sort
from ._torchsort import torchsort_soft

__all__ = [
    "Backend",
    "RankBackend",
    "SoftOptions",
    "SoftSort",
    "hard_sort",
    "soft_rank",
    "soft_sort",
]

Backend = Literal["torch", "torchsort", "sinkhorn"]
RankBackend = Literal["torch", "torchsort"]

_SINKHORN_DEFAULTS: dict[str, Any] = {
    "epsilon": None,
    "max_iter": 1000,
    "tol": 1e-6,
    "targets": "sorted",
}


def _check_layout(x: object, dim: object, descending: object) -> tuple[Tensor, int]:
    """Check ``x``, ``dim`` and ``descending``; return ``x`` and ``dim`` made nonnegative."""
    x = check_tensor(x, "x", min_ndim=1)
    dim = check_int(dim, "dim")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(
            f"dim must be in [{-x.dim()}, {x.dim()}) for x of shape {tuple(x.shape)}; got {dim}"
        )
    if not isinstance(descending, bool):
        raise TypeError(f"descending must be a bool; got {describe(descending)}")
    return x, dim % x.dim()


def _check_soft(x: object, dim: object, descending: object) -> tuple[Tensor, int, bool]:
    """The tensor checks of :func:`soft_sort` and :func:`soft_rank` (their options are checked
    by :func:`_soft_options`); the last result says whether ``x`` was checked to be finite."""
    x, dim = _check_layout(x, dim, descending)
    return x, dim, check_finite(x, "x")


@dataclass(frozen=True)
class SoftOptions:
    """Checked soft-sort options: ``regularization``, ``strength`` (> 0), ``backend`` and the
    backend's own options (Sinkhorn: ``epsilon``, ``max_iter``, ``tol``, ``targets``)."""

    regularization: Regularization
    strength: float
    backend: Backend
    backend_options: dict[str, Any]


def _soft_options(
    regularization: object,
    strength: object,
    backend: object,
    options: dict[str, Any],
    backends: tuple[str, ...] = get_args(Backend),
) -> SoftOptions:
    """Check the options of a soft sort (or, with ``backends``, a soft rank)."""
    check_choice(backend, "backend", backends)
    check_choice(regularization, "regularization", get_args(Regularization))
    s = check_positive(strength, "regularization_strength")
    if backend == "sinkhorn":
        options = _sinkhorn_options(str(regularization), s, options)
    elif options:
        raise TypeError(
            f"unexpected option(s) {', '.join(map(repr, sorted(options)))} for "
            f"backend={backend!r}; options are accepted by backend='sinkhorn' only"
        )
    return SoftOptions(regularization, s, backend, options)  # type: ignore[arg-type]


def _isotonic(
    backend: str, rows: Tensor, strength: float, regularization: str, *, rank: bool, finite: bool
) -> Tensor:
    """The permutahedron projection of ``rows`` (B, n) by ``backend`` (``"torch"`` or
    ``"torchsort"``); ``finite``: the rows are known to be finite."""
    if backend == "torch":
        return isotonic_soft_sort(rows, strength, regularization, rank=rank, finite=finite)
    return torchsort_soft(rows, strength, regularization, rank=rank)


def _along_rows(x: Tensor, dim: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``fn`` to ``x`` viewed as rows (B, n) along ``dim``; restore the layout."""
    moved = x.movedim(dim, -1)
    out = fn(moved.reshape(-1, moved.shape[-1]))
    return out.reshape(moved.shape).movedim(-1, dim)


def _sinkhorn_options(
    regularization: str, strength: float, options: dict[str, Any]
) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_SINKHORN_DEFAULTS))
    if unknown:
        raise TypeError(
            f"unexpected option(s) {', '.join(map(repr, unknown))} for backend='sinkhorn'; "
            f"its options are epsilon, max_iter, tol and targets"
        )
    if regularization != "l2":
        raise ValueError(
            "backend='sinkhorn' supports regularization='l2' only (squared-distance transport "
            f"cost, entropic smoothing); got {regularization!r}"
        )
    opts = {**_SINKHORN_DEFAULTS, **options}
    epsilon = strength if opts["epsilon"] is None else check_positive(opts["epsilon"], "epsilon")
    max_iter = check_int(opts["max_iter"], "max_iter", "a positive int")
    if max_iter < 1:
        raise ValueError(f"max_iter must be a positive int; got {max_iter!r}")
    tol = check_real(opts["tol"], "tol", "a finite number >= 0")
    if not 0 <= tol < math.inf:
        raise ValueError(f"tol must be a finite number >= 0; got {tol!r}")
    targets = opts["targets"]
    check_choice(targets, "targets", get_args(Targets))
    return {"epsilon": epsilon, "max_iter": max_iter, "tol": tol, "targets": targets}


def hard_sort(x: Tensor, dim: int = -1, descending: bool = False) -> Tensor:
    """Sort ``x`` along ``dim``; the gradient flows through the order statistics.

    ``torch.sort(x, dim, descending).values``: the gradient of ``out_k = x_(k)`` goes to the
    element that lands at position ``k``, the permutation held fixed. The values are unique;
    which of several tied elements gets which gradient depends on ``torch.sort``'s tie-breaking
    (the sum over a tied group does not).

    Args:
        x: floating tensor with at least one dimension.
        dim: dimension to sort along.
        descending: sort in decreasing order.

    Returns:
        The sorted values, same shape, dtype and device as ``x``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, ``dim`` is not an int or
            ``descending`` is not a bool.
        ValueError: ``x`` is 0-d or empty, or ``dim`` is out of range.

    Example:
        >>> import torch
        >>> from aot_losses.sorting import hard_sort
        >>> hard_sort(torch.tensor([[3.0, 1.0, 2.0]]), descending=True)
        tensor([[3., 2., 1.]])
    """
    x, dim = _check_layout(x, dim, descending)
    return torch.sort(x, dim=dim, descending=descending).values


def soft_sort(
    x: Tensor,
    *,
    regularization: Regularization = "l2",
    regularization_strength: float = 1.0,
    dim: int = -1,
    descending: bool = False,
    backend: Backend = "torch",
    **options: Any,
) -> Tensor:
    r"""Differentiable sort of ``x`` along ``dim`` (Blondel et al. 2020, or Sinkhorn).

    With ``backend="torch"`` (pure PyTorch) or ``"torchsort"``, the result is the projection
    of ``rho / s`` (``rho = (1, ..., n)``, ``s = regularization_strength``) onto the
    permutahedron of ``x``, regularized by the squared norm (``"l2"``) or the KL divergence
    (``"kl"``) (Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking",
    ICML 2020), solved by isotonic regression. For ``"l2"``, with ``a`` the ascending sort of
    ``x`` and the positions split into blocks ``B`` by pool-adjacent-violators,

    .. math:: \mathrm{out}_i = \mathrm{mean}_B(a) + (i - \mathrm{mean}_B(i)) / s .

    The output is non-decreasing, has the sum of ``x`` (l2), equals the hard sort when
    ``s <= 1 / max_gap`` and tends to ``mean(x) + (i - (n + 1) / 2) / s`` for large ``s``.
    ``"torch"`` equals torchsort's ``soft_sort`` (values and gradients, ties included) and stays
    accurate in float32 at large ``n``; see ``docs/sorting.md``.

    ``backend="sinkhorn"`` is the entropic optimal-transport soft sort of Cuturi, Teboul and Vert
    ("Differentiable Ranks and Sorting using Optimal Transport", NeurIPS 2019):
    ``out_j = n sum_i P_ij x_i`` for the entropic plan ``P`` between the standardized values
    and ascending targets, ``O(n^2)`` time and memory per Sinkhorn iteration. Its options:
    ``epsilon`` (entropic regularization, in units of the standardized squared cost; default
    ``regularization_strength``), ``max_iter`` (default 1000), ``tol`` (stop when the
    potentials move by less than ``tol * epsilon``; default 1e-6) and ``targets``
    (``"sorted"``: the sorted standardized values, default; ``"grid"``: a uniform grid on
    (0, 1) against sigmoid-squashed values, as in the paper). It supports ``"l2"`` only.

    Args:
        x: floating tensor with at least one dimension, sorted along ``dim``; any leading and
            trailing dimensions are batch dimensions.
        regularization: ``"l2"`` or ``"kl"``.
        regularization_strength: ``s > 0``; larger is smoother, smaller is closer to the
            hard sort.
        dim: dimension to sort along.
        descending: return ``-soft_sort(-x)`` (decreasing; for ``"l2"`` the ascending result
            reversed).
        backend: ``"torch"``, ``"torchsort"`` (optional extra) or ``"sinkhorn"``.
        **options: ``backend="sinkhorn"`` only: ``epsilon``, ``max_iter``, ``tol``, ``targets``.

    Returns:
        The soft sorted values, same shape, dtype and device as ``x``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, ``dim``/``descending`` have the wrong
            type, an option is unknown, or ``backend="torchsort"`` gets float16/bfloat16.
        ValueError: a bad ``regularization``, ``regularization_strength`` (must be finite and
            > 0), ``backend``, ``dim`` or option value; or ``x`` holds NaN/inf while value
            checks run (see :func:`aot_losses.set_value_checks`; when they do not, rows with
            NaN or inf give NaN rows with the ``"torch"`` backend).
        ImportError: ``backend="torchsort"`` without torchsort installed.

    Example:
        >>> import torch
        >>> from aot_losses.sorting import soft_sort
        >>> x = torch.tensor([3.0, 1.0, 2.0])
        >>> soft_sort(x, regularization_strength=0.1)
        tensor([1., 2., 3.])
        >>> soft_sort(x, regularization_strength=2.0)
        tensor([1.5000, 2.0000, 2.5000])
    """
    soft = _soft_options(regularization, regularization_strength, backend, options)
    x, dim, finite = _check_soft(x, dim, descending)
    return _soft_sort(x, dim, descending, soft, finite)


def _soft_sort(x: Tensor, dim: int, descending: bool, soft: SoftOptions, finite: bool) -> Tensor:
    """:func:`soft_sort` on checked arguments."""
    if soft.backend == "sinkhorn":

        def ascending(rows: Tensor) -> Tensor:
            return sinkhorn_soft_sort(rows, **soft.backend_options)

    else:

        def ascending(rows: Tensor) -> Tensor:
            return _isotonic(
                soft.backend, rows, soft.strength, soft.regularization, rank=False, finite=finite
            )

    if descending:
        return -_along_rows(-x, dim, ascending)
    return _along_rows(x, dim, ascending)


def soft_rank(
    x: Tensor,
    *,
    regularization: Regularization = "l2",
    regularization_strength: float = 1.0,
    dim: int = -1,
    descending: bool = False,
    backend: RankBackend = "torch",
) -> Tensor:
    r"""Differentiable ranks of ``x`` along ``dim`` (Blondel et al. 2020).

    The projection of ``x / s`` onto the permutahedron of ``rho = (1, ..., n)`` (``"l2"``) or
    its KL analogue, solved by isotonic regression; ranks run from 1 (smallest) to ``n``. For
    ``"l2"``, with ``a`` the ascending sort of ``x`` and blocks ``B`` of positions ``i``
    (0-based), the element at position ``i`` gets

    .. math:: r = \mathrm{mean}_B(i) + 1 + (a_i - \mathrm{mean}_B(a)) / s ,

    and for ``"kl"`` ``r = softmax_B(a / s)_i * sum_B(i + 1)``. Small ``s`` gives the hard ranks;
    ``"torch"`` equals torchsort's ``soft_rank`` (values and gradients).

    Args:
        x: floating tensor with at least one dimension.
        regularization: ``"l2"`` or ``"kl"``.
        regularization_strength: ``s > 0``.
        dim: dimension to rank along.
        descending: rank 1 for the largest value (the ranks of ``-x``).
        backend: ``"torch"`` or ``"torchsort"`` (optional extra).

    Returns:
        The soft ranks, same shape, dtype and device as ``x``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, ``dim``/``descending`` have the wrong
            type, or ``backend="torchsort"`` gets float16/bfloat16.
        ValueError: a bad ``regularization``, ``regularization_strength``, ``backend`` or
            ``dim``; or ``x`` holds NaN/inf while value checks run.
        ImportError: ``backend="torchsort"`` without torchsort installed.

    Example:
        >>> import torch
        >>> from aot_losses.sorting import soft_rank
        >>> x = torch.tensor([3.0, 1.0, 2.0])
        >>> soft_rank(x, regularization_strength=0.1)
        tensor([3., 1., 2.])
        >>> soft_rank(x, regularization_strength=2.0)
        tensor([2.5000, 1.5000, 2.0000])
    """
    soft = _soft_options(
        regularization, regularization_strength, backend, {}, get_args(RankBackend)
    )
    x, dim, finite = _check_soft(x, dim, descending)

    def ascending(rows: Tensor) -> Tensor:
        return _isotonic(
            soft.backend, rows, soft.strength, soft.regularization, rank=True, finite=finite
        )

    return _along_rows(-x if descending else x, dim, ascending)


class SoftSort:
    """A soft sort with its options bound, to pass as ``sort=`` to :func:`aot_losses.ot_1d` and
    the AOT losses: ``SoftSort(...)(x)`` is :func:`soft_sort` of ``x`` along its last dimension,
    ascending. Every backend's options reach the losses this way (Sinkhorn's ``epsilon``,
    ``max_iter``, ``tol``, ``targets``). The options are checked at construction.

    Args:
        regularization: ``"l2"`` or ``"kl"``.
        regularization_strength: ``s > 0``; the default is the paper's 0.1 (the losses'
            default; :func:`soft_sort` itself defaults to torchsort's 1.0).
        backend: ``"torch"``, ``"torchsort"`` or ``"sinkhorn"``.
        **options: ``backend="sinkhorn"`` only, as in :func:`soft_sort`.

    Raises:
        TypeError, ValueError: as :func:`soft_sort` for the same options.

    Example:
        >>> import torch
        >>> from aot_losses import SoftSort, ot_1d
        >>> sort = SoftSort(regularization_strength=2.0)
        >>> sort(torch.tensor([3.0, 1.0, 2.0]))
        tensor([1.5000, 2.0000, 2.5000])
        >>> u, v = torch.tensor([3.0, 1.0, 2.0]), torch.zeros(3)
        >>> ot_1d(u, v, "least_squares", beta=1.0, sort=sort)  # soft: u - v = (1.5, 2, 2.5)
        tensor(1.1667)
        >>> ot_1d(u, v, "least_squares", beta=1.0)  # hard: u - v = (1, 2, 3)
        tensor(1.6667)
    """

    def __init__(
        self,
        regularization: Regularization = "l2",
        regularization_strength: float = 0.1,
        backend: Backend = "torch",
        **options: Any,
    ) -> None:
        self.options = _soft_options(regularization, regularization_strength, backend, options)
        self._given = options

    def __call__(self, x: Tensor) -> Tensor:
        x, dim, finite = _check_soft(x, -1, False)
        return _soft_sort(x, dim, False, self.options, finite)

    def __repr__(self) -> str:
        o = self.options
        extra = "".join(f", {k}={v!r}" for k, v in self._given.items())
        return (
            f"SoftSort(regularization={o.regularization!r}, regularization_strength="
            f"{o.strength!r}, backend={o.backend!r}{extra})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SoftSort) and self.options == other.options

    def __hash__(self) -> int:
        return hash(repr(self))
