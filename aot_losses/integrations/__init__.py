"""Integrations of the AOT losses into training frameworks.

Each integration lives in its own submodule and imports its framework only when that submodule
is imported (``import aot_losses`` and ``import aot_losses.integrations`` import no framework):

* :mod:`aot_losses.integrations.trl`: ``AOTTrainer`` / ``AOTConfig`` over TRL's ``DPOTrainer``,
  ``AOTUnpairedTrainer`` / ``AOTUnpairedConfig`` over TRL's ``KTOTrainer``
  (from a checkout of aot-losses, ``pip install -e ".[trl]"``; see ``docs/trl.md``).
"""

__all__: list[str] = []
