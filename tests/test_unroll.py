"""Tests of BPTT/TBPTT (:func:`hypergrad.unrolled_grad`) and its relation to RBP (Propositions 1 and 2).

Index convention (the paper's Prop. 2 is loose by one):
``unrolled_grad(..., truncate=K)`` back-propagates through the last ``K``
applications of ``F`` and therefore contains the Jacobian powers
``J^0, ..., J^{K-1}`` (K terms); on a trajectory whose last ``K`` states
equal ``h*`` it equals ``fixed_point_grad(..., method="neumann",
max_iter=K-1)`` (Alg. 2 with ``K-1`` terms after the first). ``truncate=1``
(``J^0`` only) has no Neumann counterpart because ``max_iter >= 1``; it equals
the plain pull-back ``g^T dF/dw``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hypergrad
from tests._maps import (
    DT,
    Problem,
    dense_jacobians,
    exact_grad,
    flat,
    gru_step,
    make_gru_problem,
    make_tanh_problem,
    rel_err,
    saved_numel,
    tanh_map,
    unflat,
)

PROBLEMS = {
    "tanh-tree": make_tanh_problem(shapes=((5,), (2, 2), ()), contraction=0.9, seed=11),
    "gru": make_gru_problem(batch=2, hidden=4, n_in=3, scale=0.4, seed=12),
}


def neumann(p: Problem, max_iter: int, state=None):
    state = p.state if state is None else state
    return hypergrad.fixed_point_grad(
        p.step, state, p.params, p.loss_grad_at(state), method="neumann", max_iter=max_iter
    )


def zeros_like_state(p: Problem):
    return tuple(torch.zeros_like(s) for s in p.state)


# --------------------------------------------------------------------------- Proposition 2
@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_proposition_2_tbptt_equals_neumann_exact_mapping(name: str, k: int) -> None:
    """unrolled_grad(truncate=K) == fixed_point_grad(neumann, max_iter=K-1) when h_{T-K} = ... = h_T = h*."""
    p = PROBLEMS[name]
    tbptt = hypergrad.unrolled_grad(p.step, p.state, p.params, k + 3, p.loss, truncate=k)
    grads, info = neumann(p, k - 1)
    assert info.iterations == k - 1
    assert rel_err(tbptt, grads) <= 1e-12
    # the off-by-one is real: one term more or fewer is a different gradient
    more, _ = neumann(p, k)
    assert rel_err(tbptt, more) > 1e-8
    if k >= 3:
        fewer, _ = neumann(p, k - 2)
        assert rel_err(tbptt, fewer) > 1e-8


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_proposition_2_on_a_converged_trajectory(name: str) -> None:
    """The same on a real trajectory from h0 = 0 whose tail has converged (T = 400)."""
    p = PROBLEMS[name]
    h_T = hypergrad.unroll(p.step, zeros_like_state(p), p.params, 400)
    assert rel_err(h_T, p.state) <= 1e-13
    for k in (2, 7, 20):
        tbptt = hypergrad.unrolled_grad(p.step, zeros_like_state(p), p.params, 400, p.loss, truncate=k)
        grads, _ = neumann(p, k - 1, state=h_T)
        assert rel_err(tbptt, grads) <= 1e-10


def test_truncate_one_is_the_plain_pullback() -> None:
    p = PROBLEMS["gru"]
    tbptt = hypergrad.unrolled_grad(p.step, p.state, p.params, 4, p.loss, truncate=1)
    _, jac_w = dense_jacobians(p.step, p.state, p.params)
    assert rel_err(tbptt, unflat(jac_w.T @ flat(p.state_grad), p.params)) <= 1e-12


def test_proposition_2_needs_a_converged_tail() -> None:
    """Far from the fixed point (T = 3 steps from 0) TBPTT and Neumann-RBP at h_T differ."""
    p = PROBLEMS["gru"]
    h_3 = hypergrad.unroll(p.step, zeros_like_state(p), p.params, 3)
    tbptt = hypergrad.unrolled_grad(p.step, zeros_like_state(p), p.params, 3, p.loss, truncate=3)
    grads, _ = neumann(p, 2, state=h_3)
    assert rel_err(tbptt, grads) > 1e-3


# --------------------------------------------------------------------------- Proposition 1
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_proposition_1_bptt_equals_full_neumann(name: str) -> None:
    p = PROBLEMS[name]
    bptt = hypergrad.unrolled_grad(p.step, zeros_like_state(p), p.params, 400, p.loss)
    full, info = hypergrad.fixed_point_grad(
        p.step, p.state, p.params, p.state_grad, method="neumann", max_iter=3000, tol=1e-15
    )
    exact = exact_grad(p.step, p.state, p.params, p.state_grad)
    assert info.converged
    assert rel_err(bptt, exact) <= 1e-8
    assert rel_err(full, exact) <= 1e-8
    assert rel_err(bptt, full) <= 1e-8


def test_bptt_on_an_unconverged_trajectory_is_not_the_implicit_gradient() -> None:
    p = PROBLEMS["tanh-tree"]
    bptt = hypergrad.unrolled_grad(p.step, zeros_like_state(p), p.params, 4, p.loss)
    assert rel_err(bptt, exact_grad(p.step, p.state, p.params, p.state_grad)) > 1e-3


# --------------------------------------------------------------------------- against plain autograd
def manual_unrolled(p: Problem, state0, num_steps: int, truncate: int | None):
    params = tuple(w.detach().clone().requires_grad_(True) for w in p.params)
    s = tuple(t.detach() for t in state0)
    start = 0 if truncate is None else num_steps - truncate
    for t in range(num_steps):
        if t == start:
            s = tuple(x.detach() for x in s)
        s = p.step(s, params)
    grads = torch.autograd.grad(p.loss(s), params, allow_unused=True)
    return tuple(torch.zeros_like(w) if g is None else g for g, w in zip(grads, params))


@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("truncate", [None, 1, 4, 7])
def test_matches_manual_autograd(name: str, truncate: int | None) -> None:
    p = PROBLEMS[name]
    gen = torch.Generator().manual_seed(13)
    state0 = tuple(torch.randn(s.shape, dtype=DT, generator=gen) for s in p.state)
    ours = hypergrad.unrolled_grad(p.step, state0, p.params, 7, p.loss, truncate=truncate)
    ref = manual_unrolled(p, state0, 7, truncate)
    assert rel_err(ours, ref) <= 1e-14


class Recorder:
    """A step that draws a new 'minibatch' per call and records the order of calls."""

    def __init__(self):
        self.calls: list[int] = []
        self.grad_enabled: list[bool] = []

    def __call__(self, state, params):
        self.calls.append(len(self.calls))
        self.grad_enabled.append(torch.is_grad_enabled())
        batch = torch.full_like(state[0], 0.01 * len(self.calls))
        return (torch.tanh(params[0] * state[0] + batch),)


@pytest.mark.parametrize(("num_steps", "truncate"), [(6, None), (6, 2), (6, 6), (1, 1)])
def test_step_called_num_steps_times_in_order(num_steps: int, truncate: int | None) -> None:
    rec = Recorder()
    hypergrad.unrolled_grad(
        rec,
        (torch.zeros(3, dtype=DT),),
        (torch.tensor(0.5, dtype=DT),),
        num_steps,
        lambda s: s[0].sum(),
        truncate=truncate,
    )
    assert rec.calls == list(range(num_steps))
    k = num_steps if truncate is None else truncate
    assert rec.grad_enabled == [False] * (num_steps - k) + [True] * k



def test_tbptt_memory_grows_with_truncate_not_num_steps() -> None:
    p = PROBLEMS["gru"]
    z = zeros_like_state(p)

    def mem(num_steps, truncate):
        return saved_numel(
            lambda: hypergrad.unrolled_grad(p.step, z, p.params, num_steps, p.loss, truncate=truncate)
        )

    assert mem(10, 5) == mem(60, 5)
    assert mem(60, 10) > mem(60, 5)


# --------------------------------------------------------------------------- API details
def test_unroll_matches_a_plain_loop_and_keeps_no_graph() -> None:
    p = PROBLEMS["tanh-tree"]
    params = tuple(w.clone().requires_grad_(True) for w in p.params)
    out = hypergrad.unroll(tanh_map, zeros_like_state(p), params, 9)
    s = zeros_like_state(p)
    with torch.no_grad():
        for _ in range(9):
            s = tanh_map(s, params)
    assert all(torch.equal(a, b) for a, b in zip(out, s))
    assert all(t.grad_fn is None and not t.requires_grad for t in out)


def test_has_aux_and_unused_params() -> None:
    p = make_gru_problem(seed=14, unused=True)
    grads, aux = hypergrad.unrolled_grad(
        gru_step, p.state, p.params, 5, lambda s: (p.loss(s), {"h": s[0].detach()}), truncate=3, has_aux=True
    )
    assert set(aux) == {"h"} and aux["h"].shape == p.state[0].shape
    assert torch.equal(grads[-1], torch.zeros_like(p.params[-1]))
    plain = hypergrad.unrolled_grad(gru_step, p.state, p.params, 5, p.loss, truncate=3)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain))


def test_loss_independent_of_params_gives_zeros() -> None:
    p = PROBLEMS["gru"]
    grads = hypergrad.unrolled_grad(gru_step, p.state, p.params, 3, lambda s: torch.tensor(1.0, dtype=DT))
    assert all(torch.equal(g, torch.zeros_like(w)) for g, w in zip(grads, p.params))


def test_state0_is_a_constant() -> None:
    p = PROBLEMS["gru"]
    h0 = tuple(s.clone().requires_grad_(True) for s in p.state)
    grads = hypergrad.unrolled_grad(gru_step, h0, p.params, 3, p.loss)
    plain = hypergrad.unrolled_grad(gru_step, p.state, p.params, 3, p.loss)
    assert h0[0].grad is None
    assert all(not g.requires_grad and torch.equal(g, q) for g, q in zip(grads, plain))


def _call(**overrides):
    p = PROBLEMS["gru"]
    kwargs = {
        "step": gru_step,
        "state0": p.state,
        "params": p.params,
        "num_steps": 5,
        "loss_fn": p.loss,
        **overrides,
    }
    return hypergrad.unrolled_grad(**kwargs)


BAD_INPUTS = [
    ({"num_steps": 0}, r"num_steps must be an integer >= 1, got 0"),
    ({"num_steps": -2}, r"num_steps must be an integer >= 1, got -2"),
    ({"num_steps": 3.0}, r"num_steps must be an integer >= 1, got 3\.0"),
    ({"num_steps": True}, r"num_steps must be an integer >= 1, got True"),
    ({"truncate": 0}, r"truncate must be None or an integer >= 1, got 0"),
    ({"truncate": 2.5}, r"truncate must be None or an integer >= 1, got 2\.5"),
    ({"truncate": 6}, r"truncate \(6\) must not exceed num_steps \(5\)"),
    ({"loss_fn": lambda s: s[0]}, r"loss_fn must return a scalar tensor"),
    ({"loss_fn": lambda s: 1.0}, r"loss_fn must return a scalar tensor"),
    (
        {"params": (torch.zeros(2, dtype=torch.int64),)},
        r"params\[0\] must be a floating-point tensor, got torch\.int64",
    ),
]


@pytest.mark.parametrize(("overrides", "match"), BAD_INPUTS)
def test_bad_input(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _call(**overrides)


def test_unroll_bad_num_steps() -> None:
    with pytest.raises(ValueError, match=r"num_steps must be an integer >= 1, got 0"):
        hypergrad.unroll(gru_step, PROBLEMS["gru"].state, PROBLEMS["gru"].params, 0)


# --------------------------------------------------------------------------- property-based
@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 6),
    contraction=st.floats(0.1, 0.95),
    seed=st.integers(0, 2**16),
    k=st.integers(2, 15),
    extra=st.integers(0, 5),
)
def test_property_proposition_2(n: int, contraction: float, seed: int, k: int, extra: int) -> None:
    p = make_tanh_problem(shapes=((n,),), contraction=contraction, seed=seed)
    tbptt = hypergrad.unrolled_grad(p.step, p.state, p.params, k + extra, p.loss, truncate=k)
    grads, _ = neumann(p, k - 1)
    assert rel_err(tbptt, grads) <= 1e-11
