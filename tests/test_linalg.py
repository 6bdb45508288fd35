"""Tests of the matrix-free solvers in :mod:`hypergrad.linalg` against dense linear algebra.

Each solver solves ``(I - M) x = b`` from products with ``M`` only; here ``M``
is a dense float64 matrix applied to a tuple of tensors, so every result has an
independent reference: ``torch.linalg.solve``, an explicit sum of powers, or an
eigen-decomposition.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from hypergrad import linalg
from tests._maps import DT, dense_jacobians, flat, make_tanh_problem, rel_err, unflat

SHAPES = ((4,), (2, 3))  # the tree that carries the vectors: 10 entries in all
N = 10


def operator(mat: Tensor, like: tuple[Tensor, ...]):
    return lambda v: unflat(mat @ flat(v), like)


def rhs(seed: int = 0, shapes=SHAPES) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, dtype=DT, generator=gen) for s in shapes)


def with_spectral_radius(rho: float, n: int = N, seed: int = 0) -> Tensor:
    """A random non-symmetric matrix scaled to spectral radius ``rho``."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, dtype=DT, generator=gen)
    return a * (rho / float(torch.linalg.eigvals(a).abs().max()))


def symmetric_with_eigs(eigs: list[float], seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), dtype=DT, generator=gen))
    return q @ torch.diag(torch.tensor(eigs, dtype=DT)) @ q.T


