r"""``hypergrad compare``: hypergradients against black-box search at a matched budget (issue #4).

Every method tunes the same per-group learning rates and momenta of the same
inner problem (:func:`hypergrad.workloads.build_problem`, one per seed) and is
charged in the same currency:

* a **gradient method** (``bptt, tbptt, rbp, cg, neumann, gmres``) spends one
  inner training of ``T`` steps per meta step (plus its hypergradient, which is
  paid for in wall seconds, not in inner trainings); its meta loss at meta step
  ``k`` is the validation loss the tuner records for the hyperparameters it
  evaluated at that step (batches of salt ``k``); :meth:`Tuner.finish` is NOT
  run, so the final, never-evaluated hyperparameters are not counted;
* an **Optuna method** (``tpe, random, cmaes``) spends one inner training per
  trial (trial ``k`` uses the batches of meta step ``k``; a pruned trial costs
  the fraction of ``T`` it ran), see :mod:`hypergrad.baselines`;
* a **hybrid** ``tpe+<gradient method>`` spends ``round(hybrid_split * budget)``
  inner trainings on TPE, then runs the tuner from TPE's best trial for the rest
  (meta steps continue the batch salts, so no batch order is reused).

After the search, each method's best hyperparameters are exported with
:func:`hypergrad.to_sgd_param_groups` and a fresh copy of the model is trained
with ``torch.optim.SGD`` from :math:`w_0` over the same ``T`` batches (salt -1,
those of :meth:`MetaObjective.evaluate`) to report test accuracy (paper §5.3). This
extra training is the same for every method and is not charged to the budget.

Outputs: ``compare.json`` (schema in :func:`compare`), a markdown table
(``.md`` next to it), a PNG plot (``.png``) and, with ``--logdir``, TensorBoard
runs ``DIR/<method>/seed<S>`` whose scalars overlay: ``compare/meta_loss`` and
``compare/best_meta_loss`` against inner SGD steps spent (``inner trainings x T``),
and ``compare/best_meta_loss_vs_ms`` against wall milliseconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hypergrad._io import json_safe as _json_safe
from hypergrad.baselines import (
    PRUNERS,
    SAMPLERS,
    OptunaObjective,
    SearchSpace,
    create_or_load_study,
    make_pruner,
    make_sampler,
    make_storage,
    run_study,
    to_hparams,
    trial_cost,
)
from hypergrad.data import Split
from hypergrad.hyperparams import HyperSpec, to_sgd_param_groups
from hypergrad.inner import InnerProblem
from hypergrad.objective import MetaObjective
from hypergrad.tuner import DIVERGENCE_POLICIES, TUNE_METHODS, TuneConfig, Tuner

__all__ = [
    "FRACTIONS",
    "Trace",
    "add_compare_arguments",
    "best_at",
    "best_at_seconds",
    "cmd_compare",
    "compare",
    "markdown_table",
    "parse_methods",
    "plot",
    "run_gradient",
    "run_hybrid",
    "run_optuna",
    "sgd_evaluate",
    "summarize",
    "trace_from_json",
]

FRACTIONS = (0.25, 0.5, 1.0)
DEFAULT_METHODS = "neumann,tbptt,bptt,tpe,random,cmaes,tpe+neumann"

BUDGET_ACCOUNTING = (
    "Budget unit: one inner training of T SGD steps from w0. Gradient methods: one meta step = one inner training "
    "(+ its hypergradient, paid in seconds only); the meta loss of step k is the validation loss the tuner records "
    "for the hyperparameters evaluated at step k; Tuner.finish() is not run. Optuna: one trial = one inner training "
    "(a pruned trial costs steps_run/T). Hybrid tpe+X: round(hybrid_split*budget) TPE trials, then X meta steps "
    "for the rest. Seconds: wall clock from the method's first inner training, including sampler/hypergradient "
    "overhead. The test-accuracy retraining with torch.optim.SGD is identical for all methods and not charged."
)


def parse_methods(text: str) -> list[str]:
    """Split ``--methods`` and validate each: a gradient method, a sampler, or ``tpe+<gradient method>``."""
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods is empty")
    for m in methods:
        if m in TUNE_METHODS or m in SAMPLERS:
            continue
        if m.startswith("tpe+") and m[4:] in TUNE_METHODS:
            continue
        raise ValueError(
            f"unknown method {m!r} in --methods; expected gradient methods ({', '.join(TUNE_METHODS)}), "
            f"samplers ({', '.join(SAMPLERS)}) or a hybrid tpe+<gradient method>"
        )
    dupes = sorted({m for m in methods if methods.count(m) > 1})
    if dupes:
        raise ValueError(f"method(s) listed twice in --methods: {', '.join(dupes)}")
    return methods


def method_kind(method: str) -> str:
    if method in TUNE_METHODS:
        return "gradient"
    if method in SAMPLERS:
        return "optuna"
    return "hybrid"


# ---------------------------------------------------------------------- traces
@dataclass
class Trace:
    """One method on one seed: a point per inner training (or pruned partial one).

    Attributes:
        cost: cumulative inner trainings after each point (1, 2, 3, ... without pruning).
        seconds: cumulative wall seconds after each point.
        meta_loss: the point's meta loss (``None``: pruned or non-finite).
        phase: ``"tpe"`` or the gradient method, per point.
        best: unconstrained hyperparameters with the lowest meta loss.
    """

    method: str
    seed: int
    cost: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    meta_loss: list[float | None] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)
    best: tuple[Tensor, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, cost: float, seconds: float, loss: float | None, phase: str) -> None:
        prev = self.cost[-1] if self.cost else 0.0
        self.cost.append(prev + cost)
        self.seconds.append(seconds)
        self.meta_loss.append(loss if loss is not None and math.isfinite(loss) else None)
        self.phase.append(phase)

    @property
    def best_so_far(self) -> list[float | None]:
        out: list[float | None] = []
        best = math.inf
        for v in self.meta_loss:
            if v is not None and v < best:
                best = v
            out.append(best if math.isfinite(best) else None)
        return out


def best_at(trace: Trace, budget: float) -> float | None:
    """Best meta loss among the points whose cumulative cost is at most ``budget`` inner trainings."""
    vals = [v for c, v in zip(trace.cost, trace.meta_loss) if c <= budget + 1e-9 and v is not None]
    return min(vals) if vals else None


def best_at_seconds(trace: Trace, seconds: float) -> float | None:
    """Best meta loss among the points finished within ``seconds`` of wall clock."""
    vals = [v for s, v in zip(trace.seconds, trace.meta_loss) if s <= seconds and v is not None]
    return min(vals) if vals else None


# ---------------------------------------------------------------------- runners
def _tuner(problem: InnerProblem, cfg: TuneConfig, method: str, budget: int) -> Tuner:
    return Tuner(problem, dataclasses.replace(cfg, method=method, meta_steps=budget))


def run_gradient(
    problem: InnerProblem,
    cfg: TuneConfig,
    method: str,
    budget: int,
    *,
    trace: Trace | None = None,
    start: tuple[tuple[Tensor, ...], float] | None = None,
    on_point: Callable[[Trace], None] | None = None,
) -> Trace:
    """Run ``method``'s meta steps until ``budget`` inner trainings are spent.

    ``start=(hparams, best_loss)`` starts from given hyperparameters (the hybrid);
    the meta steps then continue the batch salts after the points already in ``trace``.
    """
    trace = trace if trace is not None else Trace(method, cfg.seed)
    tuner = _tuner(problem, cfg, method, budget)
    offset_seconds = trace.seconds[-1] if trace.seconds else 0.0
    spent = trace.cost[-1] if trace.cost else 0.0
    if start is not None:
        hparams, best_loss = start
        tuner.warm_start(hparams, best_loss=best_loss, step=math.ceil(spent - 1e-9))
    t0 = time.perf_counter()
    while spent < budget - 1e-9:
        record = tuner.meta_step()
        spent += 1.0
        trace.add(1.0, offset_seconds + time.perf_counter() - t0, record.val_loss, method)
        if on_point is not None:
            on_point(trace)
    trace.best = tuple(b.clone() for b in tuner.best)
    trace.info[method] = {
        "meta_steps": len(tuner.history),
        "first_step": tuner.history[0].step if tuner.history else None,
        "best_step": tuner.best_step,
        "events": sorted({e for r in tuner.history for e in r.events}),
        "actions": {a: sum(r.action == a for r in tuner.history) for a in {r.action for r in tuner.history}},
    }
    return trace


@dataclass(frozen=True)
class OptunaSettings:
    """How Optuna runs: storage, study name, pruner, parallel jobs, search space."""

    storage: Any = None
    study_name: str = "hypergrad-compare"
    pruner: str = "none"
    prune_every: int | None = None
    n_jobs: int = 1
    space: SearchSpace = field(default_factory=SearchSpace)


def _problem_key(cfg: TuneConfig, run_key: dict[str, Any], method: str, space: SearchSpace) -> dict[str, Any]:
    keys = ("inner_steps", "batch_size", "per", "seed", "meta_loss")
    return {**{k: getattr(cfg, k) for k in keys}, **run_key, "method": method, **dataclasses.asdict(space)}


def run_optuna(
    problem: InnerProblem,
    cfg: TuneConfig,
    sampler: str,
    budget: float,
    settings: OptunaSettings,
    *,
    method: str | None = None,
    run_key: dict[str, Any] | None = None,
    trace: Trace | None = None,
    on_point: Callable[[Trace], None] | None = None,
) -> Trace:
    """Run an Optuna study of ``budget`` inner trainings and trace its trials in trial-number order.

    The study ``<study_name>.<method>.seed<S>`` lives in ``settings.storage`` and is
    resumed if present; its finished trials (from any worker) count towards the budget,
    and the trace holds the first trials (by number) that fit in it.
    """
    import optuna

    method = method or sampler
    trace = trace if trace is not None else Trace(method, cfg.seed)
    pruner_name = settings.pruner
    every = None
    if pruner_name != "none":
        every = settings.prune_every or max(cfg.inner_steps // 10, 1)
    objective = OptunaObjective(MetaObjective(problem, cfg), settings.space, report_every=every)
    study = create_or_load_study(
        storage=settings.storage,
        study_name=f"{settings.study_name}.{method}.seed{cfg.seed}",
        sampler=make_sampler(sampler, cfg.seed),
        pruner=make_pruner(pruner_name, n_warmup_steps=cfg.inner_steps // 4),
        problem_key=_problem_key(cfg, run_key or {}, method, settings.space),
    )
    if settings.storage is not None:
        # Workers sharing a stored study must not draw the same points: seed each worker's sampler
        # from (seed, process id). Searches on a shared storage are therefore not bit-reproducible.
        study.sampler = make_sampler(sampler, (cfg.seed * 1_000_003 + os.getpid()) % (2**31))
    if on_point is not None:
        live = Trace(method, cfg.seed)
        t0 = time.perf_counter()

        def progress(trial: Any) -> None:
            live.add(trial_cost(trial), time.perf_counter() - t0, trial.value, sampler)
            on_point(live)
    else:
        progress = None
    run_study(study, objective, budget=budget, n_jobs=settings.n_jobs, progress=progress)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trials = sorted(study.get_trials(deepcopy=False, states=finished), key=lambda t: t.number)
    offset = trace.seconds[-1] if trace.seconds else 0.0
    start = min((t.datetime_start for t in trials if t.datetime_start is not None), default=None)
    spent = 0.0
    best_trial = None
    n_pruned = 0
    for t in trials:
        cost = trial_cost(t)
        if spent + cost > budget + 1e-9:
            break
        spent += cost
        value = t.value if t.state == optuna.trial.TrialState.COMPLETE else None
        n_pruned += t.state == optuna.trial.TrialState.PRUNED
        seconds = (t.datetime_complete - start).total_seconds() if start is not None else 0.0
        trace.add(cost, offset + seconds, value, sampler)
        if value is not None and (best_trial is None or value < best_trial.value):
            best_trial = t
    if best_trial is None:
        raise ValueError(f"{method}: no trial of study {study.study_name!r} completed within the budget")
    trace.best = to_hparams(problem.spec, best_trial.params, problem.w0[0].dtype)
    trace.info[sampler] = {
        "study_name": study.study_name,
        "trials": sum(1 for p in trace.phase if p == sampler),
        "pruned": n_pruned,
        "trials_in_study": len(study.trials),
        "best_trial": best_trial.number,
        "best_params": best_trial.params,
        "fail_value": objective.fail_value,
        "pruner": pruner_name,
        "report_every": every,
    }
    return trace


def run_hybrid(
    problem: InnerProblem,
    cfg: TuneConfig,
    method: str,
    budget: int,
    settings: OptunaSettings,
    *,
    split: float = 0.3,
    run_key: dict[str, Any] | None = None,
    on_point: Callable[[Trace], None] | None = None,
) -> Trace:
    """``tpe+<gradient method>``: TPE for ``round(split * budget)`` inner trainings, then refine its best."""
    if not method.startswith("tpe+") or method[4:] not in TUNE_METHODS:
        raise ValueError(f"a hybrid method is tpe+<gradient method>, got {method!r}")
    if not 0.0 < split < 1.0:
        raise ValueError(f"hybrid split must lie in (0, 1), got {split!r}")
    n_tpe = min(max(round(split * budget), 1), budget - 1) if budget > 1 else budget
    trace = run_optuna(problem, cfg, "tpe", n_tpe, settings, method=method, run_key=run_key, on_point=on_point)
    assert trace.best is not None
    best_tpe = best_at(trace, n_tpe)
    trace.info["hybrid"] = {"split": split, "tpe_inner_trainings": trace.cost[-1], "tpe_best": best_tpe}
    return run_gradient(
        problem, cfg, method[4:], budget, trace=trace,
        start=(trace.best, best_tpe if best_tpe is not None else math.inf), on_point=on_point,
    )


# ---------------------------------------------------------------------- what users want
def sgd_evaluate(
    problem: InnerProblem, split: Split, spec: HyperSpec, hparams: Sequence[Tensor], batches: Sequence[Tensor] | Tensor
) -> dict[str, float | None]:
    """Train a fresh copy of the model from :math:`w_0` with ``torch.optim.SGD`` and the exported groups.

    Runs over ``batches`` (rows of training indices, ``T`` of them) and reports
    validation/test loss and accuracy of the result (``None`` where non-finite).
    """
    model = problem.fresh_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(to_sgd_param_groups(spec, hparams, params))
    model.train()
    for idx in batches:
        opt.zero_grad(set_to_none=True)
        loss = problem.loss_fn(model(problem.x_train[idx]), problem.y_train[idx])
        loss.backward()
        opt.step()
    model.eval()

    def clean(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    with torch.no_grad():
        out_val, out_test = model(split.x_val), model(split.x_test)
        return {
            "val_loss": clean(float(problem.loss_fn(out_val, split.y_val))),
            "val_accuracy": float((out_val.argmax(-1) == split.y_val).float().mean()),
            "test_loss": clean(float(problem.loss_fn(out_test, split.y_test))),
            "test_accuracy": float((out_test.argmax(-1) == split.y_test).float().mean()),
        }


# ---------------------------------------------------------------------- summaries
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


def trace_from_json(r: dict[str, Any]) -> Trace:
    """The :class:`Trace` of one run of ``compare.json``'s ``runs``."""
    return Trace(r["method"], r["seed"], list(r["inner_trainings"]), list(r["seconds"]), list(r["meta_loss"]),
                 list(r["phase"]))


