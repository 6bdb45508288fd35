"""Tests of :func:`hypergrad.fixed_point_grad` (Eq. 8-9) against dense and finite-difference references.

All in float64 on non-linear maps (``tests/_maps.py``): a tanh map
``tanh(W h + U x + b)`` with ``||W||_2 < 1`` (single- and multi-tensor
states), a far-from-symmetric tanh map, and a functional ``GRUCell``. The
reference gradient is computed densely: ``J`` and ``dF/dw`` by
``torch.autograd.functional.jacobian``, then ``z = solve(I - J^T, g)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hypergrad
from hypergrad import linalg
from tests._maps import (
    DT,
    Problem,
    dense_jacobians,
    exact_grad,
    fd_directional,
    flat,
    gru_step,
    make_gru_problem,
    make_tanh_problem,
    rel_err,
    saved_numel,
    solve_forward,
    spectral_radius,
    state_jacobian,
    tanh_map,
    unflat,
)

# (id, method, kwargs) that run each method to convergence on the small problems below.
METHODS = [
    ("neumann", "neumann", {"max_iter": 3000, "tol": 1e-14}),
    ("rbp", "rbp", {"max_iter": 3000, "tol": 1e-14}),
    ("cg-double_vjp", "cg", {"max_iter": 500, "tol": 1e-14, "jvp": "double_vjp"}),
    ("cg-forward", "cg", {"max_iter": 500, "tol": 1e-14, "jvp": "forward"}),
    ("gmres", "gmres", {"max_iter": 60}),
]
METHOD_IDS = [m[0] for m in METHODS]


def nonsymmetric_w(n: int, norm: float, seed: int) -> torch.Tensor:
    """``norm`` x (rotations by angles near pi/2 in a random basis): ||W - W^T|| >> ||W + W^T||."""
    gen = torch.Generator().manual_seed(seed)
    thetas = torch.linspace(1.35, 1.75, n // 2, dtype=DT)
    blocks = [torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=DT) for t in thetas]
    rot = torch.block_diag(*blocks)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=DT, generator=gen))
    return norm * (q @ rot @ q.T)


def _problems() -> dict[str, Problem]:
    return {
        "tanh-vector": make_tanh_problem(shapes=((8,),), contraction=0.9, seed=0),
        "tanh-tree": make_tanh_problem(shapes=((5,), (2, 2), ()), contraction=0.9, seed=1),
        "tanh-nonsymmetric": make_tanh_problem(shapes=((8,),), w=nonsymmetric_w(8, 0.95, seed=2), seed=2),
        "gru": make_gru_problem(batch=2, hidden=4, n_in=3, scale=0.4, seed=3),
    }


PROBLEMS = _problems()


def run(problem: Problem, method: str, **kwargs):
    return hypergrad.fixed_point_grad(
        problem.step, problem.state, problem.params, problem.state_grad, method=method, **kwargs
    )


# --------------------------------------------------------------------------- the maps themselves
def test_functional_gru_matches_torch_gru_cell() -> None:
    cell = torch.nn.GRUCell(3, 4).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, dtype=DT, generator=gen)
    h = torch.randn(2, 4, dtype=DT, generator=gen)
    params = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, x)
    torch.testing.assert_close(gru_step((h,), params)[0], cell(x, h), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_problems_are_contractions_at_a_fixed_point(name: str) -> None:
    p = PROBLEMS[name]
    res = flat(p.state) - flat(p.step(p.state, p.params))
    assert float(res.abs().max()) <= 1e-13
    jac = state_jacobian(p.step, p.state, p.params)
    assert float(torch.linalg.matrix_norm(jac, ord=2)) < 1.0
    assert float(torch.linalg.matrix_norm(jac, ord=2)) > 0.3  # not a trivial map


def test_nonsymmetric_problem_is_far_from_symmetric() -> None:
    p = PROBLEMS["tanh-nonsymmetric"]
    jac = state_jacobian(p.step, p.state, p.params)
    assert torch.linalg.matrix_norm(jac - jac.T) > 2.0 * torch.linalg.matrix_norm(jac + jac.T)


# --------------------------------------------------------------------------- exact implicit gradient
@pytest.mark.parametrize(("mid", "method", "kwargs"), METHODS, ids=METHOD_IDS)
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_matches_dense_implicit_gradient(name: str, mid: str, method: str, kwargs: dict) -> None:
    p = PROBLEMS[name]
    grads, info = run(p, method, **kwargs)
    exact = exact_grad(p.step, p.state, p.params, p.state_grad)
    assert len(grads) == len(p.params)
    for g, w in zip(grads, p.params):
        assert g.shape == w.shape and g.dtype == w.dtype and not g.requires_grad
    assert rel_err(grads, exact) <= 1e-8, (name, mid, info)
    assert info.converged and not info.diverged
    assert info.method == method


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_matches_central_finite_differences(name: str) -> None:
    """d/dw L(h*(w)), re-solving the forward fixed point at w +- eps d."""
    p = PROBLEMS[name]
    grads, info = run(p, "neumann", max_iter=3000, tol=1e-14)
    assert info.converged
    gen = torch.Generator().manual_seed(100)
    zeros = tuple(torch.zeros_like(s) for s in p.state)
    for _ in range(2):
        d = tuple(torch.randn(w.shape, dtype=DT, generator=gen) for w in p.params)
        fd = fd_directional(p.step, zeros, p.params, p.loss, d)
        analytic = float(flat(grads) @ flat(d))
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_loss_that_also_depends_on_params_directly() -> None:
    """fixed_point_grad returns the part of dL/dw that flows through h*; direct terms are the caller's.

    L(h*, v) = v . h* + 0.5 ||h*||^2 with a readout v the map does not use: its entry is zero, and
    grad_W(fixed_point_grad) + [0 ... dL/dv] equals finite differences of the full loss.
    """
    base = make_tanh_problem(shapes=((6,),), seed=4)
    v = torch.linspace(-1, 1, 6, dtype=DT)
    params = (*base.params, v)  # v is not used by tanh_map

    def loss(state, vv=v):
        return (vv * state[0]).sum() + 0.5 * (state[0] ** 2).sum()

    h = base.state
    g = (v + h[0],)
    grads, info = hypergrad.fixed_point_grad(tanh_map, h, params, g, method="gmres", max_iter=20)
    assert info.converged
    assert torch.equal(grads[-1], torch.zeros_like(v))
    total = (*grads[:-1], grads[-1] + h[0])  # add the direct term dL/dv = h*
    gen = torch.Generator().manual_seed(5)
    zeros = (torch.zeros(6, dtype=DT),)
    d = tuple(torch.randn(w.shape, dtype=DT, generator=gen) for w in params)

    def full_loss_at(sign: float) -> float:
        pp = tuple(w + sign * 1e-5 * di for w, di in zip(params, d))
        return float(loss(solve_forward(tanh_map, zeros, pp), pp[-1]))

    fd = (full_loss_at(1.0) - full_loss_at(-1.0)) / 2e-5
    assert float(flat(total) @ flat(d)) == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize(("mid", "method", "kwargs"), METHODS, ids=METHOD_IDS)
def test_unused_params_get_zeros(mid: str, method: str, kwargs: dict) -> None:
    p = make_gru_problem(seed=6, unused=True)
    grads, _ = run(p, method, **kwargs)
    assert grads[-1] is not None
    assert grads[-1].shape == p.params[-1].shape and torch.equal(grads[-1], torch.zeros_like(p.params[-1]))
    exact = exact_grad(p.step, p.state, p.params, p.state_grad)
    assert rel_err(grads, exact) <= 1e-8


def partly_constant_step(state, params):
    """State (h, c, a): h' = tanh(W h + b); c' = c0 (a constant, no grad); a' = tanh(s) (params only)."""
    h, _c, _a = state
    w, b, s = params
    return (torch.tanh(w @ h + b), torch.full((2,), 0.5, dtype=DT), torch.tanh(s).expand(3).clone())


