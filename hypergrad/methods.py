r"""The gradient methods: one table, one dispatch.

Every method computes :math:`\partial L(h_T) / \partial w` for a recurrent map
:math:`h_{t+1} = F(h_t, w)` (Eq. 1) run for ``T`` steps from :math:`h_0`:

* ``bptt`` (BPTT, unrolled): back-propagation through all ``T`` steps;
* ``tbptt`` (TBPTT, unrolled): through the last ``K = truncate`` steps;
* ``rbp`` (RBP, implicit): Algorithm 1, fixed-point iteration on Eq. (10);
* ``cg`` (CG-RBP, implicit): §4.1, conjugate gradient on the normal equations of Eq. (9);
* ``neumann`` (Neumann-RBP, implicit): Algorithm 2, ``K`` Neumann terms (Eq. 17);
* ``gmres`` (GMRES-RBP, implicit): GMRES on Eq. (9), beyond the paper;
* ``forward`` (Forward-mode, forward): the tangents :math:`\mathrm{d}h_t/\mathrm{d}w` carried
  through all ``T`` steps (Franceschi et al., 2017), beyond the paper.

The unrolled family differentiates through the trajectory
(:func:`hypergrad.unrolled_grad`); the forward family carries the trajectory's tangents
(:func:`hypergrad.forward_grad`: BPTT's gradient at a memory that does not grow with ``T``,
at a cost that grows with the number of parameters); the implicit family runs the ``T`` steps
without a graph and applies Eq. (8)-(9) at :math:`h_T` on the graph of one
step (:func:`hypergrad.fixed_point_grad`). :data:`METHODS` is the table and
:func:`gradient` the one function that computes a gradient by any of them.
:func:`implicit_gradient` is the implicit family's last step alone, for callers
that hold :math:`h_T` and :math:`\partial L/\partial h_T` already (the tuner
linearises the step map on several minibatches at one :math:`h_T`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from hypergrad._tree import Tree, as_tree, tree_isfinite
from hypergrad.forward import forward_grad, scheduled_step
from hypergrad.implicit import JvpMode, StepFn, fixed_point_grad
from hypergrad.linalg import SolveInfo
from hypergrad.unroll import _check_steps, unroll, unrolled_grad

__all__ = [
    "METHODS",
    "GradResult",
    "Method",
    "RunFn",
    "get_method",
    "gradient",
    "implicit_gradient",
    "method_names",
]

Family = Literal["unrolled", "implicit", "forward"]
FAMILIES: tuple[Family, ...] = ("unrolled", "implicit", "forward")
#: ``run(state, params, num_steps) -> state``: ``num_steps`` applications of the step map without
#: a graph, by whatever fast path the caller has (e.g. :meth:`hypergrad.InnerProblem.train`).
RunFn = Callable[[Tree, Tree, int], Tree | Tensor]


@dataclass(frozen=True)
class Method:
    """One gradient method: what it is called, where the paper has it, what it needs.

    Attributes:
        name: the name every API and command line takes (``"neumann"``).
        label: the name figures and tables show (``"Neumann-RBP"``).
        family: ``"unrolled"`` (back through the trajectory), ``"implicit"`` (Eq. 8-9 at
            :math:`h_T`) or ``"forward"`` (tangents carried forward through the trajectory).
        reference: where the paper defines it (``"Algorithm 2, §4.2"``).
        needs_jvp: it forms Jacobian-vector products :math:`J u`: CG-RBP (as well as
            :math:`J^\top v`), so the step map must be twice differentiable
            (``jvp="double_vjp"``) or support forward mode (``jvp="forward"``); forward mode
            (by ``torch.func.jvp`` only), so the step map must compose with ``torch.func``.
        stackable: supports ``blocks=True`` (independent systems stacked along a leading
            axis, solved as one block-diagonal system).
        uses_truncate: ``truncate`` (K) sets its work: TBPTT's steps, the implicit
            solvers' iterations (Neumann: terms after the first). BPTT ignores it.
        summary: one line for help texts.
    """

    name: str
    label: str
    family: Family
    reference: str
    needs_jvp: bool
    stackable: bool
    uses_truncate: bool
    summary: str


_TABLE = (
    Method("bptt", "BPTT", "unrolled", "Eq. 1 (baseline)", needs_jvp=False, stackable=False,
           uses_truncate=False, summary="back-propagation through all T steps"),
    Method("tbptt", "TBPTT", "unrolled", "§4.2, Prop. 2", needs_jvp=False, stackable=False,
           uses_truncate=True, summary="back-propagation through the last K steps"),
    Method("rbp", "RBP", "implicit", "Algorithm 1, §3.1", needs_jvp=False, stackable=True,
           uses_truncate=True, summary="K fixed-point iterations z <- J^T z + dL/dh (Eq. 10)"),
    Method("cg", "CG-RBP", "implicit", "§4.1", needs_jvp=True, stackable=True,
           uses_truncate=True, summary="K conjugate-gradient steps on the normal equations of Eq. (9)"),
    Method("neumann", "Neumann-RBP", "implicit", "Algorithm 2, §4.2", needs_jvp=False, stackable=True,
           uses_truncate=True, summary="the Neumann series of Eq. (17) to K terms after the first"),
    Method("gmres", "GMRES-RBP", "implicit", "beyond the paper", needs_jvp=False, stackable=False,
           uses_truncate=True, summary="K GMRES iterations on Eq. (9)"),
    Method("forward", "Forward-mode", "forward", "beyond the paper: Franceschi et al. (2017), forward mode",
           needs_jvp=True, stackable=False, uses_truncate=False,
           summary="tangents dh_t/dw carried through all T steps, one JVP per hyperparameter per step"),
)

#: The method table, in the paper's order (unrolled first): name -> :class:`Method`.
METHODS: Mapping[str, Method] = MappingProxyType({m.name: m for m in _TABLE})


def method_names(family: Family | None = None) -> tuple[str, ...]:
    """The methods' names in table order, all or those of one ``family``."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)} or None, got {family!r}")
    return tuple(m.name for m in METHODS.values() if family is None or m.family == family)


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``; a ``ValueError`` naming the choices otherwise."""
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return method


class GradResult(NamedTuple):
    """What :func:`gradient` returns.

    Attributes:
        grads: :math:`\\partial L / \\partial w`, a tuple aligned with ``params`` (zeros for a
            parameter the map does not use), detached.
        loss: the loss at :math:`h_T`, a detached scalar tensor.
        state: :math:`h_T`, detached.
        aux: what ``loss_fn`` returned beside the loss (``has_aux=True``), else ``None``.
        info: the solver's :class:`~hypergrad.linalg.SolveInfo` (implicit family), ``None``
            for the unrolled and forward families.
    """

    grads: Tree
    loss: Tensor
    state: Tree
    aux: Any
    info: SolveInfo | None


def _check_truncate(method: Method, truncate: int | None) -> None:
    if not method.uses_truncate:
        return
    if isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < 1:
        raise ValueError(f"method {method.name!r} needs truncate (K), an integer >= 1; got {truncate!r}")


def _check_blocks(method: Method, blocks: bool) -> None:
    if blocks and not method.stackable:
        stackable = ", ".join(n for n, x in METHODS.items() if x.stackable)
        raise ValueError(f"blocks=True is supported by methods {stackable}, not {method.name!r}")


def implicit_gradient(
    step: StepFn,
    state: Tensor | Sequence[Tensor],
    params: Tensor | Sequence[Tensor],
    state_grad: Tensor | Sequence[Tensor],
    *,
    method: str,
    truncate: int,
    tol: float = 0.0,
    blocks: bool = False,
    init: Tree | str | None = None,
    jvp: JvpMode = "double_vjp",
    stop_on_growth: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tree, SolveInfo]:
    r"""Eq. (8)-(9) at a given :math:`h_T`: the implicit family's step after the forward run.

    Solves :math:`(I - J^\top) z = \partial L/\partial h_T` (Eq. 9) by ``method`` with
    ``max_iter = truncate`` and returns :math:`z^\top \partial F/\partial w` (Eq. 8) and the
    solver's info, by :func:`hypergrad.fixed_point_grad` on ``step`` at ``state``.

    The options that only some methods use are applied where they apply, so one call
    serves every method: ``init`` (and ``generator``) for ``"rbp"`` only (Algorithm 1's
    start :math:`z_0`; ``"uniform"`` draws U[0, 1]), ``stop_on_growth`` for ``"neumann"``
    only. ``blocks=True`` needs a :attr:`Method.stackable` method.

    Raises:
        ValueError: ``method`` is not of the implicit family, ``truncate`` is not an
            integer >= 1, or ``blocks=True`` with a method that is not stackable (and
            whatever :func:`hypergrad.fixed_point_grad` rejects).
    """
    m = get_method(method)
    if m.family != "implicit":
        raise ValueError(
            f"implicit_gradient takes a method of the implicit family ({', '.join(method_names('implicit'))}), "
            f"got {method!r}"
        )
    _check_truncate(m, truncate)
    _check_blocks(m, blocks)
    return fixed_point_grad(
        step,
        state,
        params,
        state_grad,
        method=method,
        max_iter=truncate,
        tol=tol,
        init=init if method == "rbp" else None,
        jvp=jvp,
        stop_on_growth=stop_on_growth and method == "neumann",
        generator=generator if method == "rbp" else None,
        blocks=blocks,
    )


def _split_loss(out: Any, has_aux: bool) -> tuple[Tensor, Any]:
    if has_aux:
        if not isinstance(out, tuple) or len(out) != 2:
            raise ValueError("with has_aux=True, loss_fn must return a pair (loss, aux)")
        loss, aux = out
    else:
        loss, aux = out, None
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor" + (" as the first of (loss, aux)" if has_aux else ""))
    return loss, aux


def _nonfinite_info(method: str) -> SolveInfo:
    """No solve ran: the forward state, the loss or its gradient is not finite."""
    nan = float("nan")
    return SolveInfo(method, 0, nan, False, True, "nonfinite", (nan,), nan, 0)


def gradient(
    step: StepFn,
    state: Tensor | Sequence[Tensor],
    params: Tensor | Sequence[Tensor],
    loss_fn: Callable[[Tree], Any],
    *,
    method: str,
    num_steps: int,
    truncate: int | None = None,
    run: RunFn | None = None,
    fixed_point_step: StepFn | None = None,
    has_aux: bool = False,
    blocks: bool = False,
    tol: float = 0.0,
    init: Tree | str | None = None,
    jvp: JvpMode = "double_vjp",
    stop_on_growth: bool = False,
    generator: torch.Generator | None = None,
    inputs: Iterable[Any] | None = None,
    segment_of: Sequence[int] | None = None,
    vectorize: bool | None = None,
) -> GradResult:
    r"""The loss at :math:`h_T` and its gradient w.r.t. ``params`` by any method of :data:`METHODS`.

    ``h_T`` is ``num_steps`` applications of ``step`` (Eq. 1) to ``state`` (:math:`h_0`, a
    constant). By family:

    * unrolled (``"bptt"``, ``"tbptt"``): :func:`hypergrad.unrolled_grad`, through all
      ``num_steps`` steps (BPTT) or the last ``K = truncate`` (TBPTT; the steps before run
      without a graph, by ``run`` when given). Memory grows with the steps differentiated.
    * implicit (``"rbp"``, ``"cg"``, ``"neumann"``, ``"gmres"``): the ``num_steps`` steps run
      without a graph (by ``run`` when given, else :func:`hypergrad.unroll`),
      :math:`\partial L/\partial h_T` comes from autograd on ``loss_fn`` alone, and
      :func:`implicit_gradient` solves Eq. (9) for :math:`z` by Algorithm 1 (RBP), CG on the
      normal equations (§4.1), Algorithm 2 (Neumann, Eq. 17) or GMRES, with
      ``max_iter = truncate``, and returns :math:`z^\top \partial F/\partial w` (Eq. 8).
      Memory is that of one step. On a converged trajectory TBPTT with ``K`` steps equals
      Neumann-RBP with ``K - 1`` terms after the first (Prop. 2).
    * forward (``"forward"``): :func:`hypergrad.forward_grad`, the tangents
      :math:`\mathrm{d}h_t/\mathrm{d}w` carried through all ``num_steps`` steps by
      ``torch.func.jvp``: BPTT's gradient, with a memory that does not grow with ``T`` and a
      cost that grows with the number of scalars in ``params``. ``step`` must compose with
      ``torch.func`` (e.g. :meth:`hypergrad.InnerProblem.functional_step`) and be pure (a
      time-varying map takes its per-step data from ``inputs``).

    Args:
        step: the map ``F(state, params) -> state`` on tuples of tensors. It is called in
            order, once per step (so it may draw a new minibatch per call); under ``run``
            only for the steps ``run`` does not cover (TBPTT's last ``K``).
        state: :math:`h_0`.
        params: the parameters :math:`w` to differentiate with respect to.
        loss_fn: ``loss_fn(h_T) -> scalar tensor`` (``(scalar, aux)`` with ``has_aux``).
        method: a name of :data:`METHODS`.
        num_steps: ``T >= 1``.
        truncate: ``K >= 1``: TBPTT's steps (``K <= T``) or the implicit solver's iterations.
            Ignored by ``"bptt"``.
        run: ``run(state, params, n) -> h_n``: a fast no-graph replacement for ``n``
            applications of ``step`` (e.g. :meth:`hypergrad.InnerProblem.train`).
        fixed_point_step: the map whose Jacobian the implicit family linearises at
            :math:`h_T` (default ``step``): e.g. the step on one fixed minibatch, or ``step``
            without the tracing of the forward run.
        has_aux: ``loss_fn`` returns ``(loss, aux)``; ``aux`` comes back in the result. The
            loss's graph is kept while ``loss_fn`` runs, so it may call ``torch.autograd.grad``
            on the loss with ``retain_graph=True`` (e.g. for an output layer's weights).
        blocks: the state carries a leading axis of independent systems that ``step`` never
            mixes; implicit solves take per-block steps (see
            :func:`hypergrad.fixed_point_grad`). Only for :attr:`Method.stackable` methods.
        tol: the implicit solver's relative-residual tolerance (0: run ``truncate`` iterations).
        init: RBP's start :math:`z_0`: ``None`` (zeros), ``"uniform"`` (U[0, 1], Algorithm 1) or
            a tuple. Used by ``"rbp"`` only.
        jvp: how CG-RBP forms :math:`J u` (``"double_vjp"`` or ``"forward"``).
        stop_on_growth: stop the Neumann series when a term grows. Used by ``"neumann"`` only.
        generator: random generator of ``init="uniform"``.
        inputs: unrolled and forward families: an item per step, passed as
            ``step(state, params, input_t)`` (e.g. the ``T`` minibatches of one inner run).
        segment_of: unrolled and forward families: a schedule; every tensor of ``params`` has
            a leading axis of segments and step ``t`` uses segment ``segment_of[t]``
            (:func:`hypergrad.segment_index`); ``grads`` holds a gradient for every segment.
        vectorize: ``"forward"`` only: ``None`` (vmap over the directions, a loop where vmap
            fails), ``True`` or ``False`` (see :func:`hypergrad.forward_grad`).

    Returns:
        A :class:`GradResult` ``(grads, loss, state, aux, info)``. When :math:`h_T`, the loss
        or :math:`\partial L/\partial h_T` is not finite there is no fixed point to
        differentiate: the implicit family then runs no solve and returns NaN ``grads`` with an
        ``info`` that says ``diverged=True, stop_reason="nonfinite", iterations=0`` (the
        unrolled family's ``grads`` are non-finite by themselves).

    Raises:
        ValueError: an unknown ``method`` (the message lists the names), a missing or bad
            ``truncate``, ``truncate > num_steps`` for TBPTT, ``blocks=True`` with a method
            that is not stackable, ``inputs``/``segment_of`` with an implicit method or with
            ``run``, or a ``loss_fn`` that does not return a scalar tensor.

    Example:
        >>> import torch, hypergrad
        >>> W = (0.5 * torch.eye(2, dtype=torch.float64),)
        >>> step = lambda s, p: (torch.tanh(p[0] @ s[0] + 1.0),)
        >>> h0 = (torch.zeros(2, dtype=torch.float64),)
        >>> loss = lambda s: s[0].sum()
        >>> ref = hypergrad.gradient(step, h0, W, loss, method="bptt", num_steps=60)
        >>> ne = hypergrad.gradient(step, h0, W, loss, method="neumann", num_steps=60, truncate=40)
        >>> bool(torch.allclose(ne.grads[0], ref.grads[0])), ne.info.converged
        (True, True)
    """
    m = get_method(method)
    _check_truncate(m, truncate)
    _check_blocks(m, blocks)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if run is not None and not callable(run):
        raise TypeError(f"run must be callable or None, got {type(run).__name__}")
    scheduled = inputs is not None or segment_of is not None
    if scheduled and m.family == "implicit":
        raise ValueError(f"inputs and segment_of are taken by the unrolled and forward methods, not {method!r}")
    if m.family == "forward":
        return _forward(step, state, params, loss_fn, num_steps, has_aux,
                        dict(inputs=inputs, segment_of=segment_of, vectorize=vectorize))
    if scheduled:
        if run is not None:
            raise ValueError("run cannot be combined with inputs or segment_of (the step map counts its calls)")
        step = scheduled_step(step, inputs=inputs, segment_of=segment_of)
    if m.family == "unrolled":
        return _unrolled(step, state, params, loss_fn, m, num_steps, truncate, run, has_aux)
    return _implicit(
        step, state, params, loss_fn, m, num_steps, truncate, run, fixed_point_step, has_aux,
        dict(tol=tol, blocks=blocks, init=init, jvp=jvp, stop_on_growth=stop_on_growth, generator=generator),
    )


def _unrolled(
    step: StepFn,
    state: Tensor | Sequence[Tensor],
    params: Tensor | Sequence[Tensor],
    loss_fn: Callable[[Tree], Any],
    m: Method,
    num_steps: int,
    truncate: int | None,
    run: RunFn | None,
    has_aux: bool,
) -> GradResult:
    k = _check_steps(num_steps, truncate if m.name == "tbptt" else None)

    def wrapped(s: Tree) -> tuple[Tensor, tuple[Tensor, Tree, Any]]:
        loss, aux = _split_loss(loss_fn(s), has_aux)
        return loss, (loss.detach(), tuple(t.detach() for t in s), aux)

    if run is not None and k < num_steps:  # the steps before the last K, by the caller's fast path
        frozen = tuple(p.detach() for p in as_tree(params, "params"))
        start = as_tree(run(as_tree(state, "state"), frozen, num_steps - k), "run(...)")
        grads, (loss, h_t, aux) = unrolled_grad(step, start, params, k, wrapped, has_aux=True)
    else:
        grads, (loss, h_t, aux) = unrolled_grad(step, state, params, num_steps, wrapped, truncate=k, has_aux=True)
    return GradResult(grads, loss, h_t, aux, None)


def _forward(
    step: Callable[..., Tree | Tensor],
    state: Tensor | Sequence[Tensor],
    params: Tensor | Sequence[Tensor],
    loss_fn: Callable[[Tree], Any],
    num_steps: int,
    has_aux: bool,
    options: dict[str, Any],
) -> GradResult:
    def wrapped(s: Tree) -> tuple[Tensor, tuple[Tensor, Tree, Any]]:
        loss, aux = _split_loss(loss_fn(s), has_aux)
        return loss, (loss.detach(), tuple(t.detach() for t in s), aux)

    grads, (loss, h_t, aux) = forward_grad(step, state, params, num_steps, wrapped, has_aux=True, **options)
    return GradResult(grads, loss, h_t, aux, None)


def _implicit(
    step: StepFn,
    state: Tensor | Sequence[Tensor],
    params: Tensor | Sequence[Tensor],
    loss_fn: Callable[[Tree], Any],
    m: Method,
    num_steps: int,
    truncate: int | None,  # checked again by implicit_gradient
    run: RunFn | None,
    fixed_point_step: StepFn | None,
    has_aux: bool,
    options: dict[str, Any],
) -> GradResult:
    _check_steps(num_steps, None)
    params_t = tuple(p.detach() for p in as_tree(params, "params"))
    if run is not None:
        h_t = tuple(t.detach() for t in as_tree(run(as_tree(state, "state"), params_t, num_steps), "run(...)"))
    else:
        h_t = unroll(step, state, params_t, num_steps)
    leaf = tuple(t.detach().requires_grad_(True) for t in h_t)
    with torch.enable_grad():
        loss, aux = _split_loss(loss_fn(leaf), has_aux)
        if loss.requires_grad:
            raw = torch.autograd.grad(loss, leaf, allow_unused=True)
        else:
            raw = (None,) * len(leaf)
    state_grad = tuple(torch.zeros_like(s) if g is None else g.detach() for g, s in zip(raw, leaf))
    loss = loss.detach()
    if not (tree_isfinite(h_t) and tree_isfinite(state_grad) and bool(torch.isfinite(loss))):
        nan_grads = tuple(torch.full_like(p, float("nan")) for p in params_t)
        return GradResult(nan_grads, loss, h_t, aux, _nonfinite_info(m.name))
    grads, info = implicit_gradient(
        step if fixed_point_step is None else fixed_point_step, h_t, params_t, state_grad,
        method=m.name, truncate=truncate, **options,
    )
    return GradResult(grads, loss, h_t, aux, info)
