r"""Matrix-free solvers for the adjoint system of recurrent back-propagation.

Every solver here solves

.. math::  (I - M)\,x = b,

given only the product :math:`v \mapsto M v` (and, for :func:`cg_normal`, also
:math:`u \mapsto M^\top u`). In RBP, :math:`M = J_{F,h^*}^\top` and :math:`b =
\partial L / \partial h^*`, so ``x`` is the auxiliary vector ``z`` of Eq. (9).
Vectors are tuples of tensors (see :mod:`hypergrad._tree`); no matrix is ever
formed.

All solvers share one contract::

    x, info = solver(apply_m, b, *, max_iter, tol, ...)

and return a :class:`SolveInfo` whose ``residual`` is the relative residual
:math:`\|(I - M)x - b\| / \|b\|` of the returned ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from hypergrad._tree import (
    Tree,
    tree_axpy,
    tree_block_axpy,
    tree_block_norm,
    tree_dot,
    tree_norm,
    tree_scale,
    tree_sub,
    tree_zeros_like,
)

__all__ = [
    "SOLVERS",
    "LinearOperator",
    "SolveInfo",
    "cg_normal",
    "fixed_point",
    "gmres",
    "neumann",
    "power_iteration",
]

LinearOperator = Callable[[Tree], Tree]


class SolveInfo(NamedTuple):
    """Statistics of one linear solve.

    Attributes:
        method: name of the solver (``"neumann"``, ``"rbp"``, ``"cg"``, ``"gmres"``).
        iterations: iterations performed (Neumann: terms added beyond the first).
        residual: relative residual ``||(I - M) x - b|| / ||b||`` of the returned ``x``.
        converged: ``residual <= tol`` (with ``tol == 0``: ``residual`` below
            ``sqrt(eps)`` of the dtype, i.e. solved to working precision).
        diverged: the iterates became non-finite, or the residual ended above 1
            (worse than ``x = 0``) and above its best value: the iteration grows.
        stop_reason: ``"tol"``, ``"max_iter"``, ``"growth"`` (a Neumann term grew
            and ``stop_on_growth`` was set), ``"nonfinite"`` or ``"breakdown"``.
        residual_history: the residual after each iteration (first entry: the
            starting point), as Python floats.
        spectral_radius: power-iteration estimate of the spectral radius of
            ``M`` from successive iterates (``nan`` when the solver gives none).
        matvecs: number of products with ``M`` or ``M^T`` (the cost).
    """

    method: str
    iterations: int
    residual: float
    converged: bool
    diverged: bool
    stop_reason: str
    residual_history: tuple[float, ...]
    spectral_radius: float
    matvecs: int


def _eps(b: Tree) -> float:
    return float(torch.finfo(b[0].dtype if b else torch.float64).eps)


def _precision_tol(b: Tree) -> float:
    dtype = b[0].dtype if b else torch.float64
    return math.sqrt(torch.finfo(dtype).eps)


def _make_info(
    method: str,
    iterations: int,
    history: list[float],
    stop_reason: str,
    tol: float,
    b: Tree,
    spectral_radius: float,
    matvecs: int,
) -> SolveInfo:
    residual = history[-1]
    finite = math.isfinite(residual)
    converged = finite and residual <= (tol if tol > 0 else _precision_tol(b))
    best_before = min(history[:-1], default=residual)
    diverged = (
        stop_reason == "nonfinite"
        or not finite
        or (residual > 1.0 and residual > best_before * (1 + 1e-12))
    )
    return SolveInfo(
        method=method,
        iterations=iterations,
        residual=residual,
        converged=bool(converged) and not diverged,
        diverged=bool(diverged),
        stop_reason=stop_reason,
        residual_history=tuple(history),
        spectral_radius=spectral_radius,
        matvecs=matvecs,
    )


def _rate(norms: list[float], window: int = 5, eps: float = float(torch.finfo(torch.float64).eps)) -> float:
    """Geometric-mean growth factor of the last ``window`` successive norms.

    Norms that have reached round-off (below ``10 eps`` of the first, with ``eps`` of
    the iterates' dtype) carry no information about the operator and are ignored;
    ``nan`` when too few remain.
    """
    if not norms or not math.isfinite(norms[0]):
        return float("nan")
    floor = norms[0] * 10 * eps
    usable = []
    for x in norms:
        if not math.isfinite(x):
            return float("inf")
        if x <= floor:
            break
        usable.append(x)
    if len(usable) < 2:
        return float("nan")
    m = min(window, len(usable) - 1)
    return (usable[-1] / usable[-1 - m]) ** (1.0 / m)


def _check_common(max_iter: int, tol: float, name: str = "max_iter") -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {max_iter!r}")
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")


def _zero_rhs(method: str, b: Tree) -> tuple[Tree, SolveInfo]:
    return tree_zeros_like(b), SolveInfo(method, 0, 0.0, True, False, "tol", (0.0,), float("nan"), 0)


def neumann(
    apply_m: LinearOperator,
    b: Tree,
    *,
    max_iter: int = 20,
    tol: float = 0.0,
    stop_on_growth: bool = False,
    blocks: bool = False,
) -> tuple[Tree, SolveInfo]:
    r"""Truncated Neumann series, Algorithm 2 (Neumann-RBP), Eq. (16)-(17).

    Returns :math:`g_K = \sum_{k=0}^{K} M^k b` with ``K = max_iter`` terms after
    the first, i.e. the K-th order truncation of :math:`(I - M)^{-1} b`.

    The residual of :math:`g_k` is :math:`\|M^{k+1} b\| / \|b\|`, the norm of
    the next term, so the solver performs ``K + 1`` products and reports the
    exact residual of what it returns. The ratios of successive term norms are
    power iteration on ``M`` and give ``info.spectral_radius`` for free.

    Args:
        apply_m: ``v -> M v``.
        b: right-hand side.
        max_iter: ``K``, the number of terms after :math:`b` itself.
        tol: stop early once the relative residual is ``<= tol`` (0: never).
        stop_on_growth: stop before adding a term whose norm exceeds that of the
            previous term (``stop_reason == "growth"``). Safe-guards a series
            whose operator has spectral radius above 1 (Prop. 3 no longer bounds
            the error there).
        blocks: every tensor of ``b`` carries a leading axis of ``m`` independent
            systems and ``M`` is block diagonal. Each block then has its own ``tol``
            and ``stop_on_growth`` tests (a stopped block's series is frozen while the
            others go on), so the result equals ``m`` separate series. The returned
            :class:`SolveInfo` aggregates the blocks: the largest residual, the most
            terms, the largest spectral-radius estimate, and ``stop_reason="growth"``
            when any block's series was stopped by a growing term.
    """
    _check_common(max_iter, tol)
    if not b:
        return _zero_rhs("neumann", b)
    if not blocks:  # one block: the same series on views with a leading axis of size 1
        up, down = _one_block(b)
        g1, info = neumann(lambda v: up(apply_m(down(v))), up(b), max_iter=max_iter, tol=tol,
                           stop_on_growth=stop_on_growth, blocks=True)
        return down(g1), info
    _check_blocks(b)
    bnorm = tree_block_norm(b)
    if float(bnorm.max()) == 0.0:
        return _zero_rhs("neumann", b)
    safe_bnorm = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    active = bnorm > 0
    g = [bi.clone() for bi in b]
    v = b
    norms = [bnorm]
    residual = torch.zeros_like(bnorm)  # of each block's current sum: the norm of its next term / |b|
    history: list[float] = []  # history[k]: the largest residual of any block after k terms
    reasons: set[str] = set()
    nonfinite = False
    terms = 0
    matvecs = 0
    while True:
        v = apply_m(v)
        matvecs += 1
        vnorm = tree_block_norm(v)
        norms.append(vnorm)
        residual = torch.where(active, vnorm / safe_bnorm, residual)
        history.append(float(residual.max()))
        if not bool(torch.isfinite(vnorm[active]).all()):
            nonfinite = True
            break
        if terms == max_iter:
            reasons.add("max_iter")
            break
        none = torch.zeros_like(active)
        done = active & (residual <= tol) if tol > 0 else none
        grew = active & (vnorm > norms[-2]) if stop_on_growth else none
        reasons.update(r for r, hit in (("tol", done), ("growth", grew)) if bool(hit.any()))
        active = active & ~(done | grew)
        if not bool(active.any()):
            break
        if not bool(active.all()):  # a stopped block's series is frozen: its term is zeroed
            keep = active.to(v[0].dtype)
            v = tuple(vi * keep.reshape((-1,) + (1,) * (vi.dim() - 1)) for vi in v)
        torch._foreach_add_(g, v)  # one call for the tree (the element-wise adds of a loop of add_)
        terms += 1
    if nonfinite:
        stop_reason = "nonfinite"
    elif "growth" in reasons:
        stop_reason = "growth"
    elif "max_iter" in reasons or not reasons:
        stop_reason = "max_iter"
    else:
        stop_reason = "tol"
    eps = _eps(b)
    rates = [_rate([float(n[k]) for n in norms], eps=eps) for k in range(len(bnorm)) if bnorm[k] > 0]
    finite_rates = [r for r in rates if not math.isnan(r)]
    rho = max(finite_rates) if finite_rates else float("nan")
    return tuple(g), _make_info("neumann", terms, history, stop_reason, tol, b, rho, matvecs)


def _one_block(b: Tree) -> tuple[Callable[[Tree], Tree], Callable[[Tree], Tree]]:
    """``(up, down)``: views of a tree with, and without, a leading block axis of size 1."""

    def up(t: Tree) -> Tree:
        return tuple(x.unsqueeze(0) for x in t)

    def down(t: Tree) -> Tree:
        return tuple(x.squeeze(0) for x in t)

    return up, down


def _check_blocks(b: Tree, name: str = "b") -> None:
    if any(t.dim() == 0 for t in b) or len({t.shape[0] for t in b}) != 1:
        raise ValueError(f"blocks=True needs every tensor of {name} to share a leading block axis; got shapes "
                         f"{[tuple(t.shape) for t in b]}")


def _masked_div(num: Tensor, den: Tensor, mask: Tensor) -> Tensor:
    """``num / den`` where ``mask``, 0 elsewhere (never dividing by an unused ``den``)."""
    return torch.where(mask, num / torch.where(mask, den, torch.ones_like(den)), torch.zeros_like(num))


def fixed_point(
    apply_m: LinearOperator,
    b: Tree,
    *,
    max_iter: int = 20,
    tol: float = 0.0,
    init: Tree | None = None,
) -> tuple[Tree, SolveInfo]:
    r"""Fixed-point iteration :math:`x_{i} = M x_{i-1} + b`, Algorithm 1 (original RBP), Eq. (10).

    Starts from ``init`` (zeros by default; Algorithm 1 suggests U[0, 1]).
    The residual of :math:`x_i` equals :math:`\|x_{i+1} - x_i\| / \|b\|`, the
    quantity of Algorithm 1's stopping rule, so ``max_iter`` iterations cost
    ``max_iter + 1`` products (one fewer from a zero start, where
    :math:`x_1 = b` needs none).

    From zero, ``K + 1`` iterations return exactly the ``K``-term Neumann sum
    (Proposition 4).
    """
    _check_common(max_iter, tol)
    bnorm = tree_norm(b)
    if bnorm == 0.0 and init is None:
        return _zero_rhs("rbp", b)
    scale = bnorm if bnorm > 0 else 1.0
    matvecs = 0
    if init is None:
        x = tuple(bi.clone() for bi in b)  # x_1 = M 0 + b
        diffs = [bnorm]
        history = [1.0]
        done = 1
    else:
        x = tuple(t.detach().clone() for t in init)
        diffs, history, done = [], [], 0
    stop_reason = "max_iter"
    while True:
        x_next = tuple(mi + bi for mi, bi in zip(apply_m(x), b))
        matvecs += 1
        diff = tree_norm(tree_sub(x_next, x))
        diffs.append(diff)
        history.append(diff / scale)  # residual of x
        if not math.isfinite(diff):
            stop_reason = "nonfinite"
            break
        if done == max_iter:
            break
        if tol > 0 and history[-1] <= tol:
            stop_reason = "tol"
            break
        x = x_next
        done += 1
    return x, _make_info("rbp", done, history, stop_reason, tol, b, _rate(diffs, eps=_eps(b)), matvecs)


def cg_normal(
    apply_m: LinearOperator,
    apply_mt: LinearOperator,
    b: Tree,
    *,
    max_iter: int = 20,
    tol: float = 0.0,
    blocks: bool = False,
) -> tuple[Tree, SolveInfo]:
    r"""Conjugate gradient on the normal equations (CG-RBP, §4.1).

    With :math:`A = I - M`, solves :math:`A^\top A x = A^\top b`. For RBP,
    :math:`M = J^\top`, so this is the paper's
    :math:`(I - J)(I - J^\top) z = (I - J)\,g`. Implemented as CGLS, the
    numerically stable form that never forms :math:`A^\top A`; each iteration
    costs one product with ``M`` and one with ``M^T``. The condition number is
    squared, so it converges more slowly than Neumann on well-conditioned
    problems, but it does not need the spectral radius of ``M`` below 1.

    With ``blocks=True``, every tensor of ``b`` carries a leading axis of ``m``
    independent systems and ``M`` must be block diagonal (it never mixes them, e.g.
    a ``vmap``-ed map). Each block then gets its own step sizes and its own stopping
    test, so the result equals ``m`` separate solves, computed with ``m`` times larger
    tensor operations. The returned :class:`SolveInfo` aggregates the blocks: the
    residual and its history are the largest relative residual of any block, and
    ``iterations`` the most any block ran.
    """
    _check_common(max_iter, tol)
    if not b:
        return _zero_rhs("cg", b)
    if not blocks:  # one block: the same algorithm on views with a leading axis of size 1
        up, down = _one_block(b)
        x1, info = cg_normal(lambda v: up(apply_m(down(v))), lambda v: up(apply_mt(down(v))), up(b),
                             max_iter=max_iter, tol=tol, blocks=True)
        return down(x1), info
    _check_blocks(b)
    bnorm = tree_block_norm(b)
    if float(bnorm.max()) == 0.0:
        return _zero_rhs("cg", b)
    safe_bnorm = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))

    def a(v: Tree) -> Tree:
        return tree_sub(v, apply_m(v))

    def at(v: Tree) -> Tree:
        return tree_sub(v, apply_mt(v))

    active = bnorm > 0  # a block with b = 0 is solved by x = 0
    x = tree_zeros_like(b)
    r = b
    s = at(r)
    p = s
    gamma = tree_block_norm(s) ** 2
    matvecs = 1
    history = [1.0]
    stop_reason = "max_iter"
    broke = False
    it = 0
    while it < max_iter:
        q = a(p)
        matvecs += 1
        qq = tree_block_norm(q) ** 2
        if not bool(torch.isfinite(qq[active]).all()) or not bool(torch.isfinite(gamma[active]).all()):
            stop_reason = "nonfinite"
            history.append(float("nan"))
            break
        breakdown = active & ((qq == 0) | (gamma == 0))
        broke = broke or bool(breakdown.any())
        active = active & ~breakdown
        if not bool(active.any()):
            stop_reason = "breakdown" if broke else "tol"
            break
        alpha = _masked_div(gamma, qq, active)
        x = tree_block_axpy(alpha, p, x)
        r = tree_block_axpy(-alpha, q, r)
        it += 1
        rel = tree_block_norm(r) / safe_bnorm
        history.append(float(rel.max()))
        if tol > 0:
            active = active & ~(rel <= tol)
            if not bool(active.any()):
                stop_reason = "tol"
                break
        if it == max_iter:
            break
        s = at(r)
        matvecs += 1
        gamma_new = tree_block_norm(s) ** 2
        beta = _masked_div(gamma_new, gamma, active)
        p = tree_block_axpy(beta, p, s)
        gamma = gamma_new
    return x, _make_info("cg", it, history, stop_reason, tol, b, float("nan"), matvecs)


def gmres(
    apply_m: LinearOperator,
    b: Tree,
    *,
    max_iter: int = 20,
    tol: float = 0.0,
) -> tuple[Tree, SolveInfo]:
    r"""GMRES on :math:`(I - M) x = b` (the paper's suggested future work, §4.1).

    Needs only products with ``M`` (no transpose) and, unlike CG-RBP, does not
    square the condition number. It keeps ``max_iter`` basis vectors, so its
    memory grows with the iteration count (restart it by calling again with
    the result subtracted from ``b`` if that matters).
    """
    _check_common(max_iter, tol)
    bnorm = tree_norm(b)
    if bnorm == 0.0:
        return _zero_rhs("gmres", b)
    dtype = b[0].dtype
    basis = [tree_scale(1.0 / bnorm, b)]
    h = torch.zeros(max_iter + 1, max_iter, dtype=torch.float64)
    history = [1.0]
    y = torch.zeros(0, dtype=torch.float64)
    stop_reason = "max_iter"
    k = 0
    for j in range(max_iter):
        w = tree_sub(basis[j], apply_m(basis[j]))
        wnorm = tree_norm(w)
        for i in range(j + 1):  # modified Gram-Schmidt
            hij = tree_dot(w, basis[i])
            h[i, j] = hij
            w = tree_axpy(-hij.to(dtype), basis[i], w)
        hnext = tree_norm(w)
        h[j + 1, j] = hnext
        k = j + 1
        if not math.isfinite(hnext):
            stop_reason = "nonfinite"
            history.append(float("nan"))
            break
        e1 = torch.zeros(k + 1, dtype=torch.float64)
        e1[0] = bnorm
        y = torch.linalg.lstsq(h[: k + 1, :k], e1.unsqueeze(1)).solution.squeeze(1)
        res = float(torch.linalg.vector_norm(h[: k + 1, :k] @ y - e1)) / bnorm
        history.append(res)
        # Happy breakdown: the new direction lies in the Krylov space up to the round-off of
        # the orthogonalisation (relative to the vector itself: the basis is orthonormal, so
        # the scale of b must not enter), or the residual is already at round-off level.
        if hnext <= 1e-12 * wnorm or res <= torch.finfo(dtype).eps:
            stop_reason = "breakdown" if res > (tol or _precision_tol(b)) else "tol"
            break
        if tol > 0 and res <= tol:
            stop_reason = "tol"
            break
        basis.append(tree_scale(1.0 / hnext, w))
    x = tree_zeros_like(b)
    for i in range(y.numel()):
        x = tree_axpy(y[i].to(dtype), basis[i], x)
    return x, _make_info("gmres", k, history, stop_reason, tol, b, float("nan"), k)


def power_iteration(apply_m: LinearOperator, v0: Tree, *, num_iter: int = 10) -> float:
    """Estimate the spectral radius of ``M`` by power iteration from ``v0``.

    Returns the geometric-mean growth factor of the last iterates (``inf``
    when they overflow). Uses only products with ``M``.
    """
    _check_common(num_iter, 0.0, "num_iter")
    v = v0
    n0 = tree_norm(v)
    if n0 == 0.0:
        return 0.0
    norms = [1.0]
    v = tree_scale(1.0 / n0, v)
    log_growth = 0.0
    for _ in range(num_iter):
        w = apply_m(v)
        n = tree_norm(w)
        if not math.isfinite(n):
            return float("inf")
        if n == 0.0:
            return 0.0
        log_growth += math.log(n)
        norms.append(math.exp(log_growth))
        v = tree_scale(1.0 / n, w)
    return _rate(norms)


SOLVERS = ("rbp", "cg", "neumann", "gmres")