@pytest.mark.parametrize(("mid", "method", "kwargs"), METHODS, ids=METHOD_IDS)
def test_state_parts_that_do_not_depend_on_the_state(mid: str, method: str, kwargs: dict) -> None:
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(4, 4, dtype=DT, generator=gen)
    w = 0.8 * w / torch.linalg.matrix_norm(w, ord=2)
    params = (w, torch.randn(4, dtype=DT, generator=gen) * 0.2, torch.tensor(0.3, dtype=DT))
    state0 = (torch.zeros(4, dtype=DT), torch.zeros(2, dtype=DT), torch.zeros(3, dtype=DT))
    h = solve_forward(partly_constant_step, state0, params)
    g = tuple(torch.randn(t.shape, dtype=DT, generator=gen) for t in h)
    grads, info = hypergrad.fixed_point_grad(partly_constant_step, h, params, g, method=method, **kwargs)
    exact = exact_grad(partly_constant_step, h, params, g)
    assert info.converged
    assert rel_err(grads, exact) <= 1e-8
    assert float(grads[2]) == pytest.approx(float(g[2].sum() * (1 - torch.tanh(params[2]) ** 2)), rel=1e-12)


@pytest.mark.parametrize(("mid", "method", "kwargs"), METHODS, ids=METHOD_IDS)
def test_inputs_are_not_mutated(mid: str, method: str, kwargs: dict) -> None:
    p = PROBLEMS["tanh-tree"]
    before = [t.clone() for t in (*p.state, *p.params, *p.state_grad)]
    init = tuple(torch.ones_like(s) for s in p.state) if method == "rbp" else None
    init_before = None if init is None else [t.clone() for t in init]
    run(p, method, **kwargs, init=init)
    assert all(torch.equal(a, b) for a, b in zip(before, (*p.state, *p.params, *p.state_grad)))
    if init is not None:
        assert all(torch.equal(a, b) for a, b in zip(init_before, init))


