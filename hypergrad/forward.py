r"""Forward-mode hypergradients: the tangents :math:`\mathrm{d}h_t/\mathrm{d}w` carried through the run.

For the recurrent map :math:`h_{t+1} = F_t(h_t, w)` (Eq. 1, here allowed to vary with
:math:`t`: a fresh minibatch per step, a piecewise-constant schedule of :math:`w`) the
tangent :math:`Z_t = \mathrm{d}h_t/\mathrm{d}w` obeys the forward recursion of real-time
recurrent learning (Williams & Zipser, 1989), the forward mode of Franceschi et al., "Forward
and Reverse Gradient-Based Hyperparameter Optimization", ICML 2017 (their
:math:`Z_t = A_t Z_{t-1} + B_t`):

.. math::
    Z_{t+1} = J_t Z_t + \frac{\partial F_t(h_t, w)}{\partial w}, \qquad Z_0 = 0,
    \qquad \frac{\partial L(h_T)}{\partial w} = \frac{\partial L}{\partial h_T} Z_T,

with :math:`J_t = \partial F_t/\partial h` at :math:`h_t`. (At a steady state the recursion's
fixed point is Eq. 6, :math:`Z^* = (I - J)^{-1}\partial F/\partial w`, and the last line is
Eq. 8.) Column :math:`d` of :math:`Z_{t+1}` is ONE Jacobian-vector product of the step map,
``torch.func.jvp(F_t, (h_t, w), (Z_t[d], e_d))``, with :math:`e_d` the ``d``-th unit vector in
parameter space; :func:`forward_grad` takes the ``P`` of them per step at once with
``torch.func.vmap`` over ``d`` (or, where the map cannot be vmapped, one after another).

The result is BPTT's gradient (:func:`hypergrad.unrolled_grad`) up to round-off, but only
:math:`h_t` and :math:`Z_t` are alive at any time: the memory does not grow with ``T``. The
work grows with ``P``, the number of scalar parameters (hyperparameters), so forward mode
suits few hyperparameters and long horizons (and BPTT the converse).

A step map for forward mode must be composable with ``torch.func`` transforms: an inner
gradient is taken with ``torch.func.grad``, not ``torch.autograd.grad``
(:meth:`hypergrad.InnerProblem.functional_step`, not :meth:`~hypergrad.InnerProblem.step`).

Schedules (``segment_of``): every parameter tensor has a leading axis of ``S`` segments, and
step :math:`t` applies ``F_t(h, w[segment_of[t]])`` (see :func:`hypergrad.segment_index`);
both engines then return a gradient for every segment. :func:`scheduled_step` gives BPTT the
same description.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import jvp, vmap

from hypergrad._tree import Tree, as_tree
from hypergrad.unroll import _check_steps

__all__ = ["forward_grad", "scheduled_step"]

logger = logging.getLogger("hypergrad")

#: ``step(state, params)`` or, with ``inputs``, ``step(state, params, input_t)``.
ScheduledStepFn = Callable[..., Tree | Tensor]
_NO_INPUT = object()


def _check_segment_of(segment_of: Sequence[int] | None, num_steps: int, params: Tree) -> tuple[int, ...] | None:
    """``segment_of`` as a tuple of ``num_steps`` segment indices valid for every parameter tensor."""
    if segment_of is None:
        return None
    seg = tuple(segment_of)
    if len(seg) != num_steps:
        raise ValueError(f"segment_of must give a segment for each of the {num_steps} steps, got {len(seg)}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seg):
        raise ValueError("segment_of must hold integer segment indices >= 0")
    need = max(seg) + 1
    for i, p in enumerate(params):
        if p.dim() == 0 or p.shape[0] < need:
            raise ValueError(f"with segment_of, params[{i}] needs a leading segment axis of length >= {need}, "
                             f"got shape {tuple(p.shape)}")
    return seg


def _at(params: Tree, seg: tuple[int, ...] | None, t: int) -> Tree:
    return params if seg is None else tuple(p[seg[t]] for p in params)


def _inputs(inputs: Iterable[Any] | None) -> Iterator[Any] | None:
    if inputs is None:
        return None
    if not isinstance(inputs, Iterable):
        raise TypeError(f"inputs must be an iterable of per-step inputs or None, got {type(inputs).__name__}")
    return iter(inputs)


def _next_input(it: Iterator[Any] | None, t: int) -> Any:
    if it is None:
        return _NO_INPUT
    try:
        return next(it)
    except StopIteration:
        raise ValueError(f"inputs ran out after {t} steps") from None


def _call(step: ScheduledStepFn, state: Tree, params: Tree, x: Any) -> Tree:
    out = step(state, params) if x is _NO_INPUT else step(state, params, x)
    return as_tree(out, "step(state, params)")


def _map_at(step: ScheduledStepFn, seg: tuple[int, ...] | None, t: int, x: Any) -> Callable[[Tree, Tree], Tree]:
    """:math:`F_t(h, w)`: ``step`` at step ``t``, on segment ``seg[t]`` of ``w`` and the input ``x``."""

    def f(state: Tree, params: Tree) -> Tree:
        return _call(step, state, _at(params, seg, t), x)

    return f


def scheduled_step(
    step: ScheduledStepFn, *, inputs: Iterable[Any] | None = None, segment_of: Sequence[int] | None = None
) -> Callable[[Tree, Tree], Tree]:
    r"""A time-varying map :math:`F_t` as the closure BPTT calls once per step, in order.

    Call ``t`` (counted from 0) applies ``step(state, params_t)`` or, with ``inputs``,
    ``step(state, params_t, input_t)``, where ``input_t`` is the ``t``-th item of ``inputs`` and
    ``params_t = tuple(p[segment_of[t]] for p in params)`` (``params`` itself without
    ``segment_of``). :func:`hypergrad.unrolled_grad` and :func:`hypergrad.unroll` on this
    closure see exactly the map :func:`forward_grad` sees given the same ``inputs`` and
    ``segment_of``; autograd sends each step's gradient to its segment's slice. The closure
    is for one run (it counts its calls).
    """
    seg = None if segment_of is None else tuple(segment_of)
    it = _inputs(inputs)
    calls = 0

    def stepped(state: Tree, params: Tree) -> Tree:
        nonlocal calls
        if seg is not None and calls >= len(seg):
            raise ValueError(f"the step map was called {calls + 1} times; segment_of covers {len(seg)} steps")
        out = _call(step, tuple(state), _at(tuple(params), seg, calls), _next_input(it, calls))
        calls += 1
        return out

    return stepped


def _basis(params: Tree) -> tuple[int, Tree]:
    """``P`` and the unit vectors :math:`e_d` of parameter space as a tree of ``(P, *shape)`` tensors."""
    sizes = [p.numel() for p in params]
    total = sum(sizes)
    out, start = [], 0
    for p, n in zip(params, sizes):
        block = torch.zeros((total, n), dtype=p.dtype, device=p.device)
        block[start : start + n].copy_(torch.eye(n, dtype=p.dtype, device=p.device))
        out.append(block.reshape((total, *p.shape)))
        start += n
    return total, tuple(out)


class _RngState:
    """torch's generators (CPU, and the CUDA devices of ``tensors``) as they are now, to restore."""

    def __init__(self, tensors: Tree) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = {t.device: torch.cuda.get_rng_state(t.device) for t in tensors if t.device.type == "cuda"}

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda.items():
            torch.cuda.set_rng_state(state, device)


