"""Forward mode and schedules in the tuner: ``method="forward"``, ``segments=S``, their export and their logs."""

from __future__ import annotations

import json

import pytest
import torch
from _problems import tiny_problem

import hypergrad
from hypergrad import TuneConfig, Tuner
from hypergrad.config import ConfigError
from hypergrad.hyperparams import segment_bounds
from hypergrad.objective import MetaObjective

DT = torch.float64


def _objective(per: str = "tensor", segments: int = 1, method: str = "bptt", **kw) -> MetaObjective:
    problem = tiny_problem(DT, per=per)
    cfg = TuneConfig(per=per, batch_size=problem.batch_size, inner_steps=kw.pop("inner_steps", 12),
                     segments=segments, method=method, strategy="sign", **kw)
    return MetaObjective(problem, cfg)


def _spread(objective: MetaObjective) -> tuple[torch.Tensor, ...]:
    """Distinct values per segment and per hyperparameter (a point where every gradient entry differs)."""
    g = torch.Generator().manual_seed(5)
    return tuple(h + 0.3 * torch.randn(h.shape, generator=g, dtype=DT) for h in objective.initial_hparams())


@pytest.mark.parametrize("per", ["tensor", "layer", "global"])
@pytest.mark.parametrize("segments", [1, 3])
def test_forward_mode_equals_bptt_in_the_tuner(per: str, segments: int) -> None:
    bptt = _objective(per, segments, "bptt")
    forward = _objective(per, segments, "forward")
    hp = _spread(bptt)
    want, got = bptt.hypergradient(hp, 2), forward.hypergradient(hp, 2)
    assert float(got.meta_loss) == pytest.approx(float(want.meta_loss), rel=1e-12)
    for a, b in zip(got.grad, want.grad):
        assert a.shape == b.shape == hp[0].shape
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)
    assert max(float(g.abs().max()) for g in want.grad) > 1e-6  # a gradient that is not zero


def test_a_schedule_trains_each_segment_with_its_values() -> None:
    obj = _objective("tensor", 3, "bptt")
    hp = _spread(obj)
    batches = obj.batches(4)
    h = obj.problem.initial_state()  # by hand: segment s on its own steps
    for s, (a, b) in enumerate(segment_bounds(12, 3)):
        h = obj.problem.train(obj.spec.at_segment(hp, s), batches[a:b], state=h)
    got = obj.train(hp, 4)
    for x, y in zip(got, h):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # the value the hypergradient differentiates is the value of that run
    assert float(obj.hypergradient(hp, 4).meta_loss) == pytest.approx(obj.value(hp, 4), rel=1e-12)
    constant = tuple(t[:1].expand(3).clone() for t in hp)  # a different schedule trains differently
    assert obj.value(constant, 4) != pytest.approx(obj.value(hp, 4), rel=1e-6)


def test_a_segment_gradient_is_the_finite_difference_of_that_segment() -> None:
    obj = _objective("global", 3, "bptt")
    hp = _spread(obj)
    grad = obj.hypergradient(hp, 1).grad
    eps = 1e-6
    for i in range(len(hp)):
        for s in range(3):
            up = tuple(h.clone() for h in hp)
            down = tuple(h.clone() for h in hp)
            up[i][s] += eps
            down[i][s] -= eps
            fd = (obj.value(up, 1) - obj.value(down, 1)) / (2 * eps)
            assert float(grad[i][s]) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_tbptt_sends_no_gradient_to_segments_before_its_window() -> None:
    obj = _objective("global", 3, "tbptt", truncate=3)  # the last 3 of 12 steps: only the last segment
    grad = obj.hypergradient(_spread(obj), 0).grad
    for g in grad:
        assert float(g[:2].abs().max()) == 0.0 and float(g[2].abs()) > 0.0


