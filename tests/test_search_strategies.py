"""The sign, hybrid and auto strategies (issue 14): their contract, counted through the meta objective.

* budget accounting is exact: every inner training the run spends (a hypergradient, a trial, a
  selection run) goes through :class:`CountingObjective`, and there are exactly ``budget`` of them;
* a run never ends worse than its start: on an objective where every step makes it worse, the
  start is what is exported;
* the selection uses batch orders no hypergradient saw (the salts are asserted);
* a checkpoint taken mid-run (in the search and in the selection) resumes to the same result;
* the hypergradient is BPTT's when its graph fits ``max_memory``, RBP's otherwise, logged once.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from hypergrad import TuneConfig, Tuner
from hypergrad.checkpoint import load_checkpoint, save_checkpoint
from hypergrad.config import STRATEGY_NAMES, ConfigError
from hypergrad.objective import MetaObjective
from hypergrad.records import HypergradResult
from hypergrad.strategies import (
    SELECTION_SALTS,
    STRATEGIES,
    AutoStrategy,
    GradientStrategy,
    HybridStrategy,
    SignStrategy,
    get_strategy,
)
from hypergrad.strategies.estimator import step_graph_bytes
from tests._problems import tiny_problem

CFG = TuneConfig(inner_steps=8, truncate=3, hyper_batches=2, batch_size=16, meta_steps=5)
SEARCHERS = ["sign", "hybrid", "auto"]


class CountingObjective(MetaObjective):
    """A :class:`MetaObjective` that logs every inner training: ``(kind, salt, method)``.

    ``value`` trains through ``train``; a nested call is not counted twice.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, int, str | None]] = []
        self._depth = 0

    def _counted(self, kind, salt, method, call):
        if self._depth == 0:
            self.calls.append((kind, salt, method))
        self._depth += 1
        try:
            return call()
        finally:
            self._depth -= 1

    def hypergradient(self, hparams, salt, *, method=None, batches=None):
        return self._counted("hypergradient", salt, method,
                             lambda: super(CountingObjective, self).hypergradient(hparams, salt, method=method,
                                                                                  batches=batches))

    def value(self, hparams, salt, *, on_step=None):
        return self._counted("value", salt, None, lambda: super(CountingObjective, self).value(hparams, salt,
                                                                                             on_step=on_step))

    def train(self, hparams, salt, *, on_step=None):
        return self._counted("train", salt, None, lambda: super(CountingObjective, self).train(hparams, salt,
                                                                                             on_step=on_step))

    def evaluate(self, hparams, salt=-1):
        return self._counted("evaluate", salt, None, lambda: super(CountingObjective, self).evaluate(hparams, salt))


def _cfg(**kw) -> TuneConfig:
    return TuneConfig(**{**CFG.to_dict(), **kw})


def test_the_registry_is_the_configs_list_of_strategies():
    assert tuple(STRATEGIES) == STRATEGY_NAMES
    for name in STRATEGY_NAMES:
        assert get_strategy(name).name == name
    assert isinstance(get_strategy("auto"), SignStrategy)


@pytest.mark.parametrize("name", SEARCHERS)
@pytest.mark.parametrize("budget", [9, 12])
def test_budget_accounting_is_exact(name, budget):
    pytest.importorskip("optuna")
    cfg = _cfg(strategy=name, budget=budget)
    objective = CountingObjective(tiny_problem(), cfg)
    result = get_strategy(name).run(objective, cfg)
    assert len(objective.calls) == budget  # every inner training, of every kind
    assert len(result.history) == budget and result.info["inner_trainings"] == budget
    kinds = {k for k, _, _ in objective.calls}
    assert kinds <= {"hypergradient", "value", "evaluate"}
    if name == "hybrid":
        trials = [c for c in objective.calls if c[0] == "value"]
        assert len(trials) == HybridStrategy().global_trials(cfg, budget) == round(0.3 * budget)
    assert result.info["search_steps"] + result.info["selection_runs"] == budget


