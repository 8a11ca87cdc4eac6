"""The pieces of ``examples/align.py``, shared with its benchmarks and tests.

=================  ==========================================================================
``config``         the run's options (``AlignConfig``), its command line and checks
``data``           JSONL / hub records with file:line errors, the held-out split
``tokenization``   each example tokenized once, truncated to the run's lengths
``batching``       padded batches, the resumable order of micro-batches
``modeling``       model + LoRA, sequence log-probs, held-out scoring over processes
``losses``         the preference losses over the four log-prob tensors (``LossSpec``)
``training``       one run: setup, one optimizer step, the final evaluation and adapter
``tracking``       running training statistics and the metrics log
``checkpoints``    saving and resuming a run
``report``         held-out metrics, the quantile figure, the summary table
``toy``            the embedded task: tiny GPT-2, SFT, preference data, reward evaluation
=================  ==========================================================================
"""

__all__: list[str] = []
