r"""Black-box baselines: Optuna searches over the tuner's own hyperparameters (issue #4).

Everything that decides *what is optimised* is the tuner's own
:class:`~hypergrad.objective.MetaObjective`, shared with :class:`hypergrad.Tuner`:

* **the inner training** is :meth:`hypergrad.InnerProblem.train` on the tuner's
  problem (same model, data, ``T``, batch size and initial weights :math:`w_0`);
* **the batches**: trial ``k`` trains on ``objective.batches(k)``, the minibatch order
  of the tuner's meta step ``k`` (seeded by ``(seed, k)``);
* **the hyperparameters** are the tuner's per-group learning rates and momenta;
  Optuna suggests :math:`\alpha` (param ``alpha:<group>``) log-uniformly and :math:`\beta`
  (``momentum:<group>``) uniformly in :class:`SearchSpace`; the SGD learning rate
  :math:`\alpha(1-\beta)`, what ``lr`` means everywhere in hypergrad, is each trial's user
  attribute ``lr:<group>`` (:func:`sgd_lrs`); :func:`to_hparams` maps them onto the unconstrained
  ``(log_lr, logit_momentum)`` tuple of :class:`hypergrad.HyperSpec`, so the very
  same code path trains;
* **the meta loss** is :meth:`MetaObjective.value` (one inner training, then the
  validation loss of :math:`w_T` unless ``meta_loss="train"``), the one function
  both sides call.

One Optuna trial is one inner training of ``T`` steps; a pruned trial costs the
fraction of ``T`` it ran (see :class:`OptunaObjective`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hypergrad._imports import optional_import
from hypergrad._tree import Tree
from hypergrad.hyperparams import HyperSpec
from hypergrad.objective import MetaObjective

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "OptunaObjective",
    "SearchSpace",
    "create_or_load_study",
    "is_gradient_trial",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "run_study",
    "sgd_lrs",
    "to_hparams",
    "trial_cost",
    "worker_sampler_seed",
]

SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("none", "median")


def _optuna() -> Any:
    """Optuna, imported on first use (``import hypergrad`` does not load it), or an install hint."""
    return optional_import("optuna", "optuna", purpose="the black-box baselines")


# Momenta are mapped to logits after clamping into [eps, 1 - eps]: a suggested 0.0
# becomes sigmoid(logit(1e-6)) = 1e-6, indistinguishable from 0 in the inner loop.
_MOMENTUM_EPS = 1e-6


@dataclass(frozen=True)
class SearchSpace:
    """Ranges Optuna searches, in the tuner's constrained coordinates.

    The defaults contain every value the tuner reaches in practice from its
    initialisation :math:`\\alpha = e^{-1}, \\beta = 0.5`: a meta run of 100 Adam
    steps of size 0.05 moves ``log_lr`` by at most 5 (:math:`\\alpha \\in [0.0025, 55]`),
    and the learning rates that do not diverge lie well inside ``[1e-3, 10]``.

    Attributes:
        lr_low, lr_high: bounds of the log-uniform learning rate :math:`\\alpha`.
        momentum_low, momentum_high: bounds of the uniform momentum :math:`\\beta`.
    """

    lr_low: float = 1e-3
    lr_high: float = 10.0
    momentum_low: float = 0.0
    momentum_high: float = 0.99

    def __post_init__(self) -> None:
        for name in ("lr_low", "lr_high", "momentum_low", "momentum_high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 < self.lr_low < self.lr_high:
            raise ValueError(f"need 0 < lr_low < lr_high, got lr_low={self.lr_low}, lr_high={self.lr_high}")
        if not 0.0 <= self.momentum_low < self.momentum_high < 1.0:
            raise ValueError(
                "need 0 <= momentum_low < momentum_high < 1, got "
                f"momentum_low={self.momentum_low}, momentum_high={self.momentum_high}"
            )

    def contains(self, spec: HyperSpec, hparams: Sequence[Tensor]) -> bool:
        """Whether every learning rate and momentum of ``hparams`` lies in the ranges."""
        lrs, moms = spec.per_tensor([h.detach() for h in hparams])
        return all(
            self.lr_low <= float(a) <= self.lr_high and self.momentum_low <= float(b) <= self.momentum_high
            for a, b in zip(lrs, moms)
        )

    def suggest(self, trial: Any, spec: HyperSpec) -> dict[str, float]:
        """Ask ``trial`` for one :math:`\\alpha` (``alpha:<group>``) and one momentum per group of ``spec``."""
        if spec.per == "element":
            raise ValueError("per='element' has one hyperparameter per weight; black-box search needs a coarser per")
        params: dict[str, float] = {}
        for group in spec.groups:
            params[f"alpha:{group}"] = trial.suggest_float(f"alpha:{group}", self.lr_low, self.lr_high, log=True)
        for group in spec.groups:
            params[f"momentum:{group}"] = trial.suggest_float(
                f"momentum:{group}", self.momentum_low, self.momentum_high
            )
        return params


def _legacy(params: dict[str, float]) -> dict[str, float]:
    """Studies written before the rename held :math:`\\alpha` as ``lr:<group>``; read them as ``alpha:<group>``."""
    if any(k.startswith("alpha:") for k in params):
        return params
    return {("alpha:" + k[3:] if k.startswith("lr:") else k): v for k, v in params.items()}


def to_hparams(spec: HyperSpec, params: dict[str, float], dtype: torch.dtype = torch.float32) -> tuple[Tensor, ...]:
    """Optuna's ``{"alpha:<group>": alpha, "momentum:<group>": beta}`` as the tuner's unconstrained hparams.

    Returns ``(log_lr_0..log_lr_G-1, logit_mom_0..logit_mom_G-1)`` (0-dim tensors; for a
    schedule, ``spec.segments > 1``, each repeated over the segments), the layout of
    :meth:`HyperSpec.init`. Params holding ``lr:<group>`` and no ``alpha:`` name
    (studies stored before ``lr`` came to mean the SGD learning rate everywhere) are read with
    ``lr:<group>`` as :math:`\\alpha`, the meaning they were written with.
    """
    params = _legacy(dict(params))
    missing = [k for g in spec.groups for k in (f"alpha:{g}", f"momentum:{g}") if k not in params]
    if missing:
        raise ValueError(f"parameters missing for this problem: {', '.join(missing)}")
    log_lr = []
    logit_m = []
    for g in spec.groups:
        lr = float(params[f"alpha:{g}"])
        mom = float(params[f"momentum:{g}"])
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"alpha:{g} must be a positive finite number, got {lr!r}")
        if not 0.0 <= mom < 1.0:
            raise ValueError(f"momentum:{g} must lie in [0, 1), got {mom!r}")
        m = min(max(mom, _MOMENTUM_EPS), 1.0 - _MOMENTUM_EPS)
        log_lr.append(torch.tensor(math.log(lr), dtype=dtype))
        logit_m.append(torch.tensor(math.log(m / (1.0 - m)), dtype=dtype))
    if spec.segments > 1:  # a schedule: the same values in every segment
        return tuple(t.expand(spec.segments).clone() for t in log_lr + logit_m)
    return tuple(log_lr) + tuple(logit_m)


def from_hparams(spec: HyperSpec, hparams: Sequence[Tensor]) -> dict[str, float]:
    """The inverse of :func:`to_hparams` (for ``study.enqueue_trial``)."""
    g = spec.num_groups
    out: dict[str, float] = {}
    for i, name in enumerate(spec.groups):
        out[f"alpha:{name}"] = float(torch.as_tensor(hparams[i]).double().exp())
    for i, name in enumerate(spec.groups):
        out[f"momentum:{name}"] = float(torch.sigmoid(torch.as_tensor(hparams[g + i]).double()))
    return out


def sgd_lrs(params: dict[str, float]) -> dict[str, float]:
    """``{"lr:<group>": alpha * (1 - beta)}``: the SGD learning rates of Optuna params (the user attributes)."""
    params = _legacy(dict(params))
    return {"lr:" + k[len("alpha:"):]: v * (1.0 - params["momentum:" + k[len("alpha:"):]])
            for k, v in params.items() if k.startswith("alpha:")}


class OptunaObjective:
    """The Optuna objective: suggest -> :func:`to_hparams` -> :meth:`MetaObjective.value`.

    Trial ``k`` trains on the batches of the tuner's meta step ``k``. The value is
    the meta loss, except that a non-finite or exploded loss (above
    ``fail_value``, default twice the meta loss of the untrained :math:`w_0`, the
    tuner's ``blowup_ratio``) is reported as ``fail_value`` so that every sampler
    (CMA-ES included) receives a finite number; the raw loss is kept in the
    trial's user attribute ``"meta_loss"``.

    With ``report_every=s``, the validation loss of :math:`w_t` is reported every
    ``s`` inner steps (``trial.report``) and the trial is pruned when the study's
    pruner says so. Each trial's cost in inner trainings (``steps run / T``) is
    stored in the user attribute ``"cost"``, beside ``"lr:<group>"`` (the SGD learning rates),
    ``"method"`` (the sampler's name, ``method``), ``"kind"`` (``"sampler"``) and ``"seconds"``
    (wall seconds of its inner training), the attributes :class:`hypergrad.studies.StudyRecorder`
    gives hypergrad's own trials.
    """

    def __init__(
        self,
        objective: MetaObjective,
        space: SearchSpace | None = None,
        *,
        report_every: int | None = None,
        fail_value: float | None = None,
        method: str = "optuna",
    ) -> None:
        if not isinstance(objective, MetaObjective):
            raise TypeError(f"objective must be a MetaObjective, got {type(objective).__name__}")
        if objective.spec.per == "element":
            raise ValueError("per='element' cannot be searched by Optuna; use per=tensor, layer or global")
        if report_every is not None and (
            isinstance(report_every, bool) or not isinstance(report_every, int) or report_every < 1
        ):
            raise ValueError(f"report_every must be an integer >= 1 or None, got {report_every!r}")
        self.objective = objective
        self.method = method
        self.space = space or SearchSpace()
        self.report_every = report_every
        if fail_value is None:
            with torch.no_grad():
                fail_value = 2.0 * float(objective.meta_loss(objective.problem.w0))
        if not math.isfinite(fail_value):
            raise ValueError(f"fail_value must be finite, got {fail_value!r}")
        self.fail_value = float(fail_value)
        self.dtype = objective.problem.w0[0].dtype

    @property
    def inner_steps(self) -> int:
        return self.objective.config.inner_steps

    def hparams(self, params: dict[str, float]) -> tuple[Tensor, ...]:
        return to_hparams(self.objective.spec, params, self.dtype)

    def __call__(self, trial: Any) -> float:
        optuna = _optuna()

        trial.set_user_attr("method", self.method)
        trial.set_user_attr("kind", "sampler")
        params = self.space.suggest(trial, self.objective.spec)
        for name, lr in sgd_lrs(params).items():
            trial.set_user_attr(name, lr)
        t0 = time.perf_counter()  # seconds: the inner training, not the sampler's or the storage's time
        hparams = self.hparams(params)
        problem = self.objective.problem
        steps_run = [0]
        on_step = None
        if self.report_every is not None:
            every = self.report_every

            def on_step(t: int, state: Tree) -> None:
                steps_run[0] = t + 1
                if (t + 1) % every == 0 and t + 1 < self.inner_steps:
                    with torch.no_grad():
                        loss = float(problem.eval_loss(state[: problem.num_tensors], "val"))
                    trial.report(loss if math.isfinite(loss) else self.fail_value, t + 1)
                    if trial.should_prune():
                        trial.set_user_attr("cost", (t + 1) / self.inner_steps)
                        trial.set_user_attr("seconds", time.perf_counter() - t0)
                        raise optuna.TrialPruned(f"pruned after {t + 1} inner steps")

        loss = self.objective.value(hparams, trial.number, on_step=on_step)
        trial.set_user_attr("cost", 1.0)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("meta_loss", loss if math.isfinite(loss) else None)
        if not math.isfinite(loss) or loss > self.fail_value:
            return self.fail_value
        return loss


def trial_cost(trial: Any) -> float:
    """Inner trainings a finished trial cost (1 unless it was pruned early)."""
    cost = trial.user_attrs.get("cost")
    return float(cost) if cost is not None else 1.0


def is_gradient_trial(trial: Any) -> bool:
    """Whether a trial records a hypergrad meta step (:class:`hypergrad.studies.StudyRecorder`), not a sampler's."""
    return trial.user_attrs.get("kind") == "gradient"


# ---------------------------------------------------------------------- study plumbing
def worker_sampler_seed(seed: int, worker: int | None) -> int:
    """The sampler seed of one worker on a shared storage.

    ``worker=None`` (no ``--worker`` given): ``seed`` mixed with the process id, so workers
    started without ids never draw the same points, but the run is **not reproducible**.
    ``worker=i``: ``seed + 1_000_003 * i`` (worker 0 uses ``seed`` itself, as an in-memory
    run does), reproducible when one worker runs; with several, TPE's suggestions also depend
    on the order in which the others' trials finish, so only the first trials repeat.
    """
    if worker is None:
        return (seed * 1_000_003 + os.getpid()) % (2**31)
    if isinstance(worker, bool) or not isinstance(worker, int) or worker < 0:
        raise ValueError(f"worker must be an integer >= 0 or None, got {worker!r}")
    return (seed + 1_000_003 * worker) % (2**31)


def make_sampler(name: str, seed: int | None = None) -> Any:
    """``tpe`` (default settings), ``random`` or ``cmaes`` (Optuna's CmaEsSampler), seeded."""
    optuna = _optuna()

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, *, n_startup_trials: int = 5, n_warmup_steps: int = 0) -> Any:
    """``none`` (the default: every trial runs all ``T`` steps) or ``median``."""
    optuna = _optuna()

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
    raise ValueError(f"unknown pruner {name!r}; expected one of {', '.join(PRUNERS)}")


def make_storage(url: str | None) -> Any:
    """An Optuna storage from a user string.

    * ``None`` or ``""``: in memory (the default; nothing persists);
    * ``journal:PATH``, or a path ending in ``.log`` / ``.journal``: a journal file,
      ``JournalStorage(JournalFileBackend(PATH))`` -- safe for several worker
      processes on one machine (file locks), no database needed;
    * any URL ``dialect://...``: an RDB storage, e.g. ``sqlite:///study.db`` or
      ``postgresql://user@host/db`` (the database driver must be installed).

    The folder of a journal file or of an SQLite database is created when missing.
    """
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend

    if url is None or url == "":
        return None
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = url[len("journal:") :] if url.startswith("journal:") else url
        if not path:
            raise ValueError("--storage journal: needs a file path, e.g. journal:study.log")
        _make_parent(Path(path).expanduser(), what="journal file")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith(("postgresql://", "postgres://")):
        # SQLAlchemy 2.x maps a bare postgresql:// to psycopg 3; hypergrad's extra installs psycopg2.
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            _make_parent(Path(path).expanduser(), what="SQLite database")
    if "://" not in url:
        raise ValueError(
            f"cannot read storage {url!r}: expected journal:PATH, a .log/.journal file, or a URL such as "
            "sqlite:///study.db or postgresql://user@host/db"
        )
    return url


def _make_parent(path: Path, *, what: str) -> None:
    try:
        path.resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the folder of the {what} {str(path)!r}: {exc.strerror or exc}") from None


def create_or_load_study(
    *,
    storage: Any,
    study_name: str | None,
    sampler: Any,
    pruner: Any = None,
    problem_key: dict[str, Any] | None = None,
) -> Any:
    """``optuna.create_study(..., load_if_exists=True)``; a resumed study must describe the same problem.

    ``problem_key`` (JSON-able) is stored as the study's user attribute ``"problem"``;
    loading a study made for another problem raises :class:`ValueError`.
    """
    optuna = _optuna()

    for attempt in range(3):
        try:
            study = optuna.create_study(
                storage=storage, sampler=sampler, pruner=pruner, study_name=study_name,
                direction="minimize", load_if_exists=True,
            )
            break
        except (ImportError, ModuleNotFoundError) as exc:
            raise ValueError(f"cannot open storage: {exc}") from None
        except Exception as exc:  # sqlalchemy / journal errors on a bad URL
            name = type(exc).__name__
            if name == "IntegrityError" and attempt < 2:
                # Workers starting together on an empty database race to create Optuna's tables.
                time.sleep(0.5 * (attempt + 1))
                continue
            if name in ("ArgumentError", "OperationalError", "NoSuchModuleError"):
                raise ValueError(f"cannot open storage: {str(exc).splitlines()[0]}") from None
            raise
    if problem_key is not None:
        stored = study.user_attrs.get("problem")
        if stored is None:
            study.set_user_attr("problem", problem_key)
        elif stored != problem_key:
            diff = sorted(k for k in set(stored) | set(problem_key) if stored.get(k) != problem_key.get(k))
            raise ValueError(
                f"study {study.study_name!r} in this storage was made for another problem "
                f"(differs in: {', '.join(diff)}); pass another --study-name"
            )
    return study


def run_study(
    study: Any,
    objective: OptunaObjective,
    *,
    budget: float,
    n_jobs: int = 1,
    progress: Callable[[Any], None] | None = None,
) -> list[Any]:
    """Run trials until the study's finished trials have cost ``budget`` inner trainings.

    The budget counts every finished sampler trial already in the study (resumed runs and
    other workers on the same storage included), so parallel workers share one
    budget; concurrent workers can overshoot it by at most ``n_workers - 1`` trials.
    Trials recorded from hypergrad's meta steps (:func:`is_gradient_trial`) are not counted.
    Returns the trials this call finished.
    """
    optuna = _optuna()

    if not (isinstance(budget, (int, float)) and budget > 0):
        raise ValueError(f"budget must be positive, got {budget!r}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be an integer >= 1, got {n_jobs!r}")
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                       optuna.trial.TrialState.FAIL)

    def spent() -> float:
        return sum(trial_cost(t) for t in study.get_trials(deepcopy=False, states=finished_states)
                   if not is_gradient_trial(t))

    mine: list[Any] = []

    def callback(study_: Any, trial: Any) -> None:
        mine.append(trial)
        if progress is not None:
            progress(trial)
        if spent() >= budget - 1e-9:
            study_.stop()

    remaining = budget - spent()
    if remaining <= 1e-9:
        return mine
    # Without a pruner every trial costs 1, so n_trials is exact; with one, the callback stops.
    n_trials = math.ceil(remaining) if objective.report_every is None else None
    study.optimize(objective, n_trials=n_trials, n_jobs=n_jobs, callbacks=[callback], catch=())
    return mine
