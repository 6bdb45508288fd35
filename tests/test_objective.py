"""MetaObjective: the seeds of the batch schedules, the black-box value, the typed hypergradient."""

from __future__ import annotations

import math

import pytest
import torch

from hypergrad.config import TuneConfig
from hypergrad.inner import BatchSchedule
from hypergrad.methods import get_method
from hypergrad.objective import MetaObjective
from hypergrad.records import HypergradResult, SolverStats
from tests._problems import tiny_problem


def objective(dtype: torch.dtype = torch.float64, **config) -> MetaObjective:
    problem = tiny_problem(dtype)
    config = {"inner_steps": 7, "truncate": 3, "hyper_batches": 3, "batch_size": problem.batch_size, **config}
    return MetaObjective(problem, TuneConfig(**config))


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("salt", [-1, 0, 3])
def test_batches_and_hyper_batches_keep_their_seeds(seed, salt):
    """The generator salts are part of the results' reproducibility: pinned to today's formulas."""
    obj = objective(seed=seed)
    x_train, y_train = obj.problem.x_train, obj.problem.y_train
    n, b = len(x_train), obj.config.batch_size
    ref = BatchSchedule(n, b, 7, seed * 1_000_003 + salt)
    got_batches = list(obj.batches(salt))
    assert len(got_batches) == 7
    for (x, y), idx in zip(got_batches, ref):
        assert torch.equal(x, x_train[idx]) and torch.equal(y, y_train[idx])
    gen = torch.Generator().manual_seed(seed * 1_000_003 + salt * 7919 + 17)
    rows = [torch.randperm(n, generator=gen)[:b] for _ in range(3)]
    got = obj.hyper_batches(salt)
    assert len(got) == 3
    for (x, y), idx in zip(got, rows):
        assert torch.equal(x, x_train[idx]) and torch.equal(y, y_train[idx])


def test_value_is_one_inner_training_and_its_meta_loss():
    for meta_loss in ("val", "train"):
        obj = objective(meta_loss=meta_loss)
        hp = obj.initial_hparams()
        ev = obj.evaluate(hp, salt=2)
        assert obj.value(hp, 2) == pytest.approx(ev[f"{meta_loss}_loss"], rel=1e-12)
        assert obj.value(hp, 2) == pytest.approx(float(obj.hypergradient(hp, 2).meta_loss), rel=1e-12)
        assert obj.value(hp, 2) != obj.value(hp, 3)  # another salt, other batches


def test_initial_hparams_are_the_configured_start():
    obj = objective(init_lr=0.2, init_momentum=0.7)
    lrs, moms = obj.spec.per_tensor(obj.initial_hparams())
    assert all(float(a) == pytest.approx(0.2) for a in lrs) and all(float(b) == pytest.approx(0.7) for b in moms)
    assert not any(h.requires_grad for h in obj.initial_hparams())


@pytest.mark.parametrize("method", ["bptt", "tbptt", "rbp", "cg", "neumann", "gmres"])
def test_hypergradient_is_typed_for_every_method(method):
    obj = objective(method=method)
    result = obj.hypergradient(obj.initial_hparams(), 0)
    assert isinstance(result, HypergradResult)
    assert len(result.grad) == len(obj.initial_hparams()) and all(torch.isfinite(g).all() for g in result.grad)
    assert len(result.state) == 2 * obj.problem.num_tensors
    assert result.inner_seconds is not None and result.inner_seconds > 0
    if get_method(method).family == "unrolled":
        assert result.solver is None and math.isnan(result.spread) and not result.diverged
    else:
        assert isinstance(result.solver, SolverStats) and result.solver.method == method
        assert result.solver.skipped is None and result.spread >= 0


def test_a_blown_up_inner_run_skips_the_solve_and_returns_no_nonfinite_gradient():
    obj = objective(torch.float32, method="neumann", init_lr=1e38)  # the float32 weights overflow
    result = obj.hypergradient(obj.initial_hparams(), 0)
    assert math.isnan(float(result.meta_loss))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in result.grad)
    assert result.solver == SolverStats(method="neumann", skipped="non-finite inner state")
    assert result.solver.to_dict() == {"method": "neumann", "skipped": "non-finite inner state"}


def test_fixed_point_hypergradient_at_a_given_state_is_the_implicit_part():
    obj = objective(method="neumann")
    hp = obj.initial_hparams()
    whole = obj.hypergradient(hp, 1)
    at_state = obj.fixed_point_hypergradient(whole.state, hp, 1)
    assert all(torch.equal(a, b) for a, b in zip(whole.grad, at_state.grad))
    assert at_state.inner_seconds is None  # no inner run here
    with pytest.raises(ValueError, match="method='bptt' has no fixed-point hypergradient"):
        obj.fixed_point_hypergradient(whole.state, hp, 1, method="bptt")


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"problem granularity 'tensor' differs from config\.per 'layer'"):
        MetaObjective(tiny_problem(), TuneConfig(per="layer"))
    obj = objective()
    with pytest.raises(ValueError, match="unknown method 'adam'; expected one of bptt, tbptt"):
        obj.hypergradient(obj.initial_hparams(), 0, method="adam")


@pytest.mark.parametrize("method", ["neumann", "tbptt"])
def test_the_tuner_reads_data_only_through_the_problems_data_api(method):
    """A Dataset gives the tensors' exact run; a DataLoader (its own batch order) runs too."""
    from torch.utils.data import DataLoader, TensorDataset

    from hypergrad import InnerProblem, Tuner

    tensors = tiny_problem()
    x, y, xv, yv = tensors.x_train, tensors.y_train, tensors.x_val, tensors.y_val
    cfg = TuneConfig(method=method, inner_steps=8, truncate=3, meta_steps=2, batch_size=16, hyper_batches=2)

    def run(**data):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).to(torch.float64)
        return Tuner(InnerProblem(model, torch.nn.functional.cross_entropy, batch_size=16, **data), cfg).run()

    ref = run(train=(x, y), val=(xv, yv))
    dataset = run(train=TensorDataset(x, y), val=TensorDataset(xv, yv))
    assert [r.to_dict()["meta_loss"] for r in dataset.history] == [r.to_dict()["meta_loss"] for r in ref.history]
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator())
    result = run(train=loader, val=(xv, yv))
    assert len(result.history) == 2 and all(r.val_loss is not None for r in result.history)
    assert result.evaluation["best"]["val_loss"] <= result.evaluation["initial"]["val_loss"]
