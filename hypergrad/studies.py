r"""Optuna both ways: hypergrad's evaluations as trials of a study, and refinement from a study's best.

* :class:`StudyRecorder` (a :class:`~hypergrad.callbacks.Callback`) adds every meta step a
  strategy takes to an Optuna study as a finished trial (``study.add_trial``), with the
  hyperparameters as params in the search-space names of the sampler studies
  (``lr:<group>`` :math:`=\alpha`, log-uniform; ``momentum:<group>`` :math:`=\beta`, uniform;
  see :class:`~hypergrad.baselines.SearchSpace`), the meta loss as value, and the user
  attributes ``method``, ``strategy``, ``kind="gradient"``, ``cost`` (inner trainings: 1 per
  meta step), ``seconds``, ``step`` (the batch salt) and ``exact_params``. So
  ``study.trials_dataframe()`` and optuna-dashboard show TPE's and hypergrad's trials side by
  side, and a sampler run later on the study learns from both.
* :func:`warm_start_from_study` and :func:`refine_study` start the tuner from a study's best
  completed trial and write the refinement's meta steps back into the same study.

Values outside the search space's ranges (the tuner is unconstrained: :math:`\alpha` can leave
``[lr_low, lr_high]``) are **clipped** into the ranges in ``params``, so every trial of a
study has the same distributions (Optuna's samplers then use all of them); the evaluated
values are kept exactly in the user attribute ``exact_params``, and the clipped names in
``clipped``. :func:`warm_start_from_study` reads ``exact_params`` when present.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from hypergrad.baselines import SearchSpace, is_gradient_trial, to_hparams
from hypergrad.callbacks import Callback, TuningRun
from hypergrad.config import TuneConfig
from hypergrad.hyperparams import HyperSpec
from hypergrad.inner import InnerProblem
from hypergrad.records import MetaStepRecord, TuneResult
from hypergrad.tuner import Tuner

__all__ = ["StudyRecorder", "StudyStart", "check_study_problem", "refine_study", "study_params",
           "warm_start_from_study"]


def _optuna() -> Any:
    from hypergrad.baselines import _optuna as load

    return load()


def _distributions(spec: HyperSpec, space: SearchSpace) -> dict[str, Any]:
    optuna = _optuna()
    out: dict[str, Any] = {}
    for g in spec.groups:
        out[f"lr:{g}"] = optuna.distributions.FloatDistribution(space.lr_low, space.lr_high, log=True)
    for g in spec.groups:
        out[f"momentum:{g}"] = optuna.distributions.FloatDistribution(space.momentum_low, space.momentum_high)
    return out


def study_params(
    spec: HyperSpec, hyperparameters: Mapping[str, Mapping[str, Any]], space: SearchSpace
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """A record's hyperparameters (by tensor, :meth:`HyperSpec.describe`) as ``(params, exact, clipped)``.

    ``exact``: ``{"lr:<group>": alpha, "momentum:<group>": beta}`` as evaluated; ``params``: the
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
        exact[f"lr:{g}"], exact[f"momentum:{g}"] = alpha, beta
    params: dict[str, float] = {}
    clipped: list[str] = []
    for name, value in exact.items():
        lo, hi = (space.lr_low, space.lr_high) if name.startswith("lr:") else (space.momentum_low, space.momentum_high)
        params[name] = min(max(value, lo), hi)
        if params[name] != value:
            clipped.append(name)
    return params, exact, clipped


class StudyRecorder(Callback):
    """Record every meta step of a run as a finished trial of ``study`` (see the module docstring).

    Args:
        study: an ``optuna.Study`` (e.g. from :func:`hypergrad.baselines.create_or_load_study`).
        space: the search space whose distributions the trials get (default :class:`SearchSpace`).
        method: the ``method`` user attribute (default: the run's ``config.method``).

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
        method = self.method or tuner.config.method
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
        hparams: the unconstrained hyperparameters started from.
    """

    trial: int
    value: float
    step: int
    space: SearchSpace
    hparams: tuple[Tensor, ...]


def _space_of(trial: Any, spec: HyperSpec) -> SearchSpace:
    lr = trial.distributions[f"lr:{spec.groups[0]}"]
    mom = trial.distributions[f"momentum:{spec.groups[0]}"]
    return SearchSpace(lr.low, lr.high, mom.low, mom.high)


def warm_start_from_study(tuner: Tuner, study: Any) -> StudyStart:
    """Start ``tuner`` from ``study``'s best completed trial in this problem's search space.

    The trial must hold ``lr:<group>`` and ``momentum:<group>`` for every group of
    ``tuner.spec``. The first meta step continues after every batch salt the study used
    (sampler trial ``k`` trained on the batches of salt ``k``; recorded meta steps on their
    ``step``), so no batch order is reused.

    Raises:
        ValueError: no completed trial with finite value holds this problem's parameters.
    """
    optuna = _optuna()
    names = [f"{p}:{g}" for p in ("lr", "momentum") for g in tuner.spec.groups]
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    usable = [t for t in trials if t.value is not None and math.isfinite(t.value) and all(n in t.params for n in names)]
    if not usable:
        have = sorted({n for t in trials for n in t.params})
        raise ValueError(
            f"study {study.study_name!r} has no completed trial with this problem's parameters "
            f"({', '.join(names)}); its trials have: {', '.join(have) or 'none'} ({len(trials)} completed)"
        )
    best = min(usable, key=lambda t: t.value)
    exact = dict(best.user_attrs.get("exact_params") or best.params)
    hparams = to_hparams(tuner.spec, {n: exact[n] for n in names}, tuner.hparams[0].dtype)
    salts = [int(t.user_attrs["step"]) if is_gradient_trial(t) and "step" in t.user_attrs else t.number
             for t in study.get_trials(deepcopy=False)]
    step = max(salts) + 1
    tuner.warm_start(hparams, best_loss=float(best.value), step=step)
    return StudyStart(trial=best.number, value=float(best.value), step=step, space=_space_of(best, tuner.spec),
                      hparams=hparams)


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
    callbacks: Sequence[Callback] = (),
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
) -> TuneResult:
    """Hypergradient refinement of a study's best trial; every meta step is written back to ``study``.

    The Python form of ``hypergrad tune --from-study STORAGE --study-name NAME``: the tuner
    starts from the best completed trial (:func:`warm_start_from_study`), runs
    ``config.meta_steps`` meta steps and records each as a trial (:class:`StudyRecorder`,
    with the best trial's distributions).

    Example::

        study = optuna.load_study(study_name="digits-tpe", storage="sqlite:///studies.db")
        result = refine_study(problem, TuneConfig(meta_steps=30), study)
        study.trials_dataframe()[["number", "value", "user_attrs_method"]]
    """
    tuner = Tuner(problem, config, callbacks=callbacks, x_test=x_test, y_test=y_test)
    start = warm_start_from_study(tuner, study)
    tuner.callbacks.append(StudyRecorder(study, space=start.space))
    return tuner.run(budget=start.step + config.meta_steps)
