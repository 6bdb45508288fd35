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
with ``torch.optim.SGD`` from :math:`w_0` on ``retrain_orders`` (default 3) fresh batch
orders that no search saw (:func:`~hypergrad.compare.evaluate.sgd_retrain`), to report
the validation and test loss, and the accuracy or ``metric`` where one applies, as
mean ± std (paper §5.3). This extra training is the same for every method and is not
charged to the budget.

On a user's own model, from Python: :func:`compare_models` (also ``hypergrad.compare_models``;
``hypergrad.compare`` is this package), :mod:`hypergrad.compare.models`.

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

import torch
from torch import Tensor, nn

from hypergrad._imports import optional_import
from hypergrad._io import json_safe as _json_safe
from hypergrad.compare.evaluate import RETRAIN_ORDERS, sgd_evaluate, sgd_retrain
from hypergrad.compare.methods import DEFAULT_METHODS, method_kind, parse_methods
from hypergrad.compare.models import Comparison, comparison_config, model_problems, write_comparison
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

__all__ = [
    "BUDGET_ACCOUNTING",
    "DEFAULT_METHODS",
    "FRACTIONS",
    "Comparison",
    "OptunaSettings",
    "Trace",
    "TraceWriter",
    "best_at",
    "best_at_seconds",
    "compare",
    "compare_models",
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
    "sgd_retrain",
    "summarize",
    "trace_from_json",
]


def _test_data(test: Any) -> Any:
    """A problem factory's second element: a :class:`Split` (its test set), any test data, or ``None``."""
    return (test.x_test, test.y_test) if isinstance(test, Split) else test


def compare(
    problems: Callable[[int], tuple[InnerProblem, Any]],
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
    retrain_orders: int = RETRAIN_ORDERS,
) -> dict[str, Any]:
    """Run every method on every seed and return the ``compare.json`` document.

    Args:
        problems: ``seed -> (InnerProblem, test)``; the problem of a seed is shared by all methods;
            ``test``: a :class:`~hypergrad.data.Split` (its test set), any test data, or ``None``.
        cfg: the tuner settings (``method`` and ``meta_steps`` are set per method).
        methods: see :func:`parse_methods`.
        budget: inner trainings per method and seed.
        seeds: one run per seed (data split, model init, batches, sampler seed).
        retrain_orders: fresh batch orders of the SGD retraining of each method's best.

    Returns:
        ``{"config", "budget", "seeds", "methods", "budget_accounting", "runs": [...], "summary"}`` where each
        run is ``{"method", "seed", "kind", "inner_trainings": [cumulative cost per point], "seconds": [...],
        "meta_loss": [...], "best_meta_loss": [best so far per point], "phase": [...],
        "best_hyperparameters": {tensor: {lr, momentum}}, "param_groups": [SGD groups], "sgd_eval":
        {"orders", "seeds", "runs", "val_loss": {mean, std, n, values}, ...} (:func:`sgd_retrain`),
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
            problem, test = problems(seed)
            test_data = _test_data(test)
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
                sgd = sgd_retrain(problem, scfg, trace.best, seed=seed, orders=retrain_orders, test_data=test_data)
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
        "retrain_orders": retrain_orders,
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



def compare_models(
    model: nn.Module | Callable[[int], nn.Module],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    train_data: Any,
    val_data: Any,
    *,
    methods: Sequence[str] | str = ("neumann", "bptt", "tpe"),
    budget: int = 40,
    seeds: Sequence[int] = (0, 1, 2),
    test_data: Any = None,
    metric: Callable[[Tensor, Tensor], Tensor | float] | None = None,
    retrain_orders: int = RETRAIN_ORDERS,
    settings: OptunaSettings | None = None,
    hybrid_split: float = 0.3,
    out: str | Path | None = None,
    logdir: str | Path | None = None,
    title: str = "",
    device: str | torch.device | None = None,
    progress: bool = False,
    **config: Any,
) -> Comparison:
    """``hypergrad compare`` on the user's own model, from Python: the same matched-budget comparison and document.

    Every method tunes the same per-tensor learning rates and momenta of ``model`` with the
    same budget of inner trainings per seed (see :func:`compare` and ``BUDGET_ACCOUNTING``);
    each method's best hyperparameters are then retrained with ``torch.optim.SGD`` on
    ``retrain_orders`` fresh batch orders (mean ± std of the loss, and of the accuracy or
    ``metric`` where one applies).

    Args:
        model: an ``nn.Module`` (all seeds start from its weights) or ``seed -> nn.Module``.
        loss_fn, train_data, val_data, test_data, metric: as :func:`hypergrad.tune` (checked
            once per seed by :func:`hypergrad.validation.check_problem` before any search).
        methods: gradient methods, Optuna samplers and hybrids (:func:`parse_methods`), a list
            or a comma-separated string.
        budget: inner trainings per method and seed.
        seeds: one run per seed (batch orders, sampler seeds; ``model(seed)`` when a factory).
        retrain_orders: fresh batch orders of the SGD retraining (3 at least for a std).
        settings: Optuna's storage, pruner, search space (:class:`OptunaSettings`).
        out: write the document as the CLI does: ``out`` (JSON), ``.md`` (table), ``.png`` (plot).
        logdir: TensorBoard runs ``logdir/<method>/seed<S>``.
        device: where to run (default: the model's device).
        **config: :class:`~hypergrad.config.TuneConfig` fields (``inner_steps``, ``batch_size``,
            ``truncate``, ...) except ``method``/``meta_steps``, which are set per method.

    Returns:
        A :class:`Comparison`: ``.document`` (the ``compare.json`` schema), ``.table`` and ``.files``.

    Example:
        >>> import torch, torch.nn.functional as F, hypergrad
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(128, 6), torch.randint(0, 3, (128,))
        >>> model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
        >>> c = hypergrad.compare_models(model, F.cross_entropy, (x, y), (x, y), methods=["neumann", "random"],
        ...                              budget=3, seeds=[0], inner_steps=10, batch_size=32)
        >>> list(c.summary), c.document["retrain_orders"]
        (['neumann', 'random'], 3)
    """
    cfg = comparison_config(config)
    names = parse_methods(methods if isinstance(methods, str) else ",".join(methods))
    if cfg.per == "element" and any(method_kind(m) == "optuna" or "+" in m for m in names):
        raise ValueError("per='element' cannot be searched by Optuna; use tensor, layer or global")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    problems = model_problems(model, loss_fn, train_data, val_data, cfg, test_data=test_data, metric=metric,
                              device=device)
    name = type(problems(seeds[0])[0].model).__name__  # validates the first seed's problem before any search
    if any(method_kind(m) != "gradient" for m in names):
        optuna = optional_import("optuna", "optuna", purpose="compare_models with Optuna samplers")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    document = compare(problems, cfg, names, budget, seeds, settings=settings, hybrid_split=hybrid_split,
                       logdir=logdir, run_key={"model": name, "api": "compare_models"}, progress=progress,
                       retrain_orders=retrain_orders)
    document["run"] = {"model": name, "api": "compare_models"}
    return write_comparison(document, out, title=title or f"{name}, T={cfg.inner_steps}, {len(seeds)} seed(s)")
