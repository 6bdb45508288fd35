r"""Optuna both ways: hypergrad's evaluations as trials of a study, and refinement from a study's best.

* :class:`StudyRecorder` (a :class:`~hypergrad.callbacks.Callback`) adds every meta step a
  strategy takes to an Optuna study as a finished trial (``study.add_trial``), with the
  hyperparameters as params in the search-space names of the sampler studies
  (``alpha:<group>`` :math:`=\alpha`, log-uniform; ``momentum:<group>`` :math:`=\beta`, uniform;
  see :class:`~hypergrad.baselines.SearchSpace`), the meta loss as value, and the user
  attributes ``lr:<group>`` (the SGD learning rate :math:`\alpha(1-\beta)`, what ``lr`` means in
  ``results.json`` and the CLI), ``method``, ``strategy``, ``kind="gradient"``, ``cost`` (inner
  trainings: 1 per meta step), ``seconds``, ``step`` (the batch salt) and ``exact_params``. So
  ``study.trials_dataframe()`` and optuna-dashboard show TPE's and hypergrad's trials side by
  side, and a sampler run later on the study learns from both.
* :func:`warm_start_from_study` starts the tuner from a study's best completed trial (the
  ``gradient`` strategy's single trajectory); :func:`seed_hybrid_from_study` makes a study's
  trials the global phase of the ``hybrid`` strategy, whose refinement then starts from the
  ``refine_from`` best of them (:meth:`~hypergrad.strategies.HybridStrategy.start_from_trials`);
  :func:`refine_study` is the Python form of ``hypergrad tune --from-study``.
* :func:`run_global_phase` runs the hybrid strategy's TPE trials on a shared study, ask and
  tell, from any number of processes at once (``hypergrad tune --strategy hybrid --storage S
  --worker``). Trial ``k`` is drawn by a TPE sampler seeded by ``(seed, k)`` that sees the
  trials finished so far, as in the in-memory hybrid run: one process on a storage draws what
  an in-memory run draws; several draw distinct points, but which trials each saw finished
  depends on timing, so their global phase does not repeat exactly.

Values outside the search space's ranges (the tuner is unconstrained: :math:`\alpha` can leave
``[lr_low, lr_high]``) are **clipped** into the ranges in ``params``, so every trial of a
study has the same distributions (Optuna's samplers then use all of them); the evaluated
values are kept exactly in the user attribute ``exact_params``, and the clipped names in
``clipped``. :func:`warm_start_from_study` reads ``exact_params`` when present.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hypergrad.baselines import SearchSpace, _legacy, is_gradient_trial, sgd_lrs, to_hparams
from hypergrad.callbacks import Callback, TuningRun
from hypergrad.config import TuneConfig
from hypergrad.hyperparams import HyperSpec
from hypergrad.inner import InnerProblem
from hypergrad.records import MetaStepRecord, TuneResult
from hypergrad.tuner import Tuner

__all__ = ["StudyRecorder", "StudyStart", "check_study_problem", "refine_study", "run_global_phase",
           "seed_hybrid_from_study", "study_params", "study_trials", "wait_for_running", "warm_start_from_study"]


def _optuna() -> Any:
    from hypergrad.baselines import _optuna as load

    return load()


def _distributions(spec: HyperSpec, space: SearchSpace) -> dict[str, Any]:
    optuna = _optuna()
    out: dict[str, Any] = {}
    for g in spec.groups:
        out[f"alpha:{g}"] = optuna.distributions.FloatDistribution(space.lr_low, space.lr_high, log=True)
    for g in spec.groups:
        out[f"momentum:{g}"] = optuna.distributions.FloatDistribution(space.momentum_low, space.momentum_high)
    return out


def study_params(
    spec: HyperSpec, hyperparameters: Mapping[str, Mapping[str, Any]], space: SearchSpace
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """A record's hyperparameters (by tensor, :meth:`HyperSpec.describe`) as ``(params, exact, clipped)``.

    ``exact``: ``{"alpha:<group>": alpha, "momentum:<group>": beta}`` as evaluated; ``params``: the
    same clipped into ``space``; ``clipped``: the names whose value was clipped.
    """
    if spec.per == "element":
        raise ValueError("per='element' has one hyperparameter per weight; a study needs per=tensor, layer or global")
    exact: dict[str, float] = {}
    first = {g: spec.param_names[spec.group_of.index(i)] for i, g in enumerate(spec.groups)}
    for g, tensor in first.items():
        hp = hyperparameters[tensor]
        beta = float(hp["momentum"])
        alpha = float(hp["alpha"]) if "alpha" in hp else float(hp["lr"]) / (1.0 - beta)
        exact[f"alpha:{g}"], exact[f"momentum:{g}"] = alpha, beta
    params: dict[str, float] = {}
    clipped: list[str] = []
    for name, value in exact.items():
        alpha = name.startswith("alpha:")
        lo, hi = (space.lr_low, space.lr_high) if alpha else (space.momentum_low, space.momentum_high)
        params[name] = min(max(value, lo), hi)
        if params[name] != value:
            clipped.append(name)
    return params, exact, clipped


class StudyRecorder(Callback):
    """Record every meta step of a run as a finished trial of ``study`` (see the module docstring).

    Args:
        study: an ``optuna.Study`` (e.g. from :func:`hypergrad.baselines.create_or_load_study`).
        space: the search space whose distributions the trials get (default :class:`SearchSpace`).
        method: the ``method`` user attribute (default: the hypergradient method the strategy chose,
            e.g. ``bptt`` for ``sign``/``hybrid``, else the run's ``config.method``).

    A meta step already recorded (same ``method`` and ``step``, e.g. a resumed comparison) is
    not added twice. A step whose meta loss is not finite becomes a ``FAIL`` trial.
    """

    def __init__(self, study: Any, *, space: SearchSpace | None = None, method: str | None = None) -> None:
        self.study = study
        self.space = space or SearchSpace()
        self.method = method
        self._seen = {(t.user_attrs.get("method"), t.user_attrs.get("step"))
                      for t in study.get_trials(deepcopy=False) if is_gradient_trial(t)}

    def on_meta_step(self, tuner: TuningRun, record: MetaStepRecord) -> None:
        optuna = _optuna()
        spec: HyperSpec = tuner.spec  # type: ignore[attr-defined]
        estimator = getattr(getattr(tuner, "state", None), "estimator", None)  # sign/hybrid: the method they chose
        method = self.method or getattr(estimator, "method", None) or tuner.config.method
        if (method, record.step) in self._seen:
            return
        params, exact, clipped = study_params(spec, record.hyperparameters, self.space)
        strategy = getattr(getattr(tuner, "strategy", None), "name", None)
        value = record.meta_loss
        ok = value is not None and math.isfinite(value)
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            value=value if ok else None,
            params=params,
            distributions=_distributions(spec, self.space),
            user_attrs={
                **sgd_lrs(exact),
                "method": method, "strategy": strategy, "kind": "gradient", "cost": 1.0,
                "seconds": record.seconds, "step": record.step, "val_loss": record.val_loss,
                "action": record.action, "exact_params": exact, "clipped": clipped,
            },
        )
        self.study.add_trial(trial)
        self._seen.add((method, record.step))


@dataclass(frozen=True)
class StudyStart:
    """Where :func:`warm_start_from_study` started the tuner.

    Attributes:
        trial: the number of the study's best trial.
        value: its value (the tuner's best loss so far).
        step: the tuner's first meta step (after every batch salt the study used).
        space: the search space of the best trial's distributions.
        hparams: the unconstrained hyperparameters started from (the best start).
        starts: the numbers of the trials the refinement starts from, in turn (best first).
    """

    trial: int
    value: float
    step: int
    space: SearchSpace
    hparams: tuple[Tensor, ...]
    starts: tuple[int, ...] = ()


def _space_of(trial: Any, spec: HyperSpec) -> SearchSpace:
    lr = trial.distributions.get(f"alpha:{spec.groups[0]}") or trial.distributions[f"lr:{spec.groups[0]}"]
    mom = trial.distributions[f"momentum:{spec.groups[0]}"]
    return SearchSpace(lr.low, lr.high, mom.low, mom.high)


def _salt(trial: Any) -> int:
    """The batch order a trial trained on: a recorded meta step's ``step``, a sampler trial's number."""
    return int(trial.user_attrs["step"]) if is_gradient_trial(trial) and "step" in trial.user_attrs else trial.number


def study_trials(study: Any, spec: HyperSpec) -> tuple[list[Any], int]:
    """``(usable, next_step)``: the completed, finite trials holding this problem's parameters, best first.

    ``next_step`` is the first batch salt after every one the study used (sampler trial ``k``
    trained on the batches of salt ``k``; recorded meta steps on their ``step``), so a run
    continuing the study reuses no batch order.

    Raises:
        ValueError: no completed trial with finite value holds this problem's parameters.
    """
    optuna = _optuna()
    names = [f"{p}:{g}" for p in ("alpha", "momentum") for g in spec.groups]
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    usable = [t for t in trials if t.value is not None and math.isfinite(t.value)
              and all(n in _legacy(dict(t.params)) for n in names)]
    if not usable:
        have = sorted({n for t in trials for n in t.params})
        raise ValueError(
            f"study {study.study_name!r} has no completed trial with this problem's parameters "
            f"({', '.join(names)}); its trials have: {', '.join(have) or 'none'} ({len(trials)} completed)"
        )
    usable.sort(key=lambda t: (t.value, t.number))
    return usable, max(_salt(t) for t in study.get_trials(deepcopy=False)) + 1


def _exact(trial: Any) -> dict[str, float]:
    return _legacy(dict(trial.user_attrs.get("exact_params") or trial.params))


def warm_start_from_study(tuner: Tuner, study: Any) -> StudyStart:
    """Start ``tuner`` from ``study``'s best completed trial in this problem's search space.

    The trial must hold ``alpha:<group>`` and ``momentum:<group>`` for every group of
    ``tuner.spec``; the first meta step continues after every batch salt the study used
    (:func:`study_trials`). The start of the ``gradient`` strategy (one trajectory); the other
    strategies start from several trials (:func:`seed_hybrid_from_study`).

    Raises:
        ValueError: no completed trial with finite value holds this problem's parameters.
    """
    usable, step = study_trials(study, tuner.spec)
    best = usable[0]
    hparams = to_hparams(tuner.spec, _exact(best), tuner.hparams[0].dtype)
    tuner.warm_start(hparams, best_loss=float(best.value), step=step)
    return StudyStart(trial=best.number, value=float(best.value), step=step, space=_space_of(best, tuner.spec),
                      hparams=hparams, starts=(best.number,))


def seed_hybrid_from_study(tuner: Tuner, study: Any, refine_budget: int) -> StudyStart:
    r"""Make ``study``'s completed trials the global phase of ``tuner``'s hybrid strategy.

    Every usable trial (:func:`study_trials`: TPE's, other samplers', recorded meta steps) joins
    the selection's pool; the refinement (sign steps, :mod:`hypergrad.strategies.hybrid`) starts
    from the ``tuner.strategy.refine_from`` best distinct ones in turn (**k = refine_from**,
    default 2, ``--refine-from``), on batch orders after every one the study used, and spends
    ``refine_budget`` inner trainings with the selection. Returns where the best start is.

    Raises:
        TypeError: ``tuner`` does not run the hybrid strategy.
        ValueError: no usable trial, or ``refine_budget`` below two search steps plus the selection.
    """
    from hypergrad.strategies import HybridStrategy

    strategy = tuner.strategy
    if not isinstance(strategy, HybridStrategy):
        raise TypeError(f"seed_hybrid_from_study needs a tuner running the hybrid strategy, got {strategy.name!r}")
    usable, step = study_trials(study, tuner.spec)
    trials = [{"step": _salt(t), "value": float(t.value), "params": _exact(t),
               "loss": t.user_attrs.get("meta_loss", t.value) if not is_gradient_trial(t) else t.value,
               "seconds": t.user_attrs.get("seconds"), "action": "trial" if not is_gradient_trial(t) else "study"}
              for t in usable]
    strategy.start_from_trials(tuner.objective, tuner.state, trials, budget=step + refine_budget)
    by_step = {_salt(t): t.number for t in usable}
    state = tuner.state
    starts = tuple(next(by_step[k] for k, _, hp in state.points if all(torch.equal(a, b) for a, b in zip(hp, s)))
                   for s in state.starts)  # type: ignore[attr-defined]
    first = usable[[t.number for t in usable].index(starts[0])] if starts else usable[0]
    return StudyStart(trial=first.number, value=float(first.value), step=step, space=_space_of(first, tuner.spec),
                      hparams=tuple(h.clone() for h in state.starts[0]), starts=starts)  # type: ignore[attr-defined]


def _trial_seeded_sampler(seed_of: Callable[[int], int]) -> Any:
    """A TPE sampler re-created for every trial with the seed ``seed_of(trial.number)`` (see the module docstring)."""
    optuna = _optuna()

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.inner = optuna.samplers.TPESampler(seed=seed_of(0))

        def before_trial(self, study: Any, trial: Any) -> None:
            self.inner = optuna.samplers.TPESampler(seed=seed_of(trial.number))
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            return self.inner.sample_independent(study, trial, name, distribution)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self.inner.after_trial(study, trial, state, values)

    return TrialSeededTPE()


def _sampler_trials(study: Any, states: tuple[Any, ...] | None = None) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if not is_gradient_trial(t)]


def run_global_phase(tuner: Tuner, study: Any, n_trials: int, *, stop: Callable[[], bool] | None = None) -> list[int]:
    r"""Run TPE trials of ``tuner``'s hybrid strategy into ``study`` until it holds ``n_trials`` sampler trials.

    Ask and tell on the shared study, so several processes can run this at once (each asks
    the next trial number; none repeats another's point). Trial ``k`` trains on the batches of
    salt ``k`` (the trial number) with a TPE sampler seeded by ``(seed, k)``
    (:meth:`~hypergrad.strategies.HybridStrategy.trial_seed`) that sees every trial finished
    so far; its value is the hybrid's (the meta loss; a failed or exploded one is told twice the
    untrained meta loss) and its user attributes are a sampler trial's (``method="tpe"``,
    ``kind="sampler"``, ``cost``, ``seconds``, ``meta_loss``, ``lr:<group>``). Trials still
    running elsewhere count, so the workers stop together; they can overshoot ``n_trials`` by
    at most one trial per extra process. Returns the numbers of the trials this call ran.
    """
    from hypergrad.strategies import HybridStrategy

    strategy = tuner.strategy
    if not isinstance(strategy, HybridStrategy):
        raise TypeError(f"run_global_phase needs a tuner running the hybrid strategy, got {strategy.name!r}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    objective = tuner.objective
    spec = objective.spec
    fail = strategy.fail_value(objective)
    study.sampler = _trial_seeded_sampler(lambda k: strategy.trial_seed(objective, k))
    mine: list[int] = []
    while len(_sampler_trials(study)) < n_trials and not (stop is not None and stop()):
        trial = study.ask()
        t0 = time.perf_counter()
        params = strategy.space.suggest(trial, spec)
        loss = objective.value(to_hparams(spec, params, objective.problem.w0[0].dtype), trial.number)
        for key, value in {**sgd_lrs(params), "method": "tpe", "kind": "sampler", "cost": 1.0,
                           "seconds": time.perf_counter() - t0,
                           "meta_loss": loss if math.isfinite(loss) else None}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, loss if math.isfinite(loss) and loss <= fail else fail)
        mine.append(trial.number)
    return mine


def wait_for_running(study: Any, timeout: float, *, poll: float = 0.5) -> list[int]:
    """Wait up to ``timeout`` seconds until no sampler trial of ``study`` is running; the numbers still running."""
    optuna = _optuna()
    deadline = time.monotonic() + timeout
    while True:
        running = [t.number for t in _sampler_trials(study, (optuna.trial.TrialState.RUNNING,))]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(poll)


def check_study_problem(study: Any, key: Mapping[str, Any]) -> None:
    """Refuse a study made for another problem: its ``"problem"`` user attribute must agree with ``key``.

    Only the keys both hold are compared (a study made by ``hypergrad compare`` also names its
    method and search space; those may differ). A study without the attribute is accepted.
    """
    stored = study.user_attrs.get("problem")
    if not isinstance(stored, dict):
        return
    diff = sorted(k for k in set(stored) & set(key) if stored[k] != key[k])
    if diff:
        detail = ", ".join(f"{k}: study {stored[k]!r} vs run {key[k]!r}" for k in diff)
        raise ValueError(f"study {study.study_name!r} was made for another problem ({detail})")


def refine_study(
    problem: InnerProblem,
    config: TuneConfig,
    study: Any,
    *,
    refine_from: int = 2,
    callbacks: Sequence[Callback] = (),
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
) -> TuneResult:
    """Hypergradient refinement from a study's best trials; every step is written back to ``study``.

    The Python form of ``hypergrad tune --from-study STORAGE --study-name NAME``. With
    ``config.strategy="gradient"`` (or ``"auto"`` with a budget under the sign strategy's
    minimum) the tuner starts from the single best completed trial
    (:func:`warm_start_from_study`) and runs ``config.meta_steps`` meta steps; otherwise the
    hybrid strategy takes the study's trials as its global phase and refines from the
    ``refine_from`` best (:func:`seed_hybrid_from_study`) for ``config.budget`` (default
    ``config.meta_steps``) more inner trainings. Each step is recorded as a trial
    (:class:`StudyRecorder`, with the best trial's distributions).

    Example::

        study = optuna.load_study(study_name="digits-tpe", storage="sqlite:///studies.db")
        result = refine_study(problem, TuneConfig(meta_steps=30), study)
        study.trials_dataframe()[["number", "value", "user_attrs_method"]]
    """
    from hypergrad.strategies import GradientStrategy, HybridStrategy, get_strategy

    more = config.budget if config.budget is not None else config.meta_steps
    gradient = isinstance(get_strategy(config.strategy, config), GradientStrategy)
    strategy = GradientStrategy() if gradient else HybridStrategy(refine_from=refine_from)
    tuner = Tuner(problem, config, callbacks=callbacks, x_test=x_test, y_test=y_test, strategy=strategy)
    if gradient:
        start = warm_start_from_study(tuner, study)
        budget: int | None = start.step + config.meta_steps
    else:
        start = seed_hybrid_from_study(tuner, study, more)
        budget = None
    tuner.callbacks.append(StudyRecorder(study, space=start.space))
    return tuner.run(budget=budget)
