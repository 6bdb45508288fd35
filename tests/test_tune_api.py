"""``hypergrad.tune`` and ``hypergrad.compare_models`` on a user's model (issue 13, points 1-6).

* every data form reaches the tuner and gives the tensors' result;
* misuse is refused before the first meta step (nothing of the user's runs in a meta step);
* a regression's final evaluation reports its loss (and a ``metric=``), never crashes;
* a failure at meta step N leaves its N finished steps in the exception and the checkpoint,
  and ``resume=True`` continues them to the uninterrupted run's result;
* the device: ``device="cpu"`` explicitly, sources moved to the ``meta`` device, the
  ``DataParallel`` flags on the rank's device, the CLI's ``--device`` validation;
* ``compare_models`` returns the CLI's document with a retraining on fresh batch orders.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hypergrad
from hypergrad.callbacks import Callback
from hypergrad.checkpoint import load_checkpoint
from hypergrad.compare import compare
from hypergrad.compare.evaluate import RETRAIN_SEED_BASE, retrain_seeds
from hypergrad.config import ConfigError, RunConfig
from hypergrad.data.source import as_source
from hypergrad.distributed import DataParallel
from hypergrad.validation import check_problem, second_order_hint
from hypergrad.workloads import run_device
from tests._zoo import BATCH, ZOO

FAST = {"inner_steps": 6, "meta_steps": 3, "truncate": 3, "hyper_batches": 2, "batch_size": BATCH}


def _mlp_case() -> tuple[nn.Module, Any, Any, Any]:
    return ZOO["mlp"].build()


def _same(a: hypergrad.TuneResult, b: hypergrad.TuneResult) -> None:
    assert [r.val_loss for r in a.history] == [r.val_loss for r in b.history]
    assert all(torch.equal(x, y) for x, y in zip(a.best, b.best))


# ---------------------------------------------------------------------- data forms
def test_every_data_form_tunes_like_the_tensors() -> None:
    model, loss_fn, (x, y), val = _mlp_case()
    ref = hypergrad.tune(model, loss_fn, (x, y), val, **FAST)
    _same(hypergrad.tune(model, loss_fn, (x.numpy(), y.numpy()), val, **FAST), ref)
    _same(hypergrad.tune(model, loss_fn, TensorDataset(x, y), val, **FAST), ref)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=torch.Generator())
    streamed = hypergrad.tune(model, loss_fn, loader, DataLoader(TensorDataset(*val), batch_size=8), **FAST)
    assert len(streamed.history) == 3 and all(r.val_loss is not None for r in streamed.history)
    again = hypergrad.tune(model, loss_fn, loader, DataLoader(TensorDataset(*val), batch_size=8), **FAST)
    _same(streamed, again)  # a seeded loader: the same batch orders in every call


def test_tuple_inputs_and_a_test_set() -> None:
    model, loss_fn, train, val = ZOO["two_inputs"].build()
    result = hypergrad.tune(model, loss_fn, train, val, test_data=val, **FAST)
    ev = result.evaluation["best"]
    assert {"val_loss", "train_loss", "test_loss", "test_accuracy", "val_accuracy"} <= set(ev)
    assert ev["test_loss"] == pytest.approx(ev["val_loss"]) and ev["test_accuracy"] == ev["val_accuracy"]


# ---------------------------------------------------------------------- tasks
def test_regression_reports_its_loss_and_never_crashes_in_the_final_evaluation() -> None:
    model, loss_fn, train, val = ZOO["regression"].build()
    result = hypergrad.tune(model, loss_fn, train, val, test_data=val, **FAST)
    for ev in result.evaluation.values():
        assert set(ev) >= {"val_loss", "train_loss", "test_loss"} and not any("accuracy" in k for k in ev)
    json.dumps(result.to_json(), allow_nan=False)


def test_a_metric_is_reported_beside_the_loss() -> None:
    model, loss_fn, train, val = ZOO["regression"].build()

    def mae(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (out - y).abs().mean()

    result = hypergrad.tune(model, loss_fn, train, val, test_data=val, metric=mae, **FAST)
    best = result.evaluation["best"]
    assert best["val_mae"] == best["test_mae"] and 0 < best["val_mae"] < 10
    # The metric of the tuned run, not of w0: it is recomputed from the best run's weights.
    with torch.no_grad():
        assert best["val_mae"] != pytest.approx(float(mae(model(val[0]), val[1])), rel=1e-3)


# ---------------------------------------------------------------------- misuse, before any meta step
class Counter(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_meta_step(self, tuner: Any, record: Any) -> None:
        self.steps += 1


@pytest.mark.parametrize("change, error, match", [
    ({"loss_fn": lambda o, t: F.cross_entropy(o, t, reduction="none")}, ValueError, "loss_fn must return a scalar"),
    ({"train_data": (torch.full((64, 8), math.nan), torch.zeros(64, dtype=torch.long))}, ValueError,
     "train_data: the inputs contain NaN"),
    ({"val_data": (torch.randn(32, 5), torch.zeros(32, dtype=torch.long))}, ValueError,
     "val_data: the model failed.*wrong input width"),
    ({"train_data": "data.csv"}, TypeError, "train_data must be"),
    ({"metric": "accuracy"}, TypeError, "metric must be a callable"),
    ({"model": "mlp"}, TypeError, "model must be a torch.nn.Module"),
    ({"test_data": (torch.randn(8, 8).double(), torch.zeros(8, dtype=torch.long))}, ValueError,
     "test_data: .*dtype mismatch"),
])
def test_misuse_is_refused_before_the_first_meta_step(change: dict, error: type, match: str) -> None:
    model, loss_fn, train, val = _mlp_case()
    args = {"model": model, "loss_fn": loss_fn, "train_data": train, "val_data": val, **change}
    counter = Counter()
    with pytest.raises(error, match=match):
        hypergrad.tune(args.pop("model"), args.pop("loss_fn"), args.pop("train_data"), args.pop("val_data"),
                       callbacks=[counter], **args, **FAST)
    assert counter.steps == 0


# ---------------------------------------------------------------------- a failure after N meta steps
class FailingLoss:
    """Cross-entropy that raises once ``armed`` (armed by :class:`ArmAfter` after N meta steps)."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("the user's loss broke")
        return F.cross_entropy(out, y)


