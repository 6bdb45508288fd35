r"""Strategies: meta loops over a :class:`~hypergrad.objective.MetaObjective`.

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

A new meta loop is a subclass registered in :data:`STRATEGIES`; the Tuner runs it
unchanged (``Tuner(problem, config, strategy=...)``). The built-in one:

* ``"gradient"`` (:class:`GradientStrategy`, the paper's method, §5.3): every meta step
  trains from :math:`w_0` on fresh minibatches, takes the hypergradient of the meta loss
  (:meth:`MetaObjective.hypergradient`), applies the divergence guards of
  :mod:`hypergrad.divergence` and an Adam step on :math:`(\log\alpha, \operatorname{logit}\beta)`.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from hypergrad._tree import tree_norm
from hypergrad.config import TuneConfig
from hypergrad.divergence import (
    DivergenceError,
    decide,
    detect,
    fallback_event,
    fallback_method,
    fallback_sound,
)
from hypergrad.methods import get_method, method_names
from hypergrad.objective import MetaObjective
from hypergrad.records import MetaStepRecord, TuneResult, finite_or_none

__all__ = [
    "STRATEGIES",
    "GradientState",
    "GradientStrategy",
    "SearchState",
    "Strategy",
    "final_evaluation",
    "get_strategy",
]

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
        """The budget when none is given: ``config.meta_steps`` steps."""
        return config.meta_steps

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


# ---------------------------------------------------------------------- "gradient"
@dataclass(kw_only=True)
class GradientState(SearchState):
    """:class:`SearchState` plus the meta optimiser (Adam) and the backoff's meta-lr scale."""

    optimizer: torch.optim.Optimizer
    lr_scale: float = 1.0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict(), "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scale = float(state["lr_scale"])


class GradientStrategy(Strategy):
    """Today's meta loop (paper §5.3): hypergradient, divergence guards, Adam step; one inner training per step.

    Each meta step ``k``

    1. restarts the inner model from :math:`w_0` and trains it for ``T`` steps on
       ``objective.batches(k)``;
    2. takes the meta loss at :math:`w_T` and its hypergradient by ``config.method``
       (RBP methods averaged over ``hyper_batches`` minibatches);
    3. detects divergence and decides by ``on_divergence`` (:mod:`hypergrad.divergence`);
    4. tracks the best hyperparameters by validation loss, and takes an Adam step
       (``clip``, ``normalize`` and a ``cosine`` meta-lr schedule as configured).
    """

    name = "gradient"

    def init(self, objective: MetaObjective, config: TuneConfig) -> GradientState:
        if objective.problem.parallel is not None and get_method(config.method).family == "unrolled":
            raise ValueError(
                f"method {config.method!r} is not supported with torch.distributed (it would need differentiable "
                f"collectives through all inner steps); use one of {', '.join(method_names('implicit'))}"
            )
        base = super().init(objective, config)
        optimizer = torch.optim.Adam(base.hparams, lr=config.meta_lr)
        return GradientState(hparams=base.hparams, best=base.best, optimizer=optimizer)

    @staticmethod
    def meta_lr(config: TuneConfig, state: GradientState) -> float:
        """Adam's learning rate at ``state.step_count``: ``meta_lr`` times the backoff scale (and the schedule)."""
        base = config.meta_lr * state.lr_scale
        if config.lr_schedule == "cosine":
            frac = state.step_count / max(config.meta_steps, 1)
            return base * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
        return base

    def step(self, objective: MetaObjective, config: TuneConfig, state: SearchState) -> MetaStepRecord:
        if not isinstance(state, GradientState):
            raise TypeError(f"the gradient strategy needs a GradientState, got {type(state).__name__}")
        cfg, problem = config, objective.problem
        t0 = time.perf_counter()
        k = state.step_count
        current = _clone(state.hparams)
        batches = objective.batches(k)
        first = objective.hypergradient(current, k, method=cfg.method, batches=batches)
        n = problem.num_tensors
        with torch.no_grad():
            meta_loss = float(first.meta_loss)
            if cfg.meta_loss == "val":
                train_loss, val_loss = float(problem.eval_loss(first.state[:n], "train")), meta_loss
            else:
                train_loss, val_loss = meta_loss, float(problem.eval_loss(first.state[:n], "val"))
        used, grad = first, first.grad
        gnorm = tree_norm(grad)
        loss_ok = _finite(val_loss) and _finite(train_loss) and _finite(meta_loss)
        events = detect(
            meta_loss=meta_loss, val_loss=val_loss, train_loss=train_loss, hypergrad_norm=gnorm,
            solver_diverged=first.diverged, first_val_loss=state.history[0].val_loss if state.history else None,
            blowup_ratio=cfg.blowup_ratio, explode_threshold=cfg.explode_threshold,
        )
        fallback_ok = False
        target = fallback_method(events, cfg.on_divergence, cfg.method, loss_ok=loss_ok)
        if target is not None:
            used = objective.hypergradient(current, k, method=target, batches=batches)
            grad = used.grad
            gnorm = tree_norm(grad)
            events.append(fallback_event(target))
            fallback_ok = fallback_sound(gnorm, diverged=used.diverged, explode_threshold=cfg.explode_threshold)
        if loss_ok:
            state.observe(current, val_loss, k)
        decision = decide(events, cfg.on_divergence, hypergrad_norm=gnorm, clip=cfg.clip,
                          explode_threshold=cfg.explode_threshold, fallback_ok=fallback_ok)

        def record(action: str) -> MetaStepRecord:
            rec = MetaStepRecord(
                step=k, meta_loss=finite_or_none(meta_loss), val_loss=finite_or_none(val_loss),
                train_loss=finite_or_none(train_loss), hypergrad_norm=finite_or_none(gnorm),
                hypergrad_spread=finite_or_none(used.spread), solver=used.solver, events=tuple(events),
                action=action, meta_lr=self.meta_lr(cfg, state), seconds=time.perf_counter() - t0,
                inner_seconds=used.inner_seconds, hyperparameters=objective.spec.describe(current),
            )
            state.history.append(rec)
            return rec

        if decision.stop:
            record(decision.action)
            raise DivergenceError(f"meta step {k}: {', '.join(decision.unhandled)} (on_divergence='stop')")
        if decision.restore_best:
            state.set_hparams(state.best)
        state.lr_scale *= decision.lr_factor
        if decision.apply:
            if decision.scale is not None:
                grad = tuple(g * decision.scale for g in grad)
            if cfg.normalize and gnorm > 0:
                grad = tuple(g / tree_norm(grad) for g in grad)
            for group in state.optimizer.param_groups:
                group["lr"] = self.meta_lr(cfg, state)
            for h, g in zip(state.hparams, grad):
                h.grad = g.to(h.dtype)
            state.optimizer.step()
            state.optimizer.zero_grad(set_to_none=True)
        state.step_count += 1
        return record(decision.action)


STRATEGIES: dict[str, type[Strategy]] = {"gradient": GradientStrategy}


def get_strategy(strategy: str | Strategy) -> Strategy:
    """A :class:`Strategy` instance from a name in :data:`STRATEGIES` (or the instance itself)."""
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str) and strategy in STRATEGIES:
        return STRATEGIES[strategy]()
    raise ValueError(
        f"strategy={strategy!r} is not allowed; expected one of {', '.join(STRATEGIES)} or a Strategy instance"
    )
