"""The strategy protocol: a meta loop plugs into the Tuner without editing it (issue 12, point 2).

A tiny strategy written here, :class:`LocalSearch` (one seeded random perturbation and one
inner training per step, kept when it lowers the meta loss), runs through the very same
Tuner as the built-in ``"gradient"`` strategy: callbacks, budget, checkpoint and resume,
the typed history and the final evaluation all come from the protocol.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from hypergrad import Tuner
from hypergrad.callbacks import Callback
from hypergrad.config import TuneConfig
from hypergrad.objective import MetaObjective
from hypergrad.records import MetaStepRecord, TuneResult, finite_or_none
from hypergrad.strategies import STRATEGIES, GradientStrategy, SearchState, Strategy, get_strategy
from tests._problems import tiny_problem

CFG = TuneConfig(method="neumann", inner_steps=8, truncate=3, hyper_batches=2, meta_steps=5, batch_size=16)


class LocalSearch(Strategy):
    """Perturb the current hyperparameters (seeded by the step), train once, keep the better."""

    name = "local-search"

    def __init__(self, radius: float = 0.5) -> None:
        self.radius = radius

    def step(self, objective: MetaObjective, config: TuneConfig, state: SearchState) -> MetaStepRecord:
        t0 = time.perf_counter()
        k = state.step_count
        gen = torch.Generator().manual_seed(objective.seed(k))
        trial = tuple(h.detach() + self.radius * torch.randn(h.shape, generator=gen, dtype=h.dtype)
                      for h in state.hparams)
        loss = objective.value(trial, k)
        kept = state.observe(trial, loss, k)
        if kept:
            state.set_hparams(trial)
        state.step_count += 1
        record = MetaStepRecord(
            step=k, meta_loss=finite_or_none(loss), val_loss=finite_or_none(loss), train_loss=None,
            action="update" if kept else "skipped", seconds=time.perf_counter() - t0,
            hyperparameters=objective.spec.describe(trial),
        )
        state.history.append(record)
        return record


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def on_start(self, tuner):
        self.calls.append(("start", tuner.step_count))

    def on_meta_step(self, tuner, record):
        self.calls.append(("step", record))

    def on_end(self, tuner, result):
        self.calls.append(("end", result))


def test_a_new_strategy_runs_in_the_tuner_with_callbacks_and_typed_history():
    recorder = Recorder()
    tuner = Tuner(tiny_problem(), CFG, strategy=LocalSearch(), callbacks=[recorder])
    result = tuner.run()
    assert isinstance(result, TuneResult)
    assert [r.step for r in result.history] == list(range(CFG.meta_steps))
    assert all(isinstance(r, MetaStepRecord) for r in result.history)
    # the state tracked the best of the steps' meta losses
    assert tuner.best_loss == min(r.val_loss for r in result.history)
    # the callbacks see the start, each record as it is made, and the result
    assert recorder.calls[0] == ("start", 0)
    assert [c[1] for c in recorder.calls[1:-1]] == result.history
    assert recorder.calls[-1] == ("end", result)
    # the shared final evaluation: the exported best is never worse than the start
    assert result.evaluation["best"]["val_loss"] <= result.evaluation["initial"]["val_loss"]
    # a kept perturbation moved the current hyperparameters (the search did something)
    assert any(r.action == "update" for r in result.history)


def test_the_strategy_alone_gives_the_tuners_result():
    via_tuner = Tuner(tiny_problem(), CFG, strategy=LocalSearch()).run()
    alone = LocalSearch().run(MetaObjective(tiny_problem(), CFG), CFG)
    assert [r.val_loss for r in alone.history] == [r.val_loss for r in via_tuner.history]
    assert all(torch.equal(a, b) for a, b in zip(alone.best, via_tuner.best))


def test_the_gradient_strategy_alone_gives_the_tuners_result():
    via_tuner = Tuner(tiny_problem(), CFG).run()
    alone = GradientStrategy().run(MetaObjective(tiny_problem(), CFG), CFG)
    strip = ("seconds", "inner_seconds")
    assert [{k: v for k, v in r.to_dict().items() if k not in strip} for r in alone.history] == [
        {k: v for k, v in r.to_dict().items() if k not in strip} for r in via_tuner.history]
    assert all(torch.equal(a, b) for a, b in zip(alone.final, via_tuner.final))


def test_budget_and_done_decide_the_number_of_steps():
    assert len(Tuner(tiny_problem(), CFG, strategy=LocalSearch()).run(budget=2).history) == 2

    class HalfCost(LocalSearch):
        def done(self, config, state, budget):  # a step costs half an inner training
            return 0.5 * state.step_count >= budget

    assert len(Tuner(tiny_problem(), CFG, strategy=HalfCost()).run(budget=2).history) == 4


def test_checkpoint_and_resume_of_a_new_strategy_continue_bitwise():
    whole = Tuner(tiny_problem(), CFG, strategy=LocalSearch())
    whole.run()
    first = Tuner(tiny_problem(), CFG, strategy=LocalSearch())
    for _ in range(2):
        first.meta_step()
    resumed = Tuner(tiny_problem(), CFG, strategy=LocalSearch())
    resumed.load_state_dict(first.state_dict())
    assert resumed.history == first.history and all(isinstance(r, MetaStepRecord) for r in resumed.history)
    resumed.run()
    assert [r.val_loss for r in resumed.history] == [r.val_loss for r in whole.history]
    assert all(torch.equal(a, b) for a, b in zip(resumed.hparams, whole.hparams))
    assert resumed.best_loss == whole.best_loss and resumed.best_step == whole.best_step


def test_a_registered_strategy_is_chosen_by_name(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "local-search", LocalSearch)
    tuner = Tuner(tiny_problem(), CFG, strategy="local-search")
    assert isinstance(tuner.strategy, LocalSearch)
    assert isinstance(get_strategy("gradient"), GradientStrategy)
    strategy = LocalSearch()
    assert get_strategy(strategy) is strategy


@pytest.mark.parametrize("bad", ["nope", 3, None])
def test_an_unknown_strategy_is_refused_with_the_names(bad):
    with pytest.raises(ValueError, match=r"strategy=.* is not allowed; expected one of auto, gradient"):
        Tuner(tiny_problem(), CFG, strategy=bad)


def test_the_gradient_strategy_needs_its_own_state():
    objective = MetaObjective(tiny_problem(), CFG)
    plain = LocalSearch().init(objective, CFG)
    with pytest.raises(TypeError, match="needs a GradientState, got SearchState"):
        GradientStrategy().step(objective, CFG, plain)


def test_a_callback_overrides_only_the_hooks_it_needs():
    class OnlyEnd(Callback):
        def __init__(self) -> None:
            self.result = None

        def on_end(self, tuner, result):
            self.result = result

    cb = OnlyEnd()
    result = Tuner(tiny_problem(), CFG, callbacks=[cb]).run(budget=1)
    assert cb.result is result and len(result.history) == 1
    assert math.isfinite(result.evaluation["final"]["val_loss"])


def test_a_callback_must_subclass_callback():
    class Duck:
        def on_meta_step(self, tuner, record):
            pass

    with pytest.raises(TypeError, match=r"callbacks\[0\] is a Duck, not a hypergrad.callbacks.Callback"):
        Tuner(tiny_problem(), CFG, callbacks=[Duck()])
