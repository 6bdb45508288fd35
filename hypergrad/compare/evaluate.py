r"""What users get: the best hyperparameters, exported to ``torch.optim.SGD``, retrained from :math:`w_0`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from hypergrad.data import Split
from hypergrad.hyperparams import HyperSpec, to_sgd_param_groups
from hypergrad.inner import InnerProblem

__all__ = ["sgd_evaluate"]


def sgd_evaluate(
    problem: InnerProblem, split: Split, spec: HyperSpec, hparams: Sequence[Tensor], batches: Iterable[Any]
) -> dict[str, float | None]:
    """Train a fresh copy of the model from :math:`w_0` with ``torch.optim.SGD`` and the exported groups.

    Runs over ``batches`` (``T`` training minibatches ``(x, y)``, e.g.
    :meth:`hypergrad.objective.MetaObjective.batches`) and reports validation/test loss and
    accuracy of the result (``None`` where non-finite).
    """
    model = problem.fresh_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(to_sgd_param_groups(spec, hparams, params))
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = problem.loss_fn(model(*x) if isinstance(x, tuple) else model(x), y)
        loss.backward()
        opt.step()
    model.eval()

    def clean(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    with torch.no_grad():
        out_val, out_test = model(split.x_val), model(split.x_test)
        return {
            "val_loss": clean(float(problem.loss_fn(out_val, split.y_val))),
            "val_accuracy": float((out_val.argmax(-1) == split.y_val).float().mean()),
            "test_loss": clean(float(problem.loss_fn(out_test, split.y_test))),
            "test_accuracy": float((out_test.argmax(-1) == split.y_test).float().mean()),
        }