def test_the_tuner_runs_the_configured_budget_and_the_gradient_strategy_keeps_its_own():
    tuner = Tuner(tiny_problem(), _cfg(strategy="sign", budget=9), strategy="sign")
    assert len(tuner.run().history) == 9
    # gradient: budget = meta steps; the final evaluation (3 runs on salt -1) is not counted, as before
    cfg = _cfg(budget=4)
    objective = CountingObjective(tiny_problem(), cfg)
    result = GradientStrategy().run(objective, cfg)
    assert [k for k, _, _ in objective.calls] == ["hypergradient"] * 4 + ["evaluate"] * 3
    same = GradientStrategy().run(MetaObjective(tiny_problem(), _cfg(meta_steps=4)), _cfg(meta_steps=4))
    assert [r.val_loss for r in result.history] == [r.val_loss for r in same.history]
    assert all(torch.equal(a, b) for a, b in zip(result.best, same.best))


def test_a_budget_too_small_is_refused_with_the_minimum():
    with pytest.raises(ValueError, match=r"budget=5 is not allowed for the 'sign' strategy: it needs an integer >= 6"):
        Tuner(tiny_problem(), _cfg(strategy="sign"), strategy="sign").run(budget=5)
    with pytest.raises(ConfigError, match="budget must be an integer >= 1"):
        _cfg(budget=0)


class UphillObjective(MetaObjective):
    """Every step makes it worse: the meta loss is 1 + |theta - theta_0|^2 and the "hypergradient" points away."""

    def _loss(self, hparams):
        start = self.initial_hparams()
        return 1.0 + sum(float(((h.detach() - s) ** 2).sum()) for h, s in zip(hparams, start))

    def hypergradient(self, hparams, salt, *, method=None, batches=None):
        start = self.initial_hparams()
        grad = tuple(-(h.detach() - s) - 1.0 for h, s in zip(hparams, start))  # descent = away from the start
        return HypergradResult(grad=grad, state=self.problem.initial_state(),
                               meta_loss=torch.tensor(self._loss(hparams)))

    def value(self, hparams, salt, *, on_step=None):
        return self._loss(hparams)

    def evaluate(self, hparams, salt=-1):
        loss = self._loss(hparams)
        return {"val_loss": loss, "train_loss": loss, "val_accuracy": 0.0}


@pytest.mark.parametrize("name", SEARCHERS)
def test_a_run_never_ends_worse_than_its_start(name):
    pytest.importorskip("optuna")
    cfg = _cfg(strategy=name, budget=12)
    objective = UphillObjective(tiny_problem(), cfg)
    result = get_strategy(name).run(objective, cfg)
    assert any(r.action in ("update", "trial") for r in result.history)  # it did move away
    assert all(torch.equal(a, b) for a, b in zip(result.best, objective.initial_hparams()))
    assert result.best_step == 0 and result.info["selection"]["chosen"] == 0
    assert result.evaluation["best"]["val_loss"] == result.evaluation["initial"]["val_loss"] == 1.0


@pytest.mark.parametrize("name", SEARCHERS)
def test_the_selection_uses_batch_orders_no_hypergradient_saw(name):
    pytest.importorskip("optuna")
    cfg = _cfg(strategy=name, budget=14)
    objective = CountingObjective(tiny_problem(), cfg)
    result = get_strategy(name).run(objective, cfg)
    searched = {salt for kind, salt, _ in objective.calls if kind != "evaluate"}
    selected = [salt for kind, salt, _ in objective.calls if kind == "evaluate"]
    assert searched == set(range(len(searched)))  # the search: salts 0, 1, 2, ...
    assert set(selected) == set(SELECTION_SALTS) and len(SELECTION_SALTS) >= 2
    assert not searched & set(selected) and -1 not in selected
    sel = result.info["selection"]
    assert sel["salts"] == list(SELECTION_SALTS)
    cands = sel["candidates"]
    assert cands[0]["step"] == -1 and len(cands) >= 2  # the start and at least one search point
    assert len(selected) == len(cands) * len(SELECTION_SALTS)
    chosen = cands[sel["chosen"]]
    assert chosen["score"] == min(c["score"] for c in cands)  # the mean over the selection orders
    assert sel["statistic"] == "mean"
    assert not any(c["kind"] == "backoff" for c in cands)  # the robust selection is opt-in
    # what is reported is the mean over the selection orders
    assert result.evaluation["best"]["val_loss"] == pytest.approx(sum(chosen["values"]) / len(chosen["values"]))
    assert result.evaluation["best"]["val_loss"] <= result.evaluation["initial"]["val_loss"]


