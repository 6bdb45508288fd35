"""The model zoo scoreboard: hypergradient methods against TPE on seven user models at one budget.

Runs :func:`hypergrad.compare_models` on each model of the zoo (``tests/_zoo.py``: MLP, small
CNN, BatchNorm + Dropout, GRU classifier, vector regression, frozen + shared parameters,
float64) with the same budget of inner trainings per method and seed, and writes

* ``--out`` (default ``docs/results/zoo.json``): every model's ``compare.json`` document;
* its ``.md`` twin (``docs/results/zoo.md``): the results page (question, setup, command,
  table, conclusion).

The table's score is what each method's best hyperparameters are worth on batch orders the
search never saw: the validation loss of ``torch.optim.SGD`` retrained from ``w0`` on three
fresh orders per seed (mean ± std over seeds x orders), beside the search's own best meta loss.
New strategies join the scoreboard through ``--methods`` (any list ``hypergrad compare`` takes)::

    python -m benchmarks.zoo                                  # budget 40, T=100, seeds 0,1,2
    python -m benchmarks.zoo --methods neumann,bptt,tpe,sign   # another method list
    python -m benchmarks.zoo --quick --out /tmp/zoo.json      # a smoke test (seconds)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests/_zoo.py holds the models (shared with the contract tests)
    sys.path.insert(0, str(ROOT))

import hypergrad  # noqa: E402
from hypergrad._io import json_safe, write_json  # noqa: E402
from tests._zoo import ZOO  # noqa: E402

MODELS = ("mlp", "cnn", "bn_dropout", "gru", "regression", "frozen_shared", "float64")
TASKS = {
    "mlp": "tanh MLP 8-16-3, synthetic 3 classes",
    "cnn": "Conv2d(1,4,3)+pool+Linear, 8x8 digits, 10 classes",
    "bn_dropout": "Linear-BatchNorm1d-ReLU-Dropout(0.2)-Linear in train mode, 3 classes",
    "gru": "GRU(3, 8) sequence classifier (length 6), 2 classes",
    "regression": "tanh MLP 8-16-4, vector regression, MSE",
    "frozen_shared": "a frozen layer and a weight shared by two layers, 3 classes",
    "float64": "tanh MLP 5-6-3 in float64, 3 classes",
}


def _fmt(entry: dict[str, Any] | None, digits: int = 4) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def scoreboard(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table: per model and method, the search's best and the retraining on fresh orders."""
    lines = [
        "| model | method | best val. meta loss (search) | val. loss, SGD on fresh orders | "
        "val. accuracy, SGD on fresh orders | wall s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, doc in results.items():
        summary = doc["summary"]
        scores = {m: e["sgd"].get("val_loss", {}).get("mean") for m, e in summary.items()}
        finite = {m: v for m, v in scores.items() if v is not None and math.isfinite(v)}
        winner = min(finite, key=finite.get) if finite else None
        for m, e in summary.items():
            mark = "**" if m == winner else ""
            sgd_loss = _fmt(e["sgd"].get("val_loss"))
            lines.append(
                f"| {name} | {m} | {_fmt(e['best_at']['100%'])} | {mark}{sgd_loss}{mark} | "
                f"{_fmt(e['sgd'].get('val_accuracy'), 3)} | {_fmt(e['seconds'], 1)} |"
            )
    return "\n".join(lines) + "\n"


def wins(results: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Per method: the models on which its retrained validation loss is the lowest."""
    count: dict[str, int] = {}
    for doc in results.values():
        scores = {m: e["sgd"].get("val_loss", {}).get("mean") for m, e in doc["summary"].items()}
        finite = {m: v for m, v in scores.items() if v is not None and math.isfinite(v)}
        if finite:
            best = min(finite, key=finite.get)
            count[best] = count.get(best, 0) + 1
    return count


def page(results: dict[str, dict[str, Any]], args: argparse.Namespace, command: str, seconds: float) -> str:
    """The results page: question, setup, command, table, conclusion."""
    methods = args.methods.split(",")
    won = wins(results)
    ranking = ", ".join(f"{m} {won.get(m, 0)}" for m in methods)
    models = "\n".join(f"| {n} | {TASKS.get(n, '')} |" for n in results)
    return f"""# The model zoo: hypergradients against TPE on seven user models

**Question.** On the kinds of models users bring (a CNN, BatchNorm and Dropout, a GRU, a
regression, frozen and shared parameters, float64), do the tuned per-tensor learning rates and
momenta of the hypergradient methods beat TPE at the same budget, on batch orders the search
never saw?

**Setup.** Each model is tuned through `hypergrad.compare_models` with a budget of
{args.budget} inner trainings of T={args.inner_steps} SGD steps per method and seed (seeds
{args.seeds}; every seed starts from the model's own initial weights and differs in batch
orders and sampler seeds), minibatches of {args.batch_size}, {args.n_train} training and
{args.n_val} validation examples. The score is the validation loss of `torch.optim.SGD`
retrained from w0 with each method's best hyperparameters on 3 fresh batch orders per seed
(seeded apart from every search salt), mean ± std over the {len(args.seeds.split(','))} x 3
retrainings; the search's own best validation meta loss is shown beside it (the gap is the
over-fit to the search's batch orders). Bold: the lowest retrained loss of a model. Budget
accounting as `hypergrad compare` (one inner training per meta step or trial). CPU, one
torch thread; the whole table took {seconds / 60:.1f} minutes.

| model | what it is |
|---|---|
{models}

**Command.**

```
{command}
```

**Results.**

{scoreboard(results)}
Lowest retrained validation loss, models won: {ranking}.

**Conclusion.** {args.conclusion or _conclusion(results, methods)}

[`{args.out.name}`]({args.out.name}) holds every run (traces, best hyperparameters, SGD param groups and
each retraining); new methods and strategies are scored with `--methods`.
"""


def _conclusion(results: dict[str, dict[str, Any]], methods: list[str]) -> str:
    won = wins(results)
    best = max(methods, key=lambda m: won.get(m, 0))
    gaps = []
    for doc in results.values():
        for e in doc["summary"].values():
            a, b = e["best_at"]["100%"].get("mean"), e["sgd"].get("val_loss", {}).get("mean")
            if a is not None and b is not None:
                gaps.append(b - a)
    gap = f" The retraining on fresh orders is on average {sum(gaps) / len(gaps):+.4f} above the search's best." \
        if gaps else ""
    return (f"{best} has the lowest retrained validation loss on {won.get(best, 0)} of {len(results)} models "
            f"at this budget.{gap}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="neumann,bptt,tpe",
                   help="comma-separated methods, as hypergrad compare's --methods (default neumann,bptt,tpe)")
    p.add_argument("--models", default=",".join(MODELS), help=f"zoo models ({','.join(MODELS)})")
    p.add_argument("--budget", type=int, default=40, help="inner trainings per method and seed (40)")
    p.add_argument("--inner-steps", type=int, default=100, help="T (100)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (0,1,2)")
    p.add_argument("--batch-size", type=int, default=16, help="inner minibatch size (16)")
    p.add_argument("--n-train", type=int, default=256, help="training examples per model (256)")
    p.add_argument("--n-val", type=int, default=128, help="validation examples per model (128)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--quick", action="store_true", help="a smoke test: budget 3, T=5, seed 0, two models")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "zoo.json", help="results JSON")
    p.add_argument("--conclusion", default="", help="the page's conclusion (default: generated from the table)")
    args = p.parse_args(argv)
    if args.quick:
        args.budget, args.inner_steps, args.seeds, args.n_train, args.n_val = 3, 5, "0", 64, 32
        if args.models == ",".join(MODELS):
            args.models = "mlp,regression"
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; the zoo has {', '.join(ZOO)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for name in models:
        model, loss_fn, train, val = ZOO[name].build(args.n_train, args.n_val)
        start = time.perf_counter()
        comparison = hypergrad.compare_models(
            model, loss_fn, train, val, methods=args.methods, budget=args.budget, seeds=seeds,
            inner_steps=args.inner_steps, batch_size=args.batch_size,
        )
        results[name] = comparison.document
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    seconds = time.perf_counter() - t0
    given = list(argv if argv is not None else sys.argv[1:])
    flags = [a for i, a in enumerate(given)
             if not a.startswith("--out") and not (i > 0 and given[i - 1] == "--out")]  # no machine paths
    command = " ".join(["python -m benchmarks.zoo", *flags])
    write_json(args.out, json_safe({"command": command, "settings": {k: str(v) for k, v in vars(args).items()
                                                                      if k != "out"}, "models": results}),
               indent=None)  # every run's full compare document: one compact line
    text = page(results, args, command, seconds)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(scoreboard(results))
    print(f"results: {args.out}  page: {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