@pytest.mark.parametrize("method", ["bptt", "forward"])
def test_a_tuned_schedule_exports_to_sgd_and_its_scheduler(tmp_path, method: str) -> None:
    problem = tiny_problem(DT)
    result = hypergrad.tune(problem.model, torch.nn.functional.cross_entropy,
                            (problem.x_train, problem.y_train), (problem.x_val, problem.y_val),
                            batch_size=problem.batch_size, inner_steps=10, segments=2, method=method,
                            strategy="gradient", meta_steps=3, meta_lr=0.3)
    assert result.spec.segments == 2 and all(t.shape == (2,) for t in result.best)
    assert result.best_step > 0  # the schedule moved and improved the validation loss
    lrs = result.hyperparameters["0.weight"]["lr"]
    assert isinstance(lrs, list) and len(lrs) == 2 and lrs[0] != pytest.approx(lrs[1])
    # torch.optim.SGD with the exported groups and scheduler takes the inner loop's steps
    model = problem.fresh_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(result.param_groups(params))
    sched = result.scheduler(opt)
    objective = MetaObjective(problem, result.config)
    for x, y in objective.batches(-1):
        opt.zero_grad()
        problem.loss_fn(model(x), y).backward()
        opt.step()
        sched.step()
    want = objective.train(result.best, -1)
    for a, b in zip(params, want):
        torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-12)
    doc = result.to_json()
    assert doc["schedule"] == {"segments": 2, "steps": [[0, 5], [5, 10]]}
    assert doc["num_hyperparameters"] == 2 * 2 * problem.num_tensors
    json.dumps(doc)  # plain JSON


def test_the_sign_strategy_tunes_a_schedule_by_bptt_or_forward_mode() -> None:
    problem = tiny_problem(DT)
    for max_memory, method in ((None, "bptt"), (1e-9, "forward")):
        cfg = TuneConfig(per="tensor", batch_size=problem.batch_size, inner_steps=8, segments=2,
                         strategy="sign", budget=8, max_memory=max_memory)
        result = Tuner(problem, cfg, strategy="sign").run()
        assert result.info["estimator"]["method"] == method, result.info["estimator"]["reason"]
        assert all(t.shape == (2,) for t in result.best)


def test_method_forward_is_taken_by_the_strategies_whatever_the_memory() -> None:
    problem = tiny_problem(DT)
    cfg = TuneConfig(per="tensor", batch_size=problem.batch_size, inner_steps=6, method="forward", budget=7)
    result = Tuner(problem, cfg, strategy="sign").run()
    assert result.info["estimator"]["method"] == "forward"
    plain = Tuner(problem, TuneConfig(per="tensor", batch_size=problem.batch_size, inner_steps=6,
                                      method="forward", meta_steps=2)).run()
    assert len(plain.history) == 2 and all(r.solver is None and r.hypergrad_norm > 0 for r in plain.history)


def test_schedule_settings_are_checked_before_work() -> None:
    with pytest.raises(ConfigError, match=r"segments \(13\) must not exceed inner_steps \(12\)"):
        TuneConfig(inner_steps=12, segments=13)
    with pytest.raises(ConfigError, match="needs method bptt, tbptt or forward"):
        TuneConfig(segments=2, method="neumann", strategy="gradient")
    problem = tiny_problem(DT)
    cfg = TuneConfig(per="tensor", batch_size=problem.batch_size, inner_steps=6, segments=2, method="cg")
    with pytest.raises(ValueError, match="needs method bptt, tbptt or forward"):
        Tuner(problem, cfg)  # the Tuner's default strategy is the gradient one
    with pytest.raises(ValueError, match="cannot differentiate a schedule"):
        MetaObjective(problem, cfg).hypergradient(MetaObjective(problem, cfg).initial_hparams(), 0)


def test_tensorboard_shows_the_schedule(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hypergrad.callbacks import TensorBoardLogger

    cfg = TuneConfig(per="global", batch_size=16, inner_steps=9, segments=3, method="bptt",
                     meta_steps=2)
    problem = tiny_problem(DT, per="global")
    Tuner(problem, cfg, callbacks=[TensorBoardLogger(tmp_path)]).run()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {f"sgd_lr/0.weight/segment_{s}" for s in range(3)} <= tags
    assert "sgd_lr/0.weight" not in tags  # no constant curve for a schedule
    curve = acc.Scalars("schedule/sgd_lr/0.weight")
    assert [e.step for e in curve] == [0, 2, 3, 5, 6, 8]  # each segment's first and last inner step
    assert curve[0].value == curve[1].value and curve[2].value == curve[3].value
