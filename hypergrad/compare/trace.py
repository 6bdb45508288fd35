"""A method's search on one seed as a sequence of points, and the best meta loss within a budget."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Trace", "best_at", "best_at_seconds", "trace_from_json"]


@dataclass
class Trace:
    """One method on one seed: a point per inner training (or pruned partial one).

    Attributes:
        cost: cumulative inner trainings after each point (1, 2, 3, ... without pruning).
        seconds: cumulative wall seconds after each point.
        meta_loss: the point's meta loss (``None``: pruned or non-finite).
        phase: ``"tpe"`` or the gradient method, per point.
        best: unconstrained hyperparameters with the lowest meta loss.
    """

    method: str
    seed: int
    cost: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    meta_loss: list[float | None] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)
    best: tuple[Tensor, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, cost: float, seconds: float, loss: float | None, phase: str) -> None:
        prev = self.cost[-1] if self.cost else 0.0
        self.cost.append(prev + cost)
        self.seconds.append(seconds)
        self.meta_loss.append(loss if loss is not None and math.isfinite(loss) else None)
        self.phase.append(phase)

    @property
    def best_so_far(self) -> list[float | None]:
        out: list[float | None] = []
        best = math.inf
        for v in self.meta_loss:
            if v is not None and v < best:
                best = v
            out.append(best if math.isfinite(best) else None)
        return out


def best_at(trace: Trace, budget: float) -> float | None:
    """Best meta loss among the points whose cumulative cost is at most ``budget`` inner trainings."""
    vals = [v for c, v in zip(trace.cost, trace.meta_loss) if c <= budget + 1e-9 and v is not None]
    return min(vals) if vals else None


def best_at_seconds(trace: Trace, seconds: float) -> float | None:
    """Best meta loss among the points finished within ``seconds`` of wall clock."""
    vals = [v for s, v in zip(trace.seconds, trace.meta_loss) if s <= seconds and v is not None]
    return min(vals) if vals else None



def trace_from_json(r: dict[str, Any]) -> Trace:
    """The :class:`Trace` of one run of ``compare.json``'s ``runs``."""
    return Trace(r["method"], r["seed"], list(r["inner_trainings"]), list(r["seconds"]), list(r["meta_loss"]),
                 list(r["phase"]))
