"""Forward mode (:func:`hypergrad.forward_grad`): BPTT's gradient by tangents carried through the run.

* equals BPTT (and central finite differences) in float64 on a tanh RNN and on the SGD-momentum
  map of a tiny MLP over a batch schedule, for per-tensor, per-layer and global hyperparameters;
* schedules: a gradient for every segment, equal to BPTT's through :func:`scheduled_step` and to
  a hand-written segmented closure; a constant schedule's segment gradients sum to the constant
  gradient;
* the vmap and loop paths agree; vmap falls back to the loop where it cannot batch the map;
* the dispatch (``gradient(method="forward")``), time-varying maps, and bad input.
"""

from __future__ import annotations

import logging

import pytest
import torch

import hypergrad
from hypergrad import InnerProblem, forward_grad, gradient, scheduled_step, segment_index, unrolled_grad
from hypergrad.methods import METHODS
from tests._maps import DT, flat, make_tanh_problem, rel_err, unflat
from tests._problems import tiny_problem
from tests._zoo import ZOO

TOL = 1e-9  # float64 round-off: far inside the 1e-6


def _h0(p):
    return tuple(torch.zeros_like(s) for s in p.state)


def _fd_grad(loss_of_params, params, eps: float = 1e-6):
    """Central differences of ``params -> loss`` along every coordinate: an independent reference."""
    base = flat(params)
    out = torch.empty_like(base)
    for i in range(base.numel()):
        e = torch.zeros_like(base)
        e[i] = eps
        out[i] = (loss_of_params(unflat(base + e, params)) - loss_of_params(unflat(base - e, params))) / (2 * eps)
    return unflat(out, params)


# --------------------------------------------------------------------------- a tanh RNN
@pytest.mark.parametrize("num_steps", [1, 7, 40])
def test_tanh_rnn_equals_bptt_and_finite_differences(num_steps: int) -> None:
    p = make_tanh_problem(shapes=((3,), (2, 2)), contraction=0.8, seed=1, n_in=2)
    h0 = _h0(p)
    got = forward_grad(p.step, h0, p.params, num_steps, p.loss)
    want = unrolled_grad(p.step, h0, p.params, num_steps, p.loss)
    assert rel_err(got, want) < TOL
    assert max(float(g.abs().max()) for g in got) > 0
    fd = _fd_grad(lambda w: p.loss(hypergrad.unroll(p.step, h0, w, num_steps)), p.params)
    assert rel_err(got, fd) < 1e-6


def test_unused_parameters_get_zeros() -> None:
    p = make_tanh_problem(shapes=((3,),), seed=2, unused=True)
    got = forward_grad(p.step, _h0(p), p.params, 5, p.loss)
    assert torch.equal(got[-1], torch.zeros_like(p.params[-1]))
    assert all(g.shape == w.shape and g.dtype == w.dtype for g, w in zip(got, p.params))


# --------------------------------------------------------------------------- the SGD-momentum map of a tiny MLP
def _mlp_problem(per: str) -> tuple[InnerProblem, tuple[torch.Tensor, ...], list]:
    problem = tiny_problem(DT, per=per)
    g = torch.Generator().manual_seed(4)
    hp = tuple(t + 0.2 * torch.randn(t.shape, generator=g, dtype=DT) for t in problem.spec.init(0.3, 0.6, DT))
    batches = list(problem.schedule(25, seed=3))
    return problem, hp, batches


def _meta_loss(problem: InnerProblem):
    return lambda s: problem.eval_loss(s[: problem.num_tensors])


