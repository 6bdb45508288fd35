"""The meta loop: the inner map, hypergradients of every method, averaging, tuning, state."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import hypergrad
from hypergrad import TuneConfig, Tuner
from hypergrad._tree import tree_dot, tree_norm
from hypergrad.data import load_digits_split
from hypergrad.records import MetaStepRecord, SolverStats
from hypergrad.workloads import mlp
from tests._problems import tiny_problem, tiny_tuner


def test_step_with_and_without_graph_agree_and_train_matches_steps():
    problem = tiny_problem()
    hp = problem.spec.init(0.3, 0.7, torch.float64)
    gen = torch.Generator().manual_seed(1)
    batches = torch.randint(0, len(problem.x_train), (7, problem.batch_size), generator=gen)
    h = problem.initial_state()
    for idx in batches:
        with torch.no_grad():
            fast = problem.step(h, hp, problem.x_train[idx], problem.y_train[idx])
        slow = problem.step(h, hp, problem.x_train[idx], problem.y_train[idx])
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a, b.detach(), rtol=1e-13, atol=1e-13)
        h = fast
    for a, b in zip(problem.train(hp, batches), h):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def _meta_loss_at(tuner: Tuner, hp, batches) -> float:
    h_t = tuner.problem.train(hp, batches)
    return float(tuner.problem.eval_loss(h_t[: tuner.problem.num_tensors], "val"))


def test_bptt_hypergradient_matches_central_finite_differences():
    tuner = tiny_tuner(method="bptt", inner_steps=12)
    batches = tuner.objective.batches(0)
    hp = tuple(h.detach() for h in tuner.hparams)
    result = tuner.objective.hypergradient(hp, 0, method="bptt")
    grad = result.grad
    assert math.isclose(float(result.meta_loss), _meta_loss_at(tuner, hp, batches), rel_tol=1e-12)
    assert result.solver is None and math.isnan(result.spread)  # no fixed-point solve for an unrolled method
    eps = 1e-6
    for i in range(len(hp)):
        plus = tuple(h + eps if j == i else h for j, h in enumerate(hp))
        minus = tuple(h - eps if j == i else h for j, h in enumerate(hp))
        fd = (_meta_loss_at(tuner, plus, batches) - _meta_loss_at(tuner, minus, batches)) / (2 * eps)
        assert abs(float(grad[i]) - fd) <= 1e-6 * max(1.0, abs(fd)), (i, float(grad[i]), fd)


def test_tbptt_with_full_truncation_equals_bptt():
    tuner = tiny_tuner(method="tbptt", inner_steps=9, truncate=9)
    g_t = tuner.objective.hypergradient(tuner.hparams, 0, method="tbptt").grad
    g_b = tuner.objective.hypergradient(tuner.hparams, 0, method="bptt").grad
    for a, b in zip(g_t, g_b):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["rbp", "cg", "neumann", "gmres"])
def test_rbp_hypergradient_is_the_mean_over_hyper_batches(method):
    tuner = tiny_tuner(method=method, inner_steps=15, truncate=4, hyper_batches=3, stop_on_growth=False)
    hp = tuple(h.detach() for h in tuner.hparams)
    result = tuner.objective.hypergradient(hp, 2, method=method)
    grad, h_t = result.grad, result.state
    problem = tuner.problem
    n = problem.num_tensors
    w = tuple(t.clone().requires_grad_(True) for t in h_t[:n])
    gw = torch.autograd.grad(problem.eval_loss(w, "val"), w)
    state_grad = tuple(gw) + tuple(torch.zeros_like(v) for v in h_t[n:])
    batches = tuner.objective.hyper_batches(2)
    assert len(batches) == 3
    parts = []
    for x, y in batches:
        g, _ = hypergrad.fixed_point_grad(
            lambda s, p, x=x, y=y: problem.step(s, p, x, y), h_t, hp, state_grad, method=method, max_iter=4
        )
        parts.append(g)
    mean = tuple(torch.stack(p).mean(0) for p in zip(*parts))
    for a, b in zip(grad, mean):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    # the per-minibatch hypergradients differ, and their spread is reported
    assert result.spread > 0
    assert isinstance(result.solver, SolverStats) and result.solver.method == method


def test_full_batch_fixed_point_uses_the_whole_training_set():
    tuner = tiny_tuner(method="neumann", fixed_point_batch="full", hyper_batches=5)
    (batch,) = tuner.objective.hyper_batches(0)
    assert batch[0] is tuner.problem.x_train


def test_neumann_at_convergence_approaches_bptt_direction():
    """Near a steady state of the inner loop (Prop. 1/2), Neumann-RBP points like BPTT's truncated tail."""
    tuner = tiny_tuner(method="neumann", inner_steps=60, truncate=20, fixed_point_batch="full",
                       batch_size=64, init_lr=0.3)
    hp = tuple(h.detach() for h in tuner.hparams)
    g_n = tuner.objective.hypergradient(hp, 0, method="neumann").grad
    g_t = tuner.objective.hypergradient(hp, 0, method="tbptt").grad
    cos = float(tree_dot(g_n, g_t)) / (tree_norm(g_n) * tree_norm(g_t))
    assert cos > 0.9, cos


