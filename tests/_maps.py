"""Shared test maps and dense references for the core tests.

Two non-linear maps ``F(state, params) -> state`` over tuples of tensors, in
float64:

* :func:`tanh_map`: ``h' = tanh(W vec(h) + U x + b)``, whose state may be a
  tuple of several tensors of any shapes (they are flattened into one vector
  ``vec(h)`` and split back), with ``||W||_2 < 1`` so that it is a contraction;
* :func:`gru_step`: a ``torch.nn.GRUCell`` written functionally (same gate
  order ``r, z, n`` and the same parameter layout), over a batch of inputs.

Dense references (independent of :mod:`hypergrad`):

* :func:`dense_jacobians`: ``J = dF/dh`` and ``dF/dw`` by
  ``torch.autograd.functional.jacobian`` on flattened vectors;
* :func:`exact_grad`: Eq. (8)-(9) by a dense solve of ``(I - J^T) z = g``;
* :func:`solve_forward`: the steady state ``h*`` by fixed-point iteration
  polished with Newton's method (Newton alone for a map that is not a
  contraction), to machine precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Tree = tuple[Tensor, ...]
DT = torch.float64


# --------------------------------------------------------------------------- flatten helpers
def flat(tree: Tree) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tree]) if tree else torch.zeros(0, dtype=DT)


def unflat(vec: Tensor, like: Tree) -> Tree:
    out, i = [], 0
    for t in like:
        n = t.numel()
        out.append(vec[i : i + n].reshape(t.shape))
        i += n
    return tuple(out)


def rel_err(a: Tree | Tensor, b: Tree | Tensor) -> float:
    """``||a - b|| / ||b||`` over whole trees (``||a - b||`` when ``b`` is 0)."""
    fa = flat(a) if isinstance(a, tuple) else a.reshape(-1)
    fb = flat(b) if isinstance(b, tuple) else b.reshape(-1)
    num = float(torch.linalg.vector_norm((fa - fb).to(DT)))
    den = float(torch.linalg.vector_norm(fb.to(DT)))
    return num / den if den > 0 else num


def random_matrix_with_norm(n: int, m: int, norm: float, gen: torch.Generator) -> Tensor:
    a = torch.randn(n, m, dtype=DT, generator=gen)
    return a * (norm / float(torch.linalg.matrix_norm(a, ord=2)))


# --------------------------------------------------------------------------- maps
def tanh_map(state: Tree, params: Tree) -> Tree:
    """``h' = tanh(W vec(h) + U x + b)``; ``params = (W, U, b, x, *unused)``."""
    w, u, b, x = params[:4]
    h = flat(state)
    return unflat(torch.tanh(w @ h + u @ x + b), state)


def gru_step(state: Tree, params: Tree) -> Tree:
    """One ``torch.nn.GRUCell`` step, functionally.

    ``state = (h,)`` with ``h`` of shape ``(B, H)``;
    ``params = (weight_ih, weight_hh, bias_ih, bias_hh, x, *unused)`` with the
    layout of ``torch.nn.GRUCell`` (rows ordered ``r, z, n``) and ``x`` of
    shape ``(B, I)``.
    """
    (h,) = state
    w_ih, w_hh, b_ih, b_hh, x = params[:5]
    gi = x @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return ((1 - z) * n + z * h,)


@dataclass
class Problem:
    """A map, its parameters, its steady state and a loss gradient there."""

    step: Callable[[Tree, Tree], Tree]
    params: Tree
    state: Tree  # h*
    state_grad: Tree  # dL/dh* of loss()
    target: Tree

    def loss(self, state: Tree) -> Tensor:
        """``L(h) = 0.5 ||h - target||^2 + sum(h^3) / 3`` (non-quadratic)."""
        return sum(0.5 * ((s - t) ** 2).sum() + (s**3).sum() / 3 for s, t in zip(state, self.target))

    def loss_grad_at(self, state: Tree) -> Tree:
        """``dL/dh`` of :meth:`loss` at ``state``."""
        return _loss_grad(state, self.target)


def _loss_grad(state: Tree, target: Tree) -> Tree:
    return tuple((s - t) + s**2 for s, t in zip(state, target))