@pytest.mark.parametrize(("per", "count"), [("tensor", 8), ("layer", 4), ("global", 2)])
def test_inner_sgd_momentum_map_equals_bptt(per: str, count: int) -> None:
    """BPTT as the tuner runs it (InnerProblem.step, a closure drawing the next minibatch per call)."""
    problem, hp, batches = _mlp_problem(per)
    assert sum(h.numel() for h in hp) == count

    def step(state, p, batch):
        return problem.functional_step(state, p, *batch)

    got = forward_grad(step, problem.initial_state(), hp, len(batches), _meta_loss(problem), inputs=batches)
    rows = iter(batches)
    want = unrolled_grad(lambda s, p: problem.step(s, p, *next(rows)), problem.initial_state(), hp, len(batches),
                         _meta_loss(problem))
    assert rel_err(got, want) < TOL
    assert min(float(g.abs().min()) for g in got) > 0  # every hyperparameter matters


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_a_loss_without_forward_mode_rules_takes_reverse_mode_jvps(loss: str, caplog) -> None:
    """``F.mse_loss`` (mean) and ``F.huber_loss`` have no working forward-over-reverse rule
    (pytorch/pytorch#123996): forward_grad takes the JVPs by two reverse passes, with BPTT's result."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 5, generator=g, dtype=DT), torch.randn(32, 2, generator=g, dtype=DT)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).to(DT)
    problem = InnerProblem(model, F.mse_loss if loss == "mse" else F.huber_loss, x, y, x[:16], y[:16],
                           batch_size=8)
    hp = tuple(t + 0.2 * torch.randn(t.shape, generator=g, dtype=DT) for t in problem.spec.init(0.3, 0.6, DT))
    batches = list(problem.schedule(10, seed=1))
    with caplog.at_level(logging.INFO, logger="hypergrad"):
        got = forward_grad(lambda s, p, b: problem.functional_step(s, p, *b), problem.initial_state(), hp,
                           len(batches), _meta_loss(problem), inputs=batches)
    assert "two reverse passes" in caplog.text
    rows = iter(batches)
    want = unrolled_grad(lambda s, p: problem.step(s, p, *next(rows)), problem.initial_state(), hp, len(batches),
                         _meta_loss(problem))
    assert rel_err(got, want) < TOL
    assert min(float(t.abs().min()) for t in got) > 0


def test_functional_step_is_the_inner_step() -> None:
    problem, hp, batches = _mlp_problem("tensor")
    h = problem.initial_state()
    for batch in batches[:3]:
        with torch.no_grad():
            want = problem.step(h, hp, *batch)
        got = problem.functional_step(h, hp, *batch)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
        h = want


@pytest.mark.parametrize("name", ["cnn", "bn_dropout", "gru", "frozen_shared", "mixed_dtype", "two_inputs"])
def test_user_models_equal_bptt(name: str) -> None:
    """The zoo (tests/_zoo.py): BatchNorm and Dropout in train mode (the same masks: one draw per step),
    a GRU, a frozen and a shared tensor, mixed dtypes, a tuple of inputs; float32 where the model is."""
    model, loss_fn, train, val = ZOO[name].build()
    problem = InnerProblem(model, loss_fn, train=train, val=val, batch_size=16, per="layer")
    hp = problem.spec.init(0.1, 0.5)
    batches = list(problem.schedule(6, seed=0))
    with problem.rng(1):
        got = forward_grad(lambda s, w, b: problem.functional_step(s, w, *b), problem.initial_state(), hp, 6,
                           _meta_loss(problem), inputs=batches)
    rows = iter(batches)
    with problem.rng(1):
        want = unrolled_grad(lambda s, w: problem.step(s, w, *next(rows)), problem.initial_state(), hp, 6,
                             _meta_loss(problem))
    assert rel_err(got, want) < 1e-5
    if ZOO[name].stochastic:  # another draw of the masks gives another gradient: the masks matter
        with problem.rng(2):
            other = forward_grad(lambda s, w, b: problem.functional_step(s, w, *b), problem.initial_state(), hp,
                                 6, _meta_loss(problem), inputs=batches)
        assert rel_err(other, want) > 1e-4


def test_the_loop_draws_the_randomness_once_per_step() -> None:
    p = make_tanh_problem(shapes=((4,),), seed=12)

    def step(s, w):  # dropout on the state: a random mask per step
        return tuple(torch.nn.functional.dropout(x, 0.5) for x in p.step(s, w))

    h0 = _h0(p)
    runs = {}
    for mode in (True, False):
        torch.manual_seed(3)
        runs[mode] = forward_grad(step, h0, p.params, 5, p.loss, vectorize=mode)
    torch.manual_seed(3)
    want = unrolled_grad(step, h0, p.params, 5, p.loss)
    assert rel_err(runs[True], want) < TOL and rel_err(runs[False], want) < TOL


# --------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("per", ["tensor", "global"])
@pytest.mark.parametrize("segments", [1, 3])
def test_segment_gradients_equal_bptt(per: str, segments: int) -> None:
    problem, _, batches = _mlp_problem(per)
    spec = problem.spec.with_segments(segments)
    g = torch.Generator().manual_seed(9)
    hp = tuple(t + 0.3 * torch.randn(t.shape, generator=g, dtype=DT) for t in spec.init(0.3, 0.6, DT))
    seg = spec.segment_of(len(batches))

    def step(state, p, batch):
        return problem.functional_step(state, p, *batch)

    loss = _meta_loss(problem)
    got = forward_grad(step, problem.initial_state(), hp, len(batches), loss, inputs=batches, segment_of=seg)
    if segments > 1:
        assert all(h.shape[0] == segments for h in got)
    via_wrapper = unrolled_grad(scheduled_step(step, inputs=batches, segment_of=seg),
                                problem.initial_state(), hp, len(batches), loss)
    calls = iter(range(len(batches)))

    def by_hand(state, p):  # the segmented closure written out, independent of scheduled_step
        t = next(calls)
        return problem.step(state, p if seg is None else spec.at_segment(p, seg[t]), *batches[t])

    want = unrolled_grad(by_hand, problem.initial_state(), hp, len(batches), loss)
    assert rel_err(via_wrapper, want) < 1e-13
    assert rel_err(got, want) < TOL
    if segments > 1:  # each segment has its own gradient
        assert all(bool((h[0] != h[1]).all()) for h in got)


def test_a_constant_schedule_sums_to_the_constant_gradient() -> None:
    """With equal values in all S segments, d/dw of the constant map is the sum over segments."""
    p = make_tanh_problem(shapes=((4,),), seed=5)
    h0, T, S = _h0(p), 12, 4
    const = forward_grad(p.step, h0, p.params, T, p.loss)
    stacked = tuple(w.expand(S, *w.shape).clone() for w in p.params)
    per_segment = forward_grad(p.step, h0, stacked, T, p.loss, segment_of=segment_index(T, S))
    assert rel_err(tuple(g.sum(0) for g in per_segment), const) < TOL
    assert rel_err(per_segment, unrolled_grad(scheduled_step(p.step, segment_of=segment_index(T, S)), h0, stacked,
                                              T, p.loss)) < TOL


# --------------------------------------------------------------------------- vmap and loop
@pytest.mark.parametrize("per", ["tensor", "layer"])
def test_vmap_and_loop_paths_agree(per: str) -> None:
    problem, hp, batches = _mlp_problem(per)

    def step(state, p, batch):
        return problem.functional_step(state, p, *batch)

    run = {name: forward_grad(step, problem.initial_state(), hp, 10, _meta_loss(problem), inputs=batches, **kw)
           for name, kw in {"vmap": {"vectorize": True}, "loop": {"vectorize": False},
                            "chunks": {"vectorize": True, "chunk_size": 3}, "auto": {}}.items()}
    for name in ("loop", "chunks", "auto"):
        assert rel_err(run[name], run["vmap"]) < 1e-12, name


class _Tanh(torch.autograd.Function):
    """tanh as a user operation with a JVP rule but no vmap rule: vmap refuses it, jvp takes it."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)

    @staticmethod
    def jvp(ctx, t):
        (y,) = ctx.saved_tensors
        return t * (1 - y * y)


