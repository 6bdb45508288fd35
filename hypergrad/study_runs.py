"""The Optuna side of ``hypergrad tune``: ``--from-study``, and the hybrid strategy's global phase on ``--storage``.

* ``--from-study STORAGE --study-name NAME``: the refinement starts from an existing study's
  best trials (:func:`hypergrad.studies.seed_hybrid_from_study`: the ``--refine-from`` best,
  default 2; the ``gradient`` strategy, one trajectory, from the single best) and writes every
  step back to the study.
* ``--strategy hybrid --storage STORAGE --study-name NAME``: the global phase's TPE trials go
  into the shared study (:func:`hypergrad.studies.run_global_phase`), run by this process and
  by any number of ``--worker`` processes with the same flags; this process then waits for the
  trials still running (``--wait-workers``), takes the study's trials as its global phase and
  refines, writing every step back. A ``--worker`` runs TPE trials only and exits.

A checkpoint remembers its study (storage, name, strategy), so ``--resume`` reopens it and
keeps writing trials back.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Any

from hypergrad.config import RunConfig, TuneConfig

__all__ = ["StudyPlan", "plan_from_args"]


class StudyFlagError(ValueError):
    """A combination of study flags that cannot run (reported as a usage error)."""


@dataclass
class StudyPlan:
    """What a ``tune`` run does with a study: ``mode`` ``"from-study"`` or ``"shared"`` (hybrid on ``--storage``)."""

    mode: str
    storage: str
    study_name: str
    strategy: str  # "gradient" or "hybrid": the strategy the run uses
    refine_from: int = 2
    worker: bool = False
    wait: float = 600.0
    first_step: int | None = None  # the gradient strategy's budget is first_step + meta_steps

    def to_checkpoint(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "worker"}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> StudyPlan:
        return cls(**saved)

    def make_strategy(self) -> Any:
        from hypergrad.strategies import GradientStrategy, HybridStrategy

        return GradientStrategy() if self.strategy == "gradient" else HybridStrategy(refine_from=self.refine_from)

    def problem_key(self, cfg: TuneConfig, run: RunConfig) -> dict[str, Any]:
        return {"inner_steps": cfg.inner_steps, "batch_size": cfg.batch_size, "per": cfg.per, "seed": cfg.seed,
                "meta_loss": cfg.meta_loss, "dataset": run.dataset, "hidden": list(run.hidden),
                "n_train": run.n_train}

    # ------------------------------------------------------------------ opening
    def open(self, cfg: TuneConfig, run: RunConfig, *, create: bool) -> Any:
        """The study; ``create``: made if missing (the shared mode), else it must exist and fit the problem."""
        from hypergrad._imports import optional_import
        from hypergrad.baselines import create_or_load_study, make_storage
        from hypergrad.studies import check_study_problem

        optuna = optional_import("optuna", "optuna", purpose="the study flags of hypergrad tune")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = make_storage(self.storage)
        key = self.problem_key(cfg, run)
        if create:
            from hypergrad.strategies import HybridStrategy

            strategy = HybridStrategy()
            budget = strategy.check_budget(strategy.default_budget(cfg))
            key = {**key, "strategy": "hybrid", "global_trials": strategy.global_trials(cfg, budget),
                   **asdict(strategy.space)}
            return create_or_load_study(storage=storage, study_name=self.study_name, sampler=None, problem_key=key)
        try:
            study = optuna.load_study(study_name=self.study_name, storage=storage)
        except KeyError:
            raise StudyFlagError(f"no study {self.study_name!r} in --from-study {self.storage!r}") from None
        check_study_problem(study, key)
        return study

    # ------------------------------------------------------------------ running
    def start(self, tuner: Any, study: Any, cfg: TuneConfig, *, resumed: bool) -> int | None:
        """Put the study's trials into ``tuner`` (a fresh run) and attach the recorder; the ``tuner.run`` budget."""
        from hypergrad.studies import (
            StudyRecorder,
            _space_of,
            run_global_phase,
            seed_hybrid_from_study,
            study_trials,
            wait_for_running,
            warm_start_from_study,
        )

        if resumed:
            usable, _ = study_trials(study, tuner.spec)
            tuner.callbacks.append(StudyRecorder(study, space=_space_of(usable[0], tuner.spec)))
            return None if self.first_step is None else self.first_step + cfg.meta_steps
        budget: int | None = None
        if self.mode == "shared":
            strategy = tuner.strategy
            total = strategy.check_budget(strategy.default_budget(cfg))
            n_global = strategy.global_trials(cfg, total)
            ran = run_global_phase(tuner, study, n_global)
            running = wait_for_running(study, self.wait)
            if running:
                print(f"hypergrad: warning: trials {running} of study {study.study_name!r} still run after "
                      f"--wait-workers {self.wait:g}s; refining without them", file=sys.stderr)
            print(f"global phase: {n_global} TPE trials in study {study.study_name!r} ({len(ran)} run here)",
                  file=sys.stderr)
            start = seed_hybrid_from_study(tuner, study, total - n_global)
        elif self.strategy == "gradient":
            start = warm_start_from_study(tuner, study)
            self.first_step = start.step
            budget = start.step + cfg.meta_steps
        else:
            start = seed_hybrid_from_study(tuner, study, cfg.budget if cfg.budget is not None else cfg.meta_steps)
        last = budget if budget is not None else tuner.state.budget
        tuner.callbacks.append(StudyRecorder(study, space=start.space))
        trials = ", ".join(map(str, start.starts))
        print(f"starting from trial{'s' if len(start.starts) > 1 else ''} {trials} of study {study.study_name!r} "
              f"(best value {start.value:.4f}); steps {start.step}..{last - 1} are written back to it",
              file=sys.stderr)
        return budget

    def run_worker(self, tuner: Any, study: Any, cfg: TuneConfig) -> dict[str, Any]:
        """``--worker``: TPE trials of the global phase only; what it did."""
        from hypergrad.studies import run_global_phase

        strategy = tuner.strategy
        n_global = strategy.global_trials(cfg, strategy.check_budget(strategy.default_budget(cfg)))
        ran = run_global_phase(tuner, study, n_global)
        print(f"worker: ran trials {ran} of study {study.study_name!r} (global phase: {n_global} TPE trials)",
              file=sys.stderr)
        return {"study_name": study.study_name, "global_trials": n_global, "trials": ran}