def _fmt(entry: dict[str, Any], digits: int = 4) -> str:
    if entry["mean"] is None:
        return "n/a"
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
    lines.append("")
    lines.append(
        f"Best validation meta loss after 25/50/100% of a budget of {budget} inner trainings, "
        f"mean ± std over {n} seed(s); test accuracy of a fresh torch.optim.SGD run with each method's best "
        "hyperparameters; wall seconds of the whole search."
    )
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[dict[str, Any]], methods: Sequence[str], path: str | Path, title: str = "") -> None:
    """Best-so-far meta loss against inner trainings and against wall seconds (mean over seeds, ± std band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    traces = {m: [trace_from_json(r) for r in runs if r["method"] == m] for m in methods}
    budget = max((t.cost[-1] for ts in traces.values() for t in ts if t.cost), default=1.0)
    t_max = max((t.seconds[-1] for ts in traces.values() for t in ts if t.seconds), default=1.0)
    grid_c = np.linspace(budget / 200, budget, 200)
    grid_s = np.linspace(t_max / 300, t_max, 300)
    for m, ts in traces.items():
        if not ts:
            continue
        for ax, grid, fn in ((axes[0], grid_c, best_at), (axes[1], grid_s, best_at_seconds)):
            vals = np.array([[np.nan if (v := fn(t, x)) is None else v for x in grid] for t in ts], dtype=float)
            ok = ~np.isnan(vals).any(axis=0)
            if fn is best_at_seconds:  # a curve ends where its slowest seed ended
                ok &= grid <= max(t.seconds[-1] for t in ts)
            if not ok.any():
                continue
            mean, std = vals[:, ok].mean(0), vals[:, ok].std(0)
            (line,) = ax.plot(grid[ok], mean, label=m, lw=1.6, ls="--" if m.startswith("tpe+") else "-")
            ax.fill_between(grid[ok], mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    axes[0].set_xlabel("inner trainings (T SGD steps each)")
    axes[1].set_xlabel("wall seconds")
    for ax in axes:
        ax.set_ylabel("best validation meta loss so far")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log_tensorboard(logdir: Path, trace: Trace, inner_steps: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(logdir / trace.method / f"seed{trace.seed}"))
    try:
        for c, s, v, b in zip(trace.cost, trace.seconds, trace.meta_loss, trace.best_so_far):
            step = round(c * inner_steps)
            if v is not None:
                writer.add_scalar("compare/meta_loss", v, step)
            if b is not None:
                writer.add_scalar("compare/best_meta_loss", b, step)
                writer.add_scalar("compare/best_meta_loss_vs_ms", b, round(s * 1000))
        writer.flush()
    finally:
        writer.close()


def _redact(url: str | None) -> str | None:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url) if url else url


# ---------------------------------------------------------------------- the driver
def compare(
    problems: Callable[[int], tuple[InnerProblem, Split]],
    cfg: TuneConfig,
    methods: Sequence[str],
    budget: int,
    seeds: Sequence[int],
    *,
    settings: OptunaSettings | None = None,
    hybrid_split: float = 0.3,
    logdir: str | Path | None = None,
    run_key: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every method on every seed and return the ``compare.json`` document.

    Args:
        problems: ``seed -> (InnerProblem, Split)``; the problem of a seed is shared by all methods.
        cfg: the tuner settings (``method`` and ``meta_steps`` are set per method).
        methods: see :func:`parse_methods`.
        budget: inner trainings per method and seed.
        seeds: one run per seed (data split, model init, batches, sampler seed).

    Returns:
        ``{"config", "budget", "seeds", "methods", "budget_accounting", "runs": [...], "summary"}`` where each
        run is ``{"method", "seed", "kind", "inner_trainings": [cumulative cost per point], "seconds": [...],
        "meta_loss": [...], "best_meta_loss": [best so far per point], "phase": [...],
        "best_hyperparameters": {tensor: {lr, momentum}}, "param_groups": [SGD groups], "sgd_eval": {...},
        "info": {...}}``.
    """
    from tqdm.auto import tqdm

    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
    if not seeds:
        raise ValueError("need at least one seed")
    if not 0.0 < hybrid_split < 1.0:
        raise ValueError(f"hybrid split must lie in (0, 1), got {hybrid_split!r}")
    settings = settings or OptunaSettings()
    methods = list(methods)
    logdir = Path(logdir) if logdir is not None else None
    runs: list[dict[str, Any]] = []
    bar = tqdm(total=budget * len(methods) * len(seeds), desc="inner trainings", disable=not progress,
               dynamic_ncols=True)
    try:
        for seed in seeds:
            problem, split = problems(seed)
            scfg = dataclasses.replace(cfg, seed=seed)
            for m in methods:
                bar.set_description(f"{m} seed {seed}")
                done = [0.0]

                def on_point(trace: Trace, done: list[float] = done) -> None:
                    spent = trace.cost[-1]
                    bar.update(spent - done[0])
                    done[0] = spent
                    best = trace.best_so_far[-1]
                    bar.set_postfix(best=f"{best:.4f}" if best is not None else "nan", refresh=False)

                kind = method_kind(m)
                if kind == "gradient":
                    trace = run_gradient(problem, scfg, m, budget, on_point=on_point)
                elif kind == "optuna":
                    trace = run_optuna(problem, scfg, m, budget, settings, run_key=run_key, on_point=on_point)
                else:
                    trace = run_hybrid(problem, scfg, m, budget, settings, split=hybrid_split, run_key=run_key,
                                       on_point=on_point)
                bar.update(max(budget - done[0], 0.0))
                assert trace.best is not None
                sgd = sgd_evaluate(problem, split, problem.spec, trace.best, MetaObjective(problem, scfg).batches(-1))
                runs.append({
                    "method": m,
                    "seed": seed,
                    "kind": kind,
                    "inner_trainings": trace.cost,
                    "seconds": trace.seconds,
                    "meta_loss": trace.meta_loss,
                    "best_meta_loss": trace.best_so_far,
                    "phase": trace.phase,
                    "best_hyperparameters": problem.spec.describe(trace.best),
                    "param_groups": to_sgd_param_groups(problem.spec, trace.best),
                    "sgd_eval": sgd,
                    "info": trace.info,
                })
                if logdir is not None:
                    _log_tensorboard(logdir, trace, cfg.inner_steps)
    finally:
        bar.close()
    return _json_safe({
        "config": cfg.to_dict() | {"method": None, "meta_steps": None},
        "budget": budget,
        "seeds": list(seeds),
        "methods": methods,
        "hybrid_split": hybrid_split,
        "optuna": {
            "storage": _redact(settings.storage if isinstance(settings.storage, str) else None)
            or ("in-memory" if settings.storage is None else type(settings.storage).__name__),
            "study_name": settings.study_name,
            "pruner": settings.pruner,
            "prune_every": settings.prune_every,
            "n_jobs": settings.n_jobs,
            "search_space": dataclasses.asdict(settings.space),
        },
        "budget_accounting": BUDGET_ACCOUNTING,
        "runs": runs,
        "summary": summarize(runs, budget, methods),
    })