# --------------------------------------------------------------------------- Props 3 and 4 on gradients
@pytest.mark.parametrize("name", ["tanh-tree", "gru"])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_proposition_4_on_gradients(name: str, k: int) -> None:
    """K-step Neumann-RBP returns the same gradient as (K+1)-step RBP from z0 = 0."""
    p = PROBLEMS[name]
    g_neumann, i_n = run(p, "neumann", max_iter=k)
    g_rbp, i_r = run(p, "rbp", max_iter=k + 1)
    g_rbp_zeros, _ = run(p, "rbp", max_iter=k + 1, init="zeros")
    assert rel_err(g_neumann, g_rbp) <= 1e-13
    assert rel_err(g_rbp_zeros, g_rbp) == 0.0
    assert i_n.residual == pytest.approx(i_r.residual, rel=1e-10)
    # and neither is the converged answer yet
    exact = exact_grad(p.step, p.state, p.params, p.state_grad)
    assert rel_err(g_neumann, exact) > 1e-10


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_proposition_3_bound_on_gradient_error(name: str) -> None:
    """||grad_K - grad|| <= ||dF/dw||_2 ||(I - J)^{-1}||_2 ||J||_2^{K+1} ||g||."""
    p = PROBLEMS[name]
    jac, jac_w = dense_jacobians(p.step, p.state, p.params)
    eye = torch.eye(jac.shape[0], dtype=DT)
    norm_inv = float(torch.linalg.matrix_norm(torch.linalg.inv(eye - jac), ord=2))
    norm_j = float(torch.linalg.matrix_norm(jac, ord=2))
    norm_fw = float(torch.linalg.matrix_norm(jac_w, ord=2))
    norm_g = float(torch.linalg.vector_norm(flat(p.state_grad)))
    exact = flat(exact_grad(p.step, p.state, p.params, p.state_grad))
    errors = []
    for k in (1, 2, 4, 8, 16, 32):
        grads, _ = run(p, "neumann", max_iter=k)
        err = float(torch.linalg.vector_norm(flat(grads) - exact))
        bound = norm_fw * norm_inv * norm_j ** (k + 1) * norm_g
        assert err <= bound * (1 + 1e-9) + 1e-13, (k, err, bound)
        errors.append(err)
    assert errors[-1] < errors[0]


