"""The instructions task: a real chat model follows instructions whose constraints code can
verify, in the spirit of IFEval (Zhou et al. 2023, arXiv 2311.07911).

A prompt is a short request on a topic with one or two constraints (``task.py``): at most /
at least N words, at most N sentences, lowercase only, include a word, avoid a word (one the
topic invites), start or end with a given word, exactly N bullet points, no commas. Each
constraint's checker is a small pure function with its exact rule (``constraints.py``); the
reward is the share of the prompt's constraints a completion satisfies. Training, validation
and test prompts come from disjoint topics.

Stages:

1. :func:`prepare` (``preparation.py``): the reference's own samples of every training and
   validation prompt, scored and cached once (resumable), and the preference records of the
   three data cells (:data:`CELL_DATA`: best-vs-worst pairs, noisy pairs, unpaired
   thumbs-up/down) built by :mod:`aot_examples.preferences`.
2. ``examples/align.py`` aligns LoRA adapters on one cell's records.
3. :func:`evaluate` (``evaluation.py``): the aligned policy against its reference on the test
   prompts: mean reward, CVaR 10 % and share at 0 over prompts, KL; and
   :func:`reward_quantile_figure`.

The reference, measured
-----------------------

SmolLM2-135M-Instruct (its ``Q4_1`` GGUF file, float32 on the CPU) with the default
:class:`InstructionsConfig` (temperature 1, 64 new tokens): rendered prompts (chat template
and its default system turn included) have 39-58 tokens, so prompt and completion fit in 128.
On the 64 test prompts with 4 samples each, its reward has mean 0.33, CVaR 10 % 0, and 23 %
of the prompts at reward 0 (every sample fails every constraint). Per kind of constraint,
alone in a prompt, it succeeds on about 60 % (at least N words), 45-65 % (at most N words or
sentences), 35-40 % (include, avoid, no commas), 12 % (lowercase, bullets) and 4 % (start or
end with a word) of its samples. Sampling 4 completions of 32 prompts took about 140 s on one
CPU thread.
"""

from .constraints import KINDS, Constraint
from .evaluation import CVAR_LEVEL, cvar, evaluate, reward_quantile_figure, reward_stats
from .preparation import CELL_DATA, DATA_SPLITS, Prepared, prepare
from .task import InstructionPrompt, InstructionsConfig, Splits, make_splits, reward

__all__ = [
    "CELL_DATA",
    "CVAR_LEVEL",
    "DATA_SPLITS",
    "KINDS",
    "Constraint",
    "InstructionPrompt",
    "InstructionsConfig",
    "Prepared",
    "Splits",
    "cvar",
    "evaluate",
    "make_splits",
    "prepare",
    "reward",
    "reward_quantile_figure",
    "reward_stats",
]