def test_the_opt_in_robust_selection_scores_the_worst_order_and_adds_the_backoff():
    cfg = _cfg(strategy="sign", budget=14)
    objective = CountingObjective(tiny_problem(), cfg)
    result = SignStrategy(backoff=0.8, statistic="max").run(objective, cfg)
    sel = result.info["selection"]
    cands = sel["candidates"]
    assert sel["statistic"] == "max" and [c["kind"] for c in cands].count("backoff") == 1
    assert all(c["score"] == pytest.approx(max(c["values"])) for c in cands)
    assert cands[sel["chosen"]]["score"] == min(c["score"] for c in cands)
    assert len(objective.calls) == 14  # the budget, exactly


@pytest.mark.parametrize("name", ["sign", "hybrid"])
@pytest.mark.parametrize("pause", [3, 11])  # in the search (hybrid: in TPE), in the selection
def test_checkpoint_and_resume_mid_run_give_the_same_result(name, pause, tmp_path):
    pytest.importorskip("optuna")
    cfg = _cfg(strategy=name, budget=14)
    whole = Tuner(tiny_problem(), cfg, strategy=name).run()
    first = Tuner(tiny_problem(), cfg, strategy=name)
    for _ in range(pause):
        first.meta_step()
    save_checkpoint(tmp_path, {"tuner": first.state_dict()})
    resumed = Tuner(tiny_problem(), cfg, strategy=name)
    resumed.load_state_dict(load_checkpoint(tmp_path)["tuner"])
    result = resumed.run()
    assert [r.to_dict() | {"seconds": 0, "inner_seconds": 0} for r in result.history] == [
        r.to_dict() | {"seconds": 0, "inner_seconds": 0} for r in whole.history]
    assert all(torch.equal(a, b) for a, b in zip(result.best, whole.best))
    assert result.info["selection"] == whole.info["selection"]


def test_the_estimator_is_bptt_when_its_graph_fits_and_rbp_otherwise(caplog):
    problem = tiny_problem()
    per_step = step_graph_bytes(MetaObjective(problem, CFG))
    assert per_step > 0
    fits = per_step * CFG.inner_steps / 2**30
    cases = [(None, "neumann", "bptt"), (2 * fits, "neumann", "bptt"), (0.5 * fits, "neumann", "neumann"),
             (0.5 * fits, "cg", "cg"), (0.5 * fits, "tbptt", "neumann")]
    for max_memory, method, expected in cases:
        cfg = _cfg(strategy="sign", budget=7, max_memory=max_memory, method=method)
        objective = CountingObjective(tiny_problem(), cfg)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hypergrad"):
            result = SignStrategy().run(objective, cfg)
        logged = [r.getMessage() for r in caplog.records if "hypergradient by" in r.getMessage()]
        assert len(logged) == 1 and expected in logged[0]  # once per run, with the reason
        est = result.info["estimator"]
        assert est["method"] == expected and est["graph_bytes"] == per_step * CFG.inner_steps
        assert ("fits" in est["reason"]) == (expected == "bptt")
        assert est["limit_source"] == ("max_memory" if max_memory is not None else est["limit_source"])
        assert {m for k, _, m in objective.calls if k == "hypergradient"} == {expected}


class DownhillInLr(UphillObjective):
    """The meta loss falls as the learning rates grow towards 10: 1 + sum (log lr - log 10)^2."""

    def _loss(self, hparams):
        half = len(hparams) // 2
        return 1.0 + sum(float(((h.detach() - math.log(10.0)) ** 2).sum()) for h in hparams[:half])

    def hypergradient(self, hparams, salt, *, method=None, batches=None):
        half = len(hparams) // 2
        grad = tuple(2 * (h.detach() - math.log(10.0)) if i < half else torch.zeros_like(h)
                     for i, h in enumerate(hparams))
        return HypergradResult(grad=grad, state=self.problem.initial_state(),
                               meta_loss=torch.tensor(self._loss(hparams)))


