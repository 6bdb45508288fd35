"""Prototype (not library code): the meta loss's gradient computed chunk by chunk.

``InnerProblem.eval_loss`` sums the loss over chunks of 4,096 examples into one graph and the tuner
differentiates it once, so the graph of the whole validation (or training) set is alive at once:
about 13 MiB for 10,000 MNIST images through the 784-50-50-50-10 MLP. For Neumann-RBP that graph,
not the hypergradient, is most of the memory growth of a meta step. This prototype computes the
same value with no graph and, in ``backward``, recomputes the loss one chunk at a time and sums the
per-chunk gradients, so only one chunk's graph is alive (``chunk`` examples).

``patch(problem, chunk)`` replaces ``problem.eval_loss`` on one instance; the probe applies it with
the spec key ``"chunked_meta_loss": CHUNK``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class _ChunkedMeanLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, problem: Any, x: Tensor, y: Tensor, chunk: int, *weights: Tensor) -> Tensor:
        n = len(x)
        with torch.no_grad():
            total = sum(problem.loss(weights, x[i:i + chunk], y[i:i + chunk]) * len(x[i:i + chunk])
                        for i in range(0, n, chunk))
        ctx.problem, ctx.x, ctx.y, ctx.chunk = problem, x, y, chunk
        ctx.save_for_backward(*weights)
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        weights = ctx.saved_tensors
        x, y, chunk, n = ctx.x, ctx.y, ctx.chunk, len(ctx.x)
        acc = [torch.zeros_like(w) for w in weights]
        for i in range(0, n, chunk):
            with torch.enable_grad():
                leaves = [w.detach().requires_grad_(True) for w in weights]
                part = ctx.problem.loss(leaves, x[i:i + chunk], y[i:i + chunk]) * (len(x[i:i + chunk]) / n)
                grads = torch.autograd.grad(part, leaves, allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a.add_(g)
        return (None, None, None, None, *(grad_out * a for a in acc))


def patch(problem: Any, chunk: int = 1000) -> None:
    """Make ``problem.eval_loss`` differentiate chunk by chunk (same value, same gradient)."""

    def eval_loss(weights: Sequence[Tensor], split: str = "val", chunk_: int = chunk) -> Tensor:
        x, y = (problem.x_val, problem.y_val) if split == "val" else (problem.x_train, problem.y_train)
        return _ChunkedMeanLoss.apply(problem, x, y, chunk_, *weights)

    problem.eval_loss = eval_loss
