"""Typed results of the meta loop: a hypergradient, a meta step, a whole run.

* :class:`SolverStats`: what the fixed-point solves of one hypergradient report
  (averaged over the ``M`` hyper-batches);
* :class:`HypergradResult`: one inner run and its hypergradient;
* :class:`MetaStepRecord`: one meta step, as the history, ``results.json`` and
  checkpoints hold it (:meth:`MetaStepRecord.to_dict` gives the JSON keys and
  :meth:`MetaStepRecord.from_dict` reads them back);
* :class:`TuneResult`: the outcome of a run.

Floats in a record are JSON-ready: a non-finite loss or norm is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hypergrad.config import TuneConfig
from hypergrad.hyperparams import HyperSpec, SGDSchedule, segment_bounds, to_sgd_param_groups

__all__ = ["HypergradResult", "MetaStepRecord", "SolverStats", "TuneResult", "finite_or_none"]

Hyperparameters = dict[str, dict[str, Any]]


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def finite_or_none(x: float | None) -> float | None:
    """``float(x)`` if it is a finite number, else ``None`` (the JSON form of a loss or norm)."""
    return float(x) if x is not None and _finite(x) else None


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True, kw_only=True)
class SolverStats:
    """Statistics of the fixed-point solves of one hypergradient (RBP family).

    Attributes:
        method: the method that solved (``"neumann"`` after an RBP fallback).
        iterations: mean solver iterations (Neumann: terms) over the hyper-batches.
        residual: largest final residual.
        converged: every solve reached its tolerance.
        diverged: some solve diverged (a Neumann series cut short by ``stop_on_growth``
            is the safeguard at work, not a divergence).
        stop_reasons: the distinct reasons the solves stopped (``"growth"``, ``"max_iter"``, ...).
        spectral_radius: largest finite spectral-radius estimate (``nan``: none).
        skipped: why no solve ran (``"non-finite inner state"``); ``None`` when it ran.
    """

    method: str
    iterations: float = 0.0
    residual: float = 0.0
    converged: bool = False
    diverged: bool = False
    stop_reasons: tuple[str, ...] = ()
    spectral_radius: float = math.nan
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record's ``"solver"`` entry: ``{"method", "skipped"}`` when skipped, non-finite floats as ``None``."""
        if self.skipped is not None:
            return {"method": self.method, "skipped": self.skipped}
        return {
            "method": self.method,
            "iterations": finite_or_none(self.iterations),
            "residual": finite_or_none(self.residual),
            "converged": self.converged,
            "diverged": self.diverged,
            "stop_reasons": list(self.stop_reasons),
            "spectral_radius": finite_or_none(self.spectral_radius),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SolverStats | None:
        """The inverse of :meth:`to_dict`; ``{}`` or ``None`` (an unrolled method) gives ``None``."""
        if not data:
            return None
        if data.get("skipped") is not None:
            return cls(method=str(data["method"]), skipped=str(data["skipped"]))
        return cls(
            method=str(data["method"]),
            iterations=_nan_if_none(data.get("iterations")),
            residual=_nan_if_none(data.get("residual")),
            converged=bool(data.get("converged", False)),
            diverged=bool(data.get("diverged", False)),
            stop_reasons=tuple(data.get("stop_reasons", ())),
            spectral_radius=_nan_if_none(data.get("spectral_radius")),
        )


@dataclass(frozen=True, kw_only=True)
class HypergradResult:
    r"""One inner run and its hypergradient (:meth:`hypergrad.objective.MetaObjective.hypergradient`).

    Attributes:
        grad: the hypergradient, aligned with the unconstrained hyperparameters.
        state: :math:`h_T = (w_T, v_T)`, the inner state the meta loss was taken at.
        meta_loss: the meta loss at :math:`w_T` (0-dim, detached; ``nan`` if the inner run blew up).
        inner_seconds: wall seconds of the ``T`` inner steps (before the backward pass or solve).
        spread: relative spread of the per-hyper-batch hypergradients
            (:math:`\lVert \mathrm{std} \rVert / \lVert \mathrm{mean} \rVert`; ``0`` for one
            hyper-batch, ``nan`` for the unrolled methods).
        solver: the fixed-point solves' statistics; ``None`` for the unrolled methods.
    """

    grad: tuple[Tensor, ...]
    state: tuple[Tensor, ...]
    meta_loss: Tensor
    inner_seconds: float | None = None
    spread: float = math.nan
    solver: SolverStats | None = None

    @property
    def diverged(self) -> bool:
        """Whether a fixed-point solve diverged (never for the unrolled methods)."""
        return self.solver is not None and self.solver.diverged


@dataclass(frozen=True, kw_only=True)
class MetaStepRecord:
    """One meta step of a run, as the history holds it.

    Attributes:
        step: the meta step (its batch salt).
        meta_loss, val_loss, train_loss: losses of the hyperparameters this step evaluated
            (``None``: non-finite).
        hypergrad_norm: norm of the hypergradient (``None``: non-finite or none computed).
        hypergrad_spread: :attr:`HypergradResult.spread` (``None``: not applicable).
        solver: the solves' statistics (``None``: an unrolled method or no hypergradient).
        events: divergence events (:mod:`hypergrad.divergence`), in the order detected.
        action: what the step did: ``update``, ``clipped``, ``skipped``, ``backoff``, ``fallback`` or ``stop``.
        meta_lr: the meta learning rate after the step (``None``: no meta optimiser).
        seconds: wall seconds of the whole step.
        inner_seconds: wall seconds of its inner training.
        hyperparameters: the evaluated hyperparameters, by tensor (:meth:`HyperSpec.describe`).
        inner_step: the ``"online"`` strategy: the step of the one inner run at which this meta
            step took its hypergradient (``None`` for the strategies that restart; left out of
            :meth:`to_dict` then).
    """

    step: int
    meta_loss: float | None
    val_loss: float | None
    train_loss: float | None
    hypergrad_norm: float | None = None
    hypergrad_spread: float | None = None
    solver: SolverStats | None = None
    events: tuple[str, ...] = ()
    action: str = "update"
    meta_lr: float | None = None
    seconds: float = 0.0
    inner_seconds: float | None = None
    hyperparameters: Hyperparameters = field(default_factory=dict)
    inner_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the keys of ``results.json``'s history and of checkpoints)."""
        online = {} if self.inner_step is None else {"inner_step": self.inner_step}
        return {
            "step": self.step,
            "meta_loss": self.meta_loss,
            "val_loss": self.val_loss,
            "train_loss": self.train_loss,
            "hypergrad_norm": self.hypergrad_norm,
            "hypergrad_spread": self.hypergrad_spread,
            "solver": self.solver.to_dict() if self.solver is not None else {},
            "events": list(self.events),
            "action": self.action,
            "meta_lr": self.meta_lr,
            "seconds": self.seconds,
            "inner_seconds": self.inner_seconds,
            "hyperparameters": self.hyperparameters,
            **online,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetaStepRecord:
        """The inverse of :meth:`to_dict` (reads a checkpoint's or a ``results.json``'s history)."""
        return cls(
            step=int(data["step"]),
            meta_loss=finite_or_none(data.get("meta_loss")),
            val_loss=finite_or_none(data.get("val_loss")),
            train_loss=finite_or_none(data.get("train_loss")),
            hypergrad_norm=finite_or_none(data.get("hypergrad_norm")),
            hypergrad_spread=finite_or_none(data.get("hypergrad_spread")),
            solver=SolverStats.from_dict(data.get("solver")),
            events=tuple(data.get("events", ())),
            action=str(data.get("action", "update")),
            meta_lr=finite_or_none(data.get("meta_lr")),
            seconds=float(data.get("seconds", 0.0)),
            inner_seconds=finite_or_none(data.get("inner_seconds")),
            hyperparameters=dict(data.get("hyperparameters", {})),
            inner_step=None if data.get("inner_step") is None else int(data["inner_step"]),
        )


@dataclass
class TuneResult:
    """Outcome of :func:`hypergrad.tune`.

    Attributes:
        spec: the hyperparameter layout.
        config: the resolved configuration.
        best: unconstrained hyperparameters with the lowest validation meta loss.
        final: hyperparameters after the last meta step.
        history: one record per meta step (losses, hypergradient norm, solver info, timing).
        evaluation: ``{"initial"|"best"|"final": {val_loss, train_loss, test_loss, test_accuracy}}``
            from one identical inner run per set of hyperparameters.
        best_step: meta step of ``best`` (0: the initial hyperparameters).
        info: what the strategy reports besides (e.g. the ``"sign"`` strategy's hypergradient
            method and why, inner trainings spent, the selection's candidates); empty for ``"gradient"``.
        weights: the ``"online"`` strategy: the trained weights of its one run (the model's trainable
            tensors in ``spec.param_names`` order); ``None`` for the others.
        schedule: the ``"online"`` strategy: the hyperparameters in force in each of its ``S``
            periods, unconstrained, each tensor with a leading axis of ``S`` in the layout of
            :attr:`schedule_spec` (``spec.with_segments(S)``; no segment axis when ``S = 1``):
            ``torch.optim.SGD`` with :class:`~hypergrad.hyperparams.SGDSchedule` over them
            reproduces :attr:`weights`.
        schedule_spec: the layout of :attr:`schedule` (``None``: no schedule).
    """

    spec: HyperSpec
    config: TuneConfig
    best: tuple[Tensor, ...]
    final: tuple[Tensor, ...]
    history: list[MetaStepRecord]
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    best_step: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    weights: tuple[Tensor, ...] | None = None
    schedule: tuple[Tensor, ...] | None = None
    schedule_spec: HyperSpec | None = None

    @property
    def hyperparameters(self) -> Hyperparameters:
        """The best learning rate and momentum of each tensor, by name."""
        return self.spec.describe(self.best)

    @property
    def final_hyperparameters(self) -> Hyperparameters:
        return self.spec.describe(self.final)

    def param_groups(self, model_or_params: nn.Module | Sequence[Tensor] | None = None) -> list[dict[str, Any]]:
        """The best hyperparameters as ``torch.optim.SGD`` param groups.

        Pass the model (or its trainable tensors in order) to get groups with
        ``"params"`` filled in: ``torch.optim.SGD(result.param_groups(model))``.
        """
        params: Sequence[Tensor] | None
        if isinstance(model_or_params, nn.Module):
            params = [p for p in model_or_params.parameters() if p.requires_grad]
        else:
            params = model_or_params
        return to_sgd_param_groups(self.spec, self.best, params)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> SGDSchedule:
        """The best schedule as a ``torch.optim`` scheduler for ``optimizer = SGD(result.param_groups(model))``.

        Step it once after every ``optimizer.step()``: it sets each group's ``lr`` and
        ``momentum`` for the next of the ``T = config.inner_steps`` steps, so that SGD takes the
        inner loop's steps (:class:`~hypergrad.hyperparams.SGDSchedule`). With one segment the
        values are constant and the scheduler changes nothing. For an ``"online"`` run it is
        the run's trajectory (:attr:`schedule`), which replays the run's weights.
        """
        if self.schedule is not None and self.schedule_spec is not None:
            return SGDSchedule(optimizer, self.schedule_spec, self.schedule, num_steps=self.config.inner_steps)
        return SGDSchedule(optimizer, self.spec, self.best, num_steps=self.config.inner_steps)

    def to_json(self) -> dict[str, Any]:
        groups = self.param_groups() if self.spec.per != "element" else []
        schedule = {}
        if self.spec.segments > 1:
            bounds = segment_bounds(self.config.inner_steps, self.spec.segments)
            schedule = {"schedule": {"segments": self.spec.segments, "steps": [list(b) for b in bounds]}}
        elif self.schedule is not None and self.schedule_spec is not None:  # an online run's trajectory
            segments = self.schedule_spec.segments
            bounds = segment_bounds(self.config.inner_steps, segments)
            schedule = {"schedule": {"segments": segments, "steps": [list(b) for b in bounds],
                                     "hyperparameters": self.schedule_spec.describe(self.schedule)}}
        return {
            "config": self.config.to_dict(),
            "num_hyperparameters": self.spec.num_hyperparameters,
            "best_step": self.best_step,
            "hyperparameters": self.hyperparameters,
            "final_hyperparameters": self.final_hyperparameters,
            "param_groups": groups,
            "evaluation": {
                k: {m: (v if _finite(v) else None) for m, v in ev.items()} for k, ev in self.evaluation.items()
            },
            "meta_loss": [r.meta_loss for r in self.history],
            "train_loss": [r.train_loss for r in self.history],
            "val_loss": [r.val_loss for r in self.history],
            "seconds": [r.seconds for r in self.history],
            "hypergrad_norm": [r.hypergrad_norm for r in self.history],
            "history": [r.to_dict() for r in self.history],
            **({"strategy": self.info} if self.info else {}),
            **schedule,
        }
