"""Fuzzed solvers (reliability issue #9, section 4).

Random dense operators ``M`` applied as matrix-free products on a tuple of 1-2
tensors of random shapes (rank 0 to 2), in float32 and float64:

* spectral radius below 1: every solver (``linalg.neumann``,
  ``linalg.fixed_point``, ``linalg.cg_normal``, ``linalg.gmres``) agrees with a
  dense float64 solve of ``(I - M) x = b`` within a per-dtype tolerance;
* spectral radius above 1: Neumann and RBP report divergence, and no solver
  returns a wrong answer with ``converged=True``;
* ``fixed_point_grad`` on random shapes, dtypes and (sometimes) bad inputs:
  a clean result or a clean ``ValueError``.

The number of examples per property is in :data:`FUZZ_EXAMPLES` (cited by
``docs/core.md``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hypergrad
from hypergrad import linalg

FUZZ_EXAMPLES = {"convergent": 80, "divergent": 50, "divergent_long": 20, "fixed_point_grad": 60}

SOLVERS = ["neumann", "fixed_point", "cg_normal", "gmres"]
# tol passed to the solver, and the bound checked on the true residual, per dtype
SOLVER_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
CHECK_RESIDUAL = {torch.float32: 1e-4, torch.float64: 1e-10}
DTYPES = st.sampled_from([torch.float32, torch.float64])

shape = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
shapes = st.lists(shape, min_size=1, max_size=2).map(tuple)


def numel(shps) -> int:
    return sum(math.prod(s) for s in shps)


def flat(tree) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(torch.float64) for t in tree])


def unflat(vec: torch.Tensor, shps, dtype) -> tuple[torch.Tensor, ...]:
    out, i = [], 0
    for s in shps:
        n = math.prod(s)
        out.append(vec[i : i + n].reshape(s).to(dtype))
        i += n
    return tuple(out)


def random_operator(n: int, rho: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """A random non-symmetric n x n matrix with spectral radius ``rho``, rounded to ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, dtype=torch.float64, generator=gen)
    r = float(torch.linalg.eigvals(a).abs().max())
    mat = a * (rho / r) if r > 0 else a
    return mat.to(dtype)


def solve(name: str, mat: torch.Tensor, b, shps, **kwargs):
    dtype = b[0].dtype

    def apply(m):
        return lambda v: unflat(m.to(torch.float64) @ flat(v), shps, dtype)

    if name == "neumann":
        return linalg.neumann(apply(mat), b, **kwargs)
    if name == "fixed_point":
        return linalg.fixed_point(apply(mat), b, **kwargs)
    if name == "cg_normal":
        return linalg.cg_normal(apply(mat), apply(mat.T), b, **kwargs)
    return linalg.gmres(apply(mat), b, **kwargs)


def dense(mat: torch.Tensor, b) -> tuple[torch.Tensor, float]:
    """float64 solution of (I - M) x = b and the condition number of I - M."""
    m = mat.to(torch.float64)
    a = torch.eye(m.shape[0], dtype=torch.float64) - m
    return torch.linalg.solve(a, flat(b)), float(torch.linalg.cond(a))


def true_residual(mat: torch.Tensor, x, b) -> float:
    m = mat.to(torch.float64)
    r = flat(x) - m @ flat(x) - flat(b)
    return float(torch.linalg.vector_norm(r) / torch.linalg.vector_norm(flat(b)))


def rhs(shps, seed: int, dtype):
    gen = torch.Generator().manual_seed(seed + 1)
    return tuple(torch.randn(s, dtype=torch.float64, generator=gen).to(dtype) for s in shps)


def max_iter_for(name: str, n: int) -> int:
    return {"neumann": 5000, "fixed_point": 5000, "cg_normal": 20 * n + 50, "gmres": n + 2}[name]


@settings(max_examples=FUZZ_EXAMPLES["convergent"], deadline=None)
@given(
    shps=shapes,
    rho=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**20),
    dtype=DTYPES,
    name=st.sampled_from(SOLVERS),
)
def test_fuzz_convergent_operators_match_dense_solve(shps, rho, seed, dtype, name) -> None:
    n = numel(shps)
    mat = random_operator(n, rho, seed, dtype)
    b = rhs(shps, seed, dtype)
    x, info = solve(name, mat, b, shps, max_iter=max_iter_for(name, n), tol=SOLVER_TOL[dtype])
    assert [t.shape for t in x] == [torch.Size(s) for s in shps]
    assert all(t.dtype == dtype for t in x)
    assert info.converged and not info.diverged, info
    res = true_residual(mat, x, b)
    assert res <= CHECK_RESIDUAL[dtype], (res, info)
    exact, cond = dense(mat, b)
    err = float(torch.linalg.vector_norm(flat(x) - exact) / torch.linalg.vector_norm(exact))
    assert err <= cond * CHECK_RESIDUAL[dtype] * 1.01, (err, cond, info)