def true_residual(mat: Tensor, x: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> float:
    r = flat(x) - mat @ flat(x) - flat(b)
    return float(torch.linalg.vector_norm(r) / torch.linalg.vector_norm(flat(b)))


def dense_solution(mat: Tensor, b: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return unflat(torch.linalg.solve(torch.eye(mat.shape[0], dtype=DT) - mat, flat(b)), b)


def run(name: str, mat: Tensor, b, **kwargs):
    """Call solver ``name`` on ``(I - mat) x = b``."""
    apply_m = operator(mat, b)
    if name == "neumann":
        return linalg.neumann(apply_m, b, **kwargs)
    if name == "fixed_point":
        return linalg.fixed_point(apply_m, b, **kwargs)
    if name == "cg_normal":
        return linalg.cg_normal(apply_m, operator(mat.T, b), b, **kwargs)
    if name == "gmres":
        return linalg.gmres(apply_m, b, **kwargs)
    raise AssertionError(name)


SOLVERS = ["neumann", "fixed_point", "cg_normal", "gmres"]
# Settings that run each solver to convergence on a 10x10 system with spectral radius 0.8.
TO_CONVERGENCE = {
    "neumann": {"max_iter": 3000, "tol": 1e-14},
    "fixed_point": {"max_iter": 3000, "tol": 1e-14},
    "cg_normal": {"max_iter": 200, "tol": 1e-14},
    "gmres": {"max_iter": N, "tol": 0.0},
}


# --------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_solver_matches_dense_solve(name: str, seed: int) -> None:
    mat = with_spectral_radius(0.8, seed=seed)
    b = rhs(seed)
    x, info = run(name, mat, b, **TO_CONVERGENCE[name])
    assert [t.shape for t in x] == [t.shape for t in b]
    assert rel_err(x, dense_solution(mat, b)) <= 1e-10
    assert info.converged and not info.diverged
    assert info.residual == pytest.approx(true_residual(mat, x, b), rel=1e-6, abs=1e-13)


@pytest.mark.parametrize("transpose", [False, True])
def test_cg_normal_far_from_symmetric(transpose: bool) -> None:
    """CG on the normal equations does not need a symmetric ``M`` (§4.1)."""
    # 0.97 x rotations by angles near pi/2 plus a strictly upper-triangular (non-normal) part:
    # ||M - M^T|| is more than twice ||M + M^T||.
    blocks = []
    for theta in (1.3, 1.45, 1.55, 1.7, 1.85):
        c, s = math.cos(theta), math.sin(theta)
        blocks.append(torch.tensor([[c, -s], [s, c]], dtype=DT))
    gen = torch.Generator().manual_seed(3)
    mat = 0.97 * torch.block_diag(*blocks) + 0.3 * torch.triu(torch.randn(N, N, dtype=DT, generator=gen), 2)
    q, _ = torch.linalg.qr(torch.randn(N, N, dtype=DT, generator=gen))
    mat = q @ mat @ q.T
    if transpose:  # the same operator seen through its transpose (the RBP case M = J^T)
        mat = mat.T
    assert torch.linalg.matrix_norm(mat - mat.T) > 2.0 * torch.linalg.matrix_norm(mat + mat.T)
    b = rhs(4)
    x, info = run("cg_normal", mat, b, max_iter=500, tol=1e-13)
    assert info.converged and info.stop_reason == "tol"
    assert rel_err(x, dense_solution(mat, b)) <= 1e-9


def test_gmres_needs_only_invertibility() -> None:
    """Spectral radius 1.5: the Neumann series diverges, GMRES and CG-RBP still solve the system."""
    mat = with_spectral_radius(1.5, seed=2)
    assert torch.linalg.svdvals(torch.eye(N, dtype=DT) - mat).min() > 1e-3  # I - M invertible
    b = rhs(2)
    exact = dense_solution(mat, b)
    x, info = run("gmres", mat, b, max_iter=N)
    assert info.converged and rel_err(x, exact) <= 1e-9
    x, info = run("cg_normal", mat, b, max_iter=1000, tol=1e-14)
    assert info.converged and rel_err(x, exact) <= 1e-8


# --------------------------------------------------------------------------- Propositions 3 and 4
@pytest.mark.parametrize("k", [1, 2, 5, 17])
def test_proposition_4_neumann_equals_rbp_from_zero(k: int) -> None:
    """K-term Neumann (Alg. 2) == (K+1)-iteration RBP (Alg. 1) from z0 = 0 == sum_{t<=K} M^t b."""
    mat = with_spectral_radius(0.9, seed=5)
    b = rhs(5)
    g, info_n = run("neumann", mat, b, max_iter=k)
    z, info_r = run("fixed_point", mat, b, max_iter=k + 1)
    explicit = sum(torch.linalg.matrix_power(mat, t) @ flat(b) for t in range(k + 1))
    assert rel_err(g, z) <= 1e-13
    assert rel_err(g, unflat(explicit, b)) <= 1e-13
    assert (info_n.iterations, info_r.iterations) == (k, k + 1)
    assert info_n.matvecs == k + 1 and info_r.matvecs == k + 1
    # One iteration fewer is a different vector: the off-by-one of Prop. 4 is real.
    z_short, _ = run("fixed_point", mat, b, max_iter=k)
    assert rel_err(z_short, g) > 1e-6


def _prop3_matrices():
    problem = make_tanh_problem(shapes=((6,),), contraction=0.95, seed=1)
    jac, _ = dense_jacobians(problem.step, problem.state, problem.params)
    return [("tanh map Jacobian", jac), ("random non-symmetric", with_spectral_radius(0.7, seed=6))]


@pytest.mark.parametrize(("label", "jac"), _prop3_matrices(), ids=["tanh-jacobian", "random"])
def test_proposition_3_error_bound(label: str, jac: Tensor) -> None:
    r"""||sum_{t<=K} J^t - (I - J)^{-1}|| <= ||(I - J)^{-1}|| ||J||^{K+1}, and for the solve of Eq. (9)."""
    n = jac.shape[0]
    eye = torch.eye(n, dtype=DT)
    inv = torch.linalg.inv(eye - jac)
    norm_j = float(torch.linalg.matrix_norm(jac, ord=2))
    norm_inv = float(torch.linalg.matrix_norm(inv, ord=2))
    b = (torch.randn(n, dtype=DT, generator=torch.Generator().manual_seed(7)),)
    z_exact = inv.T @ b[0]  # the adjoint z = (I - J^T)^{-1} b
    partial = torch.zeros_like(jac)
    power = eye.clone()
    for k in range(40):
        partial = partial + power  # sum_{t=0}^{k} J^t
        power = power @ jac  # J^{k+1}
        err = float(torch.linalg.matrix_norm(partial - inv, ord=2))
        bound = norm_inv * norm_j ** (k + 1)
        assert err <= bound * (1 + 1e-10) + 1e-13, (label, k, err, bound)
        # the identity behind the proof: S_K - (I - J)^{-1} = -(I - J)^{-1} J^{K+1}
        assert torch.allclose(partial - inv, -inv @ power, rtol=0, atol=1e-12)
        # ... and the same bound for the vector linalg.neumann returns (M = J^T)
        zk, _ = linalg.neumann(operator(jac.T, b), b, max_iter=k) if k >= 1 else ((b[0],), None)
        zerr = float(torch.linalg.vector_norm(zk[0] - z_exact))
        assert zerr <= bound * float(torch.linalg.vector_norm(b[0])) * (1 + 1e-10) + 1e-13


# --------------------------------------------------------------------------- info fields
@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("max_iter", [1, 3, 8])
def test_reported_residual_is_the_true_residual(name: str, max_iter: int) -> None:
    """``info.residual`` is ||(I - M) x - b|| / ||b|| of the returned x, also before convergence."""
    mat = with_spectral_radius(0.85, seed=8)
    b = rhs(8)
    x, info = run(name, mat, b, max_iter=max_iter)
    true = true_residual(mat, x, b)
    assert info.residual == pytest.approx(true, rel=1e-9, abs=1e-14)
    assert info.residual_history[-1] == info.residual
    assert len(info.residual_history) == info.iterations + 1
    assert info.converged == (true <= math.sqrt(torch.finfo(DT).eps))


@pytest.mark.parametrize("name", SOLVERS)
def test_tol_stops_early(name: str) -> None:
    mat = with_spectral_radius(0.8, seed=9)
    b = rhs(9)
    # GMRES is exact after N = 10 steps here, so give it a looser tolerance to stop before that;
    # it also allocates a (max_iter + 1) x max_iter Hessenberg matrix up front: keep max_iter small.
    tol, max_iter = (1e-2, 50) if name == "gmres" else (1e-6, 5000)
    x, info = run(name, mat, b, max_iter=max_iter, tol=tol)
    assert info.stop_reason == "tol"
    assert info.converged and info.residual <= tol
    assert info.iterations < (N if name == "gmres" else 200)
    assert true_residual(mat, x, b) <= tol * (1 + 1e-6)
    # With tol=0 the same solver runs all of max_iter (Krylov methods may stop earlier on an
    # exhausted Krylov space, here after N = 10 steps).
    _, info0 = run(name, mat, b, max_iter=info.iterations + 3)
    assert info0.iterations == min(info.iterations + 3, N if name == "gmres" else 10**9)
    assert info0.residual <= info.residual
    if name in ("neumann", "fixed_point"):
        assert info0.stop_reason == "max_iter"


def test_spectral_radius_estimate_symmetric() -> None:
    eigs = [0.9, -0.5, 0.4, 0.3, -0.2, 0.1, 0.05, 0.0, -0.01, 0.2]
    mat = symmetric_with_eigs(eigs)
    b = rhs(10)
    _, info_n = run("neumann", mat, b, max_iter=150)
    _, info_r = run("fixed_point", mat, b, max_iter=150)
    assert info_n.spectral_radius == pytest.approx(0.9, abs=2e-3)
    assert info_r.spectral_radius == pytest.approx(0.9, abs=2e-3)
    assert linalg.power_iteration(operator(mat, b), b, num_iter=150) == pytest.approx(0.9, abs=2e-3)
    # negative dominant eigenvalue: the spectral radius is its modulus
    neg = symmetric_with_eigs([-e for e in eigs])
    assert linalg.power_iteration(operator(neg, b), b, num_iter=150) == pytest.approx(0.9, abs=2e-3)
    # CG and GMRES give no estimate
    assert math.isnan(run("cg_normal", mat, b, max_iter=5)[1].spectral_radius)
    assert math.isnan(run("gmres", mat, b, max_iter=5)[1].spectral_radius)


def test_power_iteration_edge_cases() -> None:
    b = rhs(11)
    big = symmetric_with_eigs([1.5, 0.2, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert linalg.power_iteration(operator(big, b), b, num_iter=100) == pytest.approx(1.5, abs=1e-3)
    assert linalg.power_iteration(operator(big, b), tuple(torch.zeros_like(t) for t in b)) == 0.0
    assert linalg.power_iteration(lambda v: tuple(torch.zeros_like(t) for t in v), b) == 0.0
    huge = torch.eye(N, dtype=DT) * 1e200
    assert linalg.power_iteration(operator(huge, b), b, num_iter=5) == math.inf


@pytest.mark.parametrize("name", SOLVERS)
def test_float32_residual_floor(name: str) -> None:
    """The reported residual comes from each solver's recurrence; in float32 the true residual
    floors at round-off (~1e-7 x conditioning), so a tol below that is met only on paper.
    Documented in docs/core.md; here: whatever is claimed, the true residual is at round-off."""
    mat = with_spectral_radius(0.9, seed=3).to(torch.float32)
    b = tuple(t.to(torch.float32) for t in rhs(3))
    max_iter = N + 4 if name == "gmres" else 5000

    def apply(m):
        return lambda v: unflat((m.to(DT) @ flat(v).to(DT)).to(torch.float32), b)

    kwargs = {"max_iter": max_iter, "tol": 1e-10}
    if name == "cg_normal":
        x, info = linalg.cg_normal(apply(mat), apply(mat.T), b, **kwargs)
    else:
        x, info = getattr(linalg, name)(apply(mat), b, **kwargs)
    true = true_residual(mat.to(DT), tuple(t.to(DT) for t in x), tuple(t.to(DT) for t in b))
    assert true <= 1e-5
    assert not info.diverged


# --------------------------------------------------------------------------- failure reporting
@pytest.mark.parametrize("name", ["neumann", "fixed_point"])
def test_spectral_radius_above_one_is_reported(name: str) -> None:
    mat = with_spectral_radius(1.2, seed=12)
    b = rhs(12)
    x, info = run(name, mat, b, max_iter=60)
    assert info.diverged and not info.converged
    assert info.spectral_radius > 1.0
    assert rel_err(x, dense_solution(mat, b)) > 1.0  # the answer is indeed wrong


@pytest.mark.parametrize("name", SOLVERS)
def test_overflow_is_nonfinite(name: str) -> None:
    mat = with_spectral_radius(1e30, seed=13)
    b = rhs(13)
    x, info = run(name, mat, b, max_iter=40)
    if name in ("neumann", "fixed_point"):
        assert info.stop_reason == "nonfinite"
        assert info.diverged and not info.converged
    else:  # Krylov methods normalise their iterates: no overflow, and a solution is a solution
        assert info.converged and not info.diverged
        assert rel_err(x, dense_solution(mat, b)) <= 1e-8


def test_stop_on_growth() -> None:
    mat = symmetric_with_eigs([1.3, 0.5, 0.2, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    b = rhs(14)
    _, grown = run("neumann", mat, b, max_iter=100, stop_on_growth=True)
    assert grown.stop_reason == "growth"
    assert grown.iterations < 100 and not grown.converged
    _, full = run("neumann", mat, b, max_iter=100)
    assert full.stop_reason == "max_iter" and full.diverged
    # A convergent series never grows: stop_on_growth changes nothing
    sym = symmetric_with_eigs([0.8, 0.5, 0.2, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, -0.3])
    x1, i1 = run("neumann", sym, b, max_iter=50, stop_on_growth=True)
    x2, _ = run("neumann", sym, b, max_iter=50)
    assert i1.stop_reason == "max_iter" and rel_err(x1, x2) == 0.0


def test_non_normal_transient_is_reported_honestly() -> None:
    """rho(M) = 0.5 but ||M|| = 10: the residual first jumps above 1. A short run is not
    converged (residual ~10, reported honestly); diverged stays False because the residual is
    already decreasing, not growing. A long run converges."""
    mat = torch.tensor([[0.5, 10.0], [0.0, 0.5]], dtype=DT)
    b = (torch.tensor([0.0, 1.0], dtype=DT),)
    x1, short = run("neumann", mat, b, max_iter=1)
    assert not short.converged and not short.diverged
    assert short.residual == pytest.approx(true_residual(mat, x1, b), rel=1e-12) and short.residual > 1
    x, long = run("neumann", mat, b, max_iter=200, tol=1e-14)
    assert long.converged and not long.diverged
    assert rel_err(x, dense_solution(mat, b)) <= 1e-12


def test_singular_system_is_not_converged() -> None:
    """M = I: I - M = 0. No solver may claim convergence."""
    eye = torch.eye(N, dtype=DT)
    b = rhs(15)
    for name in SOLVERS:
        _, info = run(name, eye, b, max_iter=20)
        assert not info.converged, name
        assert info.residual >= 1.0 - 1e-12, name


@pytest.mark.parametrize("name", SOLVERS)
def test_zero_rhs(name: str) -> None:
    mat = with_spectral_radius(0.5)
    b = tuple(torch.zeros(s, dtype=DT) for s in SHAPES)
    x, info = run(name, mat, b, max_iter=5)
    assert all(bool((t == 0).all()) for t in x)
    assert info.converged and info.residual == 0.0 and info.matvecs == 0


def test_fixed_point_from_init() -> None:
    mat = with_spectral_radius(0.7, seed=16)
    b = rhs(16)
    init = rhs(17)
    x, info = linalg.fixed_point(operator(mat, b), b, max_iter=2000, tol=1e-14, init=init)
    assert info.converged and rel_err(x, dense_solution(mat, b)) <= 1e-10
    # from a nonzero init, 1 iteration is x_1 = M init + b and its residual is measured exactly
    x1, info1 = linalg.fixed_point(operator(mat, b), b, max_iter=1, init=init)
    assert rel_err(x1, unflat(mat @ flat(init) + flat(b), b)) <= 1e-15
    assert info1.residual == pytest.approx(true_residual(mat, x1, b), rel=1e-12)


# --------------------------------------------------------------------------- bad input
BAD_INPUTS = [
    ({"max_iter": 0}, r"max_iter must be an integer >= 1, got 0"),
    ({"max_iter": -3}, r"max_iter must be an integer >= 1, got -3"),
    ({"max_iter": 2.5}, r"max_iter must be an integer >= 1, got 2\.5"),
    ({"max_iter": True}, r"max_iter must be an integer >= 1, got True"),
    ({"tol": -1e-3}, r"tol must be a finite number >= 0, got -0\.001"),
    ({"tol": float("nan")}, r"tol must be a finite number >= 0, got nan"),
    ({"tol": float("inf")}, r"tol must be a finite number >= 0, got inf"),
    ({"tol": "1e-3"}, r"tol must be a finite number >= 0, got '1e-3'"),
]


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize(("kwargs", "match"), BAD_INPUTS)
def test_bad_input(name: str, kwargs: dict, match: str) -> None:
    mat = with_spectral_radius(0.5)
    with pytest.raises(ValueError, match=match):
        run(name, mat, rhs(), **kwargs)


def test_power_iteration_bad_num_iter_names_num_iter() -> None:
    b = rhs()
    with pytest.raises(ValueError, match=r"num_iter"):
        linalg.power_iteration(operator(with_spectral_radius(0.5), b), b, num_iter=0)


def test_power_iteration_bad_num_iter_is_value_error() -> None:
    b = rhs()
    with pytest.raises(ValueError, match=r">= 1, got 0"):
        linalg.power_iteration(operator(with_spectral_radius(0.5), b), b, num_iter=0)


@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e8])
def test_gmres_exhausts_the_krylov_space_at_any_scale_of_b(scale: float) -> None:
    # An N x N system: GMRES is exact after at most N steps whatever the norm of b, and stops
    # there (a breakdown test against |b| stopped too early for large b and never for small b).
    mat = with_spectral_radius(0.8, seed=9)
    b = tuple(scale * t for t in rhs(9))
    x, info = run("gmres", mat, b, max_iter=N + 5)
    assert info.iterations <= N
    assert info.converged
    assert true_residual(mat, x, b) <= 1e-10


# ---------------------------------------------------------------------- block-diagonal CG
def _block_operator(mats: list[Tensor], like: tuple[Tensor, ...]):
    """A block-diagonal operator: block k of every tensor is multiplied by ``mats[k]``."""

    def apply(v):
        rows = [flat(tuple(t[k] for t in v)) for k in range(len(mats))]
        out = [unflat(m @ r, tuple(t[0] for t in like)) for m, r in zip(mats, rows)]
        return tuple(torch.stack(parts) for parts in zip(*out))

    return apply


@pytest.mark.parametrize("tol", [0.0, 1e-6])
def test_block_cg_equals_separate_solves(tol: float) -> None:
    # blocks of very different difficulty (they converge at different iterations with tol > 0),
    # non-symmetric, one block with b = 0, and one with spectral radius above 1 (CG does not need < 1)
    mats = [with_spectral_radius(r, seed=s) for r, s in ((0.3, 1), (0.95, 2), (0.6, 3), (1.4, 4))]
    singles = [rhs(10 + k) for k in range(4)]
    singles[2] = tuple(torch.zeros_like(t) for t in singles[2])
    b = tuple(torch.stack(parts) for parts in zip(*singles))
    max_iter = 40
    x, info = linalg.cg_normal(_block_operator(mats, b), _block_operator([m.T for m in mats], b), b,
                               max_iter=max_iter, tol=tol, blocks=True)
    worst, most = 0.0, 0
    for k, (mat, bk) in enumerate(zip(mats, singles)):
        xk, ik = run("cg_normal", mat, bk, max_iter=max_iter, tol=tol)
        # the same arithmetic per block; only the reduction order of the norms differs, which CG
        # (condition number squared, a block with radius 1.4) amplifies to ~1e-9
        for a, c in zip((t[k] for t in x), xk):
            torch.testing.assert_close(a, c, rtol=1e-7, atol=1e-10)
        worst, most = max(worst, ik.residual), max(most, ik.iterations)
    assert info.residual == pytest.approx(worst, rel=1e-6, abs=1e-15)
    assert info.iterations == most
    if tol > 0:
        assert info.stop_reason == "tol" and info.converged


def test_block_cg_is_refused_without_a_common_leading_axis() -> None:
    b = (torch.ones(3, 2, dtype=DT), torch.ones(4, dtype=DT))
    with pytest.raises(ValueError, match="leading block axis"):
        linalg.cg_normal(lambda v: v, lambda v: v, b, blocks=True)


@pytest.mark.parametrize(("tol", "stop_on_growth"), [(0.0, True), (1e-4, True), (1e-4, False), (0.0, False)])
def test_block_neumann_equals_separate_series(tol: float, stop_on_growth: bool) -> None:
    # a fast block, a slow one, a zero block, and one with spectral radius > 1 whose terms grow
    mats = [with_spectral_radius(r, seed=s) for r, s in ((0.3, 1), (0.9, 2), (0.6, 3), (1.3, 4))]
    singles = [rhs(20 + k) for k in range(4)]
    singles[2] = tuple(torch.zeros_like(t) for t in singles[2])
    b = tuple(torch.stack(parts) for parts in zip(*singles))
    x, info = linalg.neumann(_block_operator(mats, b), b, max_iter=25, tol=tol, stop_on_growth=stop_on_growth,
                             blocks=True)
    infos = []
    for k, (mat, bk) in enumerate(zip(mats, singles)):
        xk, ik = run("neumann", mat, bk, max_iter=25, tol=tol, stop_on_growth=stop_on_growth)
        infos.append(ik)
        for a, c in zip((t[k] for t in x), xk):
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    assert info.iterations == max(i.iterations for i in infos)
    assert info.residual == pytest.approx(max(i.residual for i in infos), rel=1e-10)
    if stop_on_growth and any(i.stop_reason == "growth" for i in infos):
        assert info.stop_reason == "growth"
    rhos = [i.spectral_radius for i in infos if not math.isnan(i.spectral_radius)]
    assert info.spectral_radius == pytest.approx(max(rhos), rel=1e-9)