def _digits_model(seed: int = 0):
    torch.manual_seed(seed)
    return mlp(64, (32, 32), 10)


@pytest.mark.parametrize("method", ["bptt", "tbptt", "neumann", "cg", "rbp"])
def test_tune_lowers_the_validation_loss_on_digits(method):
    d = load_digits_split(seed=0)
    result = hypergrad.tune(
        _digits_model(), F.cross_entropy, (d.x_train, d.y_train), (d.x_val, d.y_val),
        test_data=(d.x_test, d.y_test), method=method, inner_steps=40, truncate=5, meta_steps=12,
        batch_size=50, seed=0,
    )
    ev = result.evaluation
    assert ev["best"]["val_loss"] < 0.95 * ev["initial"]["val_loss"], ev
    assert len(result.history) == 12
    for record in result.history:
        assert isinstance(record, MetaStepRecord)
        assert {"meta_loss", "val_loss", "train_loss", "hypergrad_norm", "seconds", "solver"} <= set(record.to_dict())
        assert record.val_loss is not None and record.seconds > 0
        assert (record.solver is None) == (method in ("bptt", "tbptt"))
    groups = result.param_groups(_digits_model())
    assert len(groups) == 6 and all(g["lr"] > 0 and 0 < g["momentum"] < 1 for g in groups)
    torch.optim.SGD(groups)  # accepted as-is by torch.optim


def test_tune_per_element_runs_and_reports_means():
    d = load_digits_split(seed=0)
    result = hypergrad.tune(
        _digits_model(), F.cross_entropy, (d.x_train, d.y_train), (d.x_val, d.y_val),
        method="neumann", per="element", inner_steps=20, truncate=3, meta_steps=3, batch_size=50,
    )
    assert "lr_mean" in result.hyperparameters["0.weight"]
    assert all(h.shape == p.shape for h, p in zip(result.best[:6], _digits_model().parameters()))


def test_tune_rejects_unknown_options():
    d = load_digits_split(seed=0)
    with pytest.raises(TypeError, match=r"unknown tune\(\) argument.*learning_rate"):
        hypergrad.tune(_digits_model(), F.cross_entropy, (d.x_train, d.y_train), (d.x_val, d.y_val),
                       learning_rate=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "adam"}, "method='adam' is not allowed"),
        ({"inner_steps": 0}, "inner_steps must be an integer >= 1"),
        ({"truncate": 0}, "truncate must be an integer >= 1"),
        ({"method": "tbptt", "inner_steps": 5, "truncate": 6}, r"truncate \(6\) must not exceed inner_steps \(5\)"),
        ({"meta_lr": -1.0}, "meta_lr must be a positive finite number"),
        ({"init_momentum": 1.0}, r"init_momentum must lie in \(0, 1\)"),
        ({"per": "row"}, "per='row' is not allowed"),
        ({"hyper_batches": 0}, "hyper_batches must be an integer >= 1"),
        ({"on_divergence": "pray"}, "on_divergence='pray' is not allowed"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TuneConfig(**kwargs)


def test_state_dict_round_trip_continues_bitwise():
    a = tiny_tuner(method="neumann", inner_steps=10, truncate=3, meta_steps=6)
    for _ in range(6):
        a.meta_step()
    b = tiny_tuner(method="neumann", inner_steps=10, truncate=3, meta_steps=6)
    for _ in range(3):
        b.meta_step()
    c = tiny_tuner(method="neumann", inner_steps=10, truncate=3, meta_steps=6)
    c.load_state_dict(b.state_dict())
    for _ in range(3):
        c.meta_step()
    assert [r.meta_loss for r in a.history] == [r.meta_loss for r in c.history]
    assert [r.to_dict()["solver"] for r in a.history] == [r.to_dict()["solver"] for r in c.history]
    for x, y in zip(a.hparams, c.hparams):
        assert torch.equal(x, y)


def test_finish_reverts_a_blown_up_last_update_to_the_best():
    tuner = tiny_tuner(method="neumann", inner_steps=15, truncate=3, meta_steps=2)
    tuner.meta_step()
    tuner.meta_step()
    with torch.no_grad():  # as if the last Adam step had jumped to a diverging learning rate
        for log_lr in tuner.spec.split(tuner.hparams)[0]:
            log_lr.fill_(math.log(1e4))
    result = tuner.finish()
    assert result.evaluation["final"].get("reverted") == 1.0
    for f, b in zip(result.final, result.best):
        assert torch.equal(f, b)
    assert math.isfinite(result.evaluation["final"]["val_loss"])


@pytest.mark.parametrize("method", ["neumann", "cg", "rbp"])
def test_stacked_hyper_batches_equal_the_loop_even_when_a_series_stops_early(method):
    # With lr = 1 the Neumann series of the 4 minibatches start to grow after 3, 4, 5 and 5 terms:
    # each block must stop on its own, as the per-minibatch loop (and the distributed path, which
    # always loops) does; a stop of the whole stack at the first growing block was a bug.
    kw = dict(method=method, inner_steps=15, truncate=8, hyper_batches=4, init_lr=1.0)
    stacked = tiny_tuner(**kw, batch_hyper=True)
    looped = tiny_tuner(**kw, batch_hyper=False)
    hp = tuple(h.detach() for h in stacked.hparams)
    st_s = stacked.objective.hypergradient(hp, 1, method=method)
    st_l = looped.objective.hypergradient(hp, 1, method=method)
    g_s, g_l = st_s.grad, st_l.grad
    # float64; CG amplifies the round-off of the stacked vs per-block reductions to ~1e-9
    rtol = 1e-7 if method == "cg" else 1e-9
    for a, b in zip(g_s, g_l):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-13)
    if method == "neumann":
        assert "growth" in st_l.solver.stop_reasons  # the case this test is about
        assert "growth" in st_s.solver.stop_reasons


