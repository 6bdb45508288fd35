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
  (meta steps continue the batch salts, so no batch order is reused);
* a **strategy** (``sign``, ``hybrid``, ``auto``; :mod:`hypergrad.strategies`) spends the whole
  budget itself: every step (a search step with its hypergradient, a TPE trial, a selection run
  on a reserved batch order) is one inner training, and its exported hyperparameters are its
  selection's choice.

After the search, each method's best hyperparameters are exported with
:func:`hypergrad.to_sgd_param_groups` and a fresh copy of the model is trained
with ``torch.optim.SGD`` from :math:`w_0` over the same ``T`` batches (salt -1,
those of :meth:`MetaObjective.evaluate`) to report test accuracy (paper §5.3). This
extra training is the same for every method and is not charged to the budget.

Outputs: ``compare.json`` (schema in :func:`compare`), a markdown table
(``.md`` next to it), a PNG plot (``.png``) and, with ``--logdir``, TensorBoard
runs ``DIR/<method>/seed<S>``, written point by point while the search runs
(:class:`~hypergrad.compare.plots.TraceWriter`), whose scalars overlay: ``compare/meta_loss``
and ``compare/best_meta_loss`` against inner SGD steps spent (``inner trainings x T``),
and ``compare/best_meta_loss_vs_ms`` against wall milliseconds.

The package, by role: :mod:`~hypergrad.compare.methods` (the ``--methods`` list),
:mod:`~hypergrad.compare.trace` (a search as points), :mod:`~hypergrad.compare.runners`
(gradient, Optuna, hybrid), :mod:`~hypergrad.compare.evaluate` (the SGD retraining),
:mod:`~hypergrad.compare.report` (summaries, markdown) and :mod:`~hypergrad.compare.plots`
(matplotlib, TensorBoard). The ``compare`` command's flags live in :mod:`hypergrad.cli`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hypergrad._io import json_safe as _json_safe
from hypergrad.compare.evaluate import sgd_evaluate
from hypergrad.compare.methods import DEFAULT_METHODS, method_kind, parse_methods
from hypergrad.compare.plots import TraceWriter, log_tensorboard, plot
from hypergrad.compare.report import BUDGET_ACCOUNTING, FRACTIONS, markdown_table, redact, summarize
from hypergrad.compare.runners import (
    OptunaSettings,
    _problem_key,
    run_gradient,
    run_hybrid,
    run_optuna,
    run_strategy,
    study_recorder,
)
from hypergrad.compare.trace import Trace, best_at, best_at_seconds, trace_from_json
from hypergrad.config import TuneConfig
from hypergrad.data import Split
from hypergrad.hyperparams import to_sgd_param_groups
from hypergrad.inner import InnerProblem
from hypergrad.objective import MetaObjective

__all__ = [
    "BUDGET_ACCOUNTING",
    "DEFAULT_METHODS",
    "FRACTIONS",
    "OptunaSettings",
    "Trace",
    "TraceWriter",
    "best_at",
    "best_at_seconds",
    "compare",
    "log_tensorboard",
    "markdown_table",
    "method_kind",
    "parse_methods",
    "plot",
    "redact",
    "run_gradient",
    "run_hybrid",
    "run_optuna",
    "run_strategy",
    "sgd_evaluate",
    "summarize",
    "trace_from_json",
]


def _evaluation_batches(problem: InnerProblem, cfg: TuneConfig) -> Any:
    """The ``T`` minibatches of :meth:`MetaObjective.evaluate` (salt -1), the same for every method."""
    return MetaObjective(problem, cfg).batches(-1)


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
                done = [0]  # whole inner trainings shown (a pruned trial's fraction waits for the next)
                stream = TraceWriter(logdir, m, seed, cfg.inner_steps) if logdir is not None else None

                def on_point(trace: Trace, done: list[int] = done, stream: TraceWriter | None = stream) -> None:
                    if stream is not None:  # TensorBoard curves grow while the search runs
                        stream.write(trace)
                    spent = min(math.floor(trace.cost[-1] + 1e-9), budget)
                    bar.update(spent - done[0])
                    done[0] = spent
                    best = trace.best_so_far[-1]
                    bar.set_postfix(best=f"{best:.4f}" if best is not None else "nan", refresh=False)

                kind = method_kind(m)
                try:
                    if kind == "gradient":
                        record = [study_recorder(settings, f"{settings.study_name}.{m}.seed{seed}", m,
                                                 problem_key=_problem_key(scfg, run_key or {}, m, settings.space))
                                  ] if settings.storage is not None else []  # its meta steps as trials
                        trace = run_gradient(problem, scfg, m, budget, on_point=on_point, callbacks=record)
                    elif kind == "optuna":
                        trace = run_optuna(problem, scfg, m, budget, settings, run_key=run_key, on_point=on_point)
                    elif kind == "strategy":
                        trace = run_strategy(problem, scfg, m, budget, on_point=on_point)
                    else:
                        trace = run_hybrid(problem, scfg, m, budget, settings, split=hybrid_split, run_key=run_key,
                                           on_point=on_point)
                    if stream is not None:
                        stream.write(trace)  # points the live callbacks did not see (none for a fresh study)
                finally:
                    if stream is not None:
                        stream.close()
                bar.update(max(budget - done[0], 0))
                assert trace.best is not None
                sgd = sgd_evaluate(problem, split, problem.spec, trace.best, _evaluation_batches(problem, scfg))
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
    finally:
        bar.close()
    return _json_safe({
        "config": cfg.to_dict() | {"method": None, "meta_steps": None},
        "budget": budget,
        "seeds": list(seeds),
        "methods": methods,
        "hybrid_split": hybrid_split,
        "optuna": {
            "storage": redact(settings.storage if isinstance(settings.storage, str) else None)
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