def test_the_loop_takes_over_where_vmap_fails(caplog) -> None:
    p = make_tanh_problem(shapes=((3,),), seed=6)

    def step(s, w):
        return (_Tanh.apply(w[0] @ flat(s) + w[1] @ w[3] + w[2]),)

    h0 = _h0(p)
    with pytest.raises(RuntimeError, match="vmap"):
        forward_grad(step, h0, p.params, 8, p.loss, vectorize=True)
    with caplog.at_level(logging.DEBUG, logger="hypergrad"):
        auto = forward_grad(step, h0, p.params, 8, p.loss)
    assert "looping instead" in caplog.text
    assert rel_err(auto, forward_grad(step, h0, p.params, 8, p.loss, vectorize=False)) == 0.0
    assert rel_err(auto, unrolled_grad(step, h0, p.params, 8, p.loss)) < TOL


# --------------------------------------------------------------------------- time-varying maps, dispatch, aux
def test_inputs_are_fed_in_order_and_a_drawing_closure_works_vectorised() -> None:
    p = make_tanh_problem(shapes=((3,),), seed=7)
    shifts = [torch.full((3,), 0.1 * t, dtype=DT) for t in range(6)]

    def step(s, w, shift):
        return tuple(x + shift for x in p.step(s, w))

    h0 = _h0(p)
    got = forward_grad(step, h0, p.params, 6, p.loss, inputs=shifts, vectorize=False)
    it = iter(shifts)
    drawing = forward_grad(lambda s, w: step(s, w, next(it)), h0, p.params, 6, p.loss, vectorize=True)
    it = iter(shifts)
    want = unrolled_grad(lambda s, w: step(s, w, next(it)), h0, p.params, 6, p.loss)
    assert rel_err(got, want) < TOL and rel_err(drawing, want) < TOL
    assert rel_err(got, forward_grad(p.step, h0, p.params, 6, p.loss)) > 1e-3  # the inputs matter


