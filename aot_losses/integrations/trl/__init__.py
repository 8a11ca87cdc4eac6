"""AOT in TRL: drop-in subclasses of TRL's ``DPOTrainer`` and ``KTOTrainer``.

* :class:`AOTTrainer` / :class:`AOTConfig` take the place of ``trl.DPOTrainer`` /
  ``trl.DPOConfig``. TRL's loss types ``"aot"`` (paired) and ``"aot_unpaired"`` keep their
  meanings (both on paired batches: ``"aot"`` transports the policy's chosen-minus-rejected
  margins onto the reference's, ``"aot_unpaired"`` the chosen log-ratios onto the rejected
  ones), and so do ``beta``, ``label_smoothing``, ``loss_weights`` and every other TRL option.
  With the defaults the trainer trains exactly as TRL does; the ``aot_*`` options add the other
  penalties, the soft sort, and sorting the global batch of all processes and of all the
  gradient-accumulation micro-batches of an optimizer step.
* :class:`AOTUnpairedTrainer` / :class:`AOTUnpairedConfig` take the place of ``trl.KTOTrainer``
  / ``trl.KTOConfig`` on unpaired data (``prompt``, ``completion``, ``label``): the loss is
  :func:`aot_losses.aot_unpaired_loss` between the ``n`` desirable and the ``m`` undesirable
  completions of a batch, ``n != m``.

The trainers run TRL's own loss computation with its AOT (or KTO) terms weighted 0, take the
margins TRL computed, and add ``loss_weight x ot_1d(u, v, ...)``: :func:`aot_losses.ot_1d` on the
margins ``u``, ``v`` is what :func:`aot_losses.aot_paired_loss` and
:func:`aot_losses.aot_unpaired_loss` compute from the four log-prob tensors. They check at every
step that TRL computed the tensors they expect and raise ``RuntimeError`` otherwise (a TRL
outside the tested range, see :data:`TESTED_TRL_VERSIONS`). See ``docs/trl.md``.

The package: ``_config`` (the configs and their checks), ``_objective`` (the AOT loss and
diagnostics on margins, without TRL) and ``_adapter`` (the trainers, the one module that touches
TRL's internals).
"""

try:
    import trl  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "aot_losses.integrations.trl needs TRL 1.16 (which needs Python >= 3.11): from a "
        'checkout of aot-losses, pip install -e ".[trl]"'
    ) from error

from ._adapter import TESTED_TRL_VERSIONS, AOTTrainer, AOTUnpairedTrainer
from ._config import AOT_LOSS_TYPES, AOTConfig, AOTUnpairedConfig
from ._objective import QUANTILE_LEVELS

__all__ = [
    "AOT_LOSS_TYPES",
    "QUANTILE_LEVELS",
    "TESTED_TRL_VERSIONS",
    "AOTConfig",
    "AOTTrainer",
    "AOTUnpairedConfig",
    "AOTUnpairedTrainer",
]
