"""Soft sort by entropic optimal transport (log-domain Sinkhorn).

Cuturi, Teboul and Vert, "Differentiable Ranks and Sorting using Optimal Transport" (NeurIPS
2019): transport the ``n`` values, each of mass ``1 / n``, onto ``n`` ascending target points of
mass ``1 / n`` with the cost ``C_ij = (z_i - t_j)^2`` and entropic regularization ``epsilon``;
the soft sorted value at target ``j`` is the barycenter of the values sent there,
``out_j = n * sum_i P_ij x_i``. ``z`` is ``x`` standardized (mean 0, standard deviation 1) so
that ``epsilon`` does not depend on the scale of ``x``; the targets are

* ``"sorted"``: the sorted standardized values themselves, ``t = sort(z)``;
* ``"grid"``: the uniform grid ``t_j = (j + 1/2) / n`` with ``z`` squashed into ``(0, 1)`` by
  a sigmoid, as in the paper.

As ``epsilon -> 0`` the plan tends to the sorting permutation (distinct values) and ``out`` to
the hard sort; the result is invariant to permuting ``x``. Every iteration costs ``O(n^2)``
time and the cost matrix ``O(n^2)`` memory per row.

The potentials are found by log-domain Sinkhorn iterations, warm-started by halving
``epsilon`` from the largest cost down to its value (epsilon scaling), then iterated until they
move by less than ``tol * epsilon``, or ``max_iter`` iterations in all. Convergence is linear
and slows down as ``epsilon`` shrinks against the spread of the costs.

The gradient is exact at convergence, by implicit differentiation of the fixed point
``g = Phi(g, x)`` of one Sinkhorn iteration on the column potential ``g``: at the fixed point
``dPhi/dg = n^2 P^T P`` (symmetric, eigenvalue 1 along constants, which do not change the plan),
so the adjoint ``(I - n^2 P^T P + 1 1^T / n) lambda = u`` is solved directly, ``O(n^3)`` per row
(by an eigendecomposition: the system is singular in floating point when the plan is a
permutation up to rounding, see :func:`_adjoint`); memory stays ``O(n^2)`` instead of
``O(iterations * n^2)`` for unrolled differentiation. That gradient is first order only: a
backward under ``create_graph=True`` raises ``RuntimeError``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from ._first_order import first_order_only

__all__ = [
    "Targets",
    "sinkhorn_soft_sort",
]

Targets = Literal["sorted", "grid"]


def _cost(x: Tensor, targets: str) -> Tensor:
    """Cost matrices (B, n, n) between the standardized values and the targets."""
    n, tiny = x.shape[-1], torch.finfo(x.dtype).tiny
    # scaled by the largest magnitude first: squares of |x| ~ 1e20 overflow float32, and an
    # infinite standard deviation would collapse every value onto the mean
    scaled = x / x.abs().amax(-1, keepdim=True).clamp_min(tiny)
    centered = scaled - scaled.mean(-1, keepdim=True)
    z = centered / centered.square().mean(-1, keepdim=True).sqrt().clamp_min(tiny)
    if targets == "sorted":
        t = torch.sort(z, -1).values
    else:
        z = torch.sigmoid(z)
        t = ((torch.arange(n, device=x.device, dtype=x.dtype) + 0.5) / n).expand_as(z)
    return (z[..., :, None] - t[..., None, :]).square()


def _row_potential(g: Tensor, cost: Tensor, epsilon: float) -> Tensor:
    """``f_i = -eps * logsumexp_j((g_j - C_ij) / eps) + eps log n`` (rows of mass ``1 / n``)."""
    n = cost.shape[-1]
    return -epsilon * (torch.logsumexp((g[..., None, :] - cost) / epsilon, -1) - math.log(n))


def _step(g: Tensor, cost: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """One Sinkhorn iteration from the column potential: ``(f, Phi(g))``."""
    f = _row_potential(g, cost, epsilon)
    return f, _row_potential(f, cost.transpose(-1, -2), epsilon)


def _readout(x: Tensor, g: Tensor, cost: Tensor, epsilon: float) -> Tensor:
    """``out_j = n sum_i P_ij x_i`` with ``P_ij = exp((f_i + g_j - C_ij) / eps) / n^2``."""
    n = x.shape[-1]
    f = _row_potential(g, cost, epsilon)
    plan = torch.exp((f[..., :, None] + g[..., None, :] - cost) / epsilon - 2 * math.log(n))
    return n * (plan * x[..., :, None]).sum(-2)


def _potential(cost: Tensor, epsilon: float, max_iter: int, tol: float) -> Tensor:
    """Column potentials ``g`` (B, n) at the fixed point, epsilon scaling as a warm start.

    A row stops when its ``g`` moves by less than ``tol * epsilon``, or by less than a few units
    in the last place of its largest entry (float32 potentials cannot settle further); only the
    rows still moving are iterated.
    """
    g = cost.new_zeros(cost.shape[:-1])
    rows = torch.arange(g.shape[0], device=g.device)
    eps = max(float(cost.amax()), epsilon)
    ulps = 4 * torch.finfo(cost.dtype).eps
    for _ in range(max_iter):
        g_new = _step(g[rows], cost[rows], eps)[1]
        moving = None
        if eps == epsilon:
            change = (g_new - g[rows]).abs().amax(-1)
            moving = change > torch.clamp(ulps * g_new.abs().amax(-1), min=tol * epsilon)
        g[rows] = g_new
        if moving is not None:
            rows = rows[moving]
            if rows.numel() == 0:
                break
        eps = max(eps / 2, epsilon)
    return g


class _SinkhornSort(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, epsilon: float, max_iter: int, tol: float, targets: str
    ) -> Tensor:
        cost = _cost(x, targets)
        g = _potential(cost, epsilon, max_iter, tol)
        ctx.save_for_backward(x, g)
        ctx.params = (epsilon, targets)
        return _readout(x, g, cost, epsilon)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        x, g = ctx.saved_tensors
        epsilon, targets = ctx.params
        n = x.shape[-1]
        with torch.enable_grad():
            x0, g0 = x.detach().requires_grad_(), g.detach().requires_grad_()
            cost = _cost(x0, targets)
            out = _readout(x0, g0, cost, epsilon)
            grad_x, u = torch.autograd.grad(out, (x0, g0), grad, retain_graph=True)
            f, phi = _step(g0, cost, epsilon)
            with torch.no_grad():
                plan = torch.exp((f[..., :, None] + g[..., None, :] - cost) / epsilon) / n
                lam = _adjoint(plan, u)
            grad_x = grad_x + torch.autograd.grad(phi, x0, lam)[0]
        return grad_x, None, None, None, None


def sinkhorn_soft_sort(
    x: Tensor, *, epsilon: float, max_iter: int, tol: float, targets: Targets
) -> Tensor:
    """Ascending entropic-OT soft sort of the rows of a 2-D ``x`` (see the module docstring).

    float16 and bfloat16 are computed in float32 and cast back. The public
    :func:`aot_losses.soft_sort` checks the arguments; this checks that ``epsilon`` lies in the
    range the compute dtype resolves, ``[sqrt(eps), sqrt(max)]`` of its ``finfo`` (float64:
    about [1.5e-8, 1.3e154]; float32: [3.5e-4, 1.8e19]): below, the rounding of the potentials,
    divided by ``epsilon``, swamps the plan (1e-300 gave -inf); above, it overflows. (Within it,
    convergence slows as ``epsilon`` shrinks: ``max_iter`` bounds the work.)

    Raises:
        ValueError: ``epsilon`` outside that range, or ``x`` a meta tensor (the iterations read
            values).
    """
    compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
    info = torch.finfo(compute.dtype)
    low, high = math.sqrt(info.eps), math.sqrt(info.max)
    if not low <= epsilon <= high:
        raise ValueError(
            f"epsilon (backend='sinkhorn'; default regularization_strength) must lie in "
            f"[{low:.3g}, {high:.3g}] for {compute.dtype} computation; got {epsilon!r}"
        )
    if x.device.type == "meta":
        raise ValueError("x must not be a meta tensor with backend='sinkhorn' (it reads values)")
    if x.shape[-1] == 1:
        return x.clone()
    compute = first_order_only(compute, "backend='sinkhorn'")
    out: Tensor = _SinkhornSort.apply(compute, epsilon, max_iter, tol, targets)  # type: ignore[no-untyped-call]
    return out.to(x.dtype)


def _adjoint(plan: Tensor, u: Tensor) -> Tensor:
    """``lambda = (I - K^T K + 1 1^T / n)^+ u`` for the doubly stochastic ``K = n P`` (B, n, n).

    The matrix is symmetric with eigenvalues in ``[0, 1]`` (``1 - sigma^2`` for the singular
    values ``sigma`` of ``K``; 1 along the constants, the gauge of the dual). When ``K`` is
    close to a permutation (small ``epsilon``) some ``sigma`` round to 1 and the matrix is
    singular in floating point: those directions shift the potentials of groups of values that
    the plan no longer couples, and both ``u`` and the derivative of the fixed point along them
    vanish with ``1 - sigma^2``. They are dropped (a pseudo-inverse by eigendecomposition); what
    they would have added is below the rounding of the rest.
    """
    n = plan.shape[-1]
    system = torch.eye(n, dtype=plan.dtype, device=plan.device) + 1 / n
    system = system - plan.transpose(-1, -2) @ plan
    values, vectors = torch.linalg.eigh(system)
    kept = values > n * torch.finfo(plan.dtype).eps
    coefficients = (vectors.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)
    coefficients = torch.where(kept, coefficients / torch.where(kept, values, 1), 0)
    lam: Tensor = (vectors @ coefficients.unsqueeze(-1)).squeeze(-1)
    return lam