@settings(max_examples=FUZZ_EXAMPLES["divergent"], deadline=None)
@given(
    shps=shapes,
    rho=st.floats(1.1, 3.0),
    seed=st.integers(0, 2**20),
    dtype=DTYPES,
    max_iter=st.integers(1, 300),
)
def test_fuzz_divergent_operators_are_reported(shps, rho, seed, dtype, max_iter) -> None:
    n = numel(shps)
    mat = random_operator(n, rho, seed, dtype)
    b = rhs(shps, seed, dtype)
    exact, cond = dense(mat, b)
    for name in SOLVERS:
        mi = min(max_iter, max_iter_for(name, n))
        x, info = solve(name, mat, b, shps, max_iter=mi, tol=SOLVER_TOL[dtype])
        finite = all(bool(torch.isfinite(t).all()) for t in x)
        err = float(torch.linalg.vector_norm(flat(x) - exact) / torch.linalg.vector_norm(exact)) if finite else math.inf
        if info.converged:  # never converged-and-wrong
            assert finite and err <= cond * CHECK_RESIDUAL[dtype] * 1.01, (name, err, cond, info)
        if name in ("neumann", "fixed_point"):
            if max_iter >= 300:
                assert info.diverged, (name, info)
            if info.stop_reason == "nonfinite" or not finite:
                assert info.diverged


@settings(max_examples=FUZZ_EXAMPLES["divergent_long"], deadline=None)
@given(shps=shapes, rho=st.floats(1.1, 3.0), seed=st.integers(0, 2**20), dtype=DTYPES)
def test_fuzz_divergent_long_runs_are_flagged(shps, rho, seed, dtype) -> None:
    """With enough iterations the growth is always visible: diverged=True for Neumann and RBP."""
    n = numel(shps)
    mat = random_operator(n, rho, seed, dtype)
    b = rhs(shps, seed, dtype)
    for name in ("neumann", "fixed_point"):
        _, info = solve(name, mat, b, shps, max_iter=400)
        assert info.diverged and not info.converged, (name, info)


# --------------------------------------------------------------------------- fixed_point_grad
def tanh_step(state, params):
    w, c = params
    h = torch.cat([s.reshape(-1) for s in state])
    out = torch.tanh(w @ h + c)
    parts, i = [], 0
    for s in state:
        parts.append(out[i : i + s.numel()].reshape(s.shape))
        i += s.numel()
    return tuple(parts)


BAD_KINDS = ["none", "shape", "count", "nan", "int"]


@settings(
    max_examples=FUZZ_EXAMPLES["fixed_point_grad"],
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    shps=shapes,
    dtype=DTYPES,
    method=st.sampled_from(hypergrad.method_names("implicit")),
    contraction=st.floats(0.1, 0.9),
    seed=st.integers(0, 2**20),
    bad=st.sampled_from(BAD_KINDS),
)
def test_fuzz_fixed_point_grad_clean_result_or_clean_error(shps, dtype, method, contraction, seed, bad) -> None:
    n = numel(shps)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n, dtype=torch.float64, generator=gen)
    w = (contraction * w / torch.linalg.matrix_norm(w, ord=2)).to(dtype)
    c = (0.3 * torch.randn(n, dtype=torch.float64, generator=gen)).to(dtype)
    params = (w, c)
    state = tuple(torch.zeros(s, dtype=dtype) for s in shps)
    with torch.no_grad():
        for _ in range(300):
            state = tanh_step(state, params)
    grad = tuple(torch.randn(s, dtype=torch.float64, generator=gen).to(dtype) for s in shps)
    if bad == "shape":
        grad = (torch.zeros((*grad[0].shape, 2), dtype=dtype), *grad[1:])
    elif bad == "count":
        grad = (*grad, torch.zeros(2, dtype=dtype))
    elif bad == "nan":
        state = (torch.full_like(state[0], math.nan), *state[1:])
    elif bad == "int":
        state = (state[0].to(torch.int64), *state[1:])
    kwargs = {"max_iter": 60 if method == "gmres" else 400, "tol": SOLVER_TOL[dtype] * 10}
    if bad != "none":
        with pytest.raises(ValueError, match=r"shape|tensors but|NaN or Inf|floating-point"):
            hypergrad.fixed_point_grad(tanh_step, state, params, grad, method=method, **kwargs)
        return
    grads, info = hypergrad.fixed_point_grad(tanh_step, state, params, grad, method=method, **kwargs)
    assert [g.shape for g in grads] == [p.shape for p in params]
    assert all(g.dtype == dtype and bool(torch.isfinite(g).all()) for g in grads)
    assert info.converged and not info.diverged, info
    # dense float64 reference at the same (rounded) state and parameters
    s64 = tuple(s.to(torch.float64) for s in state)
    p64 = tuple(p.to(torch.float64) for p in params)
    jac = torch.autograd.functional.jacobian(
        lambda hv: flat(tanh_step(unflat(hv, shps, torch.float64), p64)), flat(s64)
    )
    z = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - jac.T, flat(grad))
    jac_w = torch.autograd.functional.jacobian(
        lambda wv: flat(tanh_step(s64, (wv.reshape(n, n), p64[1]))), p64[0].reshape(-1)
    )
    ref_w = (jac_w.T @ z).reshape(n, n)
    tol = {torch.float32: 1e-3, torch.float64: 1e-8}[dtype]
    err = float(torch.linalg.vector_norm(grads[0].to(torch.float64) - ref_w) / torch.linalg.vector_norm(ref_w))
    assert err <= tol, (err, info)
