"""Hard and soft sorting along any dimension.

* :func:`hard_sort`: ``torch.sort`` values, gradient through the order statistics;
* :func:`soft_sort` / :func:`soft_rank`: Blondel et al. (2020) projections onto the
  permutahedron with l2 or KL regularization, by pure-PyTorch isotonic regression (default,
  ``backend="torch"``) or by torchsort (``backend="torchsort"``, optional extra); soft sort also
  by entropic optimal transport (``backend="sinkhorn"``, Cuturi et al. 2019);
* :class:`SoftSort`: a soft sort with its options bound, the ``sort=`` of the losses.

See ``docs/sorting.md`` for the math, the backends and their limits.
"""

from ._api import Backend, RankBackend, SoftSort, hard_sort, soft_rank, soft_sort
from ._isotonic import Regularization

__all__ = [
    "Backend",
    "RankBackend",
    "Regularization",
    "SoftSort",
    "hard_sort",
    "soft_rank",
    "soft_sort",
]