# ---------------------------------------------------------------------- warm start
def test_warm_start_sets_the_current_and_best_hyperparameters_and_the_next_salt():
    tuner = tiny_tuner(method="neumann", inner_steps=10, truncate=3, meta_steps=6)
    start = tuple(h.detach() + 0.3 for h in tuner.hparams)
    tuner.warm_start(start, best_loss=0.25, step=4)
    assert (tuner.step_count, tuner.best_step, tuner.best_loss) == (4, 4, 0.25)
    assert all(torch.equal(h, s) for h, s in zip(tuner.hparams, start))
    assert all(torch.equal(b, s) for b, s in zip(tuner.best, start))
    record = tuner.meta_step()  # the warm hyperparameters, evaluated on the batches of salt 4
    assert record.step == 4
    assert record.val_loss == pytest.approx(tuner.objective.value(start, 4), rel=1e-12)
    assert not all(torch.equal(h, s) for h, s in zip(tuner.hparams, start))  # Adam moved them ...
    assert all(torch.equal(s, s0 + 0.3) for s, s0 in zip(start, tiny_tuner().hparams))  # ... not the caller's
    result = tuner.run()  # the rest of the budget: steps 5 .. meta_steps - 1
    assert [r.step for r in result.history] == [4, 5]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("after_a_step", "warm_start must come before the first step"),
        ("layout", "do not match this problem's layout"),
        ("step", "step must be an integer >= 0"),
        ("nan", "best_loss must be a number"),
    ],
)
def test_warm_start_refuses_what_it_cannot_honour(change, match):
    tuner = tiny_tuner(method="neumann", inner_steps=10, truncate=3)
    hparams, best_loss, step = tuple(h.detach() for h in tuner.hparams), math.inf, 0
    if change == "after_a_step":
        tuner.meta_step()
    elif change == "layout":
        hparams = hparams[:-1]
    elif change == "step":
        step = -1
    else:
        best_loss = math.nan
    with pytest.raises(ValueError, match=match):
        tuner.warm_start(hparams, best_loss=best_loss, step=step)


# ---------------------------------------------------------------------- typed records
@pytest.mark.parametrize("method", ["bptt", "neumann"])
def test_records_round_trip_through_their_json_form(method):
    tuner = tiny_tuner(method=method, inner_steps=10, truncate=3, meta_steps=2)
    tuner.run()
    for record in tuner.history:
        data = record.to_dict()
        assert list(data) == ["step", "meta_loss", "val_loss", "train_loss", "hypergrad_norm", "hypergrad_spread",
                              "solver", "events", "action", "meta_lr", "seconds", "inner_seconds",
                              "hyperparameters"]
        assert json.loads(json.dumps(data, allow_nan=False)) == data
        assert MetaStepRecord.from_dict(data).to_dict() == data
        assert (data["solver"] == {}) == (method == "bptt")
    # a checkpoint rebuilds the typed records
    again = tiny_tuner(method=method, inner_steps=10, truncate=3, meta_steps=2)
    again.load_state_dict(tuner.state_dict())
    assert all(isinstance(r, MetaStepRecord) for r in again.history)
    assert [r.to_dict() for r in again.history] == [r.to_dict() for r in tuner.history]


def test_non_finite_values_are_none_in_a_record_and_nan_in_its_solver_stats():
    solver = SolverStats(method="rbp", iterations=3.0, residual=math.inf, converged=False, diverged=True,
                         stop_reasons=("nonfinite",), spectral_radius=math.nan)
    record = MetaStepRecord(step=0, meta_loss=None, val_loss=None, train_loss=0.5, solver=solver,
                            events=("solver_diverged",), action="backoff")
    data = record.to_dict()
    assert data["solver"]["residual"] is None and data["solver"]["spectral_radius"] is None
    back = MetaStepRecord.from_dict(data)
    assert math.isinf(solver.residual) and math.isnan(back.solver.spectral_radius)
    assert back.to_dict() == data and back.events == ("solver_diverged",)