# --------------------------------------------------------------------------- info fields
def _reference_operators(p: Problem):
    """J^T v and J u by torch.func at h* (independent of hypergrad's one-step graph)."""
    params = tuple(w.detach() for w in p.params)

    def f(*s):
        return p.step(tuple(s), params)

    _, vjp_fn = torch.func.vjp(f, *p.state)

    def vjp(v):
        return tuple(vjp_fn(tuple(v)))

    def jvp(u):
        return tuple(torch.func.jvp(f, tuple(p.state), tuple(u))[1])

    return vjp, jvp


@pytest.mark.parametrize("method", hypergrad.method_names("implicit"))
@pytest.mark.parametrize("max_iter", [2, 5, 30])
@pytest.mark.parametrize("name", ["tanh-nonsymmetric", "gru"])
def test_info_residual_is_the_dense_residual(name: str, method: str, max_iter: int) -> None:
    """info.residual == ||(I - J^T) z - g|| / ||g||, with z pulled back to exactly the returned grads."""
    p = PROBLEMS[name]
    vjp, jvp = _reference_operators(p)
    b = tuple(t.detach() for t in p.state_grad)
    z, info_z = hypergrad.solve_adjoint(method, vjp, b, max_iter=max_iter, jvp=jvp)
    jac, jac_w = dense_jacobians(p.step, p.state, p.params)
    eye = torch.eye(jac.shape[0], dtype=DT)
    true = float(torch.linalg.vector_norm((eye - jac.T) @ flat(z) - flat(b)) / torch.linalg.vector_norm(flat(b)))
    assert info_z.residual == pytest.approx(true, rel=1e-8, abs=1e-14)
    grads, info = run(p, method, max_iter=max_iter)
    assert info.residual == pytest.approx(info_z.residual, rel=1e-8, abs=1e-14)
    assert info.iterations == info_z.iterations
    assert rel_err(grads, unflat(jac_w.T @ flat(z), p.params)) <= 1e-10
    assert info.converged == (true <= math.sqrt(torch.finfo(DT).eps))


@pytest.mark.parametrize(("mid", "method", "kwargs"), METHODS, ids=METHOD_IDS)
def test_tol_stops_early(mid: str, method: str, kwargs: dict) -> None:
    p = PROBLEMS["gru"]
    kw = {**kwargs, "tol": 1e-5}
    grads, info = run(p, method, **kw)
    _, full = run(p, method, **kwargs)
    assert info.stop_reason == "tol" and info.converged
    assert info.residual <= 1e-5
    assert info.iterations < full.iterations
    assert rel_err(grads, exact_grad(p.step, p.state, p.params, p.state_grad)) <= 1e-3


def test_spectral_radius_estimate_symmetric_contraction() -> None:
    """W symmetric: J = D W is similar to D^1/2 W D^1/2, so its eigenvalues are real."""
    gen = torch.Generator().manual_seed(8)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=DT, generator=gen))
    w = q @ torch.diag(torch.tensor([0.92, 0.5, 0.4, -0.3, 0.2, 0.1, -0.05, 0.0], dtype=DT)) @ q.T
    p = make_tanh_problem(shapes=((8,),), w=w, seed=8)
    rho = spectral_radius(state_jacobian(p.step, p.state, p.params))
    assert 0.3 < rho < 0.92
    # Neumann's terms M^k b decay geometrically without a round-off floor: any length works.
    for k in (30, 200):
        _, info = run(p, "neumann", max_iter=k)
        assert info.spectral_radius == pytest.approx(rho, abs=1e-3)
    # RBP estimates from the differences x_{i+1} - x_i; once they reach round-off (then exactly 0)
    # the estimate uses only the differences above the round-off floor.
    _, info = run(p, "rbp", max_iter=30)
    assert not info.residual < 1e-13 and info.spectral_radius == pytest.approx(rho, abs=1e-3)
    _, info = run(p, "rbp", max_iter=200)
    assert info.residual == 0.0 and info.spectral_radius == pytest.approx(rho, abs=2e-2)
    vjp, _ = _reference_operators(p)
    assert linalg.power_iteration(vjp, p.state_grad, num_iter=200) == pytest.approx(rho, abs=5e-3)