def test_gradient_dispatches_forward() -> None:
    assert METHODS["forward"].family == "forward" and METHODS["forward"].label == "Forward-mode"
    assert hypergrad.forward_grad is forward_grad
    p = make_tanh_problem(shapes=((3,), (2,)), seed=8)
    h0 = _h0(p)
    got = gradient(p.step, h0, p.params, p.loss, method="forward", num_steps=15)
    direct = forward_grad(p.step, h0, p.params, 15, p.loss)
    for a, b in zip(got.grads, direct):
        assert torch.equal(a, b)
    h_t = hypergrad.unroll(p.step, h0, p.params, 15)
    assert got.info is None and got.aux is None
    assert rel_err(got.state, h_t) < 1e-14 and float(got.loss) == pytest.approx(float(p.loss(h_t)), rel=1e-14)
    bptt = gradient(p.step, h0, p.params, p.loss, method="bptt", num_steps=15)
    assert rel_err(got.grads, bptt.grads) < TOL


def test_gradient_takes_inputs_and_segments_for_bptt_and_forward() -> None:
    p = make_tanh_problem(shapes=((3,),), seed=9)
    h0, T, S = _h0(p), 10, 2
    stacked = tuple(torch.stack([w, 1.1 * w]) for w in p.params)
    shifts = [torch.full((3,), 0.05 * t, dtype=DT) for t in range(T)]

    def step(s, w, shift):
        return tuple(x + shift for x in p.step(s, w))

    kw = dict(num_steps=T, inputs=shifts, segment_of=segment_index(T, S))
    fwd = gradient(step, h0, stacked, p.loss, method="forward", **kw)
    bptt = gradient(step, h0, stacked, p.loss, method="bptt", **kw)
    tbptt = gradient(step, h0, stacked, p.loss, method="tbptt", truncate=T, **kw)
    assert rel_err(fwd.grads, bptt.grads) < TOL and rel_err(tbptt.grads, bptt.grads) < 1e-13
    with pytest.raises(ValueError, match="unrolled and forward methods, not 'neumann'"):
        gradient(step, h0, stacked, p.loss, method="neumann", truncate=3, **kw)
    with pytest.raises(ValueError, match="run cannot be combined"):
        gradient(step, h0, stacked, p.loss, method="tbptt", truncate=3, run=lambda s, w, n: s, **kw)