# ---------------------------------------------------------------------- CLI
def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 1e-3,10, got {text!r}") from None
    return lo, hi


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``compare`` flags: tune's data/model flags plus methods, budget, seeds, Optuna and output."""
    from hypergrad.cli import _add_problem_flags, _positive_float, _positive_int

    _add_problem_flags(parser)
    g = parser.add_argument_group("comparison")
    g.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated gradient methods ({', '.join(TUNE_METHODS)}), samplers "
                        f"({', '.join(SAMPLERS)}) and hybrids tpe+<gradient method> (default {DEFAULT_METHODS})")
    g.add_argument("--budget", type=_positive_int, default=100,
                   help="inner trainings per method and seed (one trial = one meta step = one; default 100)")
    g.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds, from --seed on (3)")
    g.add_argument("--meta-lr", type=_positive_float, default=None, help="Adam learning rate of the tuner (0.05)")
    g.add_argument("--on-divergence", choices=DIVERGENCE_POLICIES, default=None,
                   help="the tuner's divergence policy (backoff: restore the best and halve the meta lr)")
    g.add_argument("--hybrid-split", type=float, default=0.3,
                   help="fraction of the budget TPE spends before the tuner refines (0.3)")
    o = parser.add_argument_group("optuna")
    o.add_argument("--storage", default=None,
                   help="Optuna storage: sqlite:///FILE.db, postgresql://..., journal:FILE or FILE.log/.journal "
                        "(journal file); default in memory")
    o.add_argument("--study-name", default="hypergrad-compare",
                   help="prefix of the study names (<name>.<method>.seed<S>); studies resume")
    o.add_argument("--n-jobs", type=_positive_int, default=1, help="parallel Optuna trials (threads) per study")
    o.add_argument("--pruner", choices=PRUNERS, default="none",
                   help="median: prune on intermediate validation losses (off by default: budgets stay comparable)")
    o.add_argument("--prune-every", type=_positive_int, default=None,
                   help="report the validation loss every S inner steps (default T/10)")
    o.add_argument("--lr-range", type=_range, default=(1e-3, 10.0), metavar="LOW,HIGH",
                   help="log-uniform learning-rate range of the search (1e-3,10)")
    o.add_argument("--momentum-range", type=_range, default=(0.0, 0.99), metavar="LOW,HIGH",
                   help="uniform momentum range of the search (0,0.99)")
    out = parser.add_argument_group("output")
    out.add_argument("--logdir", default=None, metavar="DIR", help="TensorBoard runs DIR/<method>/seed<S>")
    out.add_argument("--out", default=None, metavar="FILE",
                     help="results JSON (default compare.json); the table and plot go next to it (.md, .png)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison; user errors raise ``ValueError`` / ``ConfigError``."""
    import optuna

    from hypergrad.cli import _collect, _write_json
    from hypergrad.config import build_configs
    from hypergrad.workloads import build_problem, load_split

    methods = parse_methods(args.methods)
    values = _collect(args)
    values.pop("method", None)
    values.setdefault("method", "neumann")
    out = Path(values.pop("out", None) or "compare.json")
    logdir = values.pop("logdir", None)
    cfg, run = build_configs(values)
    if cfg.per == "element" and any(method_kind(m) != "gradient" for m in methods):
        raise ValueError("--per element cannot be searched by Optuna; use tensor, layer or global")
    if not 0.0 < args.hybrid_split < 1.0:
        raise ValueError(f"--hybrid-split must lie in (0, 1), got {args.hybrid_split}")
    for m in methods:
        if m.endswith("tbptt") and cfg.truncate > cfg.inner_steps:
            raise ValueError(f"--truncate ({cfg.truncate}) must not exceed --inner-steps ({cfg.inner_steps})")
    space = SearchSpace(args.lr_range[0], args.lr_range[1], args.momentum_range[0], args.momentum_range[1])
    storage = make_storage(args.storage)
    settings = OptunaSettings(
        storage=storage, study_name=args.study_name, pruner=args.pruner, prune_every=args.prune_every,
        n_jobs=args.n_jobs, space=space,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = list(range(cfg.seed, cfg.seed + args.seeds))
    run_key = {"dataset": run.dataset, "hidden": list(run.hidden), "n_train": run.n_train}

    def problems(seed: int) -> tuple[InnerProblem, Split]:
        scfg = dataclasses.replace(cfg, seed=seed)
        return build_problem(run, scfg, load_split(run, seed))

    print(
        f"comparing {', '.join(methods)} on {run.dataset} (MLP hidden {','.join(map(str, run.hidden))}, "
        f"T={cfg.inner_steps}, K={cfg.truncate}, per={cfg.per}) with {args.budget} inner trainings each, "
        f"seeds {seeds[0]}..{seeds[-1]}",
        file=sys.stderr,
    )
    result = compare(
        problems, cfg, methods, args.budget, seeds, settings=settings, hybrid_split=args.hybrid_split,
        logdir=logdir, run_key=run_key, progress=not args.no_progress,
    )
    result["run"] = {"dataset": run.dataset, "data_root": run.data_root, "hidden": list(run.hidden),
                     "n_train": run.n_train, "argv": [_redact(a) if "://" in a else a for a in sys.argv[1:]]}
    _write_json(out, result)
    table = markdown_table(result["summary"], args.budget)
    md = out.with_suffix(".md")
    md.write_text(table, encoding="utf-8")
    png = out.with_suffix(".png")
    plot(result["runs"], methods, png, title=f"{run.dataset}, T={cfg.inner_steps}, {len(seeds)} seed(s)")
    print(table)
    print(f"results: {out}  table: {md}  plot: {png}")
    if logdir:
        print(f"TensorBoard: tensorboard --logdir {logdir}")
    return 0
