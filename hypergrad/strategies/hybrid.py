r"""The ``"hybrid"`` strategy: a global TPE phase, then sign-step refinement from its best trials.

1. **Global phase** (``global_trials``, default 30% of the budget): Optuna's TPE in the search
   space of ``hypergrad compare`` (:class:`~hypergrad.baselines.SearchSpace`, one learning rate
   and one momentum per group), one inner training per trial on the batches of its step, the
   same value as :class:`~hypergrad.baselines.OptunaObjective` (a failed or exploded trial is
   told ``fail_value``). Trial ``k``'s sampler is seeded by ``(seed, k)`` and sees the trials
   so far, so a resumed run draws what an uninterrupted one would.
2. **Refinement**: the sign rule of :mod:`hypergrad.strategies.sign` (initial step 0.5) from
   each of the ``refine_from`` best trials in turn, the remaining search steps shared out.
3. **Selection**: the start, the trials and the refined points are the pool; the ``top`` best
   are re-evaluated on the reserved batch orders with the start, as for ``"sign"``.

The global phase can also come from outside: :meth:`HybridStrategy.start_from_trials` takes
trials evaluated elsewhere (an Optuna study's, e.g. TPE trials that several worker processes ran
into one storage, :mod:`hypergrad.studies`) as the global phase and plans the refinement from
their ``refine_from`` best.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hypergrad._imports import optional_import
from hypergrad.baselines import SearchSpace, _legacy, to_hparams
from hypergrad.config import TuneConfig
from hypergrad.objective import MetaObjective
from hypergrad.records import MetaStepRecord, finite_or_none
from hypergrad.strategies.base import SearchState, _clone, _finite
from hypergrad.strategies.sign import SELECTION_SALTS, SignRule, SignState, SignStrategy

__all__ = ["HybridState", "HybridStrategy"]


@dataclass(kw_only=True)
class HybridState(SignState):
    """:class:`SignState` plus the global phase's trials and the refinement's starts.

    Attributes:
        trials: ``{"params": {...}, "value": told value}`` of every TPE trial, in order.
        starts: the refinement's starts (the best trials), ``run`` the current one.
        run_steps: the search steps at which each refinement run begins.
    """

    trials: list[dict[str, Any]] = field(default_factory=list)
    starts: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    run: int = -1
    run_steps: list[int] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "trials": [dict(t) for t in self.trials],
                "starts": [[h.clone() for h in s] for s in self.starts], "run": self.run,
                "run_steps": list(self.run_steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        # checkpoints written before the rename name alpha "lr:<group>"
        self.trials = [{**t, "params": _legacy(dict(t["params"]))} for t in state["trials"]]
        self.starts = [tuple(s) for s in state["starts"]]
        self.run = int(state["run"])
        self.run_steps = [int(s) for s in state["run_steps"]]


class HybridStrategy(SignStrategy):
    """TPE for a part of the budget, then the sign rule from the best trials, then the selection.

    Args:
        global_fraction: the global phase's share of the budget when ``config.global_trials`` is not set.
        refine_from: how many of the best trials the refinement starts from.
        rule: the refinement's step-size rule (default: initial step 0.5).
        top, salts, space: as for :class:`~hypergrad.strategies.sign.SignStrategy`.
    """

    name = "hybrid"

    def __init__(
        self, *, global_fraction: float = 0.3, refine_from: int = 2, rule: SignRule | None = None, top: int = 2,
        salts: Sequence[int] = SELECTION_SALTS, space: SearchSpace | None = None,
    ) -> None:
        super().__init__(rule=rule or SignRule(step0=0.5), top=top, salts=salts, space=space)
        if not 0.0 < global_fraction < 1.0:
            raise ValueError(f"global_fraction must lie in (0, 1), got {global_fraction!r}")
        if isinstance(refine_from, bool) or not isinstance(refine_from, int) or refine_from < 1:
            raise ValueError(f"refine_from must be an integer >= 1, got {refine_from!r}")
        self.global_fraction = global_fraction
        self.refine_from = refine_from

    def min_budget(self) -> int:
        return super().min_budget() + 1

    def global_trials(self, config: TuneConfig, budget: int) -> int:
        """TPE trials: ``config.global_trials`` or ``global_fraction`` of the budget, leaving search steps."""
        n = config.global_trials if config.global_trials is not None else round(self.global_fraction * budget)
        return max(1, min(n, budget - self.selection_cost(budget) - 2))

    def init(self, objective: MetaObjective, config: TuneConfig) -> HybridState:
        base = super().init(objective, config)
        state = HybridState(hparams=base.hparams, best=base.best, estimator=base.estimator, start=base.start)
        state.reset_rule(self.rule.step0)
        state.phase = "global"
        return state

    def step(self, objective: MetaObjective, config: TuneConfig, state: SearchState) -> MetaStepRecord:
        if not isinstance(state, HybridState):
            raise TypeError(f"the hybrid strategy needs a HybridState, got {type(state).__name__}")
        if state.budget is None:
            state.budget = self.check_budget(self.default_budget(config))
        if state.phase == "global" and state.step_count >= self.global_trials(config, state.budget):
            self._plan_refinement(state)
        if state.phase == "global":
            return self._trial(objective, config, state)
        if state.phase == "search" and state.run + 1 < len(state.run_steps) and \
                state.step_count >= state.run_steps[state.run + 1]:
            self._next_run(state)
        return super().step(objective, config, state)

    # ------------------------------------------------------------------ the global phase
    @staticmethod
    def trial_seed(objective: MetaObjective, k: int) -> int:
        """The TPE seed of trial ``k``: a function of the run's seed and ``k`` only (not of a process)."""
        return (objective.seed(k) * 7919 + 1) % (2**31)

    def fail_value(self, objective: MetaObjective) -> float:
        """What a failed or exploded trial is told: twice the meta loss of the untrained :math:`w_0`."""
        with torch.no_grad():
            return 2.0 * float(objective.meta_loss(objective.problem.w0))

    def _trial(self, objective: MetaObjective, config: TuneConfig, state: HybridState) -> MetaStepRecord:
        """One TPE trial (one inner training on the batches of this step)."""
        optuna = optional_import("optuna", "optuna", purpose="the hybrid strategy's TPE phase")
        t0 = time.perf_counter()
        k = state.step_count
        spec = objective.spec
        dists = {}
        for g in spec.groups:
            dists[f"alpha:{g}"] = optuna.distributions.FloatDistribution(self.space.lr_low, self.space.lr_high,
                                                                         log=True)
        for g in spec.groups:
            dists[f"momentum:{g}"] = optuna.distributions.FloatDistribution(self.space.momentum_low,
                                                                            self.space.momentum_high)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=self.trial_seed(objective, k)),
                                        direction="minimize")
            for t in state.trials:
                study.add_trial(optuna.trial.create_trial(params=t["params"], distributions=dists, value=t["value"]))
            trial = study.ask()
            params = self.space.suggest(trial, spec)
        finally:
            optuna.logging.set_verbosity(verbosity)
        hp = to_hparams(spec, params, objective.problem.w0[0].dtype)
        loss = objective.value(hp, k)
        fail = self.fail_value(objective)
        told = loss if _finite(loss) and loss <= fail else fail
        state.trials.append({"params": dict(params), "value": told})
        state.points.append((k, loss if _finite(loss) else math.inf, hp))
        state.observe(hp, loss, k)
        state.step_count += 1
        val = loss if objective.meta_split == "val" else None
        record = MetaStepRecord(step=k, meta_loss=finite_or_none(loss), val_loss=finite_or_none(val), train_loss=None,
                                action="trial", seconds=time.perf_counter() - t0, hyperparameters=spec.describe(hp))
        state.history.append(record)
        return record

    def _plan_refinement(self, state: HybridState) -> None:
        """The best distinct trials become the starts; the remaining search steps are shared out."""
        ranked = sorted((p for p in state.points if _finite(p[1])), key=lambda p: (p[1], p[0]))
        starts: list[tuple[torch.Tensor, ...]] = []
        for _, _, hp in ranked:
            if len(starts) >= self.refine_from:
                break
            if not any(all(torch.equal(a, b) for a, b in zip(hp, s)) for s in starts):
                starts.append(_clone(hp))
        if not starts:
            starts = [_clone(state.start)]
        first, total = state.step_count, self.search_steps(state)
        share = max((total - first) // len(starts), 1)
        state.starts = starts
        state.run_steps = [first + i * share for i in range(len(starts)) if first + i * share < total]
        state.phase = "search"
        state.run = -1
        self._next_run(state)

    def _next_run(self, state: HybridState) -> None:
        state.run += 1
        state.set_hparams(state.starts[state.run])
        state.reset_rule(self.rule.step0)

    # ------------------------------------------------------------------ a global phase run elsewhere
    def start_from_trials(
        self, objective: MetaObjective, state: SearchState, trials: Sequence[dict[str, Any]], *, budget: int,
    ) -> None:
        """Take ``trials`` as the global phase and plan the refinement from their ``refine_from`` best.

        Each trial is ``{"step": batch salt, "value": told value, "loss": meta loss (inf: failed),
        "params": {"alpha:<g>": .., "momentum:<g>": ..}, "seconds": .., "action": ..}``; it
        becomes a point of the selection's pool and a record of the history. The next step
        continues after the largest salt; ``budget`` (inner trainings, the trials' salts
        included) fixes the refinement's and the selection's share.

        Raises:
            ValueError: after a step was taken, without trials, or with a budget too small for
                two search steps and the selection.
        """
        if not isinstance(state, HybridState):
            raise TypeError(f"the hybrid strategy needs a HybridState, got {type(state).__name__}")
        if state.history or state.trials:
            raise ValueError("start_from_trials must come before the first step")
        if not trials:
            raise ValueError("start_from_trials needs at least one trial")
        first = max(int(t["step"]) for t in trials) + 1
        need = first + self.selection_cost(budget) + 2
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < need:
            raise ValueError(f"budget={budget!r} leaves no refinement after trials up to step {first - 1}: "
                             f"need at least {need} (two search steps and {self.selection_cost(max(need, 1))} "
                             "selection runs after them)")
        spec = objective.spec
        dtype = objective.problem.w0[0].dtype
        for t in sorted(trials, key=lambda t: int(t["step"])):
            hp = to_hparams(spec, dict(t["params"]), dtype)
            loss = float(t["loss"]) if t.get("loss") is not None else math.inf
            state.trials.append({"params": _legacy(dict(t["params"])), "value": t["value"]})
            state.points.append((int(t["step"]), loss if _finite(loss) else math.inf, hp))
            state.observe(hp, loss, int(t["step"]))
            val = loss if objective.meta_split == "val" else None
            state.history.append(MetaStepRecord(
                step=int(t["step"]), meta_loss=finite_or_none(loss), val_loss=finite_or_none(val), train_loss=None,
                action=str(t.get("action", "trial")), seconds=float(t.get("seconds") or 0.0),
                hyperparameters=spec.describe(hp)))
        state.budget = budget
        state.step_count = first
        self._plan_refinement(state)