def test_has_aux() -> None:
    p = make_tanh_problem(shapes=((3,),), seed=10)
    got, aux = forward_grad(p.step, _h0(p), p.params, 5, lambda s: (p.loss(s), {"h": s[0].detach()}), has_aux=True)
    assert rel_err(got, forward_grad(p.step, _h0(p), p.params, 5, p.loss)) == 0.0
    assert torch.allclose(aux["h"], hypergrad.unroll(p.step, _h0(p), p.params, 5)[0])


def test_float32_agrees_with_bptt() -> None:
    problem = tiny_problem(torch.float32)
    hp = problem.spec.init(0.3, 0.6)
    batches = list(problem.schedule(15, seed=1))
    got = forward_grad(lambda s, w, b: problem.functional_step(s, w, *b), problem.initial_state(), hp, 15,
                       _meta_loss(problem), inputs=batches)
    rows = iter(batches)
    want = unrolled_grad(lambda s, w: problem.step(s, w, *next(rows)), problem.initial_state(), hp, 15,
                         _meta_loss(problem))
    assert all(g.dtype == torch.float32 for g in got)
    assert rel_err(got, want) < 1e-4


# --------------------------------------------------------------------------- bad input
def test_a_step_with_autograd_grad_is_explained() -> None:
    problem, hp, batches = _mlp_problem("global")
    with pytest.raises(RuntimeError, match="functional_step"):
        forward_grad(lambda s, w, b: problem.step(s, w, *b), problem.initial_state(), hp, 3, _meta_loss(problem),
                     inputs=batches)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(num_steps=0), ValueError, "num_steps"),
        (dict(segment_of=(0, 1)), ValueError, "a segment for each of the 4 steps"),
        (dict(segment_of=(0, 0, 1, 5)), ValueError, "leading segment axis of length >= 6"),
        (dict(segment_of=(0, 0, -1, 0)), ValueError, "integer segment indices"),
        (dict(inputs=[1, 2]), ValueError, "inputs ran out after 2 steps"),
        (dict(inputs=3), TypeError, "inputs must be an iterable"),
        (dict(vectorize="yes"), ValueError, "vectorize must be None, True or False"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(params=(torch.ones(2, dtype=torch.int64),)), ValueError, "floating-point"),
        (dict(loss_fn=lambda s: s[0]), ValueError, "scalar tensor"),
        (dict(loss_fn=lambda s: s[0].sum(), has_aux=True), ValueError, r"pair \(loss, aux\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match) -> None:
    w = (torch.tensor([[0.5, 0.1], [0.0, 0.4]], dtype=DT),)
    call = dict(step=lambda s, p, *x: (torch.tanh(p[0] @ s[0] + 1.0),), state0=(torch.zeros(2, dtype=DT),),
                params=w, num_steps=4, loss_fn=lambda s: s[0].sum()) | kwargs
    with pytest.raises(error, match=match):
        forward_grad(**call)


def test_scheduled_step_counts_its_calls() -> None:
    stepped = scheduled_step(lambda s, p: (s[0] + p[0],), segment_of=(0, 1))
    w = (torch.tensor([1.0, 2.0]),)
    s = stepped((torch.zeros(()),), w)
    s = stepped(s, w)
    assert float(s[0]) == 3.0
    with pytest.raises(ValueError, match="called 3 times; segment_of covers 2 steps"):
        stepped(s, w)