class ArmAfter(Callback):
    def __init__(self, loss: FailingLoss, n: int) -> None:
        self.loss, self.n = loss, n

    def on_meta_step(self, tuner: Any, record: Any) -> None:
        if len(tuner.history) == self.n:
            self.loss.armed = True


@pytest.mark.parametrize("method", ["neumann", "bptt"])
def test_a_failure_at_meta_step_n_keeps_its_n_finished_steps(tmp_path: Any, method: str) -> None:
    model, _, train, val = _mlp_case()
    cfg = {**FAST, "meta_steps": 5, "method": method}
    reference = hypergrad.tune(model, F.cross_entropy, train, val, **cfg)
    loss = FailingLoss()
    with pytest.raises(hypergrad.TuneError, match=r"failed in meta step 3 .*the user's loss broke.*3 finished") as info:
        hypergrad.tune(model, loss, train, val, callbacks=[ArmAfter(loss, 3)], checkpoint_dir=tmp_path, **cfg)
    exc = info.value
    assert isinstance(exc.__cause__, RuntimeError) and exc.step == 3
    assert [r.step for r in exc.result.history] == [0, 1, 2]
    assert [r.val_loss for r in exc.result.history] == [r.val_loss for r in reference.history[:3]]
    assert exc.result.evaluation == {} and exc.result.param_groups(model)[0]["lr"] > 0
    saved = load_checkpoint(exc.checkpoint)
    assert saved["api"] == "tune" and [r["step"] for r in saved["tuner"]["history"]] == [0, 1, 2]
    # A second call into the same folder is refused; resume=True continues to the uninterrupted result.
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        hypergrad.tune(model, F.cross_entropy, train, val, checkpoint_dir=tmp_path, **cfg)
    with pytest.raises(ValueError, match=r"other settings.*inner_steps"):
        hypergrad.tune(model, F.cross_entropy, train, val, checkpoint_dir=tmp_path, resume=True,
                       **{**cfg, "inner_steps": 7})
    resumed = hypergrad.tune(model, F.cross_entropy, train, val, checkpoint_dir=tmp_path, resume=True, **cfg)
    _same(resumed, reference)
    assert resumed.evaluation == reference.evaluation


def test_a_failure_in_the_final_evaluation_keeps_every_step() -> None:
    model, _, train, val = _mlp_case()
    loss = FailingLoss()
    with pytest.raises(hypergrad.TuneError, match=r"failed in the final evaluation.*3 finished") as info:
        hypergrad.tune(model, loss, train, val, callbacks=[ArmAfter(loss, 3)], **FAST)
    assert info.value.step is None and len(info.value.result.history) == 3 and info.value.checkpoint is None


