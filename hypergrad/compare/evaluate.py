r"""What a method's hyperparameters are worth: exported to ``torch.optim.SGD`` and retrained from :math:`w_0`.

The search of every method (gradient, Optuna, hybrid) chose its hyperparameters on the
batch orders of its own salts. A fair price for them is paid on batch orders it never
saw: :func:`sgd_retrain` trains a fresh copy of the model with ``torch.optim.SGD`` and the
exported param groups (:func:`hypergrad.to_sgd_param_groups`) from :math:`w_0` for ``T``
steps on each of ``orders`` (default 3) **fresh** batch orders, and reports the mean ± std
of the validation (and test) loss and of the metric where one applies. Over-fitting one
batch order shows as a gap between the search's best meta loss and this retraining.

Fresh means seeded apart from every search: the search's batches come from
``seed * 1_000_003 + salt`` (:meth:`~hypergrad.objective.MetaObjective.seed`; salts are
meta steps, trials, hyper-batch salts ``k * 7919 + 17`` and ``-1``), the retraining's from
:func:`retrain_seeds`, ``2**40 + seed * 1000 + r``, beyond any search seed of a seed below
a million.

**Semantics.** The model is retrained and evaluated in the mode it was given, as the
tuner trains and evaluates it: in train mode BatchNorm normalises with the statistics
of each batch (the evaluation's chunks included; the copy's running statistics are
updated by the SGD run as torch does but not read) and Dropout draws masks (seeded
per order, so the retraining is reproducible). The losses are therefore those of the
tuner's meta loss, not of ``model.eval()``; put the model in eval mode before tuning to
tune and evaluate with running statistics and without dropout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from hypergrad.config import TuneConfig
from hypergrad.hyperparams import HyperSpec, SGDSchedule, to_sgd_param_groups
from hypergrad.inner import InnerProblem

__all__ = ["RETRAIN_ORDERS", "RETRAIN_SEED_BASE", "mean_std", "retrain_seeds", "sgd_evaluate", "sgd_retrain"]

#: Fresh batch orders per retraining (at least three: a mean ± std).
RETRAIN_ORDERS = 3
#: Base of the retraining seeds, above every search seed ``seed * 1_000_003 + salt``.
RETRAIN_SEED_BASE = 2**40


def retrain_seeds(seed: int, orders: int = RETRAIN_ORDERS) -> list[int]:
    """The schedule seeds of the ``orders`` fresh batch orders of ``seed``'s retraining."""
    return [RETRAIN_SEED_BASE + seed * 1000 + r for r in range(orders)]


def _clean(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "std" (sample), "n", "values"}`` of the finite values (``None`` for none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(vals), "values": list(values)}


def sgd_evaluate(
    problem: InnerProblem,
    spec: HyperSpec,
    hparams: Sequence[Tensor],
    batches: Iterable[Any],
    *,
    test_data: Any = None,
) -> dict[str, float | None]:
    """Train a fresh copy of the model from :math:`w_0` with ``torch.optim.SGD`` and the exported groups.

    Runs over ``batches`` (``T`` training minibatches ``(x, y)``, e.g. a
    :meth:`~hypergrad.inner.InnerProblem.schedule`) and reports ``val_loss`` and, with
    ``test_data``, ``test_loss``, each with the problem's metric beside it (``val_accuracy``,
    ``test_<metric>``: :meth:`InnerProblem.evaluate`); ``None`` where non-finite. Never
    raises on a regression or on a blown-up run. A schedule (``spec.segments > 1``) is
    followed step by step by :class:`~hypergrad.hyperparams.SGDSchedule` over the ``T`` batches.
    """
    model = problem.fresh_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(to_sgd_param_groups(spec, hparams, params))
    batches = batches if spec.segments == 1 else list(batches)
    sched = SGDSchedule(opt, spec, hparams, num_steps=len(batches)) if spec.segments > 1 else None
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = problem.loss_fn(model(*x) if isinstance(x, tuple) else model(x), y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    weights = [p.detach() for p in params]
    out: dict[str, float | None] = {}
    for split, data in (("val", "val"), ("test", test_data)):
        if data is None:
            continue
        for key, value in problem.evaluate(weights, data).items():
            out[f"{split}_{key}"] = _clean(value)
    return out


def sgd_retrain(
    problem: InnerProblem,
    cfg: TuneConfig,
    hparams: Sequence[Tensor],
    *,
    seed: int,
    orders: int = RETRAIN_ORDERS,
    test_data: Any = None,
) -> dict[str, Any]:
    """:func:`sgd_evaluate` on ``orders`` fresh batch orders (:func:`retrain_seeds`), mean ± std.

    Returns ``{"orders", "seeds", "runs": [one sgd_evaluate dict per order], <key>: mean_std}``
    for every key the runs report (``val_loss``, ``test_loss``, ``test_accuracy``, ...).
    """
    if isinstance(orders, bool) or not isinstance(orders, int) or orders < 1:
        raise ValueError(f"retrain_orders must be an integer >= 1, got {orders!r}")
    seeds = retrain_seeds(seed, orders)
    spec = problem.spec if cfg.segments == 1 else problem.spec.with_segments(cfg.segments)
    runs = []
    for s in seeds:
        with problem.rng(s):
            batches = problem.schedule(cfg.inner_steps, s, batch_size=cfg.batch_size)
            runs.append(sgd_evaluate(problem, spec, hparams, batches, test_data=test_data))
    keys = list(dict.fromkeys(k for r in runs for k in r))
    return {"orders": orders, "seeds": seeds, "runs": runs, **{k: mean_std([r.get(k) for r in runs]) for k in keys}}
