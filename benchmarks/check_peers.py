"""Point aot_losses.testing at peer implementations; prints what docs/testing.md reports.

    python -m benchmarks.check_peers

Needs the test extra (POT); torchsort is optional. Every check runs with ``seed=0``, so the
counterexamples are reproducible.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from aot_losses import aot_paired_loss, aot_unpaired_loss, ot_1d, soft_sort
from aot_losses.penalties import PenaltyName
from aot_losses.testing import (
    OTCase,
    check_aot_loss,
    check_ot_1d,
    check_soft_sort,
    ot_cases,
    reference_ot_1d,
    reference_penalty,
    reference_penalty_derivative,
)

SEED = 0

FloatArray: TypeAlias = npt.NDArray[np.float64]
Regularization: TypeAlias = Literal["l2", "kl"]
#: an AOT loss: (policy chosen, policy rejected, reference chosen, reference rejected) logps
AOTLoss: TypeAlias = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
#: a 1-D OT cost on NumPy arrays: (u, v, u_weights, v_weights) -> cost
NumpyOT: TypeAlias = Callable[[FloatArray, FloatArray, FloatArray | None, FloatArray | None], float]


def report(name: str, check: Callable[[], None]) -> None:
    start = time.perf_counter()
    try:
        check()
    except AssertionError as error:
        print(f"FAIL  {name} ({time.perf_counter() - start:.1f} s)")
        print("      " + str(error).replace("\n", "\n      "))
    else:
        print(f"pass  {name} ({time.perf_counter() - start:.1f} s)")


def normalized(w: FloatArray | None, n: int) -> FloatArray:
    return np.full(n, 1.0 / n) if w is None else w / w.sum()


def trl_copy(paired: bool, beta: float = 0.01, label_smoothing: float = 0.0) -> AOTLoss:
    """TRL 1.16 DPOTrainer, loss_type "aot" / "aot_unpaired", by hand."""

    def loss(
        chosen_logps: Tensor,
        rejected_logps: Tensor,
        ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor,
    ) -> Tensor:
        if paired:
            logratios = chosen_logps - rejected_logps
            ref_logratios = ref_chosen_logps - ref_rejected_logps
        else:
            logratios = chosen_logps - ref_chosen_logps
            ref_logratios = rejected_logps - ref_rejected_logps
        logratios_sorted, _ = torch.sort(logratios, dim=0)
        ref_logratios_sorted, _ = torch.sort(ref_logratios, dim=0)
        delta = logratios_sorted - ref_logratios_sorted
        per_sequence_loss = (
            -F.logsigmoid(beta * delta) * (1 - label_smoothing)
            - F.logsigmoid(-beta * delta) * label_smoothing
        )
        return per_sequence_loss.mean()

    return loss


def references() -> None:
    """How exact the references are: the two OT methods against each other, the penalties
    against 50-digit mpmath."""
    import mpmath
    from hypothesis import given, settings

    worst = {"relative": 0.0}

    @settings(max_examples=500, deadline=None, database=None, derandomize=True)
    @given(ot_cases(max_size=8, min_value=-1e3, max_value=1e3))
    def agree(case: OTCase) -> None:
        for penalty, eps in (("logistic", 0.2), ("squared_hinge", 0.0), ("least_squares", 0.0)):
            # derandomize seeds hypothesis from this function's source less its comments: the
            # code stays as it was (and the cases with it), mypy's complaints are silenced
            # here, in comments (kw mixes floats and arrays)
            kw = {"beta": 1.0, "label_smoothing": eps}
            kw |= {"u_weights": case.u_weights, "v_weights": case.v_weights}  # type: ignore[dict-item]
            exact = reference_ot_1d(case.u, case.v, penalty, **kw)  # type: ignore[arg-type]
            lp = reference_ot_1d(case.u, case.v, penalty, **kw, method="lp")
            gap = abs(lp - exact) / max(abs(exact), 1e-300)
            worst["relative"] = max(worst["relative"], gap)

    agree()
    print(f"quantile vs lp, 500 cases x 3 penalties, values in [-1e3, 1e3]: largest relative "
          f"difference {worst['relative']:.1e}")  # fmt: skip

    mpmath.mp.dps = 50
    xs = [k / 8 + 0.01 for k in range(-480, 481)] + [20.001, -20.001, 20.5, -20.5]
    for name, eps in (("logistic", 0.25), ("squared_hinge", 0.0), ("least_squares", 0.0)):
        h = reference_penalty(name, beta=1.0, label_smoothing=eps)
        slope = reference_penalty_derivative(name, beta=1.0, label_smoothing=eps)
        value_err = slope_err = 0.0
        for x in xs:
            t = mpmath.mpf(x)
            if name == "logistic":
                parts = [
                    (1 - eps) * mpmath.log1p(mpmath.exp(-t)),
                    eps * mpmath.log1p(mpmath.exp(t)),
                ]
                slopes = [-(1 - eps) / (1 + mpmath.exp(t)), eps / (1 + mpmath.exp(-t))]
            elif name == "squared_hinge":
                parts, slopes = [max(1 - t, 0) ** 2], [-2 * max(1 - t, 0)]
            else:
                parts, slopes = [(1 - t) ** 2], [-2 * (1 - t)]
            got_value, got_slope = float(h(np.array([x]))[0]), float(slope(np.array([x]))[0])
            size, size_slope = sum(abs(p) for p in parts), sum(abs(p) for p in slopes)
            if size:
                value_err = max(value_err, float(abs(got_value - sum(parts)) / size))
            if size_slope:
                slope_err = max(slope_err, float(abs(got_slope - sum(slopes)) / size_slope))
        print(f"reference_penalty({name!r}) vs mpmath on [-60, 60]: value {value_err:.1e}, "
              f"slope {slope_err:.1e} (relative to the size of the terms)")  # fmt: skip
    # the library's logistic before the fix, F.softplus with threshold 20, at the same points
    points = torch.tensor([-20.001, -20.5, 20.001], dtype=torch.float64)
    old = 0.75 * F.softplus(-points) + 0.25 * F.softplus(points)
    exact = [
        0.75 * mpmath.log1p(mpmath.exp(-t)) + 0.25 * mpmath.log1p(mpmath.exp(t))
        for t in points.tolist()
    ]
    errors = [float(abs(a - e)) for a, e in zip(old.tolist(), exact, strict=True)]
    print(f"F.softplus form at -20.001, -20.5, 20.001 (eps 0.25): errors {errors}")


def main() -> None:
    print(f"torch {torch.__version__}, numpy {np.__version__}")

    print("\n## the references")
    references()

    print("\n## this library")
    penalties: tuple[PenaltyName, ...] = ("logistic", "squared_hinge", "hinge", "least_squares")
    for penalty in penalties:

        def ours(
            u: Tensor,
            v: Tensor,
            a: Tensor | None,
            b: Tensor | None,
            penalty: PenaltyName = penalty,
        ) -> Tensor:
            return ot_1d(u, v, penalty, beta=1.0, u_weights=a, v_weights=b)

        report(
            f"ot_1d, {penalty}, values and gradients",
            functools.partial(check_ot_1d, ours, penalty, array="torch", gradients=True, seed=SEED),
        )
    report("aot_paired_loss", lambda: check_aot_loss(aot_paired_loss, weights=True, seed=SEED))
    report(
        "aot_unpaired_loss",
        lambda: check_aot_loss(aot_unpaired_loss, paired=False, weights=True, seed=SEED),
    )
    regularizations: tuple[Regularization, ...] = ("l2", "kl")
    for reg in regularizations:

        def ours_sort(x: Tensor, s: float, reg: Regularization = reg) -> Tensor:
            return soft_sort(x, regularization=reg, regularization_strength=s)

        report(
            f"soft_sort, {reg}, values and Jacobian",
            functools.partial(
                check_soft_sort, ours_sort, regularization=reg, gradients=True, seed=SEED
            ),
        )

    print("\n## scipy")
    from scipy.stats import wasserstein_distance

    report(
        "scipy.stats.wasserstein_distance as W1 (penalty |x|)",
        lambda: check_ot_1d(lambda u, v, a, b: wasserstein_distance(u, v, a, b), np.abs, seed=SEED),
    )

    print("\n## POT")
    try:
        import ot
    except ImportError:
        print("POT is not installed: skipped")
    else:
        print(f"POT {ot.__version__}")
        report(
            "ot.wasserstein_1d(u, v, u_weights, v_weights, p=1) with the weights as given",
            lambda: check_ot_1d(
                lambda u, v, a, b: ot.wasserstein_1d(u, v, a, b, p=1), np.abs, seed=SEED
            ),
        )
        powers: tuple[tuple[int, Callable[[FloatArray], FloatArray]], ...] = (
            (1, np.abs),
            (2, np.square),
        )
        for p, power in powers:

            def pot_1d(
                u: FloatArray,
                v: FloatArray,
                a: FloatArray | None,
                b: FloatArray | None,
                p: int = p,
            ) -> float:
                return ot.wasserstein_1d(u, v, normalized(a, len(u)), normalized(b, len(v)), p=p)

            report(
                f"ot.wasserstein_1d, weights normalized, p={p}",
                functools.partial(check_ot_1d, pot_1d, power, seed=SEED),
            )

        def emd2(h: Callable[[FloatArray], FloatArray]) -> NumpyOT:
            def cost(
                u: FloatArray, v: FloatArray, a: FloatArray | None, b: FloatArray | None
            ) -> float:
                return ot.emd2(
                    normalized(a, len(u)), normalized(b, len(v)), h(u[:, None] - v[None, :])
                )

            return cost

        def least_squares(x: FloatArray) -> FloatArray:
            return (1.0 - x) ** 2

        def shifted(x: FloatArray) -> FloatArray:
            return (1.0 - x) ** 2 - 1e13  # convex, every cost negative on the cases

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # emd2 warns "Problem infeasible" where it fails
            report(
                "ot.emd2 on C_ij = (1 - (u_i - v_j))^2",
                lambda: check_ot_1d(emd2(least_squares), seed=SEED),
            )
            report(
                "ot.emd2 on C_ij = (1 - (u_i - v_j))^2, values in [-100, 100]",
                lambda: check_ot_1d(
                    emd2(least_squares),
                    cases=ot_cases(min_value=-100.0, max_value=100.0),
                    seed=SEED,
                ),
            )
            # found by an earlier version of ot_cases (magnitudes 1e-7 to 1e6 in one case)
            u = np.array([0.0] * 6 + [2.0, 0.00390625, 87185.0])
            v = np.array([0.0] * 6 + [1.0, 87381.0, 0.005])
            exact = reference_ot_1d(u, v, "least_squares", beta=1.0)
            got = emd2(least_squares)(u, v, None, None)
            print(f"      ot.emd2 on u={u.tolist()}, v={v.tolist()}: {got!r}, exact {exact!r} "
                  f"(relative {abs(got - exact) / exact:.1e})")  # fmt: skip
            report(
                "ot.emd2 on negative costs C_ij = (1 - (u_i - v_j))^2 - 1e13",
                lambda: check_ot_1d(emd2(shifted), shifted, seed=SEED),
            )
            rng = np.random.default_rng(0)
            uniform = np.full(5, 0.2)
            for low, high in ((-10.0, -2.0), (-2.0, 0.0), (-10.0, 0.0), (-10.0, 5.0)):
                zeros = sum(
                    ot.emd2(uniform, uniform, rng.uniform(low, high, (5, 5))) == 0.0
                    for _ in range(1000)
                )
                print(f"      ot.emd2, 5 x 5 costs uniform in [{low}, {high}]: 0.0 in {zeros}/1000")

    print("\n## torchsort")
    try:
        import torchsort
    except ImportError:
        print("torchsort is not installed: skipped")
    else:
        for reg in regularizations:

            def ts(
                x: Tensor, s: float, reg: Regularization = reg, dtype: torch.dtype = torch.float64
            ) -> Tensor:
                return torchsort.soft_sort(
                    x[None].to(dtype), regularization=reg, regularization_strength=s
                )[0].double()

            report(
                f"torchsort.soft_sort, {reg}, float64, values and Jacobian",
                functools.partial(
                    check_soft_sort, ts, regularization=reg, gradients=True, seed=SEED
                ),
            )

            def ours_f32(x: Tensor, s: float, reg: Regularization = reg) -> Tensor:
                return soft_sort(x.float(), regularization=reg, regularization_strength=s).double()

            float32_sorts: tuple[tuple[str, Callable[[Tensor, float], Tensor]], ...] = (
                ("torchsort.soft_sort", functools.partial(ts, dtype=torch.float32)),
                ("aot_losses.soft_sort", ours_f32),
            )
            for name, f32 in float32_sorts:
                report(
                    f"{name}, {reg}, float32, rtol=1e-6",
                    functools.partial(
                        check_soft_sort, f32, regularization=reg, rtol=1e-6, seed=SEED
                    ),
                )
        x = torch.tensor([[0.001]])
        print(
            f"      float32 soft sort of [0.001], strength 1: torchsort "
            f"{torchsort.soft_sort(x).item()!r}, aot_losses {soft_sort(x).item()!r}"
        )

        def soft_aot(strength: float) -> AOTLoss:
            def loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
                u, v = (pc - pr)[None], (rc - rr)[None]
                su = torchsort.soft_sort(u, regularization_strength=strength)[0]
                sv = torchsort.soft_sort(v, regularization_strength=strength)[0]
                return -F.logsigmoid(0.01 * (su - sv)).mean()

            return loss

        for strength in (0.1, 1e-3):
            report(
                f"paired AOT loss on torchsort.soft_sort, strength {strength}",
                functools.partial(check_aot_loss, soft_aot(strength), seed=SEED),
            )

    print("\n## TRL 1.16's aot branch, by hand")
    report("loss_type='aot', beta 0.01", lambda: check_aot_loss(trl_copy(True), seed=SEED))
    report(
        "loss_type='aot', beta 0.1, label_smoothing 0.2",
        lambda: check_aot_loss(trl_copy(True, 0.1, 0.2), beta=0.1, label_smoothing=0.2, seed=SEED),
    )
    report(
        "loss_type='aot_unpaired', as many chosen as rejected",
        lambda: check_aot_loss(trl_copy(False), paired=False, unequal_sizes=False, seed=SEED),
    )
    report(
        "loss_type='aot_unpaired', n != m",
        lambda: check_aot_loss(trl_copy(False), paired=False, seed=SEED),
    )
    report(
        "loss_type='aot', weighted pairs",
        lambda: check_aot_loss(trl_copy(True), weights=True, seed=SEED),
    )

    def trl_core(u: Tensor, v: Tensor, a: Tensor | None, b: Tensor | None) -> Tensor:
        # the sorted logistic of TRL's branches as a 1-D OT cost
        delta = torch.sort(u, dim=0)[0] - torch.sort(v, dim=0)[0]
        return -F.logsigmoid(delta).mean()

    report(
        "TRL's sorted logistic as OT, equal sizes, no weights, with gradients",
        lambda: check_ot_1d(
            trl_core, "logistic", array="torch", gradients=True, unequal_sizes=False,
            weights=False, seed=SEED,
        ),
    )  # fmt: skip
    report(
        "TRL's sorted logistic as OT, all cases",
        lambda: check_ot_1d(trl_core, "logistic", array="torch", seed=SEED),
    )


if __name__ == "__main__":
    main()
