r"""Back-propagation through time: full (BPTT) and truncated (TBPTT).

The same map ``step(state, params)`` that :func:`hypergrad.fixed_point_grad`
differentiates at its steady state is here unrolled for ``num_steps`` steps
(Eq. 1), and the loss is differentiated through the last ``truncate`` of them.
The earlier steps run under ``torch.no_grad`` and keep no graph, so memory
grows with ``truncate``, not with ``num_steps``.

With ``K = truncate`` and a trajectory whose last ``K`` states equal ``h*``,
TBPTT contains the terms :math:`J^0, \dots, J^{K-1}` and so equals Neumann-RBP
with ``max_iter = K - 1`` (Proposition 2, with the off-by-one made exact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from hypergrad._tree import Tree, as_tree
from hypergrad.implicit import StepFn

__all__ = ["unroll", "unrolled_grad"]


def _check_steps(num_steps: int, truncate: int | None) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if truncate is None:
        return num_steps
    if isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < 1:
        raise ValueError(f"truncate must be None or an integer >= 1, got {truncate!r}")
    if truncate > num_steps:
        raise ValueError(f"truncate ({truncate}) must not exceed num_steps ({num_steps})")
    return truncate


def unroll(step: StepFn, state: Tensor | Sequence[Tensor], params: Tree, num_steps: int) -> Tree:
    """Run ``num_steps`` steps of ``step`` without a graph and return the final state."""
    _check_steps(num_steps, None)
    s = tuple(t.detach() for t in as_tree(state, "state"))
    p = tuple(t.detach() for t in as_tree(params, "params"))
    with torch.no_grad():
        for _ in range(num_steps):
            s = as_tree(step(s, p), "step(state, params)")
    return s


def unrolled_grad(
    step: StepFn,
    state0: Tensor | Sequence[Tensor],
    params: Tensor | Sequence[Tensor],
    num_steps: int,
    loss_fn: Callable[[Tree], Any],
    *,
    truncate: int | None = None,
    has_aux: bool = False,
) -> Tree | tuple[Tree, Any]:
    """Gradient of ``loss_fn(h_T)`` w.r.t. ``params`` by (truncated) BPTT.

    Args:
        step: the map ``F(state, params) -> new_state``; it is called exactly
            ``num_steps`` times, in order, so it may draw a new minibatch per call.
        state0: the initial state :math:`h_0` (treated as a constant).
        params: the parameters to differentiate with respect to.
        num_steps: ``T``, the number of steps.
        loss_fn: ``loss_fn(h_T) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        truncate: ``None`` for BPTT through all ``T`` steps; ``K`` for TBPTT
            through the last ``K`` steps (``1 <= K <= T``).
        has_aux: ``loss_fn`` returns ``(loss, aux)``; then ``(grads, aux)`` is
            returned, with ``aux`` detached by the caller's choice.

    Returns:
        A tuple of gradients aligned with ``params`` (zeros where unused), or
        ``(grads, aux)`` with ``has_aux=True``.
    """
    k = _check_steps(num_steps, truncate)
    params_t = as_tree(params, "params")
    for i, p in enumerate(params_t):
        if not p.is_floating_point():
            raise ValueError(f"params[{i}] must be a floating-point tensor, got {p.dtype}")
    p_leaf = tuple(p.detach().requires_grad_(True) for p in params_t)
    s = unroll(step, state0, p_leaf, num_steps - k) if num_steps > k else tuple(
        t.detach() for t in as_tree(state0, "state0")
    )
    with torch.enable_grad():
        for _ in range(k):
            s = as_tree(step(s, p_leaf), "step(state, params)")
        out = loss_fn(s)
        loss, aux = out if has_aux else (out, None)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor")
        if loss.requires_grad:
            grads = torch.autograd.grad(loss, p_leaf, allow_unused=True)
        else:
            grads = (None,) * len(p_leaf)
    result = tuple(torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, p_leaf))
    return (result, aux) if has_aux else result