def test_rbp_spectral_radius_is_never_a_wrong_finite_value() -> None:
    gen = torch.Generator().manual_seed(8)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=DT, generator=gen))
    w = q @ torch.diag(torch.tensor([0.92, 0.5, 0.4, -0.3, 0.2, 0.1, -0.05, 0.0], dtype=DT)) @ q.T
    p = make_tanh_problem(shapes=((8,),), w=w, seed=8)
    rho = spectral_radius(state_jacobian(p.step, p.state, p.params))
    for k in range(20, 80):
        _, info = run(p, "rbp", max_iter=k)
        est = info.spectral_radius
        assert math.isnan(est) or abs(est - rho) <= 0.05, (k, est, rho)


# --------------------------------------------------------------------------- spectral radius above 1
def unstable_problem() -> Problem:
    """tanh(W h + U x + b) with W = 1.4 x orthogonal: the fixed point (found by Newton) is repelling."""
    gen = torch.Generator().manual_seed(9)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=DT, generator=gen))
    return make_tanh_problem(shapes=((6,),), w=1.4 * q, seed=9, forward_iters=0, input_scale=0.1)


def test_unstable_problem_has_spectral_radius_above_one() -> None:
    p = unstable_problem()
    jac = state_jacobian(p.step, p.state, p.params)
    assert spectral_radius(jac) > 1.05
    assert float(torch.linalg.svdvals(torch.eye(6, dtype=DT) - jac).min()) > 1e-3  # I - J invertible


@pytest.mark.parametrize(("method", "init"), [("neumann", None), ("rbp", None), ("rbp", "uniform")])
def test_spectral_radius_above_one_diverges_visibly(method: str, init: str | None) -> None:
    p = unstable_problem()
    grads, info = run(p, method, max_iter=80, init=init, generator=torch.Generator().manual_seed(0))
    exact = exact_grad(p.step, p.state, p.params, p.state_grad)
    assert info.diverged and not info.converged
    assert info.spectral_radius > 1.0
    assert rel_err(grads, exact) > 1.0


@pytest.mark.parametrize(("mid", "method", "kwargs"), METHODS, ids=METHOD_IDS)
@pytest.mark.parametrize("max_iter", [5, 40, 200])
def test_no_method_returns_a_wrong_answer_silently(mid: str, method: str, kwargs: dict, max_iter: int) -> None:
    """On a map with spectral radius above 1: wrong => not converged (and diverged for Neumann/RBP)."""
    p = unstable_problem()
    kw = {**kwargs, "max_iter": max_iter}
    grads, info = run(p, method, **kw)
    exact = exact_grad(p.step, p.state, p.params, p.state_grad)
    if rel_err(grads, exact) > 1e-6:
        assert not info.converged, info
        if method in ("neumann", "rbp"):
            assert info.diverged, info
    else:
        assert method in ("cg", "gmres")  # only the Krylov methods can solve this system


def test_krylov_methods_solve_the_unstable_problem() -> None:
    p = unstable_problem()
    exact = exact_grad(p.step, p.state, p.params, p.state_grad)
    for kwargs in ({"method": "gmres", "max_iter": 6}, {"method": "cg", "max_iter": 200, "tol": 1e-14}):
        grads, info = run(p, **kwargs)
        assert info.converged and rel_err(grads, exact) <= 1e-8, kwargs


