"""Strategies against TPE at matched budgets, scored by retraining on fresh batch orders (issue 14).

For every seed, method and budget, the method runs with ``budget`` inner trainings through the
runners of ``hypergrad compare`` (:func:`hypergrad.compare.run_strategy` for ``sign``, ``hybrid``,
``auto``; :func:`hypergrad.compare.run_optuna` for ``tpe``; :func:`hypergrad.compare.run_gradient`
for a gradient method; ``online`` or ``online-P``: ONE online run of ``--inner-steps`` steps with
a meta step every ``P``, recorded at budget 1 whatever ``--budgets`` says, its schedule retrained
with ``SGDSchedule`` and its last values retrained as constants too, ``retrained_final``), and its
exported hyperparameters (``initial``: the configured start, untuned, at budget 0) are retrained from w0 with
``torch.optim.SGD`` (:func:`hypergrad.compare.sgd_evaluate`) on ``--orders`` fresh batch orders
(schedule seeds 1001, 1002, ... no search saw). A cell's score is the mean retrained validation
loss over those orders; the table shows its mean ± std over seeds, and the search's wall seconds.

    python -m benchmarks.strategies --dataset digits --methods auto,tpe --budgets 20,40,60,100 \\
        --seeds 0,1,2 --out docs/results/strategies_digits.json
    python -m benchmarks.strategies --out docs/results/strategies_digits.json --table

Cells already in ``--out`` are kept and not rerun (a run can be continued or extended).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch


def retrain(problem: Any, hparams: Any, cfg: Any, orders: int, spec: Any = None) -> list[float]:
    """Retrained validation losses on ``orders`` fresh batch orders; a schedule is followed step by step.

    ``spec``: the layout of ``hparams`` (default: the problem's with ``cfg.segments``; an online
    run's ``schedule_spec``)."""
    from hypergrad.compare import sgd_evaluate

    spec = spec if spec is not None else problem.spec.with_segments(cfg.segments)
    out = []
    for i in range(orders):
        batches = problem.schedule(cfg.inner_steps, 1001 + i, batch_size=cfg.batch_size)
        v = sgd_evaluate(problem, spec, hparams, batches)["val_loss"]
        out.append(v if v is not None and math.isfinite(v) else 10.0)
    return out


def _run_online(problem: Any, cfg: Any, period: int) -> tuple[Any, Any]:
    """One online run of ``cfg.inner_steps`` steps; its trace has one point (one training's worth)."""
    from hypergrad.compare import Trace
    from hypergrad.tuner import Tuner

    trace = Trace("online", cfg.seed)
    t0 = time.perf_counter()
    result = Tuner(problem, dataclasses.replace(cfg, strategy="online", online_period=period),
                   strategy="online").run()
    trace.add(1.0, time.perf_counter() - t0, result.evaluation["final"]["val_loss"], "online")
    trace.best = result.final
    trace.info["online"] = {**result.info, "run_val_loss": result.evaluation["final"]["val_loss"]}
    return trace, result


def _variants() -> dict[str, Any]:
    from hypergrad.strategies import SignRule, SignStrategy

    o3 = (-1000, -1001, -1002)
    return {"sign-irprop": lambda: SignStrategy(rule=SignRule(skip_on_flip=True)),
            "sign-top4": lambda: SignStrategy(top=4),
            # robust selection (chosen on seeds 100-105, docs/results/strategies.md "Robust selection")
            "sign-max": lambda: SignStrategy(statistic="max"),
            "sign-backoff": lambda: SignStrategy(backoff=0.8),
            "sign-backoff-max": lambda: SignStrategy(backoff=0.8, statistic="max"),
            "sign-o3-max": lambda: SignStrategy(salts=o3, top=1, statistic="max"),
            "sign-avg-max": lambda: SignStrategy(top=1, average=4, statistic="max")}


VARIANTS = ("sign-irprop", "sign-top4", "sign-max", "sign-backoff", "sign-backoff-max", "sign-o3-max",
            "sign-avg-max")
#: The default strategy (``auto``) with another config: forward-mode hypergradients (``auto-forward``;
#: below the sign rule's minimum budget, Adam on them), or a schedule of 3 segments by BPTT
#: (forward mode where BPTT's graph does not fit).
AUTO_VARIANTS: dict[str, dict[str, Any]] = {"auto-forward": {"method": "forward"},
                                            "auto-schedule3": {"segments": 3, "method": "bptt"}}


def _run_variant(problem: Any, cfg: Any, method: str, budget: int) -> Any:
    """A variant of a strategy (settings tried on seeds 100+), run as :func:`run_strategy` runs a strategy."""
    import dataclasses

    from hypergrad.compare import Trace
    from hypergrad.tuner import Tuner

    trace = Trace(method, cfg.seed)
    tuner = Tuner(problem, dataclasses.replace(cfg, strategy="sign", budget=budget), strategy=_variants()[method]())
    t0 = time.perf_counter()
    result = tuner.run(budget=budget, on_checkpoint=lambda t: trace.add(1.0, time.perf_counter() - t0,
                                                                        t.history[-1].meta_loss, "variant"))
    trace.best = result.best
    trace.info[method] = {k: v for k, v in result.info.items() if k != "strategy"}
    return trace


#: ``--dataset zoo:<model>``: a model of ``tests/_zoo.py`` at the zoo benchmark's size (``benchmarks/zoo.py``).
ZOO_SIZE = {"n_train": 256, "n_val": 128, "batch_size": 16}


def build(run: Any, cfg: Any, seed: int) -> Any:
    """The inner problem of ``run`` (a ``RunConfig``, or a zoo model's name) for ``seed``.

    A zoo model starts every seed from its own initial weights; the seeds differ in batch orders
    and sampler seeds, as in the zoo benchmark.
    """
    if isinstance(run, str):
        root = Path(__file__).resolve().parents[1]
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        from hypergrad import InnerProblem
        from tests._zoo import ZOO

        model, loss_fn, train, val = ZOO[run].build(ZOO_SIZE["n_train"], ZOO_SIZE["n_val"])
        return InnerProblem(model, loss_fn, *train, *val, batch_size=cfg.batch_size, per=cfg.per)
    from hypergrad.workloads import build_problem, load_split

    return build_problem(run, cfg, load_split(run, seed))[0]


def run_cell(run: Any, cfg: Any, method: str, budget: int, seed: int, orders: int) -> dict[str, Any]:
    from hypergrad.compare import OptunaSettings, method_kind, run_gradient, run_optuna, run_strategy

    scfg = dataclasses.replace(cfg, seed=seed, **AUTO_VARIANTS.get(method, {}))
    problem = build(run, scfg, seed)
    t0 = time.perf_counter()
    kind = "variant" if method in VARIANTS or method in AUTO_VARIANTS else method_kind(method)
    kind = "online" if method.startswith("online") else kind
    extra: dict[str, Any] = {}
    if method == "initial":  # the configured start, untuned: the floor every method should beat
        from hypergrad.compare import Trace
        from hypergrad.objective import MetaObjective

        kind, trace = "online", Trace(method, seed)
        trace.best, budget = MetaObjective(problem, scfg).initial_hparams(), 0
        trace.seconds.append(0.0)
        trace.cost.append(0.0)
        scores = retrain(problem, trace.best, scfg, orders)
    elif kind == "online":  # online or online-P: one run, its schedule retrained (and its last values, constant)
        trace, result = _run_online(problem, scfg, int(method.split("-")[1]) if "-" in method else scfg.online_period)
        extra["retrained_final"] = retrain(problem, result.final, scfg, orders)
        scores = retrain(problem, result.schedule, scfg, orders, result.schedule_spec)
    elif method in AUTO_VARIANTS:
        trace = run_strategy(problem, scfg, "auto", budget)
    elif kind == "variant":
        trace = _run_variant(problem, scfg, method, budget)
    elif kind == "strategy":
        trace = run_strategy(problem, scfg, method, budget)
    elif kind == "optuna":
        trace = run_optuna(problem, scfg, method, budget, OptunaSettings())
    else:
        trace = run_gradient(problem, scfg, method, budget)
    seconds = time.perf_counter() - t0
    if kind != "online":
        scores = retrain(problem, trace.best, scfg, orders)
    else:
        seconds = trace.seconds[-1]  # the run itself, not its retraining
        budget = min(budget, 1)
    return {"method": method, "budget": budget, "seed": seed, "seconds": seconds, "retrained": scores, **extra,
            "score": statistics.fmean(scores), "inner_trainings": trace.cost[-1],
            "best_meta_loss": min((v for v in trace.meta_loss if v is not None), default=None),
            "best_hyperparameters": problem.spec.with_segments(scfg.segments).describe(trace.best),
            "info": {k: v for k, v in trace.info.items()}}


def table(cells: list[dict[str, Any]]) -> str:
    methods = list(dict.fromkeys(c["method"] for c in cells))
    budgets = sorted({c["budget"] for c in cells})
    lines = ["| method | " + " | ".join(f"budget {b}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for m in methods:
        row = []
        for b in budgets:
            cs = [c for c in cells if c["method"] == m and c["budget"] == b]
            if not cs:
                row.append("")
                continue
            s = [c["score"] for c in cs]
            spread = f" ± {statistics.stdev(s):.4f}" if len(s) > 1 else ""  # one seed: no spread measured
            sec = statistics.fmean(c["seconds"] for c in cs)
            row.append(f"{statistics.fmean(s):.4f}{spread} ({sec:.0f} s)")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict[str, Any]], path: Path, title: str) -> None:
    """Anytime curves: the retrained validation loss (mean ± std over seeds) against the budget and the seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for method in dict.fromkeys(c["method"] for c in cells):
        budgets = sorted({c["budget"] for c in cells if c["method"] == method})
        rows = [[c for c in cells if c["method"] == method and c["budget"] == b] for b in budgets]
        mean = [statistics.fmean(c["score"] for c in r) for r in rows]
        std = [statistics.stdev([c["score"] for c in r]) if len(r) > 1 else 0.0 for r in rows]
        secs = [statistics.fmean(c["seconds"] for c in r) for r in rows]
        for ax, x in zip(axes, (budgets, secs)):
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=method)
    axes[0].set_xlabel("budget (inner trainings of T steps)")
    axes[1].set_xlabel("wall seconds of the search (mean over seeds)")
    axes[0].set_ylabel("validation loss, SGD retrained on fresh orders")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from hypergrad.config import RunConfig, TuneConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits",
                   help="digits, mnist, or zoo:<model> (a model of tests/_zoo.py: 256/128 examples, batch 16)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--methods", default="auto,tpe")
    p.add_argument("--budgets", default="20,40,60,100")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--inner-steps", type=int, default=100)
    p.add_argument("--orders", type=int, default=3, help="fresh batch orders of the retraining")
    p.add_argument("--meta-lr", type=float, default=None, help="Adam's meta lr (default: TuneConfig's)")
    p.add_argument("--out", required=True)
    p.add_argument("--table", action="store_true", help="print the table of --out and exit")
    p.add_argument("--plot", type=Path, default=None, help="with --table: also draw the anytime curves to this PNG")
    p.add_argument("--merge", nargs="+", default=None, metavar="FILE",
                   help="merge --dataset zoo:<model> files (named ..._zoo_<model>.json) into --out and exit")
    args = p.parse_args(argv)
    if args.merge:  # zoo models' files -> one document {"models": {name: doc}}
        docs = {Path(f).stem.split("zoo_", 1)[-1]: json.loads(Path(f).read_text()) for f in args.merge}
        Path(args.out).write_text(json.dumps({"models": docs}, separators=(",", ":")))
        return 0
    if args.table:
        doc = json.loads(Path(args.out).read_text())
        if "models" in doc:
            for name, sub in doc["models"].items():
                print(f"**{name}**\n\n{table(sub['cells'])}")
            return 0
        print(table(doc["cells"]))
        if args.plot is not None:
            plot(doc["cells"], args.plot, f"{doc['dataset']}, T = {doc['inner_steps']}")
        return 0
    torch.set_num_threads(1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    zoo = args.dataset.startswith("zoo:")
    if not zoo and args.dataset not in ("digits", "mnist"):
        p.error(f"--dataset {args.dataset!r}: expected digits, mnist or zoo:<model>")
    run: Any = args.dataset[4:] if zoo else RunConfig(dataset=args.dataset, data_root=args.data_root,
                                                      n_train=args.n_train)
    cfg = TuneConfig(inner_steps=args.inner_steps, **({"batch_size": ZOO_SIZE["batch_size"]} if zoo else {}),
                     **({"meta_lr": args.meta_lr} if args.meta_lr is not None else {}))
    out = Path(args.out)
    cells: list[dict[str, Any]] = json.loads(out.read_text())["cells"] if out.exists() else []
    done = {(c["method"], c["budget"], c["seed"]) for c in cells}
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in args.methods.split(","):
            budgets = [1] if method.startswith("online") else [0] if method == "initial" else [
                int(b) for b in args.budgets.split(",")]
            for budget in budgets:
                if (method, budget, seed) in done:
                    continue
                cell = run_cell(run, cfg, method, budget, seed, args.orders)
                cells.append(cell)
                print(f"{method} budget {budget} seed {seed}: retrained {cell['score']:.4f} "
                      f"({', '.join(f'{v:.4f}' for v in cell['retrained'])}) in {cell['seconds']:.1f} s", flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"argv": sys.argv[1:], "dataset": args.dataset, "orders": args.orders,
                                           "inner_steps": args.inner_steps, "cells": cells}, indent=1))
    print(table(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
