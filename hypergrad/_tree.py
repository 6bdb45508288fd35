"""Small pure helpers over tuples of tensors ("trees").

Every solver in :mod:`hypergrad.linalg` works on tuples of tensors so that a
state such as ``(weights..., velocities...)`` never has to be flattened into a
single vector. Reductions (dot products, norms) are accumulated in float64 so
that float32 iterates that grow large overflow to ``inf`` only when the value
itself does, not because of the squared intermediate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Tree = tuple[Tensor, ...]

__all__ = [
    "Tree",
    "as_tree",
    "tree_add",
    "tree_axpy",
    "tree_block_axpy",
    "tree_block_norm",
    "tree_detach",
    "tree_dot",
    "tree_isfinite",
    "tree_norm",
    "tree_scale",
    "tree_sub",
    "tree_zeros_like",
]


def as_tree(x: Tensor | Sequence[Tensor], name: str = "value") -> Tree:
    """Return ``x`` as a tuple of tensors, validating its contents."""
    if isinstance(x, Tensor):
        return (x,)
    if not isinstance(x, (tuple, list)):
        raise TypeError(f"{name} must be a tensor or a tuple of tensors, got {type(x).__name__}")
    for i, t in enumerate(x):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{i}] must be a tensor, got {type(t).__name__}")
    return tuple(x)


def tree_add(a: Tree, b: Tree) -> Tree:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def tree_sub(a: Tree, b: Tree) -> Tree:
    return tuple(x - y for x, y in zip(a, b, strict=True))


def tree_scale(alpha: float | Tensor, a: Tree) -> Tree:
    return tuple(alpha * x for x in a)


def tree_axpy(alpha: float | Tensor, x: Tree, y: Tree) -> Tree:
    """``alpha * x + y``."""
    return tuple(alpha * xi + yi for xi, yi in zip(x, y, strict=True))


def tree_dot(a: Tree, b: Tree) -> Tensor:
    """Inner product accumulated in float64 (a 0-dim tensor)."""
    out = torch.zeros((), dtype=torch.float64, device=a[0].device if a else "cpu")
    for x, y in zip(a, b, strict=True):
        out = out + torch.sum(x.to(torch.float64) * y.to(torch.float64))
    return out


def tree_block_norm(a: Tree) -> Tensor:
    """Per-block Euclidean norms in float64 (shape ``(m,)``), without a float64 copy of the tree."""
    if not a:
        raise ValueError("tree_block_norm of an empty tree")
    parts = torch.stack(
        [torch.linalg.vector_norm(x.detach().reshape(x.shape[0], -1), dim=1, dtype=torch.float64) for x in a]
    )
    return torch.linalg.vector_norm(parts, dim=0)


def tree_block_axpy(alpha: Tensor, x: Tree, y: Tree) -> Tree:
    """``alpha[k] * x[k] + y[k]`` for every block ``k`` (``alpha`` of shape ``(m,)``)."""
    return tuple(
        alpha.to(xi.dtype).reshape((-1,) + (1,) * (xi.dim() - 1)) * xi + yi for xi, yi in zip(x, y, strict=True)
    )


def tree_norm(a: Tree) -> float:
    """Euclidean norm of the concatenated tree, computed in float64.

    Returns a Python float; ``inf``/``nan`` when an entry is not finite.
    """
    if not a:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(x.detach(), dtype=torch.float64) for x in a])
    return float(torch.linalg.vector_norm(norms))


def tree_zeros_like(a: Tree) -> Tree:
    return tuple(torch.zeros_like(x) for x in a)


def tree_isfinite(a: Tree) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in a)


def tree_detach(a: Tree) -> Tree:
    return tuple(x.detach() for x in a)
