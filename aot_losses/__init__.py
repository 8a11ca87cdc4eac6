"""aot-losses: distributional preference alignment of LLMs via optimal transport (AOT).

Exact, differentiable 1-D optimal transport losses for PyTorch (Melnyk et al., "Distributional
Preference Alignment of LLMs via Optimal Transport", NeurIPS 2024, arXiv 2406.05882).
"""

from ._validation import get_value_checks, set_value_checks
from .losses import aot_paired_loss, aot_unpaired_loss
from .ot import ot_1d
from .penalties import get_penalty

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    "aot_paired_loss",
    "aot_unpaired_loss",
    "get_penalty",
    "get_value_checks",
    "ot_1d",
    "set_value_checks",
]
