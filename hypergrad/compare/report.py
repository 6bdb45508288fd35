"""Summaries of ``compare.json``: best meta loss at fractions of the budget, mean ± std over seeds.

Beside the search's best meta loss, the summary gives what each method's hyperparameters
are worth on batch orders the search never saw (:func:`hypergrad.compare.evaluate.sgd_retrain`):
the loss for every task, the metric (accuracy, or the user's ``metric=``) where one applies,
mean ± std over every retraining (seeds x fresh orders).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from hypergrad.compare.trace import best_at, trace_from_json

__all__ = ["BUDGET_ACCOUNTING", "FRACTIONS", "markdown_table", "redact", "sgd_keys", "summarize"]

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


def _retrained(run: dict[str, Any], key: str) -> list[float | None]:
    """The values of ``key`` over a run's retrainings (one per fresh batch order)."""
    entry = run.get("sgd_eval", {}).get(key)
    return list(entry["values"]) if isinstance(entry, dict) else []


def sgd_keys(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The retraining's keys, in the order the runs report them (``val_loss``, ``val_accuracy``, ``test_loss``, ...)."""
    keys: dict[str, None] = {}
    for r in runs:
        for k, v in r.get("sgd_eval", {}).items():
            if isinstance(v, dict) and "values" in v:
                keys.setdefault(k)
    return list(keys)


def summarize(runs: Sequence[dict[str, Any]], budget: int, methods: Sequence[str]) -> dict[str, Any]:
    """Per method: best meta loss at 25/50/100% of the budget, the retraining and seconds (mean, sample std, n).

    ``entry["sgd"][key]`` pools every retraining of the method (seeds x fresh batch orders).
    """
    out: dict[str, Any] = {}
    keys = sgd_keys(runs)
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        traces = [trace_from_json(r) for r in rs]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "best_at": {}}
        for frac in FRACTIONS:
            b = frac * budget
            entry["best_at"][f"{round(frac * 100)}%"] = {"inner_trainings": b, **_mean_std(
                [best_at(t, b) for t in traces])}
        entry["sgd"] = {k: _mean_std([v for r in rs for v in _retrained(r, k)]) for k in keys}
        entry["sgd_orders"] = sum(int(r.get("sgd_eval", {}).get("orders", 0)) for r in rs)
        entry["seconds"] = _mean_std([r["seconds"][-1] if r["seconds"] else None for r in rs])
        out[m] = entry
    return out


def _fmt(entry: dict[str, Any], digits: int = 4) -> str:
    if entry["mean"] is None:
        return "n/a"
    if (entry.get("n") or 0) < 2:  # one seed: no spread was measured
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def _sgd_columns(summary: dict[str, Any]) -> list[str]:
    """The retraining's columns: the loss and the metric of the test set (the validation set without one)."""
    keys = list(dict.fromkeys(k for e in summary.values() for k in e.get("sgd", {})))
    split = "test" if any(k.startswith("test_") for k in keys) else "val"
    mine = [k for k in keys if k.startswith(f"{split}_")]
    return sorted(mine, key=lambda k: k != f"{split}_loss")


def markdown_table(summary: dict[str, Any], budget: int) -> str:
    """The comparison as a markdown table (mean ± sample std over seeds; retraining over seeds x orders)."""
    heads = [f"best@{round(f * 100)}% ({f * budget:g})" for f in FRACTIONS]
    columns = _sgd_columns(summary)
    sgd_heads = [k.replace("_", " ", 1) + " (SGD)" for k in columns]
    lines = [
        "| method | " + " | ".join(heads + sgd_heads) + " | wall s |",
        "|---|" + "---:|" * (len(heads) + len(sgd_heads) + 1),
    ]
    for m, e in summary.items():
        cells = [_fmt(e["best_at"][f"{round(f * 100)}%"]) for f in FRACTIONS]
        cells += [_fmt(e.get("sgd", {}).get(k, {"mean": None})) for k in columns]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(e['seconds'], 1)} |")
    n = max((len(e["seeds"]) for e in summary.values()), default=0)
    orders = max((e.get("sgd_orders", 0) for e in summary.values()), default=0)
    spread = f"mean ± std over {n} seeds" if n > 1 else "one seed (no spread measured)"
    lines.append("")
    lines.append(
        f"Best validation meta loss after 25/50/100% of a budget of {budget} inner trainings, "
        f"{spread}. (SGD): torch.optim.SGD from w0 with each method's best hyperparameters "
        f"on fresh batch orders the search never saw, mean ± std over {orders} retrainings (seeds x orders). "
        "Wall seconds of the whole search."
    )
    return "\n".join(lines) + "\n"


def redact(url: str | None) -> str | None:
    """A storage URL without its password (``postgresql://user:***@host/db``)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url) if url else url
