"""Schedules: piecewise-constant hyperparameters over the inner run and their exact export to torch.optim.

* :func:`segment_index`: segment ``s`` covers steps ``[sT/S, (s+1)T/S)``;
* :class:`HyperSpec` with ``segments``: shapes, counts, per-segment values, ``describe``;
* :class:`SGDSchedule`: ``torch.optim.SGD`` stepped by it reproduces the inner loop of a schedule
  (a reference loop through :func:`hypergrad.inner.sgd_momentum_step`, and ``InnerProblem.step``)
  to round-off; without its rescaling of the buffer at segment boundaries it would not.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hypergrad import HyperSpec, SGDSchedule, scheduled_step, segment_index, to_sgd_param_groups, unroll
from hypergrad.hyperparams import segment_bounds
from hypergrad.inner import sgd_momentum_step
from hypergrad.workloads import mlp
from tests._problems import tiny_problem

DT = torch.float64


def _spec(per: str = "tensor", segments: int = 1) -> HyperSpec:
    model = mlp(784, (50, 50, 50), 10)
    return HyperSpec.build([(n, p.shape) for n, p in model.named_parameters()], per, segments=segments)


# --------------------------------------------------------------------------- segment_index
@pytest.mark.parametrize(("num_steps", "segments"), [(12, 4), (10, 3), (7, 7), (100, 1), (5, 2)])
def test_segment_index_covers_the_steps_in_order(num_steps: int, segments: int) -> None:
    seg = segment_index(num_steps, segments)
    assert len(seg) == num_steps and seg[0] == 0 and seg[-1] == segments - 1
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(seg))  # non-decreasing, no segment skipped
    for s in range(segments):  # segment s covers [s T / S, (s + 1) T / S)
        steps = [t for t in range(num_steps) if seg[t] == s]
        assert steps == [t for t in range(num_steps) if s * num_steps / segments <= t < (s + 1) * num_steps / segments]
    lengths = [seg.count(s) for s in range(segments)]
    assert max(lengths) - min(lengths) <= 1
    bounds = segment_bounds(num_steps, segments)
    assert [b - a for a, b in bounds] == lengths and bounds[0][0] == 0 and bounds[-1][1] == num_steps
    assert all(seg[t] == s for s, (a, b) in enumerate(bounds) for t in range(a, b))


def test_segment_index_examples_and_errors() -> None:
    assert segment_index(6, 3) == (0, 0, 1, 1, 2, 2)
    assert segment_index(5, 2) == (0, 0, 0, 1, 1)
    assert segment_bounds(5, 2) == ((0, 3), (3, 5)) and segment_bounds(4, 1) == ((0, 4),)
    for args, match in [((3, 4), r"segments \(4\) must not exceed"), ((3, 0), "segments must be"),
                        ((0, 1), "num_steps"), ((3, True), "segments must be")]:
        with pytest.raises(ValueError, match=match):
            segment_index(*args)


# --------------------------------------------------------------------------- HyperSpec with segments
@pytest.mark.parametrize(("per", "count"), [("tensor", 16), ("layer", 8), ("global", 2)])
def test_segments_multiply_the_hyperparameters(per: str, count: int) -> None:
    spec = _spec(per, segments=5)
    assert spec.num_hyperparameters == 5 * count and spec.with_segments(1).num_hyperparameters == count
    hp = spec.init(0.1, 0.9)
    assert all(h.shape == (5,) for h in hp) and sum(h.numel() for h in hp) == 5 * count
    assert _spec(per).init(0.1, 0.9)[0].shape == ()  # no segment axis without a schedule
    assert spec.segment_of(10) == segment_index(10, 5) and _spec(per).segment_of(10) is None


def test_per_tensor_of_a_segment() -> None:
    spec = _spec("layer", segments=3)
    hp = spec.init(0.1, 0.5)
    log_lr, _ = spec.split(hp)
    with torch.no_grad():
        for s in range(3):
            log_lr[1][s] = math.log(0.01 * (s + 1))
    lrs, moms = spec.per_tensor(hp, segment=2)
    assert float(lrs[2]) == pytest.approx(0.03) and float(lrs[3]) == pytest.approx(0.03)  # layer 1: weight, bias
    assert float(lrs[0]) == pytest.approx(0.1) and float(moms[0]) == pytest.approx(0.5)
    assert spec.at_segment(hp, 1)[1].shape == ()
    with pytest.raises(ValueError, match="needs segment="):
        spec.per_tensor(hp)
    with pytest.raises(ValueError, match=r"segment must be an integer in \[0, 3\)"):
        spec.at_segment(hp, 3)
    with pytest.raises(ValueError, match="segments must be"):
        spec.with_segments(0)


def test_describe_lists_a_value_per_segment() -> None:
    spec = _spec("global", segments=2)
    hp = spec.init(0.2, 0.5)
    with torch.no_grad():
        hp[0][1] = math.log(0.4)  # segment 1's learning rate
    out = spec.describe(hp)  # lr is SGD's, alpha (1 - beta)
    assert set(out["0.weight"]) == {"lr", "momentum", "alpha"}
    assert out["0.weight"]["lr"] == pytest.approx([0.1, 0.2]) and out["0.weight"]["alpha"] == pytest.approx([0.2, 0.4])
    assert out["0.weight"]["momentum"] == pytest.approx([0.5, 0.5])
    assert _spec("global").describe(_spec("global").init(0.2, 0.5))["0.weight"] == pytest.approx(
        {"lr": 0.1, "momentum": 0.5, "alpha": 0.2})
    element = HyperSpec.build([("w", torch.Size([2, 3]))], "element", segments=2)
    described = element.describe(element.init(0.2, 0.5))["w"]
    assert set(described) == {"lr_mean", "momentum_mean", "alpha_mean"}
    assert described["lr_mean"] == pytest.approx([0.1, 0.1]) and described["alpha_mean"] == pytest.approx([0.2, 0.2])


# --------------------------------------------------------------------------- the export
def _schedule(per: str, segments: int, num_steps: int):
    problem = tiny_problem(DT, per=per)
    spec = problem.spec.with_segments(segments)
    g = torch.Generator().manual_seed(11)
    # distinct values per segment and tensor, momenta spread over (0.1, 0.95)
    hp = tuple(t + 0.8 * torch.randn(t.shape, generator=g, dtype=DT) for t in spec.init(0.15, 0.6, DT))
    batches = torch.randint(0, len(problem.x_train), (num_steps, problem.batch_size), generator=g)
    return problem, spec, hp, batches


def _reference(problem, spec, hp, batches):
    """The inner loop of the schedule, step by step through the one SGD-momentum kernel."""
    n = problem.num_tensors
    w, v = problem.w0, tuple(torch.zeros_like(t) for t in problem.w0)
    seg = segment_index(len(batches), spec.segments)
    for t, idx in enumerate(batches):
        leaves = tuple(x.detach().requires_grad_(True) for x in w)
        grads = torch.autograd.grad(problem.loss(leaves, problem.x_train[idx], problem.y_train[idx]), leaves)
        lrs, moms = spec.per_tensor(hp, segment=seg[t])
        w, v = sgd_momentum_step(w, v, grads, lrs, moms)
    assert len(w) == n
    return w


def _sgd(problem, spec, hp, batches, *, scheduler: str | None = "SGDSchedule"):
    """torch.optim.SGD on the exported groups, stepped by ``SGDSchedule``, by a naive per-step
    schedule (``lr = alpha_t (1 - beta_t)``, ``momentum = beta_t``) or by nothing (segment 0's values)."""
    params = [w.clone().requires_grad_(True) for w in problem.w0]
    opt = torch.optim.SGD(to_sgd_param_groups(spec, hp, params))
    sched = SGDSchedule(opt, spec, hp, num_steps=len(batches)) if scheduler == "SGDSchedule" else None
    seg = segment_index(len(batches), spec.segments)
    for t, idx in enumerate(batches):
        if scheduler == "naive":
            lrs, moms = spec.per_tensor(hp, segment=seg[t])
            for group, a, b in zip(opt.param_groups, lrs, moms):
                group["lr"], group["momentum"] = float(a) * (1 - float(b)), float(b)
        opt.zero_grad()
        problem.loss(params, problem.x_train[idx], problem.y_train[idx]).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("per", ["tensor", "layer", "global"])
@pytest.mark.parametrize(("segments", "num_steps"), [(1, 20), (4, 20), (3, 17), (20, 20)])
def test_sgd_with_the_schedule_reproduces_the_inner_loop(per: str, segments: int, num_steps: int) -> None:
    problem, spec, hp, batches = _schedule(per, segments, num_steps)
    want = _reference(problem, spec, hp, batches)
    got = _sgd(problem, spec, hp, batches)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and InnerProblem.step on the segment of each step (what BPTT differentiates)
    via_step = unroll(scheduled_step(lambda s, p, idx: problem.step(s, p, problem.x_train[idx], problem.y_train[idx]),
                                     inputs=batches, segment_of=spec.segment_of(num_steps)),
                      problem.initial_state(), hp, num_steps)
    for a, b in zip(got, via_step[: problem.num_tensors]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    h = problem.initial_state()  # and the no-graph hot loop, segment by segment
    for s, (start, stop) in enumerate(segment_bounds(num_steps, segments)):
        h = problem.train(spec.at_segment(hp, s), batches[start:stop], state=h)
    for a, b in zip(got, h[: problem.num_tensors]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_buffer_rescaling_is_needed_when_momentum_changes() -> None:
    problem, spec, hp, batches = _schedule("tensor", 4, 20)
    want = _reference(problem, spec, hp, batches)
    naive = _sgd(problem, spec, hp, batches, scheduler="naive")
    assert max(float((a - b).abs().max()) for a, b in zip(naive, want)) > 1e-6
    constant = _sgd(problem, spec, hp, batches, scheduler=None)  # segment 0's values throughout
    assert max(float((a - b).abs().max()) for a, b in zip(constant, want)) > 1e-6


def test_one_segment_is_the_constant_export() -> None:
    problem, spec, hp, batches = _schedule("layer", 1, 12)
    stepped = _sgd(problem, spec, hp, batches)
    constant = _sgd(problem, spec, hp, batches, scheduler=None)
    for a, b in zip(stepped, constant):
        assert torch.equal(a, b)


def test_the_scheduler_sets_lr_and_momentum_per_step() -> None:
    spec = HyperSpec.build([("w", torch.Size([2]))], "tensor", segments=2)
    hp = (torch.tensor([math.log(0.1), math.log(0.2)], dtype=DT), torch.tensor([0.0, math.log(3.0)], dtype=DT))
    w = torch.zeros(2, dtype=DT, requires_grad=True)
    opt = torch.optim.SGD(to_sgd_param_groups(spec, hp, [w]))
    sched = SGDSchedule(opt, spec, hp, num_steps=4)  # betas 0.5 then 0.75
    seen = []
    for _ in range(6):
        g = opt.param_groups[0]
        seen.append((g["lr"], g["momentum"]))
        opt.zero_grad()
        w.sum().backward()
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx((0.05, 0.5)) and seen[1] == pytest.approx((0.05, 0.5))
    # first step of segment 1: mu = 0.75 (1 - 0.5) / (1 - 0.75) = 1.5; then beta = 0.75
    assert seen[2] == pytest.approx((0.05, 1.5)) and seen[3] == pytest.approx((0.05, 0.75))
    assert seen[4] == seen[5] == pytest.approx((0.05, 0.75))  # past T: the last segment stays
    assert sched.get_last_lr() == pytest.approx([0.05])


def test_the_scheduler_refuses_what_it_cannot_export() -> None:
    spec = HyperSpec.build([("a", torch.Size([2])), ("b", torch.Size([]))], "tensor", segments=2)
    hp = spec.init(0.1, 0.5, DT)
    a, b = torch.zeros(2, requires_grad=True), torch.zeros((), requires_grad=True)
    with pytest.raises(ValueError, match="one per parameter tensor"):
        SGDSchedule(torch.optim.SGD([a, b], lr=0.1, momentum=0.5), spec, hp, num_steps=4)
    groups = to_sgd_param_groups(spec, hp, [a, b])
    groups[1]["dampening"] = 0.1
    with pytest.raises(ValueError, match="dampening=0"):
        SGDSchedule(torch.optim.SGD(groups), spec, hp, num_steps=4)
    with pytest.raises(ValueError, match="must not exceed"):
        SGDSchedule(torch.optim.SGD(to_sgd_param_groups(spec, hp, [a, b])), spec, hp, num_steps=1)
    element = HyperSpec.build([("a", torch.Size([2]))], "element", segments=2)
    with pytest.raises(ValueError, match="element"):
        SGDSchedule(torch.optim.SGD([a], lr=0.1), element, element.init(0.1, 0.5), num_steps=4)