def test_a_failing_callback_keeps_the_finished_steps() -> None:
    class Boom(Callback):
        def on_meta_step(self, tuner: Any, record: Any) -> None:
            if record.step == 1:
                raise KeyError("my logger")

    model, loss_fn, train, val = _mlp_case()
    with pytest.raises(hypergrad.TuneError, match="KeyError") as info:
        hypergrad.tune(model, loss_fn, train, val, callbacks=[Boom()], **FAST)
    assert [r.step for r in info.value.result.history] == [0, 1]


def test_resume_needs_a_folder_with_a_checkpoint(tmp_path: Any) -> None:
    model, loss_fn, train, val = _mlp_case()
    with pytest.raises(ValueError, match="resume=True needs the checkpoint_dir"):
        hypergrad.tune(model, loss_fn, train, val, resume=True, **FAST)
    with pytest.raises(ValueError, match="holds no checkpoint"):
        hypergrad.tune(model, loss_fn, train, val, resume=True, checkpoint_dir=tmp_path, **FAST)


# ---------------------------------------------------------------------- the device
def test_device_cpu_explicitly_tunes_as_the_default() -> None:
    model, loss_fn, train, val = _mlp_case()
    _same(hypergrad.tune(model, loss_fn, train, val, device="cpu", **FAST),
          hypergrad.tune(model, loss_fn, train, val, device=torch.device("cpu"), **FAST))


def test_everything_of_a_problem_lives_on_its_device() -> None:
    model, loss_fn, train, val = _mlp_case()
    problem, _ = check_problem(model, loss_fn, train, val, batch_size=BATCH)
    tuner = hypergrad.Tuner(problem, hypergrad.TuneConfig(**FAST))
    tuner.meta_step()
    device = problem.device
    assert device == next(model.parameters()).device
    assert all(h.device == device for h in tuner.hparams)
    assert all(t.device == device for s in tuner.state.optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0)
    batch = next(iter(problem.schedule(2, 0)))
    assert batch[0].device == device and problem.sample_batches(1, 0)[0][1].device == device


@pytest.mark.parametrize("kind", ["tensors", "dataset", "loader"])
def test_sources_deliver_their_batches_on_the_requested_device(kind: str) -> None:
    x, y = torch.randn(20, 3), torch.arange(20)
    data = {"tensors": (x, y), "dataset": torch.utils.data.Subset(TensorDataset(x, y), range(20)),
            "loader": DataLoader(TensorDataset(x, y), batch_size=5)}[kind]
    source = as_source(data, "train_data").to("meta")
    batches = [*source.schedule(5, 3, seed=0), *source.sample(2, 5, seed=1), *source.chunks(8), source.full()]
    assert all(bx.device.type == "meta" and by.device.type == "meta" for bx, by in batches)
    assert as_source(data, "train_data").to("cpu").full()[0].device.type == "cpu"


def test_distributed_flags_are_reduced_on_the_ranks_device(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.device] = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, op=None: seen.append(t.device))
    with pytest.raises(RuntimeError, match="meta tensors"):  # reading the reduced flag back: it was on "meta"
        DataParallel(rank=0, world_size=2, device=torch.device("meta")).any(True)
    assert seen == [torch.device("meta")]
    DataParallel(rank=0, world_size=2).any(False)  # gloo: the CPU
    assert seen[-1] == torch.device("cpu")


def test_the_cli_device_is_validated() -> None:
    with pytest.raises(ConfigError, match="device='gpu7' is not a torch device"):
        RunConfig(device="gpu7")
    assert run_device(RunConfig()) == torch.device("cpu")
    assert run_device(RunConfig(device="cpu")) == torch.device("cpu")
    nccl = DataParallel(rank=1, world_size=2, device=torch.device("cuda", 1))
    assert run_device(RunConfig(), nccl) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="contradicts the NCCL backend"):
        run_device(RunConfig(device="cpu"), nccl)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            run_device(RunConfig(device="cuda"))


