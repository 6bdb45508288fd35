r"""The ``"online"`` strategy: ONE inner training, never restarted, tuned while it runs.

One-pass hyperparameter tuning (Lorraine, Vicol & Duvenaud, AISTATS 2020; Clarke, Oldewage &
Hernández-Lobato, ICLR 2022). ``inner_steps = T`` is the length of the one run and
``online_period = P`` the inner steps between two meta steps; ``T = S P`` gives ``S``
periods. Period :math:`k` (one :meth:`OnlineStrategy.step`)

1. trains the current state :math:`h_{kP}` for ``P`` steps of SGD with momentum with the
   current hyperparameters :math:`\theta_k` on steps :math:`[kP, (k+1)P)` of the run's batch
   schedule (``objective.batches(0)``), reaching :math:`h_t`, :math:`t = (k+1)P`;
2. takes the meta loss (the validation loss of :math:`w_t`) and its hypergradient at
   :math:`h_t` by ``config.method``:

   * RBP methods (default ``neumann``; ``cg``, ``rbp``, ``gmres``):
     :meth:`~hypergrad.objective.MetaObjective.fixed_point_hypergradient` at :math:`h_t`
     (Eq. 8-9 on the step map, averaged over the ``M = hyper_batches`` minibatches of
     ``hyper_batches(k)``), as if :math:`h_t` were the fixed point;
   * ``bptt`` / ``forward``: the exact gradient through the period's ``P`` steps from
     :math:`h_{kP}` (``tbptt``: its last ``min(K, P)``), the earlier periods held fixed;

3. applies the tuner's divergence guards (:mod:`hypergrad.divergence`: a non-finite or
   exploding hypergradient is skipped, clipped or backed off by ``on_divergence``) and one
   Adam step at ``meta_lr`` on :math:`(\log\alpha, \operatorname{logit}\beta)`: :math:`\theta_{k+1}`.

The last period takes no meta step (no later step would use it; its record's action is
``"end"``). A period whose inner state blows up (a non-finite loss, or a validation loss
above ``blowup_ratio`` times the first period's) is rolled back to :math:`h_{kP}` and
retried with the best hyperparameters so far and half the meta lr (action ``"rollback"``),
at most :data:`MAX_ROLLBACKS` times in a row; ``on_divergence="stop"`` raises at once.

The result: :attr:`~hypergrad.records.TuneResult.weights` (the run's :math:`w_T`),
:attr:`~hypergrad.records.TuneResult.schedule` (:math:`\theta_0, \dots, \theta_{S-1}` stacked:
segment :math:`k` of ``spec.with_segments(S)`` covers steps :math:`[kP, (k+1)P)`, so
``torch.optim.SGD`` with :class:`~hypergrad.hyperparams.SGDSchedule` reproduces the run),
``best = final =`` :math:`\theta_{S-1}` (the values in force at the end: a period's
validation loss measures the run so far, not its hyperparameters alone) and ``evaluation``
``{"best", "final"}``: the run's weights evaluated as they are (no retraining).

Cost: one training of ``T`` steps plus ``S - 1`` hypergradients, each the validation-loss
gradient and (Neumann-RBP) ``M (K + 1)`` vector-Jacobian products of the step map;
``budget`` is not used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hypergrad._tree import Tree, tree_norm
from hypergrad.config import TuneConfig, check_online
from hypergrad.divergence import (
    BACKOFF_FACTOR,
    DivergenceError,
    decide,
    detect,
    fallback_event,
    fallback_method,
    fallback_sound,
)
from hypergrad.methods import get_method, gradient, method_names
from hypergrad.objective import MetaObjective
from hypergrad.records import HypergradResult, MetaStepRecord, TuneResult, finite_or_none
from hypergrad.strategies.base import SearchState, Strategy, _clone, _finite
from hypergrad.strategies.gradient import apply_decision

__all__ = ["MAX_ROLLBACKS", "OnlineState", "OnlineStrategy"]

#: Consecutive roll-backs of one period before the run is declared diverged.
MAX_ROLLBACKS = 3
#: The salt of the one run's batch schedule (``objective.batches(RUN_SALT)``).
RUN_SALT = 0
_INNER_BLOWUPS = ("nonfinite_loss", "loss_blowup")


@dataclass(kw_only=True)
class OnlineState(SearchState):
    """:class:`SearchState` plus the one run: its state :math:`h_t`, step ``t``, the hyperparameters
    of every finished period, and the meta optimiser (Adam) with the backoff's meta-lr scale.

    ``step_count`` counts the strategy's steps (the salt of their hyper-batches and Dropout
    masks), roll-backs included; ``inner_step`` the steps of the one run.
    """

    optimizer: torch.optim.Optimizer
    inner: tuple[Tensor, ...]
    inner_step: int = 0
    trajectory: list[tuple[Tensor, ...]] = field(default_factory=list)
    lr_scale: float = 1.0
    rollbacks: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "inner": [t.detach().clone() for t in self.inner],
            "inner_step": self.inner_step,
            "trajectory": [[t.clone() for t in theta] for theta in self.trajectory],
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["inner"]) != len(self.inner) or any(
            tuple(a.shape) != tuple(b.shape) for a, b in zip(state["inner"], self.inner)
        ):
            raise ValueError("checkpoint's inner state does not match this problem's weights")
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        device = self.inner[0].device
        self.inner = tuple(t.to(device) for t in state["inner"])
        self.inner_step = int(state["inner_step"])
        self.trajectory = [tuple(t.to(device) for t in theta) for theta in state["trajectory"]]
        self.lr_scale = float(state["lr_scale"])
        self.rollbacks = int(state["rollbacks"])


class OnlineStrategy(Strategy):
    """One training of ``inner_steps`` steps with a meta step every ``online_period`` (module docstring)."""

    name = "online"

    def init(self, objective: MetaObjective, config: TuneConfig) -> OnlineState:
        check_online(config)
        family = get_method(config.method).family
        if objective.problem.parallel is not None and family != "implicit":
            raise ValueError(
                f"method {config.method!r} is not supported with torch.distributed; use one of "
                f"{', '.join(method_names('implicit'))}"
            )
        if objective.spec.segments != 1:
            raise ValueError(f"the online strategy tunes constant hyperparameters per period; the problem has "
                             f"segments={objective.spec.segments} (its schedule is the online trajectory)")
        base = super().init(objective, config)
        optimizer = torch.optim.Adam(base.hparams, lr=config.meta_lr)
        inner = tuple(t.detach() for t in objective.problem.initial_state())
        return OnlineState(hparams=base.hparams, best=base.best, optimizer=optimizer, inner=inner)

    def default_budget(self, config: TuneConfig) -> float:
        """The number of periods ``S = inner_steps / online_period`` (``budget`` is not used)."""
        return config.inner_steps // config.online_period

    def done(self, config: TuneConfig, state: SearchState, budget: float) -> bool:
        """Whether the one run has reached ``inner_steps`` (the budget plays no part)."""
        if not isinstance(state, OnlineState):
            raise TypeError(f"the online strategy needs an OnlineState, got {type(state).__name__}")
        return state.inner_step >= config.inner_steps

    @staticmethod
    def meta_lr(config: TuneConfig, state: OnlineState) -> float:
        """Adam's learning rate: ``meta_lr`` times the backoff scale (``cosine``: over the ``S`` periods)."""
        base = config.meta_lr * state.lr_scale
        if config.lr_schedule == "cosine":
            frac = state.inner_step / config.inner_steps
            return base * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
        return base

    # ------------------------------------------------------------------ one period
    def _period(
        self, objective: MetaObjective, config: TuneConfig, h0: Tree, hp: Tree, batches: Any, salt: int, last: bool
    ) -> tuple[Tree, HypergradResult | None, float]:
        """Train ``P`` steps from ``h0``; the hypergradient at the end (``None`` for the last period)."""
        problem, method = objective.problem, config.method
        family = get_method(method).family
        start = time.perf_counter()
        if last or family == "implicit":
            h_t = problem.train(hp, batches, state=h0)
            seconds = time.perf_counter() - start
            if last:
                return h_t, None, seconds
            return h_t, objective.fixed_point_hypergradient(h_t, hp, salt, method=method), seconds
        out = self._through_period(objective, config, h0, hp, batches)
        return out.state, out, time.perf_counter() - start

    @staticmethod
    def _through_period(objective: MetaObjective, config: TuneConfig, h0: Tree, hp: Tree, batches: Any
                        ) -> HypergradResult:
        """BPTT / TBPTT / forward mode through the period's steps from ``h0`` (the earlier ones fixed)."""
        problem, method = objective.problem, config.method
        n, steps = problem.num_tensors, len(batches)

        def loss_fn(state: Tree) -> Tensor:
            return objective.meta_loss(state[:n])

        if get_method(method).family == "forward":
            out = gradient(lambda s, p, b: problem.functional_step(s, p, *b), h0, hp, loss_fn, method=method,
                           num_steps=steps, inputs=list(batches))
        else:
            k = min(config.truncate, steps) if get_method(method).uses_truncate else steps
            tail = iter(batches[steps - k:])

            def step(state: Tree, p: Tree) -> Tree:
                return problem.step(state, p, *next(tail))

            def run(state: Tree, p: Tree, num_steps: int) -> Tree:
                return problem.train(p, batches[:num_steps], state=state)

            out = gradient(step, h0, hp, loss_fn, method=method, num_steps=steps, truncate=k, run=run)
        return HypergradResult(grad=tuple(g.detach() for g in out.grads), state=tuple(out.state),
                               meta_loss=out.loss.detach())

    def step(self, objective: MetaObjective, config: TuneConfig, state: SearchState) -> MetaStepRecord:
        if not isinstance(state, OnlineState):
            raise TypeError(f"the online strategy needs an OnlineState, got {type(state).__name__}")
        cfg, problem = config, objective.problem
        t0 = time.perf_counter()
        k = state.step_count
        begin, end = state.inner_step, state.inner_step + cfg.online_period
        last = end >= cfg.inner_steps
        current = _clone(state.hparams)
        hp = tuple(h.detach().to(problem.device) for h in current)
        batches = objective.batches(RUN_SALT)[begin:end]
        with problem.rng(objective.seed(k)):
            h_t, first, inner_seconds = self._period(objective, cfg, state.inner, hp, batches, k, last)
            n = problem.num_tensors
            with torch.no_grad():
                meta_loss = float(first.meta_loss) if first is not None else float(objective.meta_loss(h_t[:n]))
                if cfg.meta_loss == "val":
                    val_loss, train_loss = meta_loss, None
                else:
                    val_loss, train_loss = float(problem.eval_loss(h_t[:n], "val")), meta_loss
        # No training-set pass per period (it would cost more than the period's steps); the guards
        # check the meta and validation losses.
        check_train = meta_loss if train_loss is None else train_loss
        used, grad = first, (first.grad if first is not None else None)
        gnorm = tree_norm(grad) if grad is not None else 0.0
        loss_ok = _finite(val_loss) and _finite(check_train) and _finite(meta_loss)
        first_val = next((r.val_loss for r in state.history if r.action != "rollback"), None)
        events = detect(
            meta_loss=meta_loss, val_loss=val_loss, train_loss=check_train, hypergrad_norm=gnorm,
            solver_diverged=first is not None and first.diverged, first_val_loss=first_val,
            blowup_ratio=cfg.blowup_ratio, explode_threshold=cfg.explode_threshold,
        )

        def record(action: str) -> MetaStepRecord:
            rec = MetaStepRecord(
                step=k, meta_loss=finite_or_none(meta_loss), val_loss=finite_or_none(val_loss),
                train_loss=finite_or_none(train_loss),
                hypergrad_norm=finite_or_none(gnorm) if used is not None else None,
                hypergrad_spread=finite_or_none(used.spread) if used is not None else None,
                solver=used.solver if used is not None else None, events=tuple(events), action=action,
                meta_lr=self.meta_lr(cfg, state), seconds=time.perf_counter() - t0, inner_seconds=inner_seconds,
                hyperparameters=objective.spec.describe(current), inner_step=end,
            )
            state.history.append(rec)
            return rec

        if any(e in _INNER_BLOWUPS for e in events):  # the run itself blew up: undo this period
            if cfg.on_divergence == "stop" or state.rollbacks >= MAX_ROLLBACKS:
                record("stop")
                raise DivergenceError(
                    f"online period {begin}..{end}: {', '.join(events)} (on_divergence={cfg.on_divergence!r}, "
                    f"{state.rollbacks} roll-back(s) of this period); a smaller init_lr or meta_lr may help")
            state.rollbacks += 1
            state.set_hparams(state.best)
            state.lr_scale *= BACKOFF_FACTOR
            state.step_count += 1
            return record("rollback")
        state.inner = tuple(t.detach() for t in h_t)
        state.inner_step = end
        state.trajectory.append(current)
        state.rollbacks = 0
        state.observe(current, val_loss, k)
        if first is None:  # the last period: no meta step
            state.step_count += 1
            return record("end")

        fallback_ok = False
        target = fallback_method(events, cfg.on_divergence, cfg.method, loss_ok=loss_ok)
        if target is not None:
            used = objective.fixed_point_hypergradient(h_t, hp, k, method=target)
            grad = used.grad
            gnorm = tree_norm(grad)
            events.append(fallback_event(target))
            fallback_ok = fallback_sound(gnorm, diverged=used.diverged, explode_threshold=cfg.explode_threshold)
        decision = decide(events, cfg.on_divergence, hypergrad_norm=gnorm, clip=cfg.clip,
                          explode_threshold=cfg.explode_threshold, fallback_ok=fallback_ok)
        if decision.stop:
            record(decision.action)
            raise DivergenceError(f"online period {begin}..{end}: {', '.join(decision.unhandled)} "
                                  "(on_divergence='stop')")
        apply_decision(cfg, state, decision, grad, gnorm, self.meta_lr)
        state.step_count += 1
        return record(decision.action)

    # ------------------------------------------------------------------ the result
    def finish(self, objective: MetaObjective, config: TuneConfig, state: SearchState) -> TuneResult:
        """The run's weights evaluated as they are, its schedule, and the last period's values."""
        if not isinstance(state, OnlineState):
            raise TypeError(f"the online strategy needs an OnlineState, got {type(state).__name__}")
        n = objective.problem.num_tensors
        weights = tuple(t.detach().clone() for t in state.inner[:n])
        trajectory = state.trajectory or [_clone(state.hparams)]
        final = _clone(trajectory[-1])
        segments = len(trajectory)
        schedule = final if segments == 1 else tuple(
            torch.stack([theta[i] for theta in trajectory]) for i in range(len(final)))
        report = objective.evaluate_weights(weights)
        history = state.history
        return TuneResult(
            spec=objective.spec, config=config, best=final, final=_clone(final), history=history,
            evaluation={"best": report, "final": dict(report)},
            best_step=max(len(history) - 1, 0),
            info={
                "strategy": self.name, "hypergradient": config.method, "inner_steps": state.inner_step,
                "online_period": config.online_period, "segments": segments,
                "meta_updates": sum(r.action in ("update", "clipped", "fallback") for r in history),
                "rollbacks": sum(r.action == "rollback" for r in history),
            },
            weights=weights, schedule=schedule, schedule_spec=objective.spec.with_segments(segments),
        )