def make_tanh_problem(
    shapes: tuple[tuple[int, ...], ...] = ((5,), (2, 2)),
    *,
    contraction: float = 0.9,
    seed: int = 0,
    n_in: int = 3,
    w: Tensor | None = None,
    unused: bool = False,
    forward_iters: int = 400,
    input_scale: float = 1.0,
) -> Problem:
    """A tanh map with ``||W||_2 = contraction`` (or the given ``W``) at its steady state."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(math.prod(s) for s in shapes)
    if w is None:
        w = random_matrix_with_norm(n, n, contraction, gen)
    u = torch.randn(n, n_in, dtype=DT, generator=gen) * 0.5 * input_scale
    b = torch.randn(n, dtype=DT, generator=gen) * 0.3 * input_scale
    x = torch.randn(n_in, dtype=DT, generator=gen)
    params: Tree = (w, u, b, x)
    if unused:
        params = (*params, torch.randn(2, 3, dtype=DT, generator=gen))
    state0 = tuple(torch.zeros(s, dtype=DT) for s in shapes)
    state = solve_forward(tanh_map, state0, params, iters=forward_iters)
    target = tuple(torch.randn(s, dtype=DT, generator=gen) for s in shapes)
    return Problem(tanh_map, params, state, _loss_grad(state, target), target)


def make_gru_problem(
    *, batch: int = 2, hidden: int = 4, n_in: int = 3, scale: float = 0.3, seed: int = 0, unused: bool = False
) -> Problem:
    """A functional GRU cell with small weights (a contraction) at its steady state."""
    gen = torch.Generator().manual_seed(seed)
    w_ih = torch.randn(3 * hidden, n_in, dtype=DT, generator=gen) * scale
    w_hh = torch.randn(3 * hidden, hidden, dtype=DT, generator=gen) * scale
    b_ih = torch.randn(3 * hidden, dtype=DT, generator=gen) * scale
    b_hh = torch.randn(3 * hidden, dtype=DT, generator=gen) * scale
    x = torch.randn(batch, n_in, dtype=DT, generator=gen)
    params: Tree = (w_ih, w_hh, b_ih, b_hh, x)
    if unused:
        params = (*params, torch.randn(4, dtype=DT, generator=gen))
    state = solve_forward(gru_step, (torch.zeros(batch, hidden, dtype=DT),), params)
    target = (torch.randn(batch, hidden, dtype=DT, generator=gen),)
    return Problem(gru_step, params, state, _loss_grad(state, target), target)


# --------------------------------------------------------------------------- dense references
def dense_jacobians(step: Callable[[Tree, Tree], Tree], state: Tree, params: Tree) -> tuple[Tensor, Tensor]:
    """``(J, dF/dw)``: ``J = dF/dh`` (n x n) and ``dF/dw`` (n x p) at ``(state, params)``."""
    s0 = flat(state).detach()
    p0 = flat(params).detach()

    def f_h(hv: Tensor) -> Tensor:
        return flat(step(unflat(hv, state), tuple(p.detach() for p in params)))

    def f_w(pv: Tensor) -> Tensor:
        return flat(step(tuple(s.detach() for s in state), unflat(pv, params)))

    jac_h = torch.autograd.functional.jacobian(f_h, s0)
    jac_w = torch.autograd.functional.jacobian(f_w, p0)
    return jac_h, jac_w


def state_jacobian(step: Callable[[Tree, Tree], Tree], state: Tree, params: Tree) -> Tensor:
    """``J = dF/dh`` only (cheaper than :func:`dense_jacobians`)."""
    p = tuple(t.detach() for t in params)
    return torch.autograd.functional.jacobian(
        lambda hv: flat(step(unflat(hv, state), p)), flat(state).detach()
    )


def exact_grad(step: Callable[[Tree, Tree], Tree], state: Tree, params: Tree, state_grad: Tree) -> Tree:
    """Eq. (8)-(9) densely: ``z = (I - J^T)^{-1} g``, ``dL/dw = (dF/dw)^T z``."""
    jac, jac_w = dense_jacobians(step, state, params)
    eye = torch.eye(jac.shape[0], dtype=DT)
    z = torch.linalg.solve(eye - jac.T, flat(state_grad))
    return unflat(jac_w.T @ z, params)


def exact_adjoint(step: Callable[[Tree, Tree], Tree], state: Tree, params: Tree, state_grad: Tree) -> Tensor:
    jac, _ = dense_jacobians(step, state, params)
    eye = torch.eye(jac.shape[0], dtype=DT)
    return torch.linalg.solve(eye - jac.T, flat(state_grad))


def spectral_radius(mat: Tensor) -> float:
    return float(torch.linalg.eigvals(mat).abs().max())


def solve_forward(
    step: Callable[[Tree, Tree], Tree],
    state0: Tree,
    params: Tree,
    *,
    iters: int = 400,
    newton: int = 30,
) -> Tree:
    """The steady state ``h* = F(h*)`` to machine precision.

    ``iters`` plain iterations (0 for a map that is not a contraction), then
    ``newton`` Newton steps on ``h - F(h) = 0`` with the dense Jacobian.
    """
    params = tuple(p.detach() for p in params)
    with torch.no_grad():
        state = tuple(s.detach().clone() for s in state0)
        for _ in range(iters):
            state = step(state, params)
    for _ in range(newton):
        with torch.no_grad():
            res = flat(state) - flat(step(state, params))
        if float(res.abs().max()) == 0.0:
            break
        jac = state_jacobian(step, state, params)
        with torch.no_grad():
            delta = torch.linalg.solve(torch.eye(jac.shape[0], dtype=DT) - jac, res)
            state = unflat(flat(state) - delta, state)
    with torch.no_grad():
        final_res = float(torch.linalg.vector_norm(flat(state) - flat(step(state, params))))
    if not final_res <= 1e-12 * max(1.0, float(torch.linalg.vector_norm(flat(state)))):
        raise RuntimeError(f"forward fixed point not found (residual {final_res:.3e})")
    return tuple(s.detach() for s in state)


def fd_directional(
    step: Callable[[Tree, Tree], Tree],
    state0: Tree,
    params: Tree,
    loss: Callable[[Tree], Tensor],
    direction: Tree,
    *,
    eps: float = 1e-5,
    iters: int = 400,
) -> float:
    """Central difference of ``w -> loss(h*(w))`` along ``direction``, re-solving ``h*``."""

    def value(sign: float) -> float:
        p = tuple(pi + sign * eps * di for pi, di in zip(params, direction))
        return float(loss(solve_forward(step, state0, p, iters=iters)))

    return (value(1.0) - value(-1.0)) / (2 * eps)


def saved_numel(fn) -> int:
    """Total number of elements autograd saves for backward while ``fn`` runs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total
