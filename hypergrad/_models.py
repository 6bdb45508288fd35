"""Helpers that run a user's ``nn.Module`` inside the inner problem's paths."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hypergrad.data.source import Inputs

__all__ = ["as_dtypes", "call_model", "default_metric", "freeze_running_stats", "grads_or_zeros"]


def call_model(module: nn.Module, x: Inputs) -> Tensor:
    return module(*x) if isinstance(x, tuple) else module(x)


def grads_or_zeros(loss: Tensor, leaves: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    """``d loss / d leaves``, zeros for a tensor the loss does not use."""
    grads = torch.autograd.grad(loss, leaves, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


def as_dtypes(hs: list[Tensor], like: Sequence[Tensor]) -> list[Tensor]:
    """Learning rates or momenta in each tensor's own dtype (a mixed-dtype model keeps its dtypes)."""
    return [h if h.dtype == t.dtype else h.to(t.dtype) for h, t in zip(hs, like)]


def freeze_running_stats(module: nn.Module) -> nn.Module:
    """Normalisation layers in train mode stop tracking running statistics (in place).

    They keep normalising with batch statistics, as they do in train mode, but no longer
    write to buffers: the functional paths stay pure, and ``vmap`` can batch them
    (as ``torch.func.replace_all_batch_norm_modules_``, for train-mode layers only).
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats:
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
            m.track_running_stats = False
    return module


def default_metric(outputs: Tensor, targets: Tensor) -> Tensor | None:
    """Accuracy for integer class targets ``(N,)`` with ``(N, C)`` outputs; ``None`` for any other task."""
    if (outputs.dim() == 2 and targets.dim() == 1 and len(outputs) == len(targets)
            and not targets.is_floating_point() and not targets.is_complex() and targets.dtype != torch.bool):
        return (outputs.argmax(dim=-1) == targets).float().mean()
    return None
