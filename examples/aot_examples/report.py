"""Metrics over preference log-probs, the quantile figure, and the summary table."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aot_losses import diagnostics

from .losses import PreferenceLogps

#: Quantile levels of the implicit-reward margins reported by :func:`preference_metrics`.
QUANTILE_MARGIN_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)


def _float(x: Tensor) -> float | None:
    value = x.item()
    return None if math.isnan(value) else value  # JSON has no NaN


def preference_metrics(logps: PreferenceLogps) -> dict[str, float | None]:
    """Means of implicit rewards and log-likelihoods, and FSD diagnostics.

    ``fsd/violation`` and ``fsd/almost_ratio`` compare the implicit rewards of chosen and
    rejected completions (0 when chosen dominates; at the start, where every reward is 0, the
    ratio is undefined: ``None``). ``quantile_margin/qNN`` is ``Q_chosen(t) - Q_rejected(t)`` of
    the implicit rewards at level ``t = NN / 100`` (positive: chosen ahead). For paired data,
    ``rewards/accuracy`` is the share of pairs whose chosen reward is higher and
    ``fsd/margin_violation`` compares the policy's margins log pi(y+|x) - log pi(y-|x) with the
    reference's (what paired AOT pushes up).
    """
    chosen, rejected = logps.rewards
    out = {
        "rewards/chosen": _float(chosen.mean()),
        "rewards/rejected": _float(rejected.mean()),
        "rewards/margin": _float(chosen.mean() - rejected.mean()),
        "logps/chosen": _float(logps.policy_chosen.mean()),
        "logps/rejected": _float(logps.policy_rejected.mean()),
        "fsd/violation": _float(diagnostics.fsd_violation(chosen, rejected)),
        "fsd/almost_ratio": _float(diagnostics.almost_fsd_ratio(chosen, rejected)),
    }
    levels = torch.tensor(QUANTILE_MARGIN_LEVELS, dtype=torch.float64)
    _, q_chosen, q_rejected = diagnostics.quantile_curves(
        chosen.double(), rejected.double(), levels
    )
    for level, margin in zip(levels.tolist(), (q_chosen - q_rejected).tolist(), strict=True):
        out[f"quantile_margin/q{round(100 * level):02d}"] = margin
    if logps.paired:
        out["rewards/accuracy"] = _float((chosen > rejected).double().mean())
        out["fsd/margin_violation"] = _float(
            diagnostics.fsd_violation(
                logps.policy_chosen - logps.policy_rejected,
                logps.reference_chosen - logps.reference_rejected,
            )
        )
    return out


def quantile_figure(logps: PreferenceLogps, path: str | Path) -> None:
    """Save the paper's Figure 1 for held-out preference data: quantile curves of chosen vs
    rejected log-likelihoods under the reference and under the aligned policy, of the aligned
    policy's implicit rewards, and (paired data) of the margins log pi(y+|x) - log pi(y-|x)
    under the aligned policy vs the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen, rejected = logps.rewards
    panels: list[tuple[Tensor, Tensor, str, tuple[str, str] | None]] = [
        (
            logps.reference_chosen,
            logps.reference_rejected,
            r"reference: $\log\pi_{ref}(y|x)$",
            None,
        ),
        (logps.policy_chosen, logps.policy_rejected, r"aligned: $\log\pi(y|x)$", None),
        (chosen, rejected, r"aligned: implicit reward $\log\pi/\pi_{ref}$", None),
    ]
    if logps.paired:
        panels.append(
            (
                logps.policy_chosen - logps.policy_rejected,
                logps.reference_chosen - logps.reference_rejected,
                r"margin $\log\pi(y^+|x) - \log\pi(y^-|x)$",
                ("aligned", "reference"),
            )
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (u, v, title, labels) in zip(axes[0], panels, strict=True):
        diagnostics.plot_quantile_curves(
            u.double(), v.double(), ax=ax, title=title, labels=labels or ("chosen", "rejected")
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width text table; floats with 4 significant digits, ``None`` as ``-``."""

    def cell(x: object) -> str:
        if x is None:
            return "-"
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    cells = [list(header), *[[cell(x) for x in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def eval_summary(
    logps: PreferenceLogps, loss: Callable[[PreferenceLogps], Tensor]
) -> dict[str, dict[str, float | None]]:
    """The held-out results of ``summary.json``: ``eval_policy`` (the loss and
    :func:`preference_metrics`) and ``eval_reference`` (the loss and log-likelihoods under the
    reference, whose implicit rewards are all 0)."""
    ref_c, ref_r = logps.reference_chosen, logps.reference_rejected
    reference = PreferenceLogps(ref_c, ref_r, ref_c, ref_r, logps.paired)
    return {
        "eval_reference": {
            "loss": loss(reference).item(),
            "logps/chosen": ref_c.mean().item(),
            "logps/rejected": ref_r.mean().item(),
        },
        "eval_policy": {"loss": loss(logps).item(), **preference_metrics(logps)},
    }


def _mean_se(summary: dict[str, Any], name: str) -> str:
    return f"{summary[name + '_mean']:.4f} ± {summary[name + '_se']:.4f}"


def _toy_rows(summary: dict[str, Any]) -> list[list[object]]:
    """The embedded task's rewards (``toy.evaluate_policy``)."""
    distribution: list[list[object]] = []
    if "policy_reward_q10" in summary:  # toy.reward_metrics (not in older summaries)
        distribution = [
            ["reward 10% quantile", summary["reference_reward_q10"], summary["policy_reward_q10"]],
            ["zero-reward share", summary["reference_zero_reward_share"],
             summary["policy_zero_reward_share"]],
            ["reward FSD violation per prompt", None, summary["fsd_violation_per_prompt"]],
            ["reward FSD violation pooled", None, summary["fsd_violation_pooled"]],
        ]  # fmt: skip
    return [
        ["reward (held-out prompts)", _mean_se(summary, "reference_reward"),
         _mean_se(summary, "policy_reward")],
        ["exact match", _mean_se(summary, "reference_exact_match"),
         _mean_se(summary, "policy_exact_match")],
        ["greedy reward", summary["reference_greedy_reward_mean"],
         summary["policy_greedy_reward_mean"]],
        ["win rate vs reference", None, _mean_se(summary, "win_rate")],
        ["KL(policy || reference)", 0.0, _mean_se(summary, "kl_policy_reference")],
        *distribution,
    ]  # fmt: skip


def _instructions_rows(summary: dict[str, Any]) -> list[list[object]]:
    """The instructions task's rewards (``instructions.evaluate``); prompts are the units."""
    kl = f"{summary['kl']:.4f} ± {summary['kl_se']:.4f}"
    return [
        ["reward (test prompts)", _mean_se(summary, "reference_reward"),
         _mean_se(summary, "policy_reward")],
        ["reward CVaR 10% (worst prompts)", summary["reference_reward_cvar10"],
         summary["policy_reward_cvar10"]],
        ["prompts at reward 0", summary["reference_zero_reward_share"],
         summary["policy_zero_reward_share"]],
        ["samples that end by themselves", summary["reference_finished_share"],
         summary["policy_finished_share"]],
        ["KL(policy || reference)", 0.0, kl],
    ]  # fmt: skip


def summary_table(summary: dict[str, Any]) -> str:
    """The table the script prints, from ``summary.json`` alone: the task's rewards (when
    there is a task), then the held-out metrics of reference and aligned policy."""
    rows: list[list[object]] = []
    if "eval_policy" in summary:
        split = "held-out pairs" if summary["paired"] else "held-out samples"
        reference = summary["eval_reference"]
        rows = [[f"{split}: {k}", reference.get(k), v] for k, v in summary["eval_policy"].items()]
    if "toy" in summary:
        rows = _toy_rows(summary) + rows
        if not summary["paired"]:  # unpaired losses are measured on the held-out pairs too
            rows += [
                [f"held-out pairs: {k}", None, v] for k, v in summary["held_out_pairs"].items()
            ]
    elif "instructions" in summary:
        rows = _instructions_rows(summary) + rows
    return format_table(["metric", "reference", "aligned policy"], rows)