def test_cli_tune_device_flag_reports_a_missing_gpu(capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from hypergrad.cli import EXIT_USAGE, main

    assert main(["tune", "--device", "cuda", "--meta-steps", "1", "--no-progress"]) == EXIT_USAGE
    assert "CUDA is not available" in capsys.readouterr().err


def test_a_cudnn_rnn_without_double_backward_gets_a_hint() -> None:
    gru = ZOO["gru"].build()[0]
    assert "cudnn.flags(enabled=False)" in second_order_hint(gru, torch.device("cuda"))
    assert second_order_hint(gru, torch.device("cpu")) == ""
    assert second_order_hint(_mlp_case()[0], torch.device("cuda")) == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("method", ["neumann", "cg", "bptt"])
def test_tuning_on_a_gpu_keeps_everything_there(method: str) -> None:
    model, loss_fn, train, val = _mlp_case()
    result = hypergrad.tune(model, loss_fn, train, val, device="cuda", method=method, **FAST)
    assert all(b.device.type == "cuda" for b in result.best)
    cpu = hypergrad.tune(model, loss_fn, train, val, method=method, **FAST)
    assert result.evaluation["best"]["val_loss"] == pytest.approx(cpu.evaluation["best"]["val_loss"], rel=1e-3)


# ---------------------------------------------------------------------- compare_models
def test_compare_models_returns_the_clis_document(tmp_path: Any) -> None:
    model, loss_fn, train, val = _mlp_case()
    cfg = {k: v for k, v in FAST.items() if k != "meta_steps"}
    c = hypergrad.compare_models(model, loss_fn, train, val, test_data=val, methods="neumann,random", budget=3,
                                 seeds=[0, 1], out=tmp_path / "c.json", **cfg)
    doc = json.loads((tmp_path / "c.json").read_text())
    assert set(doc) >= {"config", "budget", "seeds", "methods", "budget_accounting", "runs", "summary",
                        "retrain_orders", "run"}
    assert (tmp_path / "c.md").read_text() == c.table and (tmp_path / "c.png").stat().st_size > 0
    assert doc["methods"] == ["neumann", "random"] and len(doc["runs"]) == 4
    # The same search as compare() on problems built by hand from the same model.
    problem, _ = check_problem(model, loss_fn, train, val, batch_size=BATCH)
    by_hand = compare(lambda s: (problem, val), hypergrad.TuneConfig(method="neumann", **cfg), ["neumann"], 3,
                      [0, 1], progress=False)
    assert [r["meta_loss"] for r in by_hand["runs"]] == [r["meta_loss"] for r in doc["runs"]
                                                         if r["method"] == "neumann"]
    for r in doc["runs"]:
        assert r["sgd_eval"]["seeds"] == retrain_seeds(r["seed"]) and r["sgd_eval"]["test_loss"]["n"] == 3


def test_compare_models_on_a_regression_reports_losses_only() -> None:
    model, loss_fn, train, val = ZOO["regression"].build()
    c = hypergrad.compare_models(lambda seed: model, loss_fn, train, val, methods=["bptt"], budget=2, seeds=[0],
                                 inner_steps=5, batch_size=BATCH)
    assert "val loss (SGD)" in c.table and "accuracy" not in c.table
    assert set(c.summary["bptt"]["sgd"]) == {"val_loss"}


def test_compare_models_refuses_what_it_sets_itself_and_bad_models() -> None:
    model, loss_fn, train, val = _mlp_case()
    with pytest.raises(TypeError, match="sets meta_steps per method"):
        hypergrad.compare_models(model, loss_fn, train, val, meta_steps=3)
    with pytest.raises(ValueError, match="unknown method 'adam'"):
        hypergrad.compare_models(model, loss_fn, train, val, methods=["adam"])
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        hypergrad.compare_models(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), train, val)
    with pytest.raises(TypeError, match="model\\(seed\\) must return"):
        hypergrad.compare_models(lambda seed: 3, loss_fn, train, val)


def test_the_retraining_orders_are_seeded_apart_from_every_search_salt() -> None:
    # Search seeds are seed * 1_000_003 + salt (meta steps and trials k, hyper-batch salts k * 7919 + 17, -1):
    # below 1e6 * 1_000_003 + 1e6 * 7919 + 17 for every seed and budget below a million.
    largest_search_seed = 10**6 * 1_000_003 + 10**6 * 7919 + 17
    objective = hypergrad.objective.MetaObjective(check_problem(*_mlp_case(), batch_size=BATCH)[0],
                                                  hypergrad.TuneConfig(seed=10**6 - 1))
    assert objective.seed(10**6 * 7919 + 17) < largest_search_seed < RETRAIN_SEED_BASE == min(retrain_seeds(0))
    assert len(set(retrain_seeds(0)) | set(retrain_seeds(1)) | set(retrain_seeds(10**6 - 1))) == 9