class _Tangents:
    r"""One step of the forward recursion, :math:`(h_t, Z_t) \mapsto (h_{t+1}, Z_{t+1})`, by JVPs.

    ``vectorize``: ``True`` (vmap over the ``P`` directions), ``False`` (a Python loop) or
    ``None`` (vmap, falling back to the loop for the rest of the run the first time vmap fails).
    Either way a map that draws random numbers (dropout) draws them once per step, the same for
    every direction (vmap's ``randomness="same"``; the loop restores the generators).
    """

    def __init__(self, vectorize: bool | None, chunk_size: int | None) -> None:
        self.vectorize, self.chunk_size = vectorize, chunk_size
        self.reverse = False  # the JVPs by two reverse passes, where an operation lacks a forward-mode rule

    def advance(self, f: Callable[[Tree, Tree], Tree], h: Tree, w: Tree, z: Tree, e: Tree) -> tuple[Tree, Tree]:
        if self.vectorize is not False and not self.reverse:
            try:
                return self._vmapped(f, h, w, z, e)
            except Exception as exc:  # vmap cannot batch this map: loop over the directions instead
                if self.vectorize:
                    raise
                logger.debug("forward_grad: vmap over the tangent directions failed (%s: %s); looping instead",
                             type(exc).__name__, exc)
                self.vectorize = False
        return self._looped(f, h, w, z, e)

    def _vmapped(self, f: Callable[[Tree, Tree], Tree], h: Tree, w: Tree, z: Tree, e: Tree) -> tuple[Tree, Tree]:
        def column(zd: Tree, ed: Tree) -> tuple[Tree, Tree]:
            return jvp(f, (h, w), (zd, ed))

        num_dirs = e[0].shape[0]
        size = self.chunk_size or num_dirs  # chunks by hand: vmap's chunk_size rejects out_dims=None
        results = [
            vmap(column, out_dims=(None, 0), randomness="same")(tuple(t[a : a + size] for t in z),
                                                                tuple(t[a : a + size] for t in e))
            for a in range(0, num_dirs, size)
        ]
        self.vectorize = True  # it worked once: keep it
        h_new = tuple(results[0][0])
        z_new = tuple(torch.cat([col[i] for _, col in results]) if len(results) > 1 else results[0][1][i]
                      for i in range(len(z)))
        return h_new, z_new

    def _looped(self, f: Callable[[Tree, Tree], Tree], h: Tree, w: Tree, z: Tree, e: Tree) -> tuple[Tree, Tree]:
        if self.reverse:
            return self._double_vjp(f, h, w, z, e)
        results = []
        rng = _RngState(h)
        for d in range(e[0].shape[0]):
            rng.restore()  # one draw of the map's randomness (dropout) for every direction
            try:
                results.append(jvp(f, (h, w), (tuple(t[d] for t in z), tuple(t[d] for t in e))))
            except RuntimeError as exc:
                if d > 0 or not _no_forward_ad(exc):
                    raise RuntimeError(
                        "forward_grad: torch.func.jvp of the step map failed; the map must be composable with "
                        "torch.func transforms (inner gradients by torch.func.grad, not torch.autograd.grad: "
                        f"InnerProblem.functional_step, not InnerProblem.step): {exc}"
                    ) from exc
                logger.info("forward_grad: an operation of the step map has no forward-mode derivative (%s); "
                            "the Jacobian-vector products are taken by two reverse passes instead",
                            str(exc).splitlines()[0][:120])
                self.reverse = True
                rng.restore()
                return self._double_vjp(f, h, w, z, e)
        return tuple(results[0][0]), tuple(torch.stack([col[i] for _, col in results]) for i in range(len(z)))

    @staticmethod
    def _double_vjp(f: Callable[[Tree, Tree], Tree], h: Tree, w: Tree, z: Tree, e: Tree) -> tuple[Tree, Tree]:
        r"""The same columns :math:`J_t Z_t[d] + (\partial F_t/\partial w) e_d` by reverse mode only.

        With :math:`g(u) = u^\top \partial F` (a VJP built with ``create_graph``), the JVP
        is the VJP of :math:`g` in :math:`u`: ``autograd.grad(g, u, (z_d, e_d))``. It needs
        double backward instead of forward-mode rules (``F.mse_loss``'s mean reduction has
        none, pytorch/pytorch#123996; ``F.huber_loss`` neither); the map runs once per step.
        """
        with torch.enable_grad():
            hs = tuple(t.detach().requires_grad_(True) for t in h)
            ws = tuple(t.detach().requires_grad_(True) for t in w)
            out = tuple(f(hs, ws))
            us = tuple(torch.zeros_like(o, requires_grad=True) for o in out)
            g = torch.autograd.grad(out, hs + ws, us, create_graph=True, allow_unused=True)
            pairs = [(gi, vi) for gi, vi in zip(g, (*z, *e)) if gi is not None and gi.requires_grad]
            cols: list[list[Tensor]] = [[] for _ in out]
            for d in range(e[0].shape[0]):
                if not pairs:
                    cols_d = [None] * len(out)
                else:
                    cols_d = torch.autograd.grad([gi for gi, _ in pairs], us, [vi[d] for _, vi in pairs],
                                                 retain_graph=True, allow_unused=True)
                for i, (c, o) in enumerate(zip(cols_d, out)):
                    cols[i].append(torch.zeros_like(o) if c is None else c.detach())
        return tuple(o.detach() for o in out), tuple(torch.stack(c) for c in cols)


