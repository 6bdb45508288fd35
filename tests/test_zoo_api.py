"""The model zoo through the public API (issue 13, point 7): ``hypergrad.tune`` on each model x method.

Models (:mod:`tests._zoo`): MLP, small CNN, BatchNorm + Dropout (train mode), GRU sequence
classifier, vector-output regression, frozen + shared parameters, float64. Methods:
``neumann``, ``cg``, ``bptt``. Each run must

* not raise the validation loss: the best hyperparameters' loss on the final evaluation's
  common run is at most the initial ones' (and strictly lower for most runs of the table);
* export param groups that ``torch.optim.SGD`` trains the user's model with (every
  trainable tensor in one group, the loss finite and lower than at :math:`w_0`);
* write TensorBoard logs (:class:`hypergrad.callbacks.TensorBoardLogger`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import hypergrad
from hypergrad.callbacks import TensorBoardLogger
from tests._zoo import BATCH, ZOO

MODELS = ("mlp", "cnn", "bn_dropout", "gru", "regression", "frozen_shared", "float64")
METHODS = ("neumann", "cg", "bptt")
SETTINGS = {"inner_steps": 10, "meta_steps": 4, "truncate": 5, "hyper_batches": 2, "batch_size": BATCH,
            "meta_lr": 0.1, "init_lr": 0.1}
_LOWERED: dict[tuple[str, str], bool] = {}


def _loss(model: torch.nn.Module, loss_fn: Any, data: tuple[Any, Any]) -> float:
    x, y = data
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        return float(loss_fn(model(*x) if isinstance(x, tuple) else model(x), y))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_zoo_tunes_through_the_public_api(name: str, method: str, tmp_path: Path) -> None:
    model, loss_fn, train, val = ZOO[name].build()
    before = [p.detach().clone() for p in model.parameters()]
    logdir = tmp_path / f"{name}-{method}"
    result = hypergrad.tune(model, loss_fn, train, val, method=method, callbacks=[TensorBoardLogger(logdir)],
                            **SETTINGS)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the user's model is untouched
    ev = result.evaluation
    assert ev["best"]["val_loss"] <= ev["initial"]["val_loss"]
    _LOWERED[(name, method)] = ev["best"]["val_loss"] < ev["initial"]["val_loss"]
    assert len(result.history) == SETTINGS["meta_steps"] and all(r.val_loss is not None for r in result.history)
    # The exported groups train the user's model (a copy) with torch.optim.SGD.
    trained = copy.deepcopy(model)
    groups = result.param_groups(trained)
    trainable = [p for p in trained.parameters() if p.requires_grad]
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in trainable)
    opt = torch.optim.SGD(groups)
    x, y = train
    initial = _loss(trained, loss_fn, train)
    for _ in range(SETTINGS["inner_steps"]):
        opt.zero_grad()
        loss_fn(trained(*x) if isinstance(x, tuple) else trained(x), y).backward()
        opt.step()
    after = _loss(trained, loss_fn, train)
    assert after == after and after < initial
    assert list(logdir.glob("events.out.tfevents.*")), "no TensorBoard event file"


def test_the_zoo_lowers_the_validation_loss_strictly_for_most_runs() -> None:
    if len(_LOWERED) < len(MODELS) * len(METHODS):
        pytest.skip("runs after the whole zoo table (run this file, not one test)")
    lowered = sum(_LOWERED.values())
    assert lowered >= 0.75 * len(_LOWERED), {k: v for k, v in _LOWERED.items() if not v}


def test_the_zoo_benchmark_writes_its_json_and_page(tmp_path: Path) -> None:
    from benchmarks.zoo import main

    out = tmp_path / "zoo.json"
    assert main(["--quick", "--methods", "neumann,tpe", "--out", str(out)]) == 0
    import json

    doc = json.loads(out.read_text())
    assert set(doc["models"]) == {"mlp", "regression"} and "--out" not in doc["command"]
    assert doc["models"]["mlp"]["methods"] == ["neumann", "tpe"]
    text = out.with_suffix(".md").read_text()
    for part in ("**Question.**", "**Setup.**", "**Command.**", "**Results.**", "**Conclusion.**",
                 "| mlp | neumann |", "| regression | tpe |"):
        assert part in text
