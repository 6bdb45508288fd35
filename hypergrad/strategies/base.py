r"""The strategy protocol: :class:`SearchState`, :class:`Strategy` and the shared final evaluation.

A strategy is a small value, like an Optuna sampler or an optax transformation. It gets
the meta objective, the config and a budget, keeps its mutable state in a
:class:`SearchState` (so a :class:`~hypergrad.tuner.Tuner` can checkpoint, resume and
observe any strategy the same way), and produces a :class:`~hypergrad.records.TuneResult`
whose history holds one typed :class:`~hypergrad.records.MetaStepRecord` per step:

* :meth:`Strategy.init` builds the state (the current and best hyperparameters, ...);
* :meth:`Strategy.step` runs one step, appends its record to ``state.history`` and returns it;
* :meth:`Strategy.done` says when the budget is spent (default: ``budget`` steps);
* :meth:`Strategy.finish` evaluates the result (default: :func:`final_evaluation`);
* :meth:`Strategy.run` is the loop of the four (a strategy may override it; it then calls
  ``on_record`` once per record).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from hypergrad.config import TuneConfig
from hypergrad.objective import MetaObjective
from hypergrad.records import MetaStepRecord, TuneResult

__all__ = ["SearchState", "Strategy", "final_evaluation"]

logger = logging.getLogger("hypergrad")


def _clone(tree: Sequence[Tensor]) -> tuple[Tensor, ...]:
    return tuple(t.detach().clone() for t in tree)


def _finite(x: float) -> bool:
    return math.isfinite(x)


@dataclass(kw_only=True)
class SearchState:
    """What every strategy keeps: the current and best hyperparameters and the history.

    Attributes:
        hparams: the current unconstrained hyperparameters (leaf tensors a meta
            optimiser may update in place).
        best: the hyperparameters with the lowest validation loss seen so far.
        best_loss: that loss (``inf`` before the first finite one).
        best_step: the step that evaluated ``best``.
        step_count: the next step (its batch salt).
        history: one record per step taken.
    """

    hparams: tuple[Tensor, ...]
    best: tuple[Tensor, ...]
    best_loss: float = math.inf
    best_step: int = 0
    step_count: int = 0
    history: list[MetaStepRecord] = field(default_factory=list)

    def observe(self, hparams: Sequence[Tensor], val_loss: float, step: int) -> bool:
        """Track the best: ``hparams`` (evaluated at ``step``) become it if ``val_loss`` is finite and lower."""
        if _finite(val_loss) and val_loss < self.best_loss:
            self.best_loss, self.best, self.best_step = val_loss, tuple(hparams), step
            return True
        return False

    def set_hparams(self, values: Sequence[Tensor]) -> None:
        """Copy ``values`` into the current hyperparameters (in place: a meta optimiser keeps its tensors)."""
        with torch.no_grad():
            for h, v in zip(self.hparams, values):
                h.copy_(v)

    def warm_start(self, hparams: Sequence[Tensor], *, best_loss: float, step: int) -> None:
        """Start from ``hparams`` as the current and best, with ``best_loss`` so far, at step ``step``."""
        if self.history:
            raise ValueError(f"warm_start must come before the first step; {len(self.history)} were taken")
        if len(hparams) != len(self.hparams) or any(
            tuple(h.shape) != tuple(s.shape) for h, s in zip(hparams, self.hparams)
        ):
            raise ValueError(
                f"warm_start hparams do not match this problem's layout: expected {len(self.hparams)} tensors of "
                f"shapes {[tuple(s.shape) for s in self.hparams]}"
            )
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"warm_start step must be an integer >= 0, got {step!r}")
        if isinstance(best_loss, bool) or not isinstance(best_loss, (int, float)) or math.isnan(best_loss):
            raise ValueError(f"warm_start best_loss must be a number (inf allowed), got {best_loss!r}")
        self.set_hparams(hparams)
        self.best = _clone(hparams)
        self.best_loss = float(best_loss)
        self.step_count = self.best_step = step

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, numbers and lists (what a checkpoint holds)."""
        return {
            "hparams": [h.detach().clone() for h in self.hparams],
            "history": [r.to_dict() for r in self.history],
            "best": [b.clone() for b in self.best],
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_step": self.best_step,
            "step_count": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["hparams"]) != len(self.hparams):
            raise ValueError("checkpoint does not match this problem's hyperparameter layout")
        if any(h.shape != s.shape for h, s in zip(self.hparams, state["hparams"])):
            raise ValueError("checkpoint does not match this problem's hyperparameter shapes")
        self.set_hparams(state["hparams"])
        self.history = [MetaStepRecord.from_dict(r) for r in state["history"]]
        self.best = tuple(b.clone() for b in state["best"])
        self.best_loss = math.inf if state["best_loss"] is None else float(state["best_loss"])
        self.best_step = int(state["best_step"])
        self.step_count = int(state["step_count"])


