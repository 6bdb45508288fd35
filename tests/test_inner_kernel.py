"""The SGD-momentum kernel and InnerProblem's data API (schedule, sample_batches, full_batch).

The kernel's references: its foreach twin must give the same values (as torch.optim's
``test_foreach_matches_forloop``), and ``torch.optim.SGD`` with the exported param groups
must take the same steps. The data API must reproduce the index order the tuner has
always used (:class:`BatchSchedule`, and the hyper-batch draw of ``Tuner.hyper_batches``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hypergrad._flat import FlatMomentum
from hypergrad.data.source import IndexBatches, LoaderSource
from hypergrad.hyperparams import to_sgd_param_groups
from hypergrad.inner import BatchSchedule, InnerProblem, sgd_momentum_step, sgd_momentum_step_
from tests._problems import tiny_problem, tiny_tuner


def _tensors(dtype: torch.dtype, seed: int = 0) -> tuple[list[torch.Tensor], ...]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), (), (2, 1, 3)]
    return tuple([torch.randn(s, generator=g, dtype=dtype) for s in shapes] for _ in range(3))


def _hypers(kind: str, dtype: torch.dtype, like: list[torch.Tensor]) -> tuple[list, list]:
    g = torch.Generator().manual_seed(1)
    if kind == "floats":
        return [0.1, 0.5, 1.3, 0.02], [0.5, 0.9, 0.1, 0.99]
    if kind == "scalars":
        return ([torch.rand((), generator=g, dtype=dtype) for _ in like],
                [torch.rand((), generator=g, dtype=dtype) for _ in like])
    return ([torch.rand(t.shape, generator=g, dtype=dtype) for t in like],
            [torch.rand(t.shape, generator=g, dtype=dtype) for t in like])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["floats", "scalars", "elementwise"])
def test_foreach_matches_forloop(dtype: torch.dtype, kind: str) -> None:
    w, v, g = _tensors(dtype)
    lrs, moms = _hypers(kind, dtype, w)
    w_ref, v_ref = sgd_momentum_step(w, v, g, lrs, moms)
    w_in, v_in = [t.clone() for t in w], [t.clone() for t in v]
    sgd_momentum_step_(w_in, v_in, g, lrs, moms)
    w_d, v_d = [t.clone() for t in w], [t.clone() for t in v]
    sgd_momentum_step_(w_d, v_d, g, lrs, moms, damping=[-(1 - b) for b in moms])
    for got in (w_in, v_in, w_d, v_d):
        assert all(t.dtype == dtype for t in got)
    for a, b in zip(w_in + v_in + w_d + v_d, (w_ref + v_ref) * 2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the formula itself, written out once more
    for wi, vi, gi, a, b, wn, vn in zip(w, v, g, lrs, moms, w_ref, v_ref):
        torch.testing.assert_close(vn, b * vi - (1 - b) * gi)
        torch.testing.assert_close(wn, wi + a * (b * vi - (1 - b) * gi))


def test_kernel_is_torch_optim_sgd_with_the_exported_groups() -> None:
    problem = tiny_problem()
    hp = problem.spec.init(lr=0.3, momentum=0.7, dtype=torch.float64)
    lrs, moms = problem.spec.per_tensor(hp)
    model = problem.fresh_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(to_sgd_param_groups(problem.spec, hp, params))
    w, v = tuple(problem.w0), tuple(torch.zeros_like(t) for t in problem.w0)
    for xb, yb in problem.schedule(6, seed=4):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        leaves = tuple(t.detach().requires_grad_(True) for t in w)
        grads = torch.autograd.grad(problem.loss(leaves, xb, yb), leaves)
        w, v = sgd_momentum_step(w, v, grads, lrs, moms)
    for p, wi in zip(params, w):
        torch.testing.assert_close(p.detach(), wi, rtol=1e-12, atol=1e-12)


def test_step_with_and_without_graph_agree() -> None:
    problem = tiny_problem()
    hp = problem.spec.init(lr=0.2, momentum=0.6, dtype=torch.float64)
    state = problem.train(hp, problem.schedule(3, seed=0))
    x, y = problem.sample_batches(1, seed=5)[0]
    with torch.no_grad():
        fast = problem.step(state, hp, x, y)
    slow = problem.step(tuple(t.clone().requires_grad_(True) for t in state), hp, x, y)
    assert all(not t.requires_grad for t in fast)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per", ["tensor", "element", "global"])
def test_train_on_flat_buffers_equals_the_foreach_kernel(dtype: torch.dtype, per: str, monkeypatch) -> None:
    """train's flat update (hypergrad._flat) takes the foreach kernel's steps to the bit, on_step included."""
    problem = tiny_problem(dtype=dtype, per=per)
    hp = problem.spec.init(lr=0.37, momentum=0.61, dtype=dtype)
    hp = tuple(h + 0.1 * torch.randn(h.shape, generator=torch.Generator().manual_seed(3), dtype=dtype) for h in hp)
    sched = problem.schedule(7, seed=2)
    seen: list[list[torch.Tensor]] = [[], []]
    flat = problem.train(hp, sched, on_step=lambda t, s: seen[0].append(torch.cat([x.flatten() for x in s])))
    monkeypatch.setattr(FlatMomentum, "applies", staticmethod(lambda params: False))
    loop = problem.train(hp, sched, on_step=lambda t, s: seen[1].append(torch.cat([x.flatten() for x in s])))
    assert len(flat) == len(loop) == 2 * problem.num_tensors
    for a, b in zip(flat + tuple(seen[0]), loop + tuple(seen[1])):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    again = problem.train(hp, sched[3:], state=problem.train(hp, sched[:3]))  # a resumed run, foreach
    monkeypatch.undo()
    resumed = problem.train(hp, sched[3:], state=problem.train(hp, sched[:3]))
    for a, b, c in zip(resumed, again, loop):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert len({t.untyped_storage().data_ptr() for t in flat}) == len(flat)  # h_T shares no storage


def test_flat_buffers_skip_mixed_dtypes() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2).double())
    assert not FlatMomentum.applies(list(model.parameters()))
    assert FlatMomentum.applies(list(model[0].parameters())) and not FlatMomentum.applies([])


# ---------------------------------------------------------------------- the data API
def test_schedule_is_the_batch_schedule_order_gathered() -> None:
    problem = tiny_problem(n=50, batch_size=16)
    sched = problem.schedule(7, seed=123)
    rows = BatchSchedule(50, 16, 7, 123)
    assert isinstance(sched, IndexBatches) and len(sched) == 7
    for _ in range(2):  # re-iterable: the same batches on every pass
        got = list(sched)
        assert len(got) == 7
        for (xb, yb), idx in zip(got, rows):
            assert torch.equal(xb, problem.x_train[idx]) and torch.equal(yb, problem.y_train[idx])
    head, tail = sched[:3], sched[3:]
    assert len(head) == 3 and len(tail) == 4
    assert torch.equal(tail[0][0], problem.x_train[rows[3]])
    assert torch.equal(sched[-1][1], problem.y_train[rows[6]])
    assert len(problem.schedule(7, seed=1, batch_size=5)[0][1]) == 5


def test_train_on_the_schedule_equals_train_on_index_rows() -> None:
    problem = tiny_problem(n=50, batch_size=16)
    hp = problem.spec.init(lr=0.3, momentum=0.5, dtype=torch.float64)
    rows = BatchSchedule(50, 16, 9, 7)
    by_rows = problem.train(hp, rows)
    by_tensor = problem.train(hp, rows.tensor())
    by_batches = problem.train(hp, problem.schedule(9, seed=7))
    by_list = problem.train(hp, list(problem.schedule(9, seed=7)))
    for a, b, c, d in zip(by_rows, by_tensor, by_batches, by_list):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    # resuming from a prefix's state continues the same run
    mid = problem.train(hp, problem.schedule(9, seed=7)[:4])
    rest = problem.train(hp, problem.schedule(9, seed=7)[4:], state=mid)
    for a, b in zip(rest, by_batches):
        assert torch.equal(a, b)


def test_sample_batches_is_the_tuners_hyper_batch_draw() -> None:
    problem = tiny_problem(n=50, batch_size=16)
    seed = 99
    gen = torch.Generator().manual_seed(seed)
    batches = problem.sample_batches(3, seed)
    assert len(batches) == 3
    for xb, yb in batches:  # the reference: the first B of a fresh permutation, one generator
        idx = torch.randperm(50, generator=gen)[:16]
        assert torch.equal(xb, problem.x_train[idx]) and torch.equal(yb, problem.y_train[idx])
    objective = tiny_tuner(problem, hyper_batches=3, seed=2).objective
    for salt in (0, 5):
        ours = problem.sample_batches(3, objective.seed(salt * 7919 + 17))
        for (a, b), (c, d) in zip(ours, objective.hyper_batches(salt)):
            assert torch.equal(a, c) and torch.equal(b, d)


def test_full_batch_and_the_tensor_attributes() -> None:
    problem = tiny_problem()
    x, y = problem.full_batch("train")
    assert x is problem.x_train and y is problem.y_train
    xv, yv = problem.full_batch("val")
    assert xv is problem.x_val and yv is problem.y_val
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        problem.full_batch("test")


def test_sharded_batches_partition_every_batch() -> None:
    problem = tiny_problem(n=48, batch_size=12)
    sched = problem.schedule(5, seed=3)
    parts = [list(sched.sharded(r, 3)) for r in range(3)]
    for t, (xb, yb) in enumerate(sched):
        assert torch.equal(torch.cat([p[t][0] for p in parts]), xb)
        assert torch.equal(torch.cat([p[t][1] for p in parts]), yb)
    with pytest.raises(ValueError, match="not divisible by the number of processes 5"):
        list(sched.sharded(0, 5))


def test_keyword_data_equals_positional_tensors() -> None:
    old = tiny_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    new = InnerProblem(model, F.cross_entropy, train=(old.x_train, old.y_train), val=(old.x_val, old.y_val),
                       batch_size=16)
    hp = old.spec.init(lr=0.3, momentum=0.5, dtype=torch.float64)
    for a, b in zip(old.train(hp, old.schedule(5, 0)), new.train(hp, new.schedule(5, 0))):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="not both"):
        InnerProblem(model, F.cross_entropy, old.x_train, old.y_train, train=(old.x_train, old.y_train),
                     val=(old.x_val, old.y_val))
    with pytest.raises(TypeError, match="val= is missing"):
        InnerProblem(model, F.cross_entropy, train=(old.x_train, old.y_train))


def test_a_loader_schedule_is_reproducible_by_seed() -> None:
    problem = tiny_problem(n=40)
    ds = torch.utils.data.TensorDataset(problem.x_train, problem.y_train)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator())
    source = LoaderSource(loader)
    assert source.reproducible
    a, b, c = (list(source.schedule(8, 12, seed)) for seed in (1, 1, 2))
    assert len(a) == 12  # 5 batches per pass: the schedule cycles through passes
    assert all(torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(a, c))
    tail = list(source.schedule(8, 12, 1)[7:])
    assert all(torch.equal(p[0], q[0]) for p, q in zip(tail, a[7:]))
    unseeded = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)
    assert not LoaderSource(unseeded).reproducible
