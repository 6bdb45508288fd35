r"""The ``"sign"`` strategy: sign steps with per-hyperparameter step sizes, then a selection on unseen orders.

Adam at a meta-lr of 0.05 moves :math:`\log\alpha` by about 0.05 per meta step: tens of steps
cannot cross the decades of learning rate a black-box search samples. The robust rule here
steps by the *sign* of the hypergradient, each unconstrained hyperparameter
:math:`\theta_i \in (\log\alpha, \operatorname{logit}\beta)` with its own step size
:math:`s_i` (Rprop, Riedmiller & Braun 1993; sign steps halved on sign flips as in FDS,
Micaelli & Storkey 2021):

.. math::

    s_i \leftarrow \begin{cases} \min(1.2\, s_i,\ s_{\max}) & g_i\, g_i^{\mathrm{prev}} > 0 \\
                     s_i / 2 & g_i\, g_i^{\mathrm{prev}} < 0 \\ s_i & \text{otherwise} \end{cases}
    \qquad \theta_i \leftarrow \operatorname{clip}_{\mathrm{box}}\big(\theta_i - s_i \operatorname{sign} g_i\big)

from :math:`s_i = 1` (a factor :math:`e` in the learning rate), :math:`s_{\max} = 2`, inside the
search box of ``hypergrad compare`` (:class:`~hypergrad.baselines.SearchSpace`). A step whose
meta loss is non-finite or above 1.5 times the last accepted one goes back to that point and
halves every step size (backtracking). The hypergradient is BPTT's when its graph fits
``max_memory`` (:mod:`hypergrad.strategies.estimator`), RBP's otherwise.

**Budget.** One step costs one inner training of ``T`` steps (its hypergradient's extra work
is charged in seconds and reported); ``budget`` steps in all, the last of them the selection:

**Selection.** The meta loss of a search step was measured on the batch order that also
produced its hypergradient, which flatters it. The exported hyperparameters are chosen among
the start and the ``top`` best distinct search points (optionally also the mean of the last
accepted points, and a *backoff*: the best search candidate with every learning rate scaled
down, evaluated once the others are) by a statistic (``"mean"``, or ``"max"``: the worst order) of
their meta loss on :data:`SELECTION_SALTS`, batch orders no hypergradient has seen; the chosen
one's mean is what the result reports. ``auto`` uses the backoff and the max
(:mod:`hypergrad.strategies.auto`). The start being a candidate, the run never ends worse than it
started (on those orders).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hypergrad._tree import tree_isfinite, tree_norm
from hypergrad.baselines import SearchSpace
from hypergrad.config import TuneConfig
from hypergrad.hyperparams import HyperSpec
from hypergrad.objective import MetaObjective
from hypergrad.records import MetaStepRecord, TuneResult, finite_or_none
from hypergrad.strategies.base import SearchState, Strategy, _clone, _finite, logger
from hypergrad.strategies.estimator import Estimator, choose_estimator

__all__ = ["SELECTION_SALTS", "SELECTION_STATISTICS", "SignRule", "SignState", "SignStrategy", "box_bounds"]

#: Batch-order salts of the selection runs: never used by a search step (those are >= 0) nor by
#: the evaluation run (-1) or the comparison's retraining orders.
SELECTION_SALTS = (-1000, -1001)

#: How a candidate's selection values (one per selection order) are summarised; the lowest wins.
SELECTION_STATISTICS = ("mean", "max")


def box_bounds(spec: HyperSpec, space: SearchSpace, n: int) -> tuple[list[float], list[float]]:
    """Lower and upper bounds of the ``n`` unconstrained hyperparameter tensors (log lr, then logit momentum)."""
    eps = 1e-6
    m_lo, m_hi = max(space.momentum_low, eps), min(space.momentum_high, 1 - eps)
    half = n // 2
    lo = [math.log(space.lr_low)] * half + [math.log(m_lo / (1 - m_lo))] * half
    hi = [math.log(space.lr_high)] * half + [math.log(m_hi / (1 - m_hi))] * half
    return lo, hi


@dataclass(frozen=True, kw_only=True)
class SignRule:
    """The step-size rule (module docstring): initial step, growth, shrink, cap and backtracking ratio."""

    step0: float = 1.0
    increase: float = 1.2
    decrease: float = 0.5
    max_step: float = 2.0
    blowup: float = 1.5
    skip_on_flip: bool = False  # iRprop-: no step for a hyperparameter whose sign just flipped

    def __post_init__(self) -> None:
        for name in ("step0", "max_step", "blowup"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.increase >= 1.0 or not 0.0 < self.decrease < 1.0:
            raise ValueError(f"need increase >= 1 and 0 < decrease < 1, got {self.increase!r}, {self.decrease!r}")


@dataclass(kw_only=True)
class SignState(SearchState):
    """:class:`SearchState` plus the rule's state, the evaluated points and the selection.

    Attributes:
        phase: ``"search"``, then ``"select"``.
        steps: the step size of every hyperparameter (tensors shaped like ``hparams``).
        prev_sign: the sign of the last accepted hypergradient (0: none yet, or after a backtrack).
        anchor: the last accepted point (``None`` before the first), ``anchor_loss`` its meta loss.
        points: ``(step, meta loss, hyperparameters)`` of every search step (the selection's pool).
        candidates: ``(step, hyperparameters)`` the selection evaluates (the start first, step ``-1``).
        kinds: what each candidate is: ``"start"``, ``"search"``, ``"average"`` or ``"backoff"``.
        selection: one ``(candidate index, salt, evaluation)`` per selection run.
        estimator: the hypergradient method and why (:class:`~hypergrad.strategies.estimator.Estimator`).
        budget: the run's budget in inner trainings (fixed by the first step).
    """

    phase: str = "search"
    steps: tuple[Tensor, ...] = ()
    prev_sign: tuple[Tensor, ...] = ()
    anchor: tuple[Tensor, ...] | None = None
    anchor_loss: float = math.inf
    points: list[tuple[int, float, tuple[Tensor, ...]]] = field(default_factory=list)
    candidates: list[tuple[int, tuple[Tensor, ...]]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    selection: list[tuple[int, int, dict[str, float]]] = field(default_factory=list)
    estimator: Estimator | None = None
    budget: int | None = None
    start: tuple[Tensor, ...] = ()

    def reset_rule(self, step0: float) -> None:
        """Fresh step sizes ``step0`` and no previous sign or anchor (a new start)."""
        self.steps = tuple(torch.full_like(h.detach(), step0) for h in self.hparams)
        self.prev_sign = tuple(torch.zeros_like(h.detach()) for h in self.hparams)
        self.anchor, self.anchor_loss = None, math.inf

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "phase": self.phase,
            "steps": [s.clone() for s in self.steps],
            "prev_sign": [s.clone() for s in self.prev_sign],
            "anchor": None if self.anchor is None else [a.clone() for a in self.anchor],
            "anchor_loss": self.anchor_loss if math.isfinite(self.anchor_loss) else None,
            "points": [[k, v if math.isfinite(v) else None, [h.clone() for h in hp]] for k, v, hp in self.points],
            "candidates": [[k, [h.clone() for h in hp]] for k, hp in self.candidates],
            "kinds": list(self.kinds),
            "selection": [[i, s, dict(ev)] for i, s, ev in self.selection],
            "estimator": None if self.estimator is None else self.estimator.to_dict(),
            "budget": self.budget,
            "start": [h.clone() for h in self.start],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.phase = str(state["phase"])
        self.steps = tuple(s.clone() for s in state["steps"])
        self.prev_sign = tuple(s.clone() for s in state["prev_sign"])
        self.anchor = None if state["anchor"] is None else tuple(a.clone() for a in state["anchor"])
        self.anchor_loss = math.inf if state["anchor_loss"] is None else float(state["anchor_loss"])
        self.points = [(int(k), math.inf if v is None else float(v), tuple(hp)) for k, v, hp in state["points"]]
        self.candidates = [(int(k), tuple(hp)) for k, hp in state["candidates"]]
        self.kinds = [str(k) for k in state.get("kinds", ["start"] + ["search"] * (len(self.candidates) - 1))]
        self.selection = [(int(i), int(s), dict(ev)) for i, s, ev in state["selection"]]
        self.estimator = None if state["estimator"] is None else Estimator.from_dict(state["estimator"])
        self.budget = None if state["budget"] is None else int(state["budget"])
        self.start = tuple(h.clone() for h in state["start"])


def _same(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _mean_evaluation(evals: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of evaluations (a non-finite value makes that key non-finite)."""
    keys = [k for k in evals[0] if all(k in e for e in evals)]
    return {k: sum(e[k] for e in evals) / len(evals) for k in keys}


class SignStrategy(Strategy):
    """Sign steps on the memory-chosen hypergradient, then a selection on unseen batch orders (module docstring).

    Args:
        rule: the step-size rule (:class:`SignRule`).
        top: how many of the best search points the selection re-evaluates besides the start
            (fewer for budgets under 20: the selection takes at most ~30% of the budget).
        salts: the selection's batch orders (at least two).
        space: the search box (default: ``hypergrad compare``'s :class:`SearchSpace`).
        statistic: how a candidate's values on the selection orders are summarised
            (:data:`SELECTION_STATISTICS`): ``"mean"``, or ``"max"`` (the worst order).
        backoff: if set, one more candidate once the others are evaluated: the best search
            candidate with every learning rate times ``backoff`` (< 1: away from the edge of stability).
        average: if > 0, one more candidate: the mean (in log lr, logit momentum) of the last
            ``average`` accepted search points.
    """

    name = "sign"

    def __init__(
        self, *, rule: SignRule | None = None, top: int = 2, salts: Sequence[int] = SELECTION_SALTS,
        space: SearchSpace | None = None, statistic: str = "mean", backoff: float | None = None, average: int = 0,
    ) -> None:
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ValueError(f"top must be an integer >= 1, got {top!r}")
        if len(salts) < 2 or len(set(salts)) != len(salts) or any(s >= -1 for s in salts):
            raise ValueError(f"salts must be at least two distinct integers below -1, got {tuple(salts)!r}")
        if statistic not in SELECTION_STATISTICS:
            raise ValueError(f"statistic must be one of {SELECTION_STATISTICS}, got {statistic!r}")
        if backoff is not None and (isinstance(backoff, bool) or not 0.0 < backoff < 1.0):
            raise ValueError(f"backoff must be None or a factor in (0, 1), got {backoff!r}")
        if isinstance(average, bool) or not isinstance(average, int) or average < 0 or average == 1:
            raise ValueError(f"average must be 0 (none) or an integer >= 2, got {average!r}")
        self.rule = rule or SignRule()
        self.top = top
        self.salts = tuple(int(s) for s in salts)
        self.space = space or SearchSpace()
        self.statistic = statistic
        self.backoff = backoff
        self.average = average

    # ------------------------------------------------------------------ budget
    def extra_candidates(self) -> int:
        """Candidates besides the start and the ``top``: the backoff and the average, when set."""
        return int(self.backoff is not None) + int(self.average > 0)

    def min_budget(self) -> int:
        """Two search steps and the start, one search point and the extra candidates on every selection order."""
        return 2 + len(self.salts) * (2 + self.extra_candidates())

    def top_for(self, budget: int) -> int:
        """Candidates besides the start: ``top``, fewer when the selection would pass ~30% of the budget."""
        return max(1, min(self.top, int(0.3 * budget) // len(self.salts) - 1))

    def selection_cost(self, budget: int) -> int:
        return len(self.salts) * (1 + self.top_for(budget) + self.extra_candidates())

    def check_budget(self, budget: float) -> int:
        if isinstance(budget, bool) or not float(budget).is_integer() or budget < self.min_budget():
            raise ValueError(f"budget={budget!r} is not allowed for the {self.name!r} strategy: it needs an integer "
                             f">= {self.min_budget()} (search steps plus {len(self.salts)} selection runs per "
                             "candidate)")
        return int(budget)

    def done(self, config: TuneConfig, state: SearchState, budget: float) -> bool:
        if not isinstance(state, SignState):
            raise TypeError(f"the {self.name} strategy needs a SignState, got {type(state).__name__}")
        if state.budget is None:
            state.budget = self.check_budget(budget)
        return state.phase == "select" and self._selected(state)

    def _backoff_pending(self, state: SignState) -> bool:
        return self.backoff is not None and "backoff" not in state.kinds and len(state.candidates) > 1

    def _selected(self, state: SignState) -> bool:
        """Every candidate (the backoff included) evaluated on every selection order."""
        return not self._backoff_pending(state) and len(state.selection) >= len(state.candidates) * len(self.salts)

    # ------------------------------------------------------------------ state
    def init(self, objective: MetaObjective, config: TuneConfig) -> SignState:
        base = super().init(objective, config)
        lo, hi = box_bounds(objective.spec, self.space, len(base.hparams))
        with torch.no_grad():
            for h, a, b in zip(base.hparams, lo, hi):
                h.clamp_(a, b)
        estimator = choose_estimator(objective, config)
        logger.info("strategy %s: hypergradient by %s", self.name, estimator.reason)
        state = SignState(hparams=base.hparams, best=_clone(base.hparams), estimator=estimator,
                          start=_clone(base.hparams))
        state.reset_rule(self.rule.step0)
        return state

    def search_steps(self, state: SignState) -> int:
        """Search steps of the whole run (the budget less the selection)."""
        assert state.budget is not None
        return state.budget - self.selection_cost(state.budget)

    # ------------------------------------------------------------------ one step
    def step(self, objective: MetaObjective, config: TuneConfig, state: SearchState) -> MetaStepRecord:
        if not isinstance(state, SignState):
            raise TypeError(f"the {self.name} strategy needs a SignState, got {type(state).__name__}")
        if state.budget is None:
            state.budget = self.check_budget(self.default_budget(config))
        if state.phase == "search" and state.step_count >= self.search_steps(state):
            self.plan_selection(state)
        if state.phase == "select":
            return self.select_step(objective, state)
        return self.search_step(objective, config, state)

    def search_step(self, objective: MetaObjective, config: TuneConfig, state: SignState) -> MetaStepRecord:
        """One inner training with its hypergradient at the current point, then the sign rule."""
        t0 = time.perf_counter()
        k = state.step_count
        assert state.estimator is not None
        current = _clone(state.hparams)
        result = objective.hypergradient(current, k, method=state.estimator.method)
        problem = objective.problem
        n = problem.num_tensors
        with torch.no_grad():
            meta_loss = float(result.meta_loss)
            other = "train" if objective.meta_split == "val" else "val"
            other_loss = float(problem.eval_loss(result.state[:n], other)) if _finite(meta_loss) else math.nan
        val_loss, train_loss = (meta_loss, other_loss) if other == "train" else (other_loss, meta_loss)
        grad = result.grad
        state.points.append((k, meta_loss if _finite(meta_loss) else math.inf, current))
        state.observe(current, meta_loss, k)
        new, action = self.apply_rule(objective, state, current, meta_loss, grad)
        state.set_hparams(new)
        state.step_count += 1
        gnorm = tree_norm(grad) if tree_isfinite(grad) else math.nan
        record = MetaStepRecord(
            step=k, meta_loss=finite_or_none(meta_loss), val_loss=finite_or_none(val_loss),
            train_loss=finite_or_none(train_loss), hypergrad_norm=finite_or_none(gnorm),
            hypergrad_spread=finite_or_none(result.spread), solver=result.solver,
            events=("backtrack",) if action == "backtrack" else (), action=action,
            meta_lr=float(torch.cat([s.reshape(-1) for s in state.steps]).mean()),
            seconds=time.perf_counter() - t0, inner_seconds=result.inner_seconds,
            hyperparameters=objective.spec.describe(current),
        )
        state.history.append(record)
        return record

    def apply_rule(
        self, objective: MetaObjective, state: SignState, hp: tuple[Tensor, ...], loss: float,
        grad: Sequence[Tensor],
    ) -> tuple[tuple[Tensor, ...], str]:
        """The next point by the sign rule; ``"backtrack"`` to the anchor on a blow-up, else ``"update"``."""
        rule = self.rule
        ok = _finite(loss) and tree_isfinite(grad)
        lo, hi = box_bounds(objective.spec, self.space, len(hp))
        if state.anchor is not None and (not ok or loss > rule.blowup * state.anchor_loss):
            state.steps = tuple(s * rule.decrease for s in state.steps)
            state.prev_sign = tuple(torch.zeros_like(s) for s in state.prev_sign)
            return _clone(state.anchor), "backtrack"
        if not ok:  # the start itself blew up: lower every learning rate by its step, halve the steps
            half = len(hp) // 2
            new = tuple(h - s if i < half else h.clone() for i, (h, s) in enumerate(zip(hp, state.steps)))
            state.steps = tuple(s * rule.decrease for s in state.steps)
            return tuple(h.clamp(a, b) for h, a, b in zip(new, lo, hi)), "backtrack"
        sign = tuple(torch.sign(g.detach()).to(h.dtype) for g, h in zip(grad, hp))
        steps = []
        for s, sg, ps in zip(state.steps, sign, state.prev_sign):
            prod = sg * ps
            steps.append(torch.where(prod > 0, (s * rule.increase).clamp(max=rule.max_step),
                                     torch.where(prod < 0, s * rule.decrease, s)))
        if rule.skip_on_flip:
            sign = tuple(torch.where(sg * ps < 0, torch.zeros_like(sg), sg) for sg, ps in zip(sign, state.prev_sign))
        state.steps = tuple(steps)
        state.prev_sign = sign
        state.anchor, state.anchor_loss = _clone(hp), loss
        return tuple((h - s * sg).clamp(a, b) for h, s, sg, a, b in zip(hp, steps, sign, lo, hi)), "update"

    # ------------------------------------------------------------------ selection
    def pool(self, state: SignState) -> list[tuple[int, float, tuple[Tensor, ...]]]:
        """The points the selection draws its candidates from (the search steps')."""
        return state.points

    def plan_selection(self, state: SignState) -> None:
        """The candidates: the start, the ``top`` best distinct points of :meth:`pool` by meta loss, the average."""
        assert state.budget is not None
        chosen: list[tuple[int, tuple[Tensor, ...]]] = [(-1, _clone(state.start))]
        for k, loss, hp in sorted(self.pool(state), key=lambda p: (p[1], p[0])):
            if len(chosen) > self.top_for(state.budget):
                break
            if _finite(loss) and not any(_same(hp, c) for _, c in chosen):
                chosen.append((k, _clone(hp)))
        kinds = ["start"] + ["search"] * (len(chosen) - 1)
        if self.average:
            points = {k: hp for k, _, hp in state.points}
            accepted = [r.step for r in state.history if r.action == "update" and r.step in points][-self.average:]
            if accepted:
                mean = tuple(torch.stack([points[k][i] for k in accepted]).mean(0)
                             for i in range(len(state.start)))
                chosen.append((accepted[-1], mean))
                kinds.append("average")
        state.candidates, state.kinds = chosen, kinds
        state.phase = "select"

    def add_backoff(self, objective: MetaObjective, state: SignState) -> None:
        """The backoff candidate: the best search candidate so far, every learning rate times ``backoff``."""
        assert self.backoff is not None
        rows = self._rows(objective, state)
        best = min(range(1, len(rows)), key=lambda i: (rows[i]["score"], i))
        k, hp = state.candidates[best]
        half = len(hp) // 2
        lo, hi = box_bounds(objective.spec, self.space, len(hp))
        shift = math.log(self.backoff)
        new = tuple((h + shift if i < half else h).clamp(a, b) for i, (h, a, b) in enumerate(zip(hp, lo, hi)))
        state.candidates.append((k, new))
        state.kinds.append("backoff")

    def select_step(self, objective: MetaObjective, state: SignState) -> MetaStepRecord:
        """One selection run: the next candidate on the next reserved batch order (no hypergradient)."""
        t0 = time.perf_counter()
        j = len(state.selection)
        if j >= len(state.candidates) * len(self.salts) and self._backoff_pending(state):
            self.add_backoff(objective, state)
        index, salt = divmod(j, len(self.salts))
        salt = self.salts[salt]
        _, hp = state.candidates[index]
        ev = objective.evaluate(hp, salt)
        state.selection.append((index, salt, ev))
        k = state.step_count
        state.step_count += 1
        meta = ev["val_loss"] if objective.meta_split == "val" else ev["train_loss"]
        record = MetaStepRecord(
            step=k, meta_loss=finite_or_none(meta), val_loss=finite_or_none(ev["val_loss"]),
            train_loss=finite_or_none(ev["train_loss"]), action="select", seconds=time.perf_counter() - t0,
            hyperparameters=objective.spec.describe(hp),
        )
        state.history.append(record)
        return record

    def score(self, values: Sequence[float]) -> float:
        """A candidate's selection score: the :attr:`statistic` of its values (``inf`` without any)."""
        if not values:
            return math.inf
        return max(values) if self.statistic == "max" else sum(values) / len(values)

    def _rows(self, objective: MetaObjective, state: SignState) -> list[dict[str, Any]]:
        key = "val_loss" if objective.meta_split == "val" else "train_loss"
        rows = []
        for i, (k, _) in enumerate(state.candidates):
            evals = [ev for j, _, ev in state.selection if j == i]
            values = [ev[key] if _finite(ev[key]) else math.inf for ev in evals]
            rows.append({"step": k, "kind": state.kinds[i] if i < len(state.kinds) else "search", "values": values,
                         "mean": sum(values) / len(values) if values else math.inf, "score": self.score(values),
                         "evaluation": _mean_evaluation(evals) if evals else {}})
        return rows

    def finish(self, objective: MetaObjective, config: TuneConfig, state: SearchState) -> TuneResult:
        """The candidate with the lowest :meth:`score` on the selection orders (ties: the earlier); no more training.

        What the result reports for it is its mean evaluation over the selection orders."""
        if not isinstance(state, SignState):
            raise TypeError(f"the {self.name} strategy needs a SignState, got {type(state).__name__}")
        if not state.selection:  # stopped before the selection (e.g. a budget spent by steps run by hand)
            self.plan_selection(state)
            while not self._selected(state):
                self.select_step(objective, state)
        key = "val_loss" if objective.meta_split == "val" else "train_loss"
        rows = self._rows(objective, state)
        chosen = min(range(len(rows)), key=lambda i: (rows[i]["score"], i))
        best_step, best = state.candidates[chosen]
        state.best, state.best_step = _clone(best), max(best_step, 0)
        state.best_loss = rows[chosen]["mean"]
        search = [r for r in state.history if r.action != "select"]
        info = {
            "strategy": self.name,
            "estimator": state.estimator.to_dict() if state.estimator is not None else None,
            "budget": state.budget,
            "inner_trainings": len(state.history),
            "search_steps": len(search),
            "selection_runs": len(state.selection),
            "hypergradient_seconds": sum(r.seconds - (r.inner_seconds or 0.0) for r in search
                                         if r.hypergrad_norm is not None or r.solver is not None),
            "selection": {"salts": list(self.salts), "metric": key, "statistic": self.statistic, "chosen": chosen,
                          "candidates": [{k: v for k, v in r.items() if k != "evaluation"} for r in rows]},
        }
        evaluation = {"initial": rows[0]["evaluation"], "best": rows[chosen]["evaluation"]}
        return TuneResult(spec=objective.spec, config=config, best=_clone(best), final=_clone(state.hparams),
                          history=state.history, evaluation=evaluation, best_step=state.best_step, info=info)