class Strategy(ABC):
    """A meta loop: ``init`` a state, ``step`` until ``done``, ``finish`` (see the module docstring)."""

    name: ClassVar[str] = ""

    def init(self, objective: MetaObjective, config: TuneConfig) -> SearchState:
        """The start: the configured initial hyperparameters, current and best."""
        start = tuple(h.requires_grad_(True) for h in objective.initial_hparams())
        return SearchState(hparams=start, best=_clone(start))

    @abstractmethod
    def step(self, objective: MetaObjective, config: TuneConfig, state: SearchState) -> MetaStepRecord:
        """One step: update ``state`` (``step_count`` included), append the record to its history, return it."""

    def default_budget(self, config: TuneConfig) -> float:
        """The budget when none is given: ``config.budget``, else ``config.meta_steps`` steps."""
        return config.meta_steps if config.budget is None else config.budget

    def done(self, config: TuneConfig, state: SearchState, budget: float) -> bool:
        """Whether ``budget`` is spent (default: one unit per step)."""
        return state.step_count >= budget

    def finish(self, objective: MetaObjective, config: TuneConfig, state: SearchState) -> TuneResult:
        """The result (default: :func:`final_evaluation`)."""
        return final_evaluation(objective, config, state)

    def run(
        self,
        objective: MetaObjective,
        config: TuneConfig,
        budget: float | None = None,
        *,
        state: SearchState | None = None,
        on_record: Callable[[MetaStepRecord], None] | None = None,
    ) -> TuneResult:
        """Step until :meth:`done`, calling ``on_record`` after each step, then :meth:`finish`.

        ``state`` continues a run (a resumed checkpoint); default: a fresh :meth:`init`.
        """
        budget = self.default_budget(config) if budget is None else budget
        state = self.init(objective, config) if state is None else state
        while not self.done(config, state, budget):
            record = self.step(objective, config, state)
            if on_record is not None:
                on_record(record)
        return self.finish(objective, config, state)


def final_evaluation(objective: MetaObjective, config: TuneConfig, state: SearchState) -> TuneResult:
    """Evaluate the initial, best and final hyperparameters on one identical inner run (salt ``-1``).

    A final update that blew the validation loss up (never guarded by a meta step) is reverted
    to the best. On this common run the exported best is no worse than the initial
    hyperparameters (the loop compared losses on different minibatch orders), and the final
    ones, never evaluated during the loop, may be the best.
    """
    initial = objective.initial_hparams()
    final = _clone(state.hparams)
    evaluation = {"initial": objective.evaluate(initial), "best": objective.evaluate(state.best)}
    evaluation["final"] = objective.evaluate(final)
    init_val, final_val = evaluation["initial"]["val_loss"], evaluation["final"]["val_loss"]
    blown = not _finite(final_val) or (config.blowup_ratio is not None and final_val > config.blowup_ratio * init_val)
    if blown and config.on_divergence != "stop":
        logger.warning("after the last meta step: validation loss %.4g blew up; restoring the best", final_val)
        state.set_hparams(state.best)
        final = tuple(b.clone() for b in state.best)
        evaluation["final"] = dict(evaluation["best"], reverted=1.0)

    def val(key: str) -> float:
        v = evaluation[key]["val_loss"]
        return v if _finite(v) else math.inf

    if val("initial") < val("best"):
        state.best, state.best_step = initial, 0
        evaluation["best"] = evaluation["initial"]
    if val("final") < val("best"):
        state.best, state.best_step = final, len(state.history)
        evaluation["best"] = evaluation["final"]
    return TuneResult(
        spec=objective.spec,
        config=config,
        best=tuple(b.clone() for b in state.best),
        final=final,
        history=state.history,
        evaluation=evaluation,
        best_step=state.best_step,
    )