def plan_from_args(args: argparse.Namespace, cfg: TuneConfig, saved: dict[str, Any] | None) -> StudyPlan | None:
    """The run's study plan from the flags (or a resumed checkpoint's ``saved`` plan); errors before any work."""
    from hypergrad.strategies import GradientStrategy, get_strategy

    if saved is not None:
        if args.from_study or args.storage or args.worker:
            raise StudyFlagError("--resume continues the study its checkpoint names; drop --from-study, --storage "
                                 "and --worker")
        return StudyPlan.from_checkpoint(saved)
    if args.from_study and args.storage:
        raise StudyFlagError("--from-study and --storage exclude each other: --from-study refines an existing "
                             "study, --storage runs the hybrid strategy's global phase into one")
    if args.worker and not args.storage:
        raise StudyFlagError("--worker runs the hybrid strategy's TPE trials into a shared study: give --storage "
                             "and --study-name")
    if not (args.from_study or args.storage):
        return None
    if args.resume:
        raise StudyFlagError(f"{'--from-study' if args.from_study else '--storage'} starts a new run; it cannot be "
                             "combined with --resume (a resumed run reopens its checkpoint's study)")
    if not args.study_name:
        flag = "--from-study" if args.from_study else "--storage"
        what = "start from" if args.from_study else "share"
        raise StudyFlagError(f"{flag} needs --study-name NAME (the study to {what})")
    if args.storage:
        if cfg.strategy != "hybrid":
            raise StudyFlagError(f"--storage shares the global phase of --strategy hybrid, got --strategy "
                                 f"{cfg.strategy}; to refine an existing study use --from-study")
        return StudyPlan("shared", args.storage, args.study_name, "hybrid", refine_from=args.refine_from,
                         worker=bool(args.worker), wait=float(args.wait_workers))
    gradient = isinstance(get_strategy(cfg.strategy, cfg), GradientStrategy)
    return StudyPlan("from-study", args.from_study, args.study_name, "gradient" if gradient else "hybrid",
                     refine_from=args.refine_from)
