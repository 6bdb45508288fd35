"""User models, data pipelines and bad inputs at the InnerProblem level (issue 13, points 1-3 and 5).

* The zoo (:mod:`tests._zoo`) crossed with every inner path: ``train``, ``step``,
  ``step_batched``, ``eval_loss_and_grad``, ``fixed_point_grad`` (Neumann, CG, stacked
  Neumann) and ``unrolled_grad`` run and give finite hypergradients; the paths agree with
  each other where the model is deterministic; BPTT matches finite differences.
* Data: NumPy arrays, Datasets, DataLoaders, re-iterables and tuples of inputs give the
  same batches and losses as tensors.
* :data:`BAD`: misuse raises a ``TypeError``/``ValueError`` that names the argument, from
  :func:`hypergrad.validation.check_problem`, before any work.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from hypergrad import fixed_point_grad, unrolled_grad
from hypergrad.data.source import DatasetSource, LoaderSource, TensorSource, stack_batches
from hypergrad.inner import InnerProblem
from hypergrad.validation import check_problem
from tests._zoo import BATCH, ZOO, ZooCase

T = 4


def _build(case: ZooCase, **kw: Any) -> tuple[InnerProblem, Any]:
    model, loss_fn, train, val = case.build()
    return check_problem(model, loss_fn, train, val, batch_size=BATCH, **kw)


def _finite(tree: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tree)


def _stack(tree: tuple, m: int) -> tuple:
    return tuple(t.unsqueeze(0).expand(m, *t.shape).clone() for t in tree)


def _close(a: Any, b: Any, tol: float) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


# ---------------------------------------------------------------------- the zoo
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_check_reports_the_task_and_the_batching(name: str) -> None:
    case = ZOO[name]
    problem, report = _build(case)
    assert report.metric == case.metric
    assert report.batching == case.batching == problem.batching
    assert (report.batching_reason != "") == (case.batching == "loop")
    assert report.reproducible and report.num_train == 64 and report.num_val == 32
    hp = problem.spec.init(0.1, 0.5, problem.w0[0].dtype)
    ev = problem.evaluate(problem.train(hp, problem.schedule(T, 0))[: problem.num_tensors], "val")
    assert set(ev) == ({"loss"} if case.metric is None else {"loss", case.metric})
    assert all(np.isfinite(v) for v in ev.values())


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_every_inner_path_gives_finite_hypergradients(name: str) -> None:
    case = ZOO[name]
    problem, _ = _build(case)
    n = problem.num_tensors
    hp = problem.spec.init(0.1, 0.5, problem.w0[0].dtype)
    dtypes = [w.dtype for w in problem.w0] * 2
    with problem.rng(0):
        h_t = problem.train(hp, problem.schedule(T, seed=0))
        assert _finite(h_t) and [t.dtype for t in h_t] == dtypes
        batches = problem.sample_batches(2, seed=1)
        loss, gw = problem.eval_loss_and_grad(h_t[:n], "val")
        assert bool(torch.isfinite(loss)) and _finite(gw)
        state_grad = tuple(gw) + tuple(torch.zeros_like(v) for v in h_t[n:])
        for method in ("neumann", "cg"):
            g, _ = fixed_point_grad(lambda s, p: problem.step(s, p, *batches[0]), h_t, hp, state_grad,
                                    method=method, max_iter=5)
            assert _finite(g) and any(bool(t.abs().sum() > 0) for t in g), method
        xs, ys = stack_batches(batches)
        g_stacked, _ = fixed_point_grad(lambda s, p: problem.step_batched(s, p, xs, ys), _stack(h_t, 2),
                                        _stack(hp, 2), _stack(state_grad, 2), method="neumann", max_iter=5,
                                        blocks=True)
        assert _finite(g_stacked)
        sched = iter(problem.schedule(T, seed=0))
        g_bptt, _ = unrolled_grad(lambda s, p: problem.step(s, p, *next(sched)), problem.initial_state(), hp, T,
                                     lambda s: (problem.eval_loss(s[:n], "val"), None), has_aux=True)
        assert _finite(g_bptt) and [t.dtype for t in g_bptt] == [h.dtype for h in hp]
    if case.stochastic:
        return
    # deterministic models: the paths agree with each other
    g_loop = [fixed_point_grad(lambda s, p, b=b: problem.step(s, p, *b), h_t, hp, state_grad,
                               method="neumann", max_iter=5)[0] for b in batches]
    tol = 1e-10 if problem.w0[0].dtype == torch.float64 and name != "mixed_dtype" else 2e-4
    for i in range(2):
        _close(tuple(t[i] for t in g_stacked), g_loop[i], tol)
    leaves = tuple(t.detach().requires_grad_(True) for t in h_t[:n])
    _close(gw, torch.autograd.grad(problem.eval_loss(leaves, "val"), leaves), tol)


@pytest.mark.parametrize("name", [n for n, c in ZOO.items() if not c.stochastic])
def test_train_equals_the_functional_steps(name: str) -> None:
    """``train`` (the module, in place) and ``step`` (functional_call) are the same map."""
    problem, _ = _build(ZOO[name])
    hp = problem.spec.init(0.2, 0.6, problem.w0[0].dtype)
    state = problem.initial_state()
    with torch.no_grad():
        for x, y in problem.schedule(T, seed=3):
            state = problem.step(state, hp, x, y)
        stacked = problem.initial_state()
        for x, y in problem.schedule(T, seed=3):
            xs, ys = stack_batches([(x, y)])
            stacked = tuple(t[0] for t in problem.step_batched(_stack(stacked, 1), _stack(hp, 1), xs, ys))
    tol = 1e-12 if problem.w0[0].dtype == torch.float64 and name != "mixed_dtype" else 1e-5
    _close(problem.train(hp, problem.schedule(T, seed=3)), state, tol)
    _close(stacked, state, tol)


def test_the_loop_fallback_equals_vmap() -> None:
    problem, _ = _build(ZOO["mlp"])
    hp = _stack(problem.spec.init(0.2, 0.6), 3)
    state = _stack(problem.train(problem.spec.init(0.2, 0.6), problem.schedule(T, 0)), 3)
    xs, ys = stack_batches(problem.sample_batches(3, seed=1))
    assert problem.batching == "vmap"
    by_vmap = problem.step_batched(tuple(t.requires_grad_(True) for t in state), hp, xs, ys)
    problem.batching = "loop"
    by_loop = problem.step_batched(state, hp, xs, ys)
    _close([t.detach() for t in by_loop], [t.detach() for t in by_vmap], 1e-6)
    assert all(t.requires_grad for t in by_loop)  # the graph is kept, as RBP needs


@pytest.mark.parametrize("per", ["layer", "global", "element"])
@pytest.mark.parametrize("name", ["mixed_dtype", "frozen_shared", "gru"])
def test_granularities_keep_each_tensors_dtype(name: str, per: str) -> None:
    problem, _ = _build(ZOO[name], per=per)
    hp = problem.spec.init(0.1, 0.5, problem.w0[0].dtype)
    h_t = problem.train(hp, problem.schedule(T, 0))
    x, y = problem.sample_batches(1, seed=0)[0]
    h_s = problem.step(tuple(t.requires_grad_(True) for t in h_t), hp, x, y)
    for a, b, w in zip(h_t, h_s, problem.w0 * 2):
        assert a.dtype == b.dtype == w.dtype and _finite((a, b))
    g, _ = fixed_point_grad(lambda s, p: problem.step(s, p, x, y), h_t, hp, problem.initial_state(),
                            method="neumann", max_iter=3)
    assert [t.dtype for t in g] == [h.dtype for h in hp] and _finite(g)


def test_bptt_matches_finite_differences_in_float64() -> None:
    problem, _ = _build(ZOO["float64"])
    n = problem.num_tensors
    hp = tuple(h + 0.1 * i for i, h in enumerate(problem.spec.init(0.3, 0.6, torch.float64)))

    def meta(h: tuple) -> float:
        return float(problem.eval_loss(problem.train(h, problem.schedule(3, seed=5))[:n], "val"))

    sched = iter(problem.schedule(3, seed=5))
    g = unrolled_grad(lambda s, p: problem.step(s, p, *next(sched)), problem.initial_state(), hp, 3,
                      lambda s: problem.eval_loss(s[:n], "val"))
    eps = 1e-6
    for i in range(len(hp)):
        up = tuple(h + eps if j == i else h for j, h in enumerate(hp))
        down = tuple(h - eps if j == i else h for j, h in enumerate(hp))
        fd = (meta(up) - meta(down)) / (2 * eps)
        assert float(g[i]) == pytest.approx(fd, rel=1e-5, abs=1e-9), i


def test_frozen_and_shared_parameters() -> None:
    problem, _ = _build(ZOO["frozen_shared"])
    assert problem.spec.param_names == ("enc.weight", "enc.bias", "dec.bias", "head.weight", "head.bias")
    assert problem.spec.num_hyperparameters == 10  # one (lr, momentum) pair per tensor; the shared one once
    frozen = problem.model.frozen.weight.detach().clone()
    hp = problem.spec.init(0.3, 0.5)
    h_t = problem.train(hp, problem.schedule(T, seed=0))
    trained = problem.fresh_model(h_t[: problem.num_tensors])
    assert trained.dec.weight is trained.enc.weight and torch.equal(trained.enc.weight, h_t[0])
    assert torch.equal(trained.frozen.weight, frozen) and not torch.equal(h_t[0], problem.w0[0])
    # the shared weight's gradient sums both uses: compare with an untied copy
    untied = copy.deepcopy(problem.model)
    untied.dec.weight = nn.Parameter(untied.enc.weight.detach().clone())
    x, y = problem.sample_batches(1, seed=2)[0]
    F.cross_entropy(untied(x), y).backward()
    leaves = tuple(w.clone().requires_grad_(True) for w in problem.w0)
    g = torch.autograd.grad(problem.loss(leaves, x, y), leaves)
    torch.testing.assert_close(g[0], untied.enc.weight.grad + untied.dec.weight.grad)


def test_batchnorm_uses_batch_statistics_and_keeps_running_statistics() -> None:
    model, loss_fn, train, val = ZOO["bn_dropout"].build()
    model[3].p = 0.0  # no dropout: compare outputs exactly
    user = copy.deepcopy(model)
    bn = model[1]
    before = (bn.running_mean.clone(), bn.running_var.clone())
    problem, _ = check_problem(model, loss_fn, train, val, batch_size=BATCH)
    x = val[0][:16]
    torch.testing.assert_close(problem.forward(problem.w0, x), user(x))  # train mode: batch statistics
    hp = problem.spec.init(0.1, 0.5)
    h_t = problem.train(hp, problem.schedule(T, 0))
    with problem.rng(0):
        problem.eval_loss_and_grad(h_t[: problem.num_tensors])
        problem.step(problem.initial_state(), hp, *problem.sample_batches(1, 0)[0])
    for module in (model, problem.fresh_model()):
        assert torch.equal(module[1].running_mean, before[0]) and torch.equal(module[1].running_var, before[1])
    # in eval mode the running statistics are used, in every path
    evaluated, _ = check_problem(copy.deepcopy(user).eval(), loss_fn, train, val, batch_size=BATCH)
    torch.testing.assert_close(evaluated.forward(evaluated.w0, x), user.eval()(x))
    assert evaluated.batching == "vmap"


def test_dropout_masks_are_fresh_every_step_and_reproducible_by_seed() -> None:
    problem, _ = _build(ZOO["bn_dropout"])
    n = problem.num_tensors
    hp = problem.spec.init(0.3, 0.5)

    def run(seed: int) -> tuple:
        with problem.rng(seed):
            return problem.train(hp, problem.schedule(T, seed=0))

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    x, y = problem.sample_batches(1, seed=0)[0]
    with torch.no_grad():
        one, two = problem.step(a, hp, x, y), problem.step(a, hp, x, y)
    assert not torch.equal(one[0], two[0])  # a fresh mask at every call
    with problem.rng(1), torch.no_grad():  # BPTT's steps draw the same masks as train under one seed
        state = problem.initial_state()
        for batch in problem.schedule(T, seed=0):
            state = problem.step(state, hp, *batch)
    _close(state[:n], a[:n], 1e-5)


# ---------------------------------------------------------------------- data
class ListDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Streamed:
    """A re-iterable that makes its batches on the fly: nothing is stored."""

    def __init__(self, n_batches: int, seed: int) -> None:
        self.n_batches, self.seed, self.passes = n_batches, seed, 0

    def __iter__(self):
        self.passes += 1
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n_batches):
            x = torch.randn(16, 8, generator=g)
            yield x, (x[:, 0] > 0).long()


def _mlp_data() -> tuple[nn.Module, Any, Any]:
    model, _, train, val = ZOO["mlp"].build()
    return model, train, val


def test_numpy_datasets_and_tensor_datasets_give_the_tensor_batches() -> None:
    model, (x, y), val = _mlp_data()
    ref = InnerProblem(model, F.cross_entropy, train=(x, y), val=val, batch_size=BATCH)
    hp = ref.spec.init(0.3, 0.5)
    want = ref.train(hp, ref.schedule(T, 0))
    for train in ((x.numpy(), y.numpy()), TensorDataset(x, y), ListDataset(x, y)):
        problem, _ = check_problem(model, F.cross_entropy, train, val, batch_size=BATCH)
        assert isinstance(problem.train_source, (TensorSource, DatasetSource))
        got = problem.train(hp, problem.schedule(T, 0))
        assert all(torch.equal(a, b) for a, b in zip(got, want)), type(train).__name__
        assert torch.equal(problem.sample_batches(1, 3)[0][0], ref.sample_batches(1, 3)[0][0])
        _close(problem.eval_loss(want[:2] + want[2:4], "train").reshape(1), ref.eval_loss(want[:4], "train")
               .reshape(1), 1e-6)


def test_a_dataloader_feeds_the_inner_loop_and_the_meta_loss() -> None:
    model, (x, y), (xv, yv) = _mlp_data()
    ref = InnerProblem(model, F.cross_entropy, train=(x, y), val=(xv, yv), batch_size=BATCH)
    train = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=torch.Generator())
    val = DataLoader(TensorDataset(xv, yv), batch_size=10)  # 32 = 3 * 10 + 2: a short last batch
    problem, report = check_problem(model, F.cross_entropy, train, val)
    assert isinstance(problem.train_source, LoaderSource) and report.reproducible
    hp = problem.spec.init(0.3, 0.5)
    sched = problem.schedule(T, seed=4)
    batches = list(sched)
    assert [len(b[1]) for b in batches] == [BATCH] * T
    h_a, h_b = problem.train(hp, sched), problem.train(hp, problem.schedule(T, seed=4))
    assert all(torch.equal(a, b) for a, b in zip(h_a, h_b))  # reproducible by seed
    assert all(torch.equal(a, b) for a, b in zip(h_a, problem.train(hp, batches)))
    w = h_a[: problem.num_tensors]
    _close(problem.eval_loss(w, "val").reshape(1), ref.eval_loss(w, "val").reshape(1), 1e-6)
    value, grads = problem.eval_loss_and_grad(w, "val")
    ref_value, ref_grads = ref.eval_loss_and_grad(w, "val")
    _close((value.reshape(1), *grads), (ref_value.reshape(1), *ref_grads), 1e-6)
    assert problem.evaluate(w)["accuracy"] == pytest.approx(ref.evaluate(w)["accuracy"])
    xs, _ = stack_batches(problem.sample_batches(3, seed=0))
    assert xs.shape == (3, BATCH, 8)


def test_streamed_batches_are_never_materialised() -> None:
    model, _, _ = _mlp_data()
    train, val = Streamed(5, seed=0), Streamed(3, seed=1)
    problem, _ = check_problem(model, F.cross_entropy, train, val)
    assert problem.train_source.num_examples is None
    hp = problem.spec.init(0.3, 0.5)
    h_t = problem.train(hp, problem.schedule(12, seed=0))  # 12 steps cycle through 3 passes of 5 batches
    assert _finite(h_t)
    before = val.passes
    problem.eval_loss(h_t[: problem.num_tensors])
    assert val.passes == before + 1


def test_tuple_inputs_from_tensors_and_from_a_loader() -> None:
    model, loss_fn, (x, y), val = ZOO["two_inputs"].build()
    ref, _ = check_problem(model, loss_fn, (x, y), val, batch_size=BATCH)
    hp = ref.spec.init(0.3, 0.5)
    want = ref.train(hp, ref.schedule(T, 0))
    ds, _ = check_problem(model, loss_fn, TensorDataset(*x, y), val, batch_size=BATCH)
    assert all(torch.equal(a, b) for a, b in zip(ds.train(hp, ds.schedule(T, 0)), want))
    loader = DataLoader(TensorDataset(*x, y), batch_size=BATCH)
    lp, _ = check_problem(model, loss_fn, loader, DataLoader(TensorDataset(*val[0], val[1]), batch_size=8))
    xb, _ = next(iter(lp.schedule(1, 0)))
    assert isinstance(xb, tuple) and len(xb) == 2
    _close(lp.eval_loss(want[:3] + want[3:6]).reshape(1), ref.eval_loss(want[:6]).reshape(1), 1e-6)


def test_metric_is_reported_beside_the_loss() -> None:
    model, loss_fn, train, val = ZOO["regression"].build()

    def mae(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (out - y).abs().mean()

    problem, report = check_problem(model, loss_fn, train, val, batch_size=BATCH, metric=mae)
    assert report.metric == "mae"
    ev = problem.evaluate(problem.w0, "val")
    with torch.no_grad():
        out = model(val[0])
    assert ev["mae"] == pytest.approx(float((out - val[1]).abs().mean()), rel=1e-5)
    assert ev["loss"] == pytest.approx(float(F.mse_loss(out, val[1])), rel=1e-5)
    assert set(problem.evaluate(problem.w0, train)) == {"loss", "mae"}  # any data, e.g. a test set
    lam, _ = check_problem(model, loss_fn, train, val, batch_size=BATCH, metric=lambda o, t: 1.0)
    assert lam.evaluate(lam.w0) == {"loss": pytest.approx(ev["loss"]), "metric": 1.0}


# ---------------------------------------------------------------------- bad input
class Items(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.zeros(8), "y": 0}


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(8), torch.tensor(0)


class Prototypes(nn.Module):
    """Logits = minus the distances to learned class prototypes: ``torch.cdist`` has no second derivative."""

    def __init__(self) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(3, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(x, self.prototypes)


@dataclass(frozen=True)
class Bad:
    """``change(kwargs)`` edits the arguments of a valid ``check_problem`` call on the MLP."""

    id: str
    change: Callable[[dict[str, Any]], None]
    error: type[Exception]
    message: str


def _set(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda kw: kw.update(values)


def _with(key: str, fn: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    return lambda kw: kw.update({key: fn(kw[key])})


def _nan(t: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = value
    return t


def _frozen(kw: dict[str, Any]) -> None:
    kw["model"].requires_grad_(False)


BAD = [
    Bad("model not a module", _set(model=lambda x: x), TypeError, r"model must be a torch\.nn\.Module, got function"),
    Bad("all parameters frozen", _frozen, ValueError, r"model has no trainable parameters"),
    Bad("loss not callable", _set(loss_fn="mse"), TypeError, r"loss_fn must be a callable"),
    Bad("metric not callable", _set(metric=3), TypeError, r"metric must be a callable"),
    Bad("a dict", _set(train_data={"x": 1}), TypeError, r"train_data must be an \(x, y\) pair .* got dict"),
    Bad("a bare tensor", _set(train_data=torch.zeros(4, 8)), TypeError, r"train_data must be .*got Tensor"),
    Bad("an int", _set(val_data=3), TypeError, r"val_data must be .*got int"),
    Bad("an iterator", _with("train_data", lambda d: iter([d])), TypeError,
        r"train_data is an iterator .* consumed only once"),
    Bad("an IterableDataset", _set(train_data=Stream()), TypeError,
        r"train_data is an IterableDataset.*DataLoader\(dataset, batch_size"),
    Bad("a Dataset of dicts", _set(train_data=Items()), TypeError,
        r"train_data \(a Dataset\) must yield \(inputs, target\) pairs of tensors; got dict"),
    Bad("a list of numbers", _set(train_data=[[1.0, 2.0], [0, 1]]), TypeError,
        r"train_data must yield \(inputs, target\) pairs of tensors"),
    Bad("empty tensors", _with("train_data", lambda d: (d[0][:0], d[1][:0])), ValueError,
        r"train_data is empty"),
    Bad("an empty loader", _set(val_data=[]), ValueError, r"val_data is empty: it yielded no batches"),
    Bad("an empty Dataset", _with("train_data", lambda d: TensorDataset(d[0][:0], d[1][:0])), ValueError,
        r"train_data is empty"),
    Bad("x/y length mismatch", _with("train_data", lambda d: (d[0], d[1][:60])), ValueError,
        r"train_data: inputs have 64 rows but the targets have 60"),
    Bad("0-dim targets", _with("val_data", lambda d: (d[0], torch.tensor(1))), ValueError,
        r"val_data: targets are a 0-dimensional tensor"),
    Bad("NaN inputs", _with("train_data", lambda d: (_nan(d[0]), d[1])), ValueError,
        r"train_data: the inputs contain NaN \(1 of 512 entries\)"),
    Bad("inf validation inputs", _with("val_data", lambda d: (_nan(d[0], float("inf")), d[1])), ValueError,
        r"val_data: the inputs contain infinite values"),
    Bad("NaN test inputs", lambda kw: kw.update(test_data=(_nan(kw["val_data"][0]), kw["val_data"][1])),
        ValueError, r"test_data: the inputs contain NaN"),
    Bad("NaN in a loader", _with("train_data", lambda d: [(_nan(d[0][:16]), d[1][:16])]), ValueError,
        r"train_data: the inputs \(first batch\) contain NaN"),
    Bad("wrong input width", _with("train_data", lambda d: (d[0][:, :5], d[1])), ValueError,
        r"train_data: the model failed .*wrong input width: the first Linear expects 8 input features"),
    Bad("wrong validation width", _with("val_data", lambda d: (torch.cat([d[0], d[0]], 1), d[1])), ValueError,
        r"val_data: the model failed .*shape \(16, 16\).*expects 8 input features"),
    Bad("float64 data, float32 model", _with("train_data", lambda d: (d[0].double(), d[1])), ValueError,
        r"train_data: .*dtype mismatch: the inputs are torch\.float64 but the model's parameters are "
        r"torch\.float32"),
    Bad("float32 data, float64 model", lambda kw: kw["model"].double(), ValueError,
        r"dtype mismatch: the inputs are torch\.float32 but the model's parameters are torch\.float64"),
    Bad("reduction='none'", _set(loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none")), ValueError,
        r"loss_fn must return a scalar.*shape \(16,\).*reduction='none'"),
    Bad("a loss that returns a float", _set(loss_fn=lambda o, t: 1.0), TypeError,
        r"loss_fn must return a tensor .*got float"),
    Bad("a loss that does not fit the targets", _set(loss_fn=F.mse_loss), ValueError,
        r"loss_fn\(outputs, targets\) failed on a batch of train_data: outputs shape \(16, 3\)"),
    Bad("a detached loss", _set(loss_fn=lambda o, t: F.cross_entropy(o.detach(), t)), ValueError,
        r"does not depend on the model's trainable parameters"),
    Bad("a non-finite initial loss", _set(loss_fn=lambda o, t: F.cross_entropy(o, t) * float("inf")),
        ValueError, r"loss_fn returned inf at the initial weights"),
    Bad("no second derivatives", _set(model=Prototypes()), ValueError,
        r"model: the hypergradient needs second derivatives .*\[NotImplementedError: .*_cdist_backward"),
    Bad("a failing metric", _set(metric=lambda o, t: o.foo), ValueError, r"metric\(outputs, targets\) failed"),
    Bad("a vector metric", _set(metric=lambda o, t: o.argmax(-1) == t), ValueError,
        r"metric must return a scalar .*shape \(16,\)"),
    Bad("a string metric", _set(metric=lambda o, t: "good"), TypeError, r"metric must return a number"),
]


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_input_is_refused_before_any_work(bad: Bad) -> None:
    model, loss_fn, train, val = ZOO["mlp"].build()
    kw: dict[str, Any] = dict(model=model, loss_fn=loss_fn, train_data=train, val_data=val, batch_size=BATCH)
    bad.change(kw)
    with pytest.raises(bad.error) as info:
        check_problem(kw.pop("model"), kw.pop("loss_fn"), kw.pop("train_data"), kw.pop("val_data"), **kw)
    assert re.search(bad.message, str(info.value)), str(info.value)


def test_the_valid_call_of_the_bad_input_table_passes() -> None:
    model, loss_fn, train, val = ZOO["mlp"].build()
    _, report = check_problem(model, loss_fn, train, val, batch_size=BATCH, test_data=val)
    assert report.metric == "accuracy" and report.warnings == ()


def test_the_dry_step_leaves_torchs_generator_alone() -> None:
    model, loss_fn, train, val = ZOO["bn_dropout"].build()
    before = torch.get_rng_state()
    check_problem(model, loss_fn, train, val, batch_size=BATCH)
    assert torch.equal(torch.get_rng_state(), before)


def test_an_unseeded_shuffling_loader_is_reported() -> None:
    model, loss_fn, (x, y), val = ZOO["mlp"].build()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    _, report = check_problem(model, loss_fn, loader, val)
    assert not report.reproducible and any("generator" in w for w in report.warnings)