def test_the_sign_rule_travels_decades_and_stays_in_the_search_box():
    cfg = _cfg(strategy="sign", budget=14, init_lr=1e-3)
    result = SignStrategy().run(DownhillInLr(tiny_problem(), cfg), cfg)
    lrs = [[v["alpha"] for v in r.hyperparameters.values()] for r in result.history if r.action == "update"]
    assert all(lr == pytest.approx(1e-3) for lr in lrs[0])
    # steps of 1, 1.2, 1.44, ... in log lr: four decades in six steps (Adam at meta-lr 0.05 moves ~0.05 per step)
    assert all(lr == pytest.approx(10.0) for lr in lrs[6])
    assert all(1e-3 * (1 - 1e-6) <= lr <= 10 * (1 + 1e-6) for row in lrs for lr in row)
    assert result.evaluation["best"]["val_loss"] == 1.0 < result.evaluation["initial"]["val_loss"]


def test_auto_is_a_sign_strategy_and_the_tuners_default_stays_gradient():
    assert isinstance(AutoStrategy(), SignStrategy)
    # the robust selection measured neutral (docs/results/robust_selection.md): auto keeps the mean rule
    auto = AutoStrategy()
    assert (auto.backoff, auto.statistic, auto.min_budget()) == (None, "mean", 6)
    assert SignStrategy(backoff=0.8, statistic="max").min_budget() == 8
    assert isinstance(get_strategy("auto", _cfg(budget=5)), GradientStrategy)
    assert isinstance(get_strategy("auto", _cfg(budget=6)), AutoStrategy)
    assert isinstance(Tuner(tiny_problem(), CFG).strategy, GradientStrategy)
    for bad, message in [({"top": 0}, "top must be"), ({"salts": (-5,)}, "salts must be")]:
        with pytest.raises(ValueError, match=message):
            SignStrategy(**bad)


def test_tune_takes_strategy_and_budget():
    import torch.nn.functional as F
    from torch import nn

    import hypergrad

    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    result = hypergrad.tune(model, F.cross_entropy, (x, y), (x, y), strategy="sign", budget=8, inner_steps=6,
                            batch_size=16)
    assert len(result.history) == 8 and result.info["strategy"] == "sign"
    assert math.isfinite(result.evaluation["best"]["val_loss"])
    assert result.to_json()["strategy"]["budget"] == 8


def test_compare_runs_every_strategy_as_a_method_at_the_matched_budget():
    pytest.importorskip("optuna")
    from hypergrad.compare import compare, method_kind, parse_methods
    from tests.test_compare import CFG as COMPARE_CFG
    from tests.test_compare import problems

    assert parse_methods("sign,hybrid,auto,tpe") == ["sign", "hybrid", "auto", "tpe"]
    assert {method_kind(m) for m in ("sign", "hybrid", "auto")} == {"strategy"}
    doc = compare(problems, COMPARE_CFG, ["auto", "hybrid", "tpe"], 8, [0], progress=False)
    for run in doc["runs"]:
        assert run["inner_trainings"][-1] == 8 and len(run["inner_trainings"]) == 8
        assert run["sgd_eval"]["val_loss"] is not None
    info = {r["method"]: r["info"] for r in doc["runs"]}
    assert info["auto"]["auto"]["inner_trainings"] == 8 and info["auto"]["auto"]["estimator"]["method"] == "bptt"


