"""aot-losses: distributional preference alignment of LLMs via optimal transport (AOT).

Exact, differentiable 1-D optimal transport losses for PyTorch (Melnyk et al., "Distributional
Preference Alignment of LLMs via Optimal Transport", NeurIPS 2024, arXiv 2406.05882).

Example:
    >>> import torch
    >>> from aot_losses import aot_paired_loss
    >>> logps = [torch.randn(8) for _ in range(4)]
    >>> aot_paired_loss(*logps).shape
    torch.Size([])
"""

from . import baselines, diagnostics, penalties
from ._validation import get_value_checks, set_value_checks
from .losses import aot_paired_loss, aot_unpaired_loss
from .nn import AOTPairedLoss, AOTUnpairedLoss
from .ot import ot_1d
from .penalties import get_penalty
from .sorting import SoftSort, hard_sort, soft_rank, soft_sort

__version__ = "0.1.0.dev0"

__all__ = [
    "AOTPairedLoss",
    "AOTUnpairedLoss",
    "SoftSort",
    "__version__",
    "aot_paired_loss",
    "aot_unpaired_loss",
    "baselines",
    "diagnostics",
    "get_penalty",
    "get_value_checks",
    "hard_sort",
    "ot_1d",
    "penalties",
    "set_value_checks",
    "soft_rank",
    "soft_sort",
]
