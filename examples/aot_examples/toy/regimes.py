"""The task, the data cells and the statistics of the pre-registered study
(docs/preregistration.md; its harness is ``benchmarks/alignment_regimes.py``).

The study runs the embedded task with its default :class:`~.task.ToyConfig` except 4096
training prompts (:data:`STUDY_TOY`), so that one completion per prompt still gives enough
unpaired data. Each data cell trains on one kind of preference record of the task
(:data:`~aot_examples.preferences.CELL_DATA`, the ``--toy-data`` of ``align.py``; the
constructions are in ``aot_examples/preferences.py``). Its analysis compares methods by
paired differences over seeds, with percentile bootstrap intervals (:func:`bootstrap_interval`),
a verdict per predicted difference (:func:`verdict`), and rewards at a matched KL
(:func:`interpolate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor

from .task import ToyConfig

#: The study's task: the defaults, 4096 training prompts.
STUDY_TOY = ToyConfig(train_prompts=4096)


# --------------------------------------------------------------------------------------------
# The protocol's statistics: paired bootstrap intervals, verdicts, matched-KL interpolation
# --------------------------------------------------------------------------------------------

#: Bootstrap resamples of the seed differences, and the seed of their draws.
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def _resampled_means(values: Sequence[float], resamples: int, generator: torch.Generator) -> Tensor:
    x = torch.tensor(values, dtype=torch.float64)
    if x.numel() == 0:
        raise ValueError("a bootstrap needs at least one value")
    index = torch.randint(0, x.numel(), (resamples, x.numel()), generator=generator)
    return x[index].mean(1)


def _percentile_interval(means: Tensor) -> tuple[float, float]:
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return low.item(), high.item()


def bootstrap_interval(
    differences: Sequence[float], *, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """The 95 % paired bootstrap interval of the mean difference: ``resamples`` resamples with
    replacement of the ``differences`` (one per seed), the 2.5 and 97.5 percentiles of their
    means (linear interpolation, as NumPy's default), drawn from a generator seeded with
    ``seed``.

    Example:
        >>> bootstrap_interval([0.5, 0.5, 0.5])
        (0.5, 0.5)
    """
    generator = torch.Generator().manual_seed(seed)
    return _percentile_interval(_resampled_means(differences, resamples, generator))


def bootstrap_interval_of_gap(
    first: Sequence[float],
    second: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """The 95 % bootstrap interval of ``mean(first) - mean(second)``, each side resampled on
    its own (two cells' paired differences: the bootstrap within each cell)."""
    generator = torch.Generator().manual_seed(seed)
    means = _resampled_means(first, resamples, generator)
    return _percentile_interval(means - _resampled_means(second, resamples, generator))


def verdict(interval: tuple[float, float], *, strict: bool) -> str:
    """The protocol's verdict on a predicted difference ``> 0`` (``strict``) or ``>= 0`` from
    its 95 % interval: ``"supported"`` when the interval lies on the predicted side of 0 (above
    it; for ``>= 0`` it may touch 0), ``"contradicted"`` when it lies on the other side (below
    0), ``"inconclusive"`` otherwise.

    Example:
        >>> verdict((0.01, 0.03), strict=True), verdict((-0.02, 0.01), strict=True)
        ('supported', 'inconclusive')
    """
    low, high = interval
    if low > 0 or (not strict and low >= 0):
        return "supported"
    if high < 0:
        return "contradicted"
    return "inconclusive"


def combine(verdicts: Sequence[str]) -> str:
    """The verdict on a hypothesis of several predicted differences, all of which must hold:
    ``"contradicted"`` when one is, ``"not run"`` when one could not be computed,
    ``"supported"`` when all are, ``"inconclusive"`` otherwise."""
    if "contradicted" in verdicts:
        return "contradicted"
    if "not run" in verdicts:
        return "not run"
    return "supported" if all(v == "supported" for v in verdicts) else "inconclusive"


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of ``(kl, reward)`` points at ``kl = x``, between the neighbouring
    points ordered by KL; ``None`` ("not reached") where the points do not bracket ``x``.

    Example:
        >>> interpolate([(2.0, 0.6), (1.0, 0.5), (4.0, 0.7)], 1.5), interpolate([(1.0, 0.5)], 2)
        (0.55, None)
    """
    ordered = sorted(points)
    if len(ordered) == 1 and ordered[0][0] == x:
        return ordered[0][1]
    for (x0, y0), (x1, y1) in pairwise(ordered):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None
