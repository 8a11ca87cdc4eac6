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

SmolLM2-135M-Instruct from its ``Q4_1`` GGUF file (float32 on the CPU), with the default
:class:`InstructionsConfig` (temperature 1, no top-k or top-p, 64 new tokens):

* rendered prompts (chat template and its default system turn included) have 39-58 tokens, so
  prompt and completion fit in 128;
* on the 64 test prompts, 4 samples each: mean reward 0.30 (standard error 0.03 over
  prompts), CVaR 10 % 0, 25 % of the prompts at reward 0 (every sample fails every
  constraint), prompt means at the 10/25/50/75/90 % quantiles 0, 0.09, 0.25, 0.5, 0.59; 59 %
  of the samples score 0; 64 % of the prompts have samples of different rewards (a
  best-vs-worst pair); half of the samples stop before 64 tokens. On the 64 validation
  prompts: mean 0.34, 22 % at 0;
* share of samples that satisfy each kind of constraint (test and validation prompts):
  at most N sentences 0.7-0.9, at least N words 0.75, avoid a word 0.45, include a word
  0.4, at most N words 0.3-0.45, no commas 0.3, start with a word 0.15-0.2, bullet points
  0.1-0.15, end with a word 0.06, lowercase 0.05;
* sampling 4 completions of 32 prompts (4 calls of 32 sequences) takes 140-190 s on one CPU
  thread of a busy 2-core machine (more threads than free cores is much slower).
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
