"""The three ways ``hypergrad compare`` spends a budget of inner trainings on one seed.

* :func:`run_gradient`: the tuner's meta steps (one inner training each);
* :func:`run_optuna`: an Optuna study (one inner training per trial, a pruned trial its fraction);
* :func:`run_hybrid`: TPE for part of the budget, then the tuner from TPE's best trial;
* :func:`run_strategy`: a strategy of :mod:`hypergrad.strategies` (``sign``, ``hybrid``, ``auto``)
  with ``budget`` as its whole budget: every step (search step, TPE trial, selection run) is one
  inner training and one point; its exported hyperparameters are the strategy's selection.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from hypergrad._imports import optional_import
from hypergrad.baselines import (
    OptunaObjective,
    SearchSpace,
    create_or_load_study,
    is_gradient_trial,
    make_pruner,
    make_sampler,
    run_study,
    to_hparams,
    trial_cost,
    worker_sampler_seed,
)
from hypergrad.callbacks import Callback
from hypergrad.compare.methods import HYBRID_PREFIX
from hypergrad.compare.trace import Trace, best_at
from hypergrad.config import TuneConfig, method_names
from hypergrad.inner import InnerProblem
from hypergrad.objective import MetaObjective
from hypergrad.records import MetaStepRecord
from hypergrad.tuner import Tuner

__all__ = ["OptunaSettings", "run_gradient", "run_hybrid", "run_optuna", "run_strategy", "study_recorder"]


def _tuner(problem: InnerProblem, cfg: TuneConfig, method: str, budget: int,
           callbacks: Sequence[Callback] = ()) -> Tuner:
    return Tuner(problem, dataclasses.replace(cfg, method=method, meta_steps=budget), callbacks=callbacks)


def run_gradient(
    problem: InnerProblem,
    cfg: TuneConfig,
    method: str,
    budget: int,
    *,
    trace: Trace | None = None,
    start: tuple[tuple[Tensor, ...], float] | None = None,
    on_point: Callable[[Trace], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> Trace:
    """Run ``method``'s meta steps until ``budget`` inner trainings are spent.

    ``start=(hparams, best_loss)`` starts from given hyperparameters (the hybrid);
    the meta steps then continue the batch salts after the points already in ``trace``.
    """
    trace = trace if trace is not None else Trace(method, cfg.seed)
    tuner = _tuner(problem, cfg, method, budget, callbacks)  # e.g. a StudyRecorder (a stored comparison)
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


def run_strategy(
    problem: InnerProblem,
    cfg: TuneConfig,
    strategy: str,
    budget: int,
    *,
    on_point: Callable[[Trace], None] | None = None,
) -> Trace:
    """Run ``strategy`` with ``budget`` inner trainings; one trace point per step, its best the strategy's choice."""
    trace = Trace(strategy, cfg.seed)
    tuner = Tuner(problem, dataclasses.replace(cfg, strategy=strategy, budget=budget), strategy=strategy)
    t0 = time.perf_counter()

    def after(t: Tuner) -> None:
        record: MetaStepRecord = t.history[-1]
        trace.add(1.0, time.perf_counter() - t0, record.meta_loss, record.action)
        if on_point is not None:
            on_point(trace)

    result = tuner.run(budget=budget, on_checkpoint=after)
    trace.best = tuple(b.clone() for b in result.best)
    trace.info[strategy] = {k: v for k, v in result.info.items() if k != "strategy"}
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
    worker: int | None = None


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
    optuna = optional_import("optuna", "optuna", purpose="the Optuna samplers of hypergrad compare")
    method = method or sampler
    trace = trace if trace is not None else Trace(method, cfg.seed)
    pruner_name = settings.pruner
    every = None
    if pruner_name != "none":
        every = settings.prune_every or max(cfg.inner_steps // 10, 1)
    objective = OptunaObjective(MetaObjective(problem, cfg), settings.space, report_every=every, method=sampler)
    study = create_or_load_study(
        storage=settings.storage,
        study_name=f"{settings.study_name}.{method}.seed{cfg.seed}",
        sampler=make_sampler(sampler, cfg.seed),
        pruner=make_pruner(pruner_name, n_warmup_steps=cfg.inner_steps // 4),
        problem_key=_problem_key(cfg, run_key or {}, method, settings.space),
    )
    if settings.storage is not None:
        # Workers sharing a stored study must not draw the same points (see worker_sampler_seed).
        study.sampler = make_sampler(sampler, worker_sampler_seed(cfg.seed, settings.worker))
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
    trials = sorted((t for t in study.get_trials(deepcopy=False, states=finished) if not is_gradient_trial(t)),
                    key=lambda t: t.number)
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
    if not method.startswith(HYBRID_PREFIX) or method[len(HYBRID_PREFIX):] not in method_names():
        raise ValueError(f"a hybrid method is tpe+<gradient method>, got {method!r}")
    if not 0.0 < split < 1.0:
        raise ValueError(f"hybrid split must lie in (0, 1), got {split!r}")
    n_tpe = min(max(round(split * budget), 1), budget - 1) if budget > 1 else budget
    trace = run_optuna(problem, cfg, "tpe", n_tpe, settings, method=method, run_key=run_key, on_point=on_point)
    assert trace.best is not None
    best_tpe = best_at(trace, n_tpe)
    trace.info["hybrid"] = {"split": split, "tpe_inner_trainings": trace.cost[-1], "tpe_best": best_tpe}
    refiner = method[len(HYBRID_PREFIX):]
    callbacks = [study_recorder(settings, trace.info["tpe"]["study_name"], refiner)] if settings.storage else []
    return run_gradient(
        problem, cfg, refiner, budget, trace=trace,
        start=(trace.best, best_tpe if best_tpe is not None else math.inf), on_point=on_point, callbacks=callbacks,
    )


def study_recorder(settings: OptunaSettings, study_name: str, method: str, **study_kw: Any) -> Callback:
    """A :class:`~hypergrad.studies.StudyRecorder` writing ``method``'s meta steps into the study ``study_name``."""
    from hypergrad.studies import StudyRecorder

    study = create_or_load_study(storage=settings.storage, study_name=study_name, sampler=None, **study_kw)
    return StudyRecorder(study, space=settings.space, method=method)

