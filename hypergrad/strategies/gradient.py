r"""The ``"gradient"`` strategy: today's meta loop (paper §5.3), hypergradient -> guards -> Adam step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

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
from hypergrad.records import MetaStepRecord, finite_or_none
from hypergrad.strategies.base import SearchState, Strategy, _clone, _finite

__all__ = ["GradientState", "GradientStrategy", "apply_decision"]


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


def apply_decision(
    config: TuneConfig,
    state: Any,
    decision: Any,
    grad: tuple[torch.Tensor, ...],
    gnorm: float,
    meta_lr: Callable[[TuneConfig, Any], float],
) -> None:
    """Carry out a divergence decision (:func:`hypergrad.divergence.decide`) and, where it allows, one Adam step.

    Restores the best hyperparameters and scales the meta lr as decided; then the hypergradient,
    clipped (``decision.scale``) and normalised as configured, goes to ``state.optimizer`` at
    ``meta_lr(config, state)`` (read after the backoff's scale). ``state`` carries ``hparams``,
    ``best``, ``optimizer`` and ``lr_scale`` (the gradient and online strategies' states).
    """
    if decision.restore_best:
        state.set_hparams(state.best)
    state.lr_scale *= decision.lr_factor
    if not decision.apply:
        return
    if decision.scale is not None:
        grad = tuple(g * decision.scale for g in grad)
    if config.normalize and gnorm > 0:
        grad = tuple(g / tree_norm(grad) for g in grad)
    for group in state.optimizer.param_groups:
        group["lr"] = meta_lr(config, state)
    for h, g in zip(state.hparams, grad):
        h.grad = g.to(h.dtype)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)


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
        family = get_method(config.method).family
        if config.segments > 1 and family == "implicit":
            raise ValueError(f"segments={config.segments} (a schedule) needs method bptt, tbptt or forward; "
                             f"{config.method} differentiates at the last inner state only")
        if objective.problem.parallel is not None and family != "implicit":
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
        apply_decision(cfg, state, decision, grad, gnorm, self.meta_lr)
        state.step_count += 1
        return record(decision.action)


