"""The ``"online"`` strategy: one training, never restarted, a meta step every ``online_period`` steps (issue 15.3)."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

import hypergrad
from hypergrad import SGDSchedule, Tuner, segment_index, to_sgd_param_groups
from hypergrad.callbacks import TensorBoardLogger
from hypergrad.cli import main
from hypergrad.config import ConfigError, TuneConfig
from hypergrad.divergence import DivergenceError
from hypergrad.objective import MetaObjective
from hypergrad.records import HypergradResult, MetaStepRecord
from hypergrad.strategies import STRATEGIES, OnlineState, OnlineStrategy
from hypergrad.strategies.online import MAX_ROLLBACKS, RUN_SALT
from tests._problems import tiny_problem
from tests._zoo import ZOO

T, P = 40, 10
CFG = TuneConfig(strategy="online", method="neumann", inner_steps=T, online_period=P, truncate=3,
                 hyper_batches=2, batch_size=16, meta_lr=0.1)


def online_tuner(problem=None, **changes) -> Tuner:
    return Tuner(problem or tiny_problem(), dataclasses.replace(CFG, **changes), strategy="online")


def sgd_replay(problem, result, batches, *, api: bool = False) -> list[torch.Tensor]:
    """Train a fresh copy of the model with torch.optim.SGD and the exported schedule
    (``api``: through ``result.param_groups`` and ``result.scheduler``)."""
    model = problem.fresh_model()
    params = [p for p in model.parameters() if p.requires_grad]
    spec, schedule = result.schedule_spec, result.schedule
    if api:
        opt = torch.optim.SGD(result.param_groups(params))
        sched = result.scheduler(opt)
    else:
        opt = torch.optim.SGD(to_sgd_param_groups(spec, schedule, params))
        sched = SGDSchedule(opt, spec, schedule, num_steps=len(batches))
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        problem.loss_fn(model(x), y).backward()
        opt.step()
        sched.step()
    return [p.detach() for p in params]


def test_the_exported_schedule_reproduces_the_runs_weights_with_torch_sgd():
    problem = tiny_problem(torch.float64)
    tuner = online_tuner(problem)
    result = tuner.run()
    s = T // P
    assert result.schedule_spec.segments == s
    assert segment_index(T, s) == tuple(t // P for t in range(T))  # segment k is period k
    assert all(h.shape[0] == s for h in result.schedule)
    # the schedule's segments are the hyperparameters each period's record says it trained with
    described = result.schedule_spec.describe(result.schedule)
    for k, record in enumerate(result.history):
        for name, hp in record.hyperparameters.items():
            assert described[name]["lr"][k] == pytest.approx(hp["lr"], rel=1e-12)
    # the meta steps moved the hyperparameters (else the test would prove nothing about the schedule)
    assert not torch.allclose(result.schedule[0][0], result.schedule[0][-1])
    for api in (False, True):  # by hand, and through result.param_groups + result.scheduler
        replay = sgd_replay(problem, result, tuner.objective.batches(RUN_SALT), api=api)
        for a, b in zip(replay, result.weights):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the retraining of hypergrad.compare steps the schedule the same way
    from hypergrad.compare import sgd_evaluate

    again = sgd_evaluate(problem, result.schedule_spec, result.schedule, tuner.objective.batches(RUN_SALT))
    assert again["val_loss"] == pytest.approx(result.evaluation["final"]["val_loss"], rel=1e-9)
    # the final values are the last period's; the constant export carries them
    assert all(torch.equal(f, h[-1]) for f, h in zip(result.final, result.schedule))
    assert all(torch.equal(f, b) for f, b in zip(result.final, result.best))


def test_one_training_never_restarted_and_a_record_per_period(monkeypatch):
    problem = tiny_problem()
    calls = {"initial_state": 0, "train": []}
    initial_state, train = problem.initial_state, problem.train

    def counting_initial_state():
        calls["initial_state"] += 1
        return initial_state()

    def recording_train(hparams, batches, *, state=None, on_step=None):
        out = train(hparams, batches, state=state, on_step=on_step)
        calls["train"].append((state, len(batches), out))
        return out

    monkeypatch.setattr(problem, "initial_state", counting_initial_state)
    monkeypatch.setattr(problem, "train", recording_train)
    tuner = online_tuner(problem)
    result = tuner.run()
    assert calls["initial_state"] == 1  # w0 once, when the state is built
    trains = calls["train"]
    assert sum(n for _, n, _ in trains) == T  # exactly T inner steps in all
    assert trains[0][0] is not None and all(torch.equal(a, b) for a, b in zip(trains[0][0], initial_state()))
    for (_, _, before), (start, _, _) in itertools.pairwise(trains):  # each period starts where the last ended
        assert all(torch.equal(a, b) for a, b in zip(before, start))
    assert all(torch.equal(a, b) for a, b in zip(trains[-1][2][: problem.num_tensors], result.weights))
    assert [r.inner_step for r in result.history] == [10, 20, 30, 40]
    assert [r.action for r in result.history] == ["update"] * 3 + ["end"]
    assert all(r.val_loss is not None and r.hypergrad_norm is not None for r in result.history[:-1])
    assert result.history[-1].val_loss == pytest.approx(result.evaluation["final"]["val_loss"])
    assert result.info["meta_updates"] == 3 and result.info["segments"] == 4


def test_records_carry_the_inner_step_through_their_json_form():
    tuner = online_tuner()
    tuner.run()
    for record in tuner.history:
        data = record.to_dict()
        assert data["inner_step"] == record.inner_step
        assert MetaStepRecord.from_dict(json.loads(json.dumps(data))) == record


def test_a_nonfinite_hypergradient_is_skipped(monkeypatch):
    tuner = online_tuner(on_divergence="skip")
    objective = tuner.objective
    real = objective.fixed_point_hypergradient

    def poisoned(state, hparams, salt, *, method=None):
        out = real(state, hparams, salt, method=method)
        if salt == 1:
            return dataclasses.replace(out, grad=tuple(torch.full_like(g, float("nan")) for g in out.grad))
        return out

    monkeypatch.setattr(objective, "fixed_point_hypergradient", poisoned)
    tuner.meta_step()
    before = [h.clone() for h in tuner.hparams]
    record = tuner.meta_step()
    assert record.events == ("nonfinite_hypergrad",) and record.action == "skipped"
    assert all(torch.equal(a, b) for a, b in zip(before, tuner.hparams))  # no meta step taken
    assert tuner.state.inner_step == 2 * P  # the run went on
    assert tuner.meta_step().action == "update"


def test_an_exploding_hypergradient_backs_off_by_default(monkeypatch):
    tuner = online_tuner()
    objective = tuner.objective
    real = objective.fixed_point_hypergradient
    monkeypatch.setattr(objective, "fixed_point_hypergradient", lambda *a, **k: dataclasses.replace(
        real(*a, **k), grad=tuple(torch.full_like(g, 1e9) for g in real(*a, **k).grad)))
    record = tuner.meta_step()
    assert record.events == ("exploding_hypergrad",) and record.action == "backoff"
    assert tuner.state.lr_scale == 0.5


def test_an_inner_blowup_rolls_the_period_back_then_stops(monkeypatch):
    tuner = online_tuner()
    tuner.meta_step()  # a sound first period
    problem = tuner.problem
    train = problem.train

    def blowing_up(hparams, batches, *, state=None, on_step=None):  # every later period ends non-finite
        return tuple(torch.full_like(t, float("nan")) for t in train(hparams, batches, state=state))

    monkeypatch.setattr(problem, "train", blowing_up)
    kept = [t.clone() for t in tuner.state.inner]
    for i in range(MAX_ROLLBACKS):
        record = tuner.meta_step()
        assert record.action == "rollback" and record.events[0] == "nonfinite_loss"
        assert tuner.state.inner_step == P and len(tuner.state.trajectory) == 1
        assert all(torch.equal(a, b) for a, b in zip(tuner.state.inner, kept))  # back to h_P
        assert all(torch.equal(a, b) for a, b in zip(tuner.hparams, tuner.best))
        assert tuner.state.lr_scale == 0.5 ** (i + 1)
    with pytest.raises(DivergenceError, match=r"online period 10\.\.20"):
        tuner.meta_step()


def test_checkpoint_and_resume_continue_the_one_run_bitwise():
    whole = online_tuner().run()
    first = online_tuner()
    first.meta_step()
    first.meta_step()
    saved = first.state_dict()
    assert len(saved["inner"]) == 2 * first.problem.num_tensors and saved["inner_step"] == 2 * P
    resumed = online_tuner()
    resumed.load_state_dict(saved)
    assert isinstance(resumed.state, OnlineState) and resumed.state.inner_step == 2 * P
    result = resumed.run()
    assert [r.val_loss for r in result.history] == [r.val_loss for r in whole.history]
    assert all(torch.equal(a, b) for a, b in zip(result.weights, whole.weights))
    assert all(torch.equal(a, b) for a, b in zip(result.schedule, whole.schedule))


def test_tune_resumes_an_interrupted_online_run_from_its_checkpoint(tmp_path):
    model, loss, train, val = ZOO["mlp"].build()
    kw = dict(strategy="online", inner_steps=T, online_period=P, truncate=3, hyper_batches=2, batch_size=16)
    whole = hypergrad.tune(model, loss, train, val, **kw)

    class Interrupt(hypergrad.callbacks.Callback):
        def on_meta_step(self, tuner, record):
            if record.step == 1:
                raise KeyboardInterrupt("stop here")

    with pytest.raises(KeyboardInterrupt):
        hypergrad.tune(model, loss, train, val, checkpoint_dir=tmp_path, callbacks=[Interrupt()], **kw)
    resumed = hypergrad.tune(model, loss, train, val, checkpoint_dir=tmp_path, resume=True, **kw)
    assert [r.step for r in resumed.history] == [0, 1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(resumed.weights, whole.weights))


@pytest.mark.parametrize("name", ["mlp", "cnn", "bn_dropout"])
def test_it_runs_on_user_models(name):
    model, loss, train, val = ZOO[name].build()
    w0 = [p.detach().clone() for p in model.parameters()]
    result = hypergrad.tune(model, loss, train, val, strategy="online", inner_steps=30, online_period=10,
                            truncate=3, hyper_batches=2, batch_size=16)
    assert [r.action for r in result.history] == ["update", "update", "end"]
    assert len(result.weights) == len(w0) and all(torch.isfinite(w).all() for w in result.weights)
    assert any(not torch.equal(a, b) for a, b in zip(result.weights, w0))  # trained
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), w0))  # the user's model untouched
    assert result.evaluation["final"]["val_loss"] < result.history[0].val_loss * 1.5
    assert "val_accuracy" in result.evaluation["final"]


@pytest.mark.parametrize("method", ["cg", "bptt", "tbptt", "forward"])
def test_other_hypergradient_methods_run(method):
    result = online_tuner(method=method).run()
    assert [r.action for r in result.history] == ["update"] * 3 + ["end"]
    assert (result.history[0].solver is None) == (method in ("bptt", "tbptt", "forward"))


def test_bptt_over_a_period_is_the_exact_gradient_of_that_period():
    """BPTT through the period equals forward mode and finite differences of the period's val loss."""
    problem = tiny_problem(torch.float64)
    cfg = dataclasses.replace(CFG, method="bptt")
    objective = MetaObjective(problem, cfg)
    h0 = problem.initial_state()
    hp = objective.initial_hparams()
    batches = objective.batches(RUN_SALT)[:P]
    bptt = OnlineStrategy._through_period(objective, cfg, h0, hp, batches)
    forward = OnlineStrategy._through_period(objective, dataclasses.replace(cfg, method="forward"), h0, hp, batches)
    for a, b in zip(bptt.grad, forward.grad):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)
    eps = 1e-6

    def val(theta):
        h = problem.train(theta, batches, state=h0)
        return float(objective.meta_loss(h[: problem.num_tensors]))

    plus = tuple(h + (eps if i == 0 else 0.0) for i, h in enumerate(hp))
    minus = tuple(h - (eps if i == 0 else 0.0) for i, h in enumerate(hp))
    assert float(bptt.grad[0]) == pytest.approx((val(plus) - val(minus)) / (2 * eps), rel=1e-5)
    assert isinstance(bptt, HypergradResult)


