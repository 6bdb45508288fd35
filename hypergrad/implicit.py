r"""Gradients through the steady state of a recurrent map (RBP, §3-4).

For a convergent map :math:`h_{t+1} = F(h_t, w)` (Eq. 1) with steady state
:math:`h^* = F(h^*, w)` (Eq. 2), the implicit function theorem gives (Eq. 8)

.. math::
    \frac{\partial L}{\partial w} = z^\top \frac{\partial F(h^*, w)}{\partial w},
    \qquad (I - J^\top) z = \frac{\partial L}{\partial h^*}  \quad\text{(Eq. 9)},

with :math:`J = \partial F / \partial h` at :math:`h^*`. :func:`fixed_point_grad`
builds the graph of ONE application of ``F`` at ``h*``, solves for ``z`` with
vector-Jacobian products :math:`J^\top v` (and Jacobian-vector products
:math:`J u` for CG-RBP) on that graph, and pulls ``z`` back to the parameters.
Its memory does not depend on how many steps produced ``h*``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from hypergrad import linalg
from hypergrad._tree import Tree, as_tree, tree_isfinite
from hypergrad.linalg import SolveInfo

__all__ = ["METHODS", "FixedPoint", "StepFn", "fixed_point_grad", "solve_adjoint"]

StepFn = Callable[[Tree, Tree], Tree | Tensor]
METHODS = linalg.SOLVERS  # ("rbp", "cg", "neumann", "gmres")
JvpMode = Literal["double_vjp", "forward"]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def solve_adjoint(
    method: str,
    vjp: linalg.LinearOperator,
    b: Tree,
    *,
    max_iter: int,
    tol: float = 0.0,
    jvp: linalg.LinearOperator | None = None,
    init: Tree | str | None = None,
    stop_on_growth: bool = False,
    generator: torch.Generator | None = None,
    blocks: bool = False,
) -> tuple[Tree, SolveInfo]:
    r"""Solve :math:`(I - J^\top) z = b` by ``method`` given ``vjp(v) = J^T v``.

    ``jvp(u) = J u`` is needed by ``"cg"`` only. ``init`` applies to ``"rbp"``:
    ``None``/``"zeros"`` or ``"uniform"`` (U[0, 1], Algorithm 1), or a tree.
    ``stop_on_growth`` applies to ``"neumann"``. ``blocks``: see :func:`fixed_point_grad`.
    """
    _check_method(method)
    if blocks and method == "gmres":
        raise ValueError("blocks=True is supported by methods 'cg', 'neumann' and 'rbp', not 'gmres'")
    if method == "neumann":
        return linalg.neumann(vjp, b, max_iter=max_iter, tol=tol, stop_on_growth=stop_on_growth, blocks=blocks)
    if method == "rbp":
        start: Tree | None
        if init is None or (isinstance(init, str) and init == "zeros"):
            start = None
        elif isinstance(init, str) and init == "uniform":
            start = tuple(
                torch.rand(t.shape, dtype=t.dtype, generator=generator).to(t.device) for t in b
            )
        elif isinstance(init, str):
            raise ValueError(f"unknown init {init!r}; expected 'zeros', 'uniform' or a tuple of tensors")
        else:
            start = as_tree(init, "init")
            _check_like(start, b, "init", "state_grad")
        return linalg.fixed_point(vjp, b, max_iter=max_iter, tol=tol, init=start)
    if method == "cg":
        if jvp is None:
            raise ValueError("method 'cg' needs a Jacobian-vector product (jvp)")
        return linalg.cg_normal(vjp, jvp, b, max_iter=max_iter, tol=tol, blocks=blocks)
    return linalg.gmres(vjp, b, max_iter=max_iter, tol=tol)


def _check_like(a: Tree, b: Tree, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} tensors but {name_b} has {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise ValueError(
                f"{name_a}[{i}] has shape {tuple(x.shape)} but {name_b}[{i}] has shape {tuple(y.shape)}"
            )


def _check_float(tree: Tree, name: str) -> None:
    for i, t in enumerate(tree):
        if not t.is_floating_point():
            raise ValueError(f"{name}[{i}] must be a floating-point tensor, got {t.dtype}")


def _fill_none(grads: Sequence[Tensor | None], like: Tree) -> Tree:
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, like))


class _OneStepGraph:
    """The graph of ``out = F(h*, w)`` and the Jacobian products on it."""

    def __init__(self, step: StepFn, state: Tree, params: Tree, jvp_mode: JvpMode) -> None:
        self.step = step
        self.jvp_mode = jvp_mode
        self.state = tuple(s.detach().requires_grad_(True) for s in state)
        self.params = tuple(p.detach().requires_grad_(True) for p in params)
        with torch.enable_grad():
            out = as_tree(step(self.state, self.params), "step(state, params)")
        _check_like(out, self.state, "step(state, params)", "state")
        self.out = out
        # autograd.grad needs outputs that require grad; the rest have J = 0.
        self._live = [i for i, o in enumerate(out) if o.requires_grad]
        self._dual: tuple[Tree, Tree] | None = None

    def vjp(self, v: Tree) -> Tree:
        """:math:`J^\\top v` by one reverse-mode pass over the one-step graph."""
        if not self._live:
            return tuple(torch.zeros_like(s) for s in self.state)
        grads = torch.autograd.grad(
            [self.out[i] for i in self._live],
            self.state,
            [v[i] for i in self._live],
            retain_graph=True,
            allow_unused=True,
        )
        return _fill_none(grads, self.state)

    def jvp(self, u: Tree) -> Tree:
        """:math:`J u`, by forward mode or by differentiating a vjp (double-vjp trick)."""
        if self.jvp_mode == "forward":
            params = tuple(p.detach() for p in self.params)
            primal = tuple(s.detach() for s in self.state)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
                _, tangent = torch.func.jvp(
                    lambda *s: as_tree(self.step(tuple(s), params)), primal, tuple(u)
                )
            return tuple(tangent)
        if not self._live:
            return tuple(torch.zeros_like(s) for s in self.state)
        if self._dual is None:
            dummy = tuple(torch.zeros_like(self.out[i]).requires_grad_(True) for i in self._live)
            with torch.enable_grad():
                jt_dummy = torch.autograd.grad(
                    [self.out[i] for i in self._live],
                    self.state,
                    dummy,
                    retain_graph=True,
                    create_graph=True,
                    allow_unused=True,
                )
            self._dual = (dummy, tuple(j for j in jt_dummy if j is not None))
            self._dual_idx = [k for k, j in enumerate(jt_dummy) if j is not None]
        dummy, jt_dummy = self._dual
        if not jt_dummy:
            return tuple(torch.zeros_like(s) for s in self.state)
        ju = torch.autograd.grad(
            jt_dummy,
            dummy,
            [u[k] for k in self._dual_idx],
            retain_graph=True,
            allow_unused=True,
        )
        out = [torch.zeros_like(s) for s in self.state]
        for pos, i in enumerate(self._live):
            if ju[pos] is not None:
                out[i] = ju[pos]
        return tuple(out)

    def pull_back(self, z: Tree) -> Tree:
        """:math:`z^\\top \\partial F / \\partial w` (line 6 of Algorithms 1 and 2)."""
        if not self._live or not self.params:
            return tuple(torch.zeros_like(p) for p in self.params)
        grads = torch.autograd.grad(
            [self.out[i] for i in self._live],
            self.params,
            [z[i] for i in self._live],
            allow_unused=True,
        )
        return _fill_none(grads, self.params)


def fixed_point_grad(
    step: StepFn,
    state: Tensor | Sequence[Tensor],
    params: Tensor | Sequence[Tensor],
    state_grad: Tensor | Sequence[Tensor],
    *,
    method: str = "neumann",
    max_iter: int = 20,
    tol: float = 0.0,
    init: Tree | str | None = None,
    jvp: JvpMode = "double_vjp",
    stop_on_growth: bool = False,
    generator: torch.Generator | None = None,
    blocks: bool = False,
) -> tuple[Tree, SolveInfo]:
    r"""Gradient of a loss w.r.t. ``params`` through the steady state of ``step``.

    Implements Eq. (8): :math:`\partial L/\partial w = z^\top \partial F/\partial w`
    with :math:`z` from Eq. (9), solved by

    * ``"rbp"``: Algorithm 1, fixed-point iteration :math:`z \leftarrow J^\top z + g`;
    * ``"cg"``: CG-RBP, conjugate gradient on the normal equations
      :math:`(I - J)(I - J^\top) z = (I - J) g` (§4.1);
    * ``"neumann"``: Algorithm 2, the ``max_iter``-term Neumann series (Eq. 17);
    * ``"gmres"``: GMRES on :math:`(I - J^\top) z = g` (beyond the paper).

    Args:
        step: the map ``F(state, params) -> new_state`` (Eq. 1); tuples of tensors.
        state: the (approximate) steady state :math:`h^*`.
        params: the parameters ``w`` to differentiate with respect to.
        state_grad: :math:`\partial L / \partial h^*`, shaped like ``state``.
        method: one of ``"rbp"``, ``"cg"``, ``"neumann"``, ``"gmres"``.
        max_iter: iterations of the solver (Neumann: terms after the first).
        tol: stop when the relative residual is ``<= tol`` (0: run ``max_iter``).
        init: start of ``"rbp"``: ``None`` (zeros), ``"uniform"`` or a tuple.
        jvp: how CG-RBP forms :math:`J u`: ``"double_vjp"`` (differentiates a
            vjp; works for any twice-differentiable ``step``) or ``"forward"``
            (``torch.func.jvp``; needs a ``step`` that supports forward mode).
        stop_on_growth: Neumann only: stop the series when a term grows.
        generator: random generator for ``init="uniform"``.
        blocks: every tensor of ``state`` (and ``state_grad``) carries a leading axis
            of independent systems, and ``step`` never mixes them (a block-diagonal
            Jacobian, e.g. ``M`` stacked minibatches under ``torch.func.vmap``). CG-RBP
            then takes per-block step sizes and stopping tests, and Neumann-RBP per-block
            ``tol`` and ``stop_on_growth`` tests, so the result equals separate solves.
            RBP's iteration acts on each block alike anyway (its ``tol`` watches the
            whole stack). Not for ``"gmres"``. ``info`` aggregates the blocks.

    Returns:
        ``(grads, info)``: a tuple aligned with ``params`` (zeros for a parameter
        that ``step`` does not use) and a :class:`~hypergrad.linalg.SolveInfo`.

    Example:
        >>> import torch, hypergrad
        >>> W = torch.eye(2, dtype=torch.float64) * 0.5
        >>> step = lambda s, p: (torch.tanh(p[0] @ s[0] + 1.0),)
        >>> h = (torch.zeros(2, dtype=torch.float64),)
        >>> for _ in range(100):
        ...     h = step(h, (W,))
        >>> grads, info = hypergrad.fixed_point_grad(
        ...     step, h, (W,), (torch.ones(2, dtype=torch.float64),), method="neumann", max_iter=60)
        >>> info.converged
        True
    """
    _check_method(method)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if init is not None and method != "rbp":
        raise ValueError(f"init applies to method 'rbp' only, not {method!r}")
    if stop_on_growth and method != "neumann":
        raise ValueError(f"stop_on_growth applies to method 'neumann' only, not {method!r}")
    if jvp not in ("double_vjp", "forward"):
        raise ValueError(f"unknown jvp mode {jvp!r}; expected 'double_vjp' or 'forward'")
    state_t = as_tree(state, "state")
    params_t = as_tree(params, "params")
    grad_t = as_tree(state_grad, "state_grad")
    if not state_t:
        raise ValueError("state must hold at least one tensor")
    _check_float(state_t, "state")
    _check_float(params_t, "params")
    _check_like(grad_t, state_t, "state_grad", "state")
    if blocks:
        linalg._check_blocks(state_t, "state")
    if not tree_isfinite(state_t):
        raise ValueError("state contains NaN or Inf; the fixed point is not finite")
    if not tree_isfinite(grad_t):
        raise ValueError("state_grad contains NaN or Inf")
    if not callable(step):
        raise TypeError(f"step must be callable, got {type(step).__name__}")

    graph = _OneStepGraph(step, state_t, params_t, jvp)
    b = tuple(g.detach().to(s.dtype) for g, s in zip(grad_t, state_t))
    z, info = solve_adjoint(
        method,
        graph.vjp,
        b,
        max_iter=max_iter,
        tol=tol,
        jvp=graph.jvp,
        init=init,
        stop_on_growth=stop_on_growth,
        generator=generator,
        blocks=blocks,
    )
    grads = graph.pull_back(tuple(t.detach() for t in z))
    return tuple(g.detach() for g in grads), info


class FixedPoint(nn.Module):
    r"""A differentiable fixed-point layer :math:`h^* = f(h^*, x)` (DEQ-style).

    The forward pass iterates ``h <- f(h, x)`` without a graph until the
    relative change is below ``forward_tol`` or ``forward_max_iter`` steps ran.
    It then applies ``f`` once more with a graph, and registers a hook that,
    during ``backward``, replaces the incoming gradient :math:`g` by the
    solution :math:`z` of Eq. (9) computed by ``method``. ``loss.backward()``
    therefore yields the RBP gradient for the parameters of ``f`` and for any
    tensor ``x`` depends on. Memory is that of one application of ``f``.

    After each backward pass, ``backward_info`` holds the solver's
    :class:`~hypergrad.linalg.SolveInfo`; after each forward pass,
    ``forward_steps`` and ``forward_residual`` describe the iteration.

    Args:
        f: a module (or callable) ``f(h, *inputs) -> h`` with a single-tensor state.
        method: ``"neumann"``, ``"rbp"``, ``"cg"`` or ``"gmres"``.
        max_iter: iterations of the backward solver.
        tol: tolerance of the backward solver.
        forward_max_iter: maximum forward iterations.
        forward_tol: relative change ``||h_{t+1} - h_t|| / ||h_t||`` to stop at.
    """

    def __init__(
        self,
        f: nn.Module | Callable[..., Tensor],
        *,
        method: str = "neumann",
        max_iter: int = 20,
        tol: float = 0.0,
        forward_max_iter: int = 100,
        forward_tol: float = 1e-6,
    ) -> None:
        super().__init__()
        _check_method(method)
        linalg._check_common(forward_max_iter, 0.0, "forward_max_iter")
        if isinstance(forward_tol, bool) or not isinstance(forward_tol, (int, float)) or not (
            math.isfinite(forward_tol) and forward_tol >= 0
        ):
            raise ValueError(f"forward_tol must be a finite number >= 0, got {forward_tol!r}")
        linalg._check_common(max_iter, tol)
        self.f = f
        self.method = method
        self.max_iter = max_iter
        self.tol = tol
        self.forward_max_iter = forward_max_iter
        self.forward_tol = forward_tol
        self.backward_info: SolveInfo | None = None
        self.forward_steps = 0
        self.forward_residual = float("nan")

    def forward(self, h0: Tensor, *inputs: Tensor) -> Tensor:
        h = h0
        steps, change = 0, float("inf")
        with torch.no_grad():
            while steps < self.forward_max_iter and change > self.forward_tol:
                h_next = self.f(h, *inputs)
                change = float(torch.linalg.vector_norm(h_next - h)) / max(
                    float(torch.linalg.vector_norm(h)), 1e-30
                )
                h = h_next
                steps += 1
            self.forward_steps = steps
            self.forward_residual = change
        if not torch.is_grad_enabled():
            return h
        h_star = h.detach().requires_grad_(True)
        out = self.f(h_star, *inputs)
        if out.requires_grad:
            out.register_hook(self._make_hook(out, h_star))
        return out

    def _make_hook(self, out: Tensor, h_star: Tensor) -> Callable[[Tensor], Tensor]:
        def vjp(v: Tree) -> Tree:
            (g,) = torch.autograd.grad(out, h_star, v[0], retain_graph=True, allow_unused=True)
            return (torch.zeros_like(h_star) if g is None else g,)

        def jvp(u: Tree) -> Tree:
            dummy = torch.zeros_like(out, requires_grad=True)
            with torch.enable_grad():
                (jt,) = torch.autograd.grad(out, h_star, dummy, retain_graph=True, create_graph=True)
            (ju,) = torch.autograd.grad(jt, dummy, u[0], retain_graph=True)
            return (ju,)

        solving = False

        def hook(grad: Tensor) -> Tensor:
            nonlocal solving
            if solving:  # the solver's own vector-Jacobian products pass through here
                return grad
            solving = True
            try:
                z, info = solve_adjoint(
                    self.method, vjp, (grad.detach(),), max_iter=self.max_iter, tol=self.tol, jvp=jvp
                )
            finally:
                solving = False
            self.backward_info = info
            return z[0]

        return hook
