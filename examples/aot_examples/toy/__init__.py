"""The embedded task: a tiny GPT-2 learns to sort letters from flawed demonstrations.

A prompt is a random string of letters followed by ``=`` (``"dbca="``); the correct completion
is the letters sorted (``"abcd"``); the reward is exact (:func:`~.task.reward`).

Stages, each reusable on its own (:func:`prepare` chains and caches the first two):

1. :func:`~.reference.pretrain_reference` (``reference.py``): SFT of a fresh tiny GPT-2 on
   demonstrations with a bad habit and mistakes, so that its samples spread over good and bad
   completions.
2. :func:`~.preferences.build_preference_data` (``preferences.py``): scored samples of that
   reference on training prompts, turned into paired and unpaired JSONL by one function per
   construction (best vs worst, every sample labelled, and the noisy and thumbs-up/down data
   of the pre-registered study, ``regimes.py``).
3. ``examples/align.py`` aligns LoRA adapters on that data (the generic loop).
4. :func:`evaluate_policy` (``evaluation.py``): reference against the aligned policy on held-out
   prompts (mean reward, win rate, KL estimate, the lower tail and first-order stochastic
   dominance of the exact reward) and the implicit rewards of the held-out pairs.

Prompts of the training, evaluation (held-out pairs) and test (held-out reward) splits are
disjoint, and the SFT demonstrations avoid the held-out ones.
"""

from ..preferences import CELL_DATA
from .artifacts import Artifacts, prepare
from .evaluation import evaluate_policy, held_out_pairs, reward_metrics
from .preferences import DATA_KINDS
from .regimes import STUDY_TOY
from .task import ToyConfig, build_model, build_tokenizer, reward, target

__all__ = [
    "CELL_DATA",
    "DATA_KINDS",
    "STUDY_TOY",
    "Artifacts",
    "ToyConfig",
    "build_model",
    "build_tokenizer",
    "evaluate_policy",
    "held_out_pairs",
    "prepare",
    "reward",
    "reward_metrics",
    "target",
]