def test_stop_on_growth_on_a_growing_series() -> None:
    p = unstable_problem()
    _, info = run(p, "neumann", max_iter=200, stop_on_growth=True)
    assert info.stop_reason == "growth" and not info.converged
    assert info.iterations < 200
    _, plain = run(p, "neumann", max_iter=200)
    assert plain.stop_reason in ("max_iter", "nonfinite") and plain.diverged


# --------------------------------------------------------------------------- rbp init
def test_rbp_init_options() -> None:
    p = PROBLEMS["gru"]
    exact = exact_grad(p.step, p.state, p.params, p.state_grad)
    g1, i1 = run(p, "rbp", max_iter=3000, tol=1e-14, init="uniform", generator=torch.Generator().manual_seed(1))
    g2, _ = run(p, "rbp", max_iter=3000, tol=1e-14, init="uniform", generator=torch.Generator().manual_seed(1))
    assert i1.converged and rel_err(g1, exact) <= 1e-8
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))  # reproducible with a generator
    init = tuple(torch.ones_like(s) for s in p.state)
    g3, i3 = run(p, "rbp", max_iter=3000, tol=1e-14, init=init)
    assert i3.converged and rel_err(g3, exact) <= 1e-8
    # a short run from a nonzero start differs from the zero start (so init is honoured)
    short0, _ = run(p, "rbp", max_iter=3)
    short1, _ = run(p, "rbp", max_iter=3, init=init)
    assert rel_err(short1, short0) > 1e-3


# --------------------------------------------------------------------------- one-step graph
class CountingStep:
    def __init__(self, step):
        self.step = step
        self.calls = 0

    def __call__(self, state, params):
        self.calls += 1
        return self.step(state, params)



@pytest.mark.parametrize(("mid", "method", "kwargs"), METHODS, ids=METHOD_IDS)
def test_one_step_graph_independent_of_history(mid: str, method: str, kwargs: dict) -> None:
    """fixed_point_grad sees only h*: it builds one graph of F, however many steps produced h*."""
    p = PROBLEMS["gru"]
    zeros = tuple(torch.zeros_like(s) for s in p.state)
    counts = []
    # A fixed iteration count (tol=0): with forward-mode J u the number of F evaluations follows the
    # solver's iterations, which may differ by one between two nearby h*; the history must not matter.
    fixed = dict(kwargs, tol=0.0, max_iter=min(kwargs.get("max_iter", 30), 30))
    for steps in (60, 600):
        h = hypergrad.unroll(gru_step, zeros, p.params, steps)
        counting = CountingStep(gru_step)
        hypergrad.fixed_point_grad(counting, h, p.params, p.state_grad, method=method, **fixed)
        counts.append(counting.calls)
    assert counts[0] == counts[1]
    if kwargs.get("jvp") == "forward":
        assert counts[0] > 1  # torch.func.jvp re-evaluates F for each J u (still no history)
    else:
        assert counts[0] == 1


def test_memory_is_one_step_and_independent_of_iterations() -> None:
    """Saved activations: BPTT grows by one step's graph per step; fixed_point_grad holds one step's."""
    p = PROBLEMS["gru"]

    def fpg(k, method="neumann"):
        return lambda: run(p, method, max_iter=k)

    def bptt(t):
        return saved_numel(lambda: hypergrad.unrolled_grad(gru_step, p.state, p.params, t, p.loss))

    per_step = bptt(2) - bptt(1)  # one step whose input state is differentiable
    assert bptt(10) - bptt(5) == 5 * per_step > 0
    neumann_5, neumann_50 = saved_numel(fpg(5)), saved_numel(fpg(50))
    assert neumann_5 == neumann_50 == per_step
    assert saved_numel(fpg(5, "rbp")) == saved_numel(fpg(50, "rbp")) == per_step
    assert saved_numel(fpg(5, "gmres")) == saved_numel(fpg(30, "gmres")) == per_step
    # CG's double-vjp builds the graph of J^T v once, whatever the iteration count
    assert saved_numel(fpg(5, "cg")) == saved_numel(fpg(50, "cg")) < 3 * per_step