@pytest.mark.parametrize(("changes", "match"), [
    ({"online_period": 50}, r"online_period \(50\) must not exceed inner_steps \(40\)"),
    ({"online_period": 15}, r"inner_steps \(40\) must be a multiple of online_period \(15\)"),
    ({"budget": 5}, r"budget=5 is not used by the online strategy"),
    ({"segments": 2}, r"segments=2 is not used by the online strategy"),
])
def test_bad_settings_are_refused_before_any_work(changes, match):
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(CFG, **changes)
    model, loss, train, val = ZOO["mlp"].build()
    with pytest.raises(ValueError, match=match):
        hypergrad.tune(model, loss, train, val, **{**dict(strategy="online", inner_steps=40), **changes})
    # the strategy checks a config of another strategy too (Tuner(..., strategy="online"))
    other = TuneConfig(inner_steps=40, **{k: v for k, v in changes.items() if k == "online_period"})
    if "online_period" in changes:
        with pytest.raises(ConfigError, match=match):
            Tuner(tiny_problem(), dataclasses.replace(other, batch_size=16), strategy="online")


def test_online_is_registered():
    assert STRATEGIES["online"] is OnlineStrategy
    assert "online" in hypergrad.config.STRATEGY_NAMES


def test_tensorboard_logs_the_hyperparameters_against_inner_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tuner = Tuner(tiny_problem(), CFG, strategy="online", callbacks=[TensorBoardLogger(tmp_path)])
    tuner.run()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("sgd_lr/0.weight")] == [10, 20, 30, 40]
    assert [e.step for e in acc.Scalars("meta/val_loss")] == [10, 20, 30, 40]


def test_cli_tune_strategy_online(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["tune", "--strategy", "online", "--inner-steps", "20", "--online-period", "10", "--truncate", "3",
                 "--batch-size", "50", "--hidden", "8", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "the one online run's weights after 20 inner steps, 1 meta steps every 10" in printed
    res = json.loads(out.read_text())
    assert [r["inner_step"] for r in res["history"]] == [10, 20]
    assert res["schedule"]["segments"] == 2 and res["schedule"]["steps"] == [[0, 10], [10, 20]]
    assert len(res["schedule"]["hyperparameters"]["0.weight"]["lr"]) == 2
