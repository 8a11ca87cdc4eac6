"""The pieces of ``examples/align.py``, shared with its benchmarks and tests.

=================  ==========================================================================
``config``         the run's options (``AlignConfig``), its command line and checks
``data``           JSONL / hub records with file:line errors, the held-out split
``tokenization``   each example tokenized once, truncated to the run's lengths
``batching``       padded batches, the resumable order of micro-batches
``modeling``       model sources, model + LoRA, sequence log-probs, the reference's once
``losses``         the preference losses over the four log-prob tensors (``LossSpec``)
``training``       one run: setup, one optimizer step, the final evaluation and adapter
``tracking``       running training statistics and the metrics log
``checkpoints``    saving and resuming a run
``report``         held-out metrics, the quantile figure, the summary table
``tasks``          the tasks align.py prepares and evaluates (toy, instructions)
``preferences``    preference records from scored samples, one function per construction
``sampling``       seeded sampling of completions through the chat template
``toy``            the embedded task: tiny GPT-2, SFT, preference data, reward evaluation
``instructions``   the instructions task: verifiable constraints on a chat model's samples
=================  ==========================================================================
"""

__all__: list[str] = []