# --------------------------------------------------------------------------- bad input
def _base_call():
    p = PROBLEMS["tanh-tree"]
    return {"step": p.step, "state": p.state, "params": p.params, "state_grad": p.state_grad}


def _nan_state():
    s = list(_base_call()["state"])
    s[0] = s[0].clone()
    s[0][1] = float("nan")
    return tuple(s)


BAD_INPUTS = [
    ({"method": "lbfgs"}, r"unknown method 'lbfgs'; expected one of rbp, cg, neumann, gmres"),
    ({"max_iter": 0}, r"max_iter must be an integer >= 1, got 0"),
    ({"max_iter": 2.0}, r"max_iter must be an integer >= 1, got 2\.0"),
    ({"max_iter": False}, r"max_iter must be an integer >= 1, got False"),
    ({"tol": -1.0}, r"tol must be a finite number >= 0, got -1\.0"),
    ({"tol": float("nan")}, r"tol must be a finite number >= 0, got nan"),
    ({"jvp": "reverse"}, r"unknown jvp mode 'reverse'"),
    ({"method": "rbp", "init": "ones"}, r"unknown init 'ones'"),
    ({"method": "rbp", "init": (torch.zeros(5, dtype=DT),)}, r"init has 1 tensors but state_grad has 3"),
    ({"state": _nan_state()}, r"state contains NaN or Inf"),
    (
        {
            "state_grad": (
                torch.zeros(5, dtype=DT),
                torch.zeros(2, 2, dtype=DT),
                torch.tensor(math.inf, dtype=DT),
            )
        },
        r"state_grad contains NaN or Inf",
    ),
    (
        {"state_grad": (torch.zeros(5, dtype=DT), torch.zeros(4, dtype=DT), torch.zeros((), dtype=DT))},
        r"state_grad\[1\] has shape \(4,\) but state\[1\] has shape \(2, 2\)",
    ),
    ({"state_grad": (torch.zeros(5, dtype=DT),)}, r"state_grad has 1 tensors but state has 3"),
    ({"state": (), "state_grad": ()}, r"state must hold at least one tensor"),
    (
        {
            "state": (
                torch.zeros(5, dtype=torch.int64),
                torch.zeros(2, 2, dtype=DT),
                torch.zeros((), dtype=DT),
            )
        },
        r"state\[0\] must be a floating-point tensor, got torch\.int64",
    ),
    (
        {"params": (torch.zeros(3, dtype=torch.int32),)},
        r"params\[0\] must be a floating-point tensor, got torch\.int32",
    ),
    (
        {"step": lambda s, p: (s[0][:3], s[1], s[2])},
        r"step\(state, params\)\[0\] has shape \(3,\) but state\[0\] has shape \(5,\)",
    ),
    ({"step": lambda s, p: s[:2]}, r"step\(state, params\) has 2 tensors but state has 3"),
]


@pytest.mark.parametrize(("overrides", "match"), BAD_INPUTS)
def test_bad_input(overrides: dict, match: str) -> None:
    kwargs = {**_base_call(), **overrides}
    with pytest.raises(ValueError, match=match):
        hypergrad.fixed_point_grad(**kwargs)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"step": "not callable"}, r"step must be callable, got str"),
        ({"state": [1.0, 2.0]}, r"state\[0\] must be a tensor, got float"),
        ({"params": {"w": torch.zeros(1)}}, r"params must be a tensor or a tuple of tensors, got dict"),
    ],
)
def test_bad_input_types(overrides: dict, match: str) -> None:
    kwargs = {**_base_call(), **overrides}
    with pytest.raises(TypeError, match=match):
        hypergrad.fixed_point_grad(**kwargs)


def test_cg_needs_a_jvp() -> None:
    b = (torch.ones(2, dtype=DT),)
    with pytest.raises(ValueError, match=r"method 'cg' needs a Jacobian-vector product"):
        hypergrad.solve_adjoint("cg", lambda v: v, b, max_iter=3)