def test_cli_tune_takes_strategy_and_budget(tmp_path, capsys):
    from hypergrad.cli import main

    out = tmp_path / "r.json"
    assert main(["tune", "--inner-steps", "10", "--batch-size", "50", "--hidden", "8", "--strategy", "sign",
                 "--budget", "7", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "mean of 2 unseen batch orders" in text and "inner trainings: 7 of a budget of 7" in text
    import json

    doc = json.loads(out.read_text())
    assert doc["config"]["strategy"] == "sign" and doc["strategy"]["budget"] == 7 and len(doc["history"]) == 7


# ---------------------------------------------------------------------- robust selection
ROBUST = {"max": lambda: SignStrategy(statistic="max"), "backoff": lambda: SignStrategy(backoff=0.8),
          "average": lambda: SignStrategy(top=1, average=3),
          "three-orders": lambda: SignStrategy(salts=(-1000, -1001, -1002), top=1, statistic="max")}


@pytest.mark.parametrize("variant", sorted(ROBUST))
@pytest.mark.parametrize("budget", [12, 15])
def test_robust_selection_keeps_the_budget_accounting_exact(variant, budget):
    cfg = _cfg(strategy="sign", budget=budget)
    objective = CountingObjective(tiny_problem(), cfg)
    strategy = ROBUST[variant]()
    result = strategy.run(objective, cfg)
    assert len(objective.calls) == len(result.history) == result.info["inner_trainings"] == budget
    sel = result.info["selection"]
    evaluated = [salt for kind, salt, _ in objective.calls if kind == "evaluate"]
    assert len(evaluated) == len(sel["candidates"]) * len(strategy.salts) == strategy.selection_cost(budget)
    assert set(evaluated) == set(strategy.salts)
    kinds = [c["kind"] for c in sel["candidates"]]
    assert kinds[0] == "start" and ("backoff" in kinds) == (variant == "backoff")
    assert ("average" in kinds) == (variant == "average")
    assert sel["chosen"] == min(range(len(kinds)), key=lambda i: (sel["candidates"][i]["score"], i))


def _selection_state(strategy, objective, cfg, values):
    """A state in the selection: the start and search candidates whose lr is shifted by i, with the given values."""
    state = strategy.init(objective, cfg)
    state.budget, state.phase = 20, "select"
    state.candidates = [(-1 if i == 0 else i, tuple(h.detach() + 0.1 * i for h in state.start))
                        for i in range(len(values))]
    state.kinds = ["start"] + ["search"] * (len(values) - 1)
    state.selection = [(i, salt, {"val_loss": v, "train_loss": v, "val_accuracy": 0.0})
                       for i, row in enumerate(values) for salt, v in zip(strategy.salts, row)]
    return state


def test_the_max_statistic_prefers_the_candidate_consistent_across_orders():
    cfg = _cfg(strategy="sign", budget=20)
    values = [[0.30, 0.31], [0.10, 0.26], [0.19, 0.20]]  # means 0.305, 0.18, 0.195; maxima 0.31, 0.26, 0.20
    chosen = {}
    for statistic in ("mean", "max"):
        strategy = SignStrategy(statistic=statistic)
        objective = MetaObjective(tiny_problem(), cfg)
        result = strategy.finish(objective, cfg, _selection_state(strategy, objective, cfg, values))
        sel = result.info["selection"]
        chosen[statistic] = sel["chosen"]
        assert sel["statistic"] == statistic
        assert [c["score"] for c in sel["candidates"]] == pytest.approx(
            [max(v) if statistic == "max" else sum(v) / 2 for v in values])
        # what is reported is still the chosen candidate's mean over the selection orders
        assert result.evaluation["best"]["val_loss"] == pytest.approx(sum(values[sel["chosen"]]) / 2)
    assert chosen == {"mean": 1, "max": 2}


class EdgeOfStability(UphillObjective):
    """The search points uphill in lr; on the selection orders the loss falls as the lr falls, by the order.

    Values at log-lr offset ``d`` from the start: ``1 + d^2`` on the first order, ``1 + 2 d^2`` on the second
    (a larger lr is worse and more order-dependent)."""

    def evaluate(self, hparams, salt=-1):
        start = self.initial_hparams()
        half = len(hparams) // 2
        d2 = sum(float(((h.detach() - s) ** 2).sum()) for h, s in zip(hparams[:half], start[:half]))
        loss = 1.0 + (2.0 if salt == SELECTION_SALTS[1] else 1.0) * d2
        return {"val_loss": loss, "train_loss": loss, "val_accuracy": 0.0}


def test_the_backoff_candidate_is_the_best_search_candidate_with_its_lrs_scaled():
    cfg = _cfg(strategy="sign", budget=12)
    strategy = SignStrategy(backoff=0.8, statistic="max")
    objective = EdgeOfStability(tiny_problem(), cfg)
    state = strategy.init(objective, cfg)
    while not strategy.done(cfg, state, 12):
        strategy.step(objective, cfg, state)
    assert state.kinds == ["start", "search", "backoff"] and len(state.history) == 12
    (_, parent), (_, backoff) = state.candidates[1], state.candidates[2]
    half = len(parent) // 2
    for i, (p, b) in enumerate(zip(parent, backoff)):
        torch.testing.assert_close(b, p + math.log(0.8) if i < half else p)  # lr x 0.8, momentum kept
    result = strategy.finish(objective, cfg, state)
    cands = result.info["selection"]["candidates"]
    assert cands[2]["score"] < cands[1]["score"]  # lower lr: better on the selection orders
    assert result.info["selection"]["chosen"] == 0  # the start is better still, and stays exported


def test_a_backoff_as_good_as_its_parent_is_not_chosen_over_it_but_a_better_one_is():
    cfg = _cfg(strategy="sign", budget=20)
    for backoff_values, expected in [([0.20, 0.20], 1), ([0.15, 0.19], 2)]:
        strategy = SignStrategy(backoff=0.8)
        objective = MetaObjective(tiny_problem(), cfg)
        state = _selection_state(strategy, objective, cfg, [[0.3, 0.3], [0.2, 0.2]])
        strategy.add_backoff(objective, state)
        state.selection += [(2, salt, {"val_loss": v, "train_loss": v, "val_accuracy": 0.0})
                            for salt, v in zip(strategy.salts, backoff_values)]
        assert strategy.done(cfg, state, 20)
        assert strategy.finish(objective, cfg, state).info["selection"]["chosen"] == expected


def test_the_average_candidate_is_the_mean_of_the_last_accepted_points():
    cfg = _cfg(strategy="sign", budget=14, init_lr=1e-3)
    strategy = SignStrategy(top=1, average=3)
    objective = DownhillInLr(tiny_problem(), cfg)
    result = strategy.run(objective, cfg)
    state_points = [r for r in result.history if r.action == "update"][-3:]
    sel = result.info["selection"]
    assert [c["kind"] for c in sel["candidates"]] == ["start", "search", "average"]
    assert sel["candidates"][2]["step"] == state_points[-1].step
    # DownhillInLr's loss is 1 + sum (log lr - log 10)^2: the average's value is that of the mean log lr
    logs = [[math.log(v["alpha"]) for v in r.hyperparameters.values()] for r in state_points]
    mean = [sum(col) / 3 for col in zip(*logs)]
    assert sel["candidates"][2]["values"][0] == pytest.approx(1.0 + sum((m - math.log(10.0)) ** 2 for m in mean))


@pytest.mark.parametrize("pause", [8, 10, 11])  # the selection before, at and after the backoff
def test_checkpoint_and_resume_around_the_backoff_give_the_same_result(pause, tmp_path):
    cfg = _cfg(strategy="sign", budget=12)
    whole = Tuner(tiny_problem(), cfg, strategy=SignStrategy(backoff=0.8)).run()
    first = Tuner(tiny_problem(), cfg, strategy=SignStrategy(backoff=0.8))
    for _ in range(pause):
        first.meta_step()
    save_checkpoint(tmp_path, {"tuner": first.state_dict()})
    resumed = Tuner(tiny_problem(), cfg, strategy=SignStrategy(backoff=0.8))
    resumed.load_state_dict(load_checkpoint(tmp_path)["tuner"])
    result = resumed.run()
    assert len(result.history) == 12
    assert all(torch.equal(a, b) for a, b in zip(result.best, whole.best))
    assert result.info["selection"] == whole.info["selection"]


def test_robust_selection_settings_are_checked():
    for bad, message in [({"statistic": "median"}, "statistic must be one of"), ({"backoff": 1.0}, "backoff must be"),
                         ({"backoff": 0.0}, "backoff must be"), ({"average": 1}, "average must be")]:
        with pytest.raises(ValueError, match=message):
            SignStrategy(**bad)
    assert SignStrategy(backoff=0.8).min_budget() == SignStrategy().min_budget() + 2


@pytest.mark.parametrize(("method", "want"), [("forward", "neumann"), ("bptt", "neumann"), ("cg", "cg")])
def test_under_torch_distributed_the_estimator_takes_an_rbp_method(method, want):
    """Only the RBP family reduces its hypergradient over ranks: forward mode and BPTT are not taken there."""
    from hypergrad.strategies.estimator import choose_estimator

    problem = tiny_problem()
    problem.parallel = object()  # the estimator only asks whether the problem is data-parallel
    assert choose_estimator(MetaObjective(problem, _cfg(method=method)), _cfg(method=method)).method == want
    with pytest.raises(ValueError, match=r"not available under torch\.distributed"):
        cfg = _cfg(method="bptt", segments=2)
        choose_estimator(MetaObjective(problem, cfg), cfg)
