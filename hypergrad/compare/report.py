"""Summaries of ``compare.json``: best meta loss at fractions of the budget, mean ± std over seeds."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from hypergrad.compare.trace import best_at, trace_from_json

__all__ = ["BUDGET_ACCOUNTING", "FRACTIONS", "markdown_table", "redact", "summarize"]

FRACTIONS = (0.25, 0.5, 1.0)

BUDGET_ACCOUNTING = (
    "Budget unit: one inner training of T SGD steps from w0. Gradient methods: one meta step = one inner training "
    "(+ its hypergradient, paid in seconds only); the meta loss of step k is the validation loss the tuner records "
    "for the hyperparameters evaluated at step k; Tuner.finish() is not run. Optuna: one trial = one inner training "
    "(a pruned trial costs steps_run/T). Hybrid tpe+X: round(hybrid_split*budget) TPE trials, then X meta steps "
    "for the rest. Strategies (sign, hybrid, auto): every step is one inner training (search step, TPE trial or "
    "selection run on a reserved batch order), budget steps in all. Seconds: wall clock from the method's first "
    "inner training, including sampler/hypergradient overhead. The test-accuracy retraining with torch.optim.SGD "
    "is identical for all methods and not charged."
)


def _mean_std(values: Sequence[float | None]) -> dict[str, float | int | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(vals)}


def summarize(runs: Sequence[dict[str, Any]], budget: int, methods: Sequence[str]) -> dict[str, Any]:
    """Per method: best meta loss at 25/50/100% of the budget, test accuracy and seconds (mean, sample std, n)."""
    out: dict[str, Any] = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        traces = [trace_from_json(r) for r in rs]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "best_at": {}}
        for frac in FRACTIONS:
            b = frac * budget
            entry["best_at"][f"{round(frac * 100)}%"] = {"inner_trainings": b, **_mean_std(
                [best_at(t, b) for t in traces])}
        entry["test_accuracy"] = _mean_std([r["sgd_eval"]["test_accuracy"] for r in rs])
        entry["sgd_val_loss"] = _mean_std([r["sgd_eval"]["val_loss"] for r in rs])
        entry["seconds"] = _mean_std([r["seconds"][-1] if r["seconds"] else None for r in rs])
        out[m] = entry
    return out


def _fmt(entry: dict[str, Any], digits: int = 4) -> str:
    if entry["mean"] is None:
        return "n/a"
    if (entry.get("n") or 0) < 2:  # one seed: no spread was measured
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def markdown_table(summary: dict[str, Any], budget: int) -> str:
    """The comparison as a markdown table (mean ± sample std over seeds)."""
    heads = [f"best@{round(f * 100)}% ({f * budget:g})" for f in FRACTIONS]
    lines = [
        "| method | " + " | ".join(heads) + " | test acc. (SGD) | wall s |",
        "|---|" + "---:|" * (len(heads) + 2),
    ]
    for m, e in summary.items():
        cells = [_fmt(e["best_at"][f"{round(f * 100)}%"]) for f in FRACTIONS]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(e['test_accuracy'])} | {_fmt(e['seconds'], 1)} |")
    n = max((len(e["seeds"]) for e in summary.values()), default=0)
    spread = f"mean ± std over {n} seeds" if n > 1 else "one seed (no spread measured)"
    lines.append("")
    lines.append(
        f"Best validation meta loss after 25/50/100% of a budget of {budget} inner trainings, "
        f"{spread}; test accuracy of a fresh torch.optim.SGD run with each method's best "
        "hyperparameters; wall seconds of the whole search."
    )
    return "\n".join(lines) + "\n"


def redact(url: str | None) -> str | None:
    """A storage URL without its password (``postgresql://user:***@host/db``)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url) if url else url