# --------------------------------------------------------------------------- property-based
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 8),
    contraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(METHOD_IDS),
)
def test_property_random_tanh_maps(n: int, contraction: float, seed: int, method: str) -> None:
    p = make_tanh_problem(shapes=((n,),), contraction=contraction, seed=seed)
    _, name, kwargs = METHODS[METHOD_IDS.index(method)]
    grads, info = run(p, name, **kwargs)
    exact = exact_grad(p.step, p.state, p.params, p.state_grad)
    assert info.converged and not info.diverged
    assert rel_err(grads, exact) <= 1e-8


@settings(max_examples=15, deadline=None)
@given(
    hidden=st.integers(1, 5),
    batch=st.integers(1, 3),
    scale=st.floats(0.05, 0.5),
    seed=st.integers(0, 2**16),
    k=st.integers(1, 12),
)
def test_property_gru_proposition_4(hidden: int, batch: int, scale: float, seed: int, k: int) -> None:
    p = make_gru_problem(batch=batch, hidden=hidden, n_in=2, scale=scale, seed=seed)
    g_neumann, _ = run(p, "neumann", max_iter=k)
    g_rbp, _ = run(p, "rbp", max_iter=k + 1)
    assert rel_err(g_neumann, g_rbp) <= 1e-12


@pytest.mark.parametrize(
    ("method", "kwargs", "match"),
    [
        ("neumann", {"init": "uniform"}, r"init applies to method 'rbp' only, not 'neumann'"),
        ("cg", {"init": "zeros"}, r"init applies to method 'rbp' only, not 'cg'"),
        ("rbp", {"stop_on_growth": True}, r"stop_on_growth applies to method 'neumann' only, not 'rbp'"),
    ],
)
def test_options_of_other_methods_are_refused_not_ignored(method: str, kwargs: dict, match: str) -> None:
    def step(s, p):
        return (0.5 * torch.tanh(s[0]) + p[0],)

    h, w = (torch.zeros(3, dtype=DT),), (torch.ones(3, dtype=DT),)
    with pytest.raises(ValueError, match=match):
        hypergrad.fixed_point_grad(step, h, w, (torch.ones(3, dtype=DT),), method=method, **kwargs)


# ---------------------------------------------------------------------- blocks=True
@pytest.mark.parametrize("method", ["cg", "neumann", "rbp"])
def test_blocks_equal_separate_fixed_point_grads(method: str) -> None:
    """Three tanh problems stacked under vmap: one blocks=True call equals three separate calls."""
    problems = [make_tanh_problem(contraction=c, seed=s) for c, s in ((0.5, 1), (0.9, 2), (0.7, 3))]

    def stack(trees):
        return tuple(torch.stack(parts) for parts in zip(*trees))

    state, params, grad = (stack([getattr(p, f) for p in problems]) for f in ("state", "params", "state_grad"))
    step = torch.func.vmap(problems[0].step)
    got, info = hypergrad.fixed_point_grad(step, state, params, grad, method=method, max_iter=30, blocks=True)
    for k, p in enumerate(problems):
        want, _ = hypergrad.fixed_point_grad(p.step, p.state, p.params, p.state_grad, method=method, max_iter=30)
        for a, b in zip((g[k] for g in got), want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert info.iterations == 30 and not info.diverged


def test_blocks_are_refused_where_they_cannot_apply() -> None:
    p = make_tanh_problem()
    with pytest.raises(ValueError, match="leading block axis"):
        hypergrad.fixed_point_grad(p.step, p.state, p.params, p.state_grad, method="cg", blocks=True)
    stacked = tuple(t.unsqueeze(0) for t in p.state)
    with pytest.raises(ValueError, match="not 'gmres'"):
        hypergrad.fixed_point_grad(torch.func.vmap(p.step), stacked, tuple(t.unsqueeze(0) for t in p.params),
                                   tuple(t.unsqueeze(0) for t in p.state_grad), method="gmres", blocks=True)