def _no_forward_ad(exc: BaseException) -> bool:
    """Whether ``exc`` says an operation has no (working) forward-mode derivative, which reverse mode may have."""
    text = str(exc)
    return "ZeroTensors are immutable" in text or "forward AD" in text or "forward-mode AD" in text


def forward_grad(
    step: ScheduledStepFn,
    state0: Tensor | Sequence[Tensor],
    params: Tensor | Sequence[Tensor],
    num_steps: int,
    loss_fn: Callable[[Tree], Any],
    *,
    inputs: Iterable[Any] | None = None,
    segment_of: Sequence[int] | None = None,
    has_aux: bool = False,
    vectorize: bool | None = None,
    chunk_size: int | None = None,
) -> Tree | tuple[Tree, Any]:
    r"""Gradient of ``loss_fn(h_T)`` w.r.t. ``params`` by forward mode (Franceschi et al., 2017).

    Runs :math:`h_{t+1} = F_t(h_t, w)` (Eq. 1) for ``T = num_steps`` steps from the constant
    :math:`h_0` while carrying the tangents :math:`Z_t = \mathrm{d}h_t/\mathrm{d}w`:
    :math:`Z_{t+1} = J_t Z_t + \partial F_t/\partial w` by ``torch.func.jvp``, one JVP per
    scalar of ``params`` per step, then returns :math:`(\partial L/\partial h_T) Z_T`. The
    value is BPTT's (:func:`hypergrad.unrolled_grad`); the memory holds :math:`h_t` and the
    ``P`` columns of :math:`Z_t`, whatever ``T``.

    Args:
        step: the map, ``step(state, params) -> state`` or, with ``inputs``,
            ``step(state, params, input_t) -> state``; composable with ``torch.func`` (see the
            module docs). It may be called several times per step (once per direction when not
            vectorised, and once more the first time vmap is tried and fails), so it must be a
            pure function of its arguments: a map that changes with ``t`` takes what changes as
            ``input_t`` (a map that draws a fresh minibatch per call, as BPTT's callers write
            it, is safe with ``vectorize=True`` only).
        state0: :math:`h_0` (a constant).
        params: :math:`w`, the floating-point tensors to differentiate with respect to; with
            ``segment_of``, each has a leading axis of segments.
        num_steps: ``T >= 1``.
        loss_fn: ``loss_fn(h_T) -> scalar`` (``(scalar, aux)`` with ``has_aux``); its gradient
            in :math:`h_T` comes from autograd.
        inputs: an iterable with an item per step (e.g. the ``T`` minibatches of
            :meth:`hypergrad.InnerProblem.schedule`); item ``t`` is passed to ``step`` at step
            ``t`` (as a constant: not differentiated).
        segment_of: a schedule: for each of the ``T`` steps the index of the segment of
            ``params`` it uses (:func:`hypergrad.segment_index`); step ``t`` calls ``step`` with
            ``tuple(p[segment_of[t]] for p in params)``, and the result holds a gradient for
            every segment.
        has_aux: ``loss_fn`` returns ``(loss, aux)``; then ``(grads, aux)`` is returned.
        vectorize: ``None`` (default): ``torch.func.vmap`` over the directions, and a Python
            loop over them from the first step where vmap fails (e.g. a model with an
            operation vmap cannot batch); ``True``: vmap only (its errors propagate);
            ``False``: the loop only.
        chunk_size: vmap's ``chunk_size``: at most this many directions at once (bounds the
            memory of one vectorised step; ``None``: all ``P``).

    Returns:
        A tuple of gradients aligned with ``params`` (zeros where unused), detached, or
        ``(grads, aux)`` with ``has_aux=True``.

    Note:
        Forward mode differentiates the inner gradient forward-over-reverse, which some
        PyTorch operations do not support yet; notably ``F.mse_loss`` with
        ``reduction="mean"`` fails with "ZeroTensors are immutable" (pytorch/pytorch#123996)
        and ``F.huber_loss`` has no forward-mode rule. Where the first JVP fails so, the run
        takes every JVP by two reverse passes instead (:math:`Jv` as the VJP of the VJP, the
        same numbers, logged once), which costs more: ``((pred - y) ** 2).mean()`` keeps the
        fast path.

    Raises:
        ValueError: a bad ``num_steps``, a non-floating ``params`` or state tensor, a
            ``segment_of`` of the wrong length or beyond a tensor's segment axis, ``inputs``
            shorter than ``num_steps``, or a ``loss_fn`` that does not return a scalar tensor.
        RuntimeError: the step map cannot be differentiated by ``torch.func.jvp`` (the message
            says why).

    Example:
        >>> import torch, hypergrad
        >>> W = (0.5 * torch.eye(2, dtype=torch.float64),)
        >>> step = lambda s, p: (torch.tanh(p[0] @ s[0] + 1.0),)
        >>> h0 = (torch.zeros(2, dtype=torch.float64),)
        >>> loss = lambda s: s[0].sum()
        >>> fwd = hypergrad.forward_grad(step, h0, W, 60, loss)
        >>> bptt = hypergrad.unrolled_grad(step, h0, W, 60, loss)
        >>> bool(torch.allclose(fwd[0], bptt[0], rtol=1e-12))
        True
    """
    _check_steps(num_steps, None)
    if not callable(step) or not callable(loss_fn):
        raise TypeError("step and loss_fn must be callable")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    if vectorize not in (None, True, False):
        raise ValueError(f"vectorize must be None, True or False, got {vectorize!r}")
    w = tuple(p.detach() for p in as_tree(params, "params"))
    h = tuple(t.detach() for t in as_tree(state0, "state0"))
    for name, tree in (("params", w), ("state0", h)):
        for i, t in enumerate(tree):
            if not t.is_floating_point():
                raise ValueError(f"{name}[{i}] must be a floating-point tensor, got {t.dtype}")
    seg = _check_segment_of(segment_of, num_steps, w)
    it = _inputs(inputs)
    num_dirs, e = _basis(w)
    if num_dirs == 0:
        raise ValueError("params must hold at least one scalar to differentiate with respect to")
    z = tuple(torch.zeros((num_dirs, *t.shape), dtype=t.dtype, device=t.device) for t in h)
    engine = _Tangents(vectorize, chunk_size)
    with torch.no_grad():  # no reverse-mode graph across steps: only h_t and Z_t live
        for t in range(num_steps):
            h, z = engine.advance(_map_at(step, seg, t, _next_input(it, t)), h, w, z, e)
    leaf = tuple(s.detach().requires_grad_(True) for s in h)
    with torch.enable_grad():
        out = loss_fn(leaf)
        if has_aux and (not isinstance(out, tuple) or len(out) != 2):
            raise ValueError("with has_aux=True, loss_fn must return a pair (loss, aux)")
        loss, aux = out if has_aux else (out, None)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor")
        g_h = torch.autograd.grad(loss, leaf, allow_unused=True) if loss.requires_grad else (None,) * len(leaf)
    flat = torch.zeros(num_dirs, dtype=torch.float64, device=w[0].device if w else None)
    for g, zi in zip(g_h, z):  # dL/dw_d = <dL/dh_T, Z_T[d]>, accumulated in float64
        if g is not None:
            flat += (zi.reshape(num_dirs, -1) @ g.reshape(-1).to(zi.dtype)).double()
    grads, start = [], 0
    for p in w:
        grads.append(flat[start : start + p.numel()].reshape(p.shape).to(p.dtype))
        start += p.numel()
    result = tuple(grads)
    return (result, aux) if has_aux else result
