r"""The no-graph inner loop's update on two flat buffers: every tensor's SGD-momentum step in five kernels.

:meth:`hypergrad.inner.InnerProblem.train` re-points the private model's trainable
parameters into one flat weight buffer and keeps the velocity in another, so the update of
paper §5.3,

.. math::
    v' = \beta \odot v - (1 - \beta) \odot g, \qquad w' = w + \alpha \odot v',

is one gather of the gradients and five element-wise kernels over all weights, instead of
five ``torch._foreach_*`` calls that loop over the tensors one scalar at a time on the CPU.
The arithmetic is that of :func:`hypergrad.inner.sgd_momentum_step_` operation for operation
(:math:`\beta v`, then :math:`+ (-(1-\beta)) g`, then :math:`w + \alpha v'`, each product rounded
on its own): the same numbers to the bit (``tests/test_inner_kernel.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["FlatMomentum"]


def _spread(values: Sequence[Tensor | float], like: Sequence[Tensor]) -> Tensor:
    """One flat vector: each value (a number, or a tensor broadcastable to its tensor) repeated over its tensor."""
    parts = []
    for val, t in zip(values, like):
        if isinstance(val, Tensor):
            parts.append(val.to(t.dtype).expand(t.shape).reshape(-1))
        else:  # a Python number, rounded to the tensor's dtype as the foreach kernels round it
            parts.append(torch.full((t.numel(),), val, dtype=t.dtype, device=t.device))
    return torch.cat(parts)


class FlatMomentum:
    """The weights (the model's own parameters, re-pointed) and the velocity of one inner run, flat.

    Args:
        params: the private model's trainable parameters; their ``.data`` become views into
            one flat buffer holding their current values.
        velocity: the starting velocity, one tensor per parameter (copied).
        lrs, moms, damping: :math:`\\alpha`, :math:`\\beta` and :math:`-(1-\\beta)` per tensor, as
            :func:`~hypergrad.inner.sgd_momentum_step_` takes them (numbers or tensors).

    Use :meth:`applies` first: one dtype and device, dense contiguous tensors.
    """

    @staticmethod
    def applies(params: Sequence[Tensor]) -> bool:
        if not params:
            return False
        first = params[0]
        return all(p.dtype == first.dtype and p.device == first.device and p.layout == torch.strided
                   and p.is_floating_point() and p.is_contiguous() for p in params)

    def __init__(self, params: Sequence[Tensor], velocity: Sequence[Tensor], lrs: Sequence[Tensor | float],
                 moms: Sequence[Tensor | float], damping: Sequence[Tensor | float]) -> None:
        self.shapes = [p.shape for p in params]
        self.numels = [p.numel() for p in params]
        with torch.no_grad():
            self.w = torch.cat([p.detach().reshape(-1) for p in params])
            self.v = torch.cat([v.detach().to(self.w.dtype).reshape(-1) for v in velocity])
            for p, view in zip(params, self._views(self.w)):
                p.data = view
            self.lr, self.mom, self.damp = (_spread(x, params) for x in (lrs, moms, damping))
        self.velocity = self._views(self.v)
        self._scratch = torch.empty_like(self.w)

    def _views(self, flat: Tensor) -> list[Tensor]:
        return [part.view(shape) for part, shape in zip(flat.split(self.numels), self.shapes)]

    def step(self, grads: Sequence[Tensor]) -> None:
        """One update in place (no graph): the same operations as ``sgd_momentum_step_``."""
        g = torch.cat([gi.reshape(-1) for gi in grads], out=self._scratch)
        self.v.mul_(self.mom)
        g.mul_(self.damp)
        self.v.add_(g)
        torch.mul(self.v, self.lr, out=g)
        self.w.add_(g)
