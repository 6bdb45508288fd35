r"""The comparison on a user's own model: problems from a model and data, and the document's files.

:func:`hypergrad.compare.compare_models` (exported as ``hypergrad.compare_models``) runs
:func:`hypergrad.compare.compare` on the problem of a user's ``nn.Module``, loss and data
(validated once per seed by :func:`hypergrad.validation.check_problem`). This module holds
its parts that do not run the comparison itself:

* :func:`model_problems`: the ``seed -> (InnerProblem, test_data)`` factory;
* :class:`Comparison`: what the call returns, the ``compare.json`` document and its table;
* :func:`write_comparison`: the files the CLI writes (JSON, markdown table, PNG plot).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hypergrad._io import write_json
from hypergrad.compare.plots import plot
from hypergrad.compare.report import markdown_table
from hypergrad.config import TuneConfig, tune_config
from hypergrad.inner import InnerProblem
from hypergrad.validation import check_problem

__all__ = ["SET_BY_COMPARE", "Comparison", "comparison_config", "model_problems", "write_comparison"]

#: TuneConfig fields the comparison sets itself, per method (``methods=`` and ``budget=`` instead).
SET_BY_COMPARE = ("method", "meta_steps", "strategy", "budget")

ModelOrFactory = nn.Module | Callable[[int], nn.Module]


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`~hypergrad.compare.compare_models`.

    Attributes:
        document: the ``compare.json`` document (:func:`hypergrad.compare.compare`'s schema).
        table: the markdown table (best meta loss at 25/50/100% of the budget, the SGD
            retraining on fresh batch orders, wall seconds).
        files: ``{"json", "table", "plot"}`` paths where they were written (empty without ``out``).
    """

    document: dict[str, Any]
    table: str
    files: Mapping[str, Path]

    @property
    def summary(self) -> dict[str, Any]:
        """Per method: the best meta loss at fractions of the budget and the retraining (mean ± std)."""
        return self.document["summary"]


def comparison_config(config: Mapping[str, Any]) -> TuneConfig:
    """The tuner settings of a comparison (``TuneConfig`` keywords, without the per-method ones)."""
    fixed = sorted(k for k in config if k in SET_BY_COMPARE)
    if fixed:
        raise TypeError(f"compare_models() sets {', '.join(fixed)} per method; pass methods=[...] and budget=N "
                        "instead")
    values = dict(config)
    values.setdefault("method", "neumann")
    return tune_config(values, caller="compare_models()")


def _model_of(model: ModelOrFactory, seed: int, device: torch.device | None) -> nn.Module:
    if isinstance(model, nn.Module):
        built = model
    elif callable(model):
        built = model(seed)
        if not isinstance(built, nn.Module):
            raise TypeError(f"model(seed) must return a torch.nn.Module, got {type(built).__name__}")
    else:
        raise TypeError(f"model must be a torch.nn.Module or a callable seed -> nn.Module, got {type(model).__name__}")
    if device is not None and any(p.device != device for p in built.parameters()):
        built = copy.deepcopy(built).to(device)
    return built


def model_problems(
    model: ModelOrFactory,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    train_data: Any,
    val_data: Any,
    cfg: TuneConfig,
    *,
    test_data: Any = None,
    metric: Callable[[Tensor, Tensor], Tensor | float] | None = None,
    device: str | torch.device | None = None,
) -> Callable[[int], tuple[InnerProblem, Any]]:
    """The comparison's ``seed -> (InnerProblem, test_data)``, each problem checked by :func:`check_problem`.

    ``model``: one ``nn.Module`` (every seed starts from its weights; the seeds then differ in
    batch orders and sampler seeds) or ``seed -> nn.Module`` (a fresh initialisation per seed).
    The first seed's problem is built (and validated) at once, so misuse is raised before any
    search.
    """
    where = torch.device(device) if device is not None else None
    built: dict[int, InnerProblem] = {}

    def problems(seed: int) -> tuple[InnerProblem, Any]:
        if seed not in built:
            problem, _ = check_problem(_model_of(model, seed, where), loss_fn, train_data, val_data,
                                       test_data=test_data, batch_size=cfg.batch_size, per=cfg.per, metric=metric)
            built[seed] = problem
        return built[seed], test_data

    return problems


def write_comparison(document: dict[str, Any], out: str | Path | None, *, title: str = "") -> Comparison:
    """The :class:`Comparison` of a document; with ``out``, its JSON, table (``.md``) and plot (``.png``) as the CLI."""
    table = markdown_table(document["summary"], document["budget"])
    files: dict[str, Path] = {}
    if out is not None:
        path = Path(out)
        if path.is_dir():
            raise ValueError(f"out={str(out)!r} is a directory; give a file name such as compare.json")
        write_json(path, document)
        path.with_suffix(".md").write_text(table, encoding="utf-8")
        plot(document["runs"], document["methods"], path.with_suffix(".png"), title=title)
        files = {"json": path, "table": path.with_suffix(".md"), "plot": path.with_suffix(".png")}
    return Comparison(document=document, table=table, files=files)
