"""TensorBoard logs: read back with EventAccumulator, and through a real tensorboard server's HTTP API."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypergrad.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

RUN = ["tune", "--inner-steps", "20", "--truncate", "4", "--meta-steps", "4", "--batch-size", "50",
       "--hidden", "16", "--no-progress"]
TENSORS = ("0.weight", "0.bias", "2.weight", "2.bias")


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tb") / "run"
    assert main([*RUN, "--logdir", str(d)]) == 0
    return d


def _accumulator(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def test_event_files_hold_the_documented_scalars(logdir):
    acc = _accumulator(logdir)
    tags = set(acc.Tags()["scalars"])
    expected = {"meta/val_loss", "meta/train_loss", "tuner/hypergrad_norm", "solver/residual", "solver/iterations",
                "tuner/seconds_per_meta_step", "sgd_lr/0.weight", "sgd_momentum/2.bias", "tuner/alpha/0.bias",
                "summary/best_val_loss"}
    assert expected <= tags, expected - tags
    assert "meta/loss" not in tags  # the meta loss is meta/val_loss (or meta/train_loss), not a third card
    assert not any(t.startswith("hparam") for t in tags)  # settings go to the HParams dashboard only
    vals = [e.value for e in acc.Scalars("meta/val_loss")]
    res = json.loads((logdir / "results.json").read_text())
    assert vals == pytest.approx(res["val_loss"], rel=1e-6)
    assert [e.step for e in acc.Scalars("meta/val_loss")] == [0, 1, 2, 3]
    # the hparams record: experiment and session start at the start, session end at the end
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(
        acc.PluginTagToContent("hparams"))


def test_the_logged_lr_is_the_sgd_lr_that_results_json_and_the_cli_show(logdir):
    acc = _accumulator(logdir)
    res = json.loads((logdir / "results.json").read_text())
    for k, record in enumerate(res["history"]):
        for name in TENSORS:
            hp = record["hyperparameters"][name]
            assert hp["lr"] == pytest.approx(hp["alpha"] * (1 - hp["momentum"]), rel=1e-9)
            assert acc.Scalars(f"sgd_lr/{name}")[k].value == pytest.approx(hp["lr"], rel=1e-6)
            assert acc.Scalars(f"tuner/alpha/{name}")[k].value == pytest.approx(hp["alpha"], rel=1e-6)
            assert acc.Scalars(f"sgd_momentum/{name}")[k].value == pytest.approx(hp["momentum"], rel=1e-6)
    groups = {g["name"]: g for g in res["param_groups"]}
    for name, hp in res["hyperparameters"].items():  # the best, in the same meaning as the SGD groups
        assert hp["lr"] == pytest.approx(groups[name]["lr"], rel=1e-9)
        assert hp["momentum"] == pytest.approx(groups[name]["momentum"], rel=1e-9)
        assert math.log(hp["alpha"]) == pytest.approx(math.log(groups[name]["lr"] / (1 - hp["momentum"])))


def test_overwrite_removes_the_old_runs_event_files(tmp_path):
    d = tmp_path / "run"
    argv = ["tune", "--inner-steps", "10", "--truncate", "4", "--meta-steps", "2", "--batch-size", "50",
            "--hidden", "8", "--no-progress", "--logdir", str(d)]
    assert main(argv) == 0
    first = set(d.glob("events.out.tfevents.*"))
    assert main([*argv, "--overwrite"]) == 0
    files = set(d.glob("events.out.tfevents.*"))
    assert len(files) == 1 and not files & first
    assert [e.step for e in _accumulator(d).Scalars("meta/val_loss")] == [0, 1]  # one run's curve, no overlay


def test_compare_streams_its_curves_while_it_runs(tmp_path, monkeypatch):
    import hypergrad.compare as compare_pkg
    from tests.test_compare import CFG, problems

    seen: list[int] = []
    real = compare_pkg.run_gradient

    def spying(problem, cfg, method, budget, *, on_point=None, **kw):
        def on_point_and_look(trace):
            on_point(trace)
            acc = _accumulator(tmp_path / "tb" / method / f"seed{cfg.seed}")
            seen.append(len(acc.Scalars("compare/meta_loss")) if "compare/meta_loss" in acc.Tags()["scalars"] else 0)
        return real(problem, cfg, method, budget, on_point=on_point_and_look, **kw)

    monkeypatch.setattr(compare_pkg, "run_gradient", spying)
    compare_pkg.compare(problems, CFG, ["neumann"], 3, [0], logdir=tmp_path / "tb", progress=False)
    assert seen == [1, 2, 3]  # each evaluation is on disk before the next one starts
    acc = _accumulator(tmp_path / "tb" / "neumann" / "seed0")
    assert [e.step for e in acc.Scalars("compare/best_meta_loss")] == [6, 12, 18]  # inner SGD steps (T = 6)


# ---------------------------------------------------------------------- the real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(logdir) -> Iterator[str]:
    """A real ``tensorboard`` on loopback, serving ``logdir``; yields its base URL once it serves the scalars."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if _get(base, "/data/plugin/scalars/scalars?tag=meta%2Fval_loss&run=."):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("tensorboard did not serve meta/val_loss within 90 s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _get(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.loads(r.read())


def _post(base: str, path: str, body: dict):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_real_tensorboard_server_serves_meta_val_loss(server, logdir):
    data = _get(server, "/data/plugin/scalars/scalars?tag=meta%2Fval_loss&run=.")
    res = json.loads((logdir / "results.json").read_text())
    # rows are [wall_time, step, value]
    assert [row[1] for row in data] == [0, 1, 2, 3]
    assert [row[2] for row in data] == pytest.approx(res["val_loss"], rel=1e-6)


@pytest.mark.slow
def test_real_server_sorts_meta_loss_and_hyperparameters_first(server):
    tags = sorted(_get(server, "/data/plugin/scalars/tags")["."])
    assert not any(t.startswith("hparam") for t in tags) and "meta/loss" not in tags
    # the dashboards group tags by their first component and sort the groups by name
    groups = list(dict.fromkeys(t.split("/", 1)[0] for t in tags))
    assert groups[:3] == ["meta", "sgd_lr", "sgd_momentum"], groups
    assert tags[:2] == ["meta/train_loss", "meta/val_loss"]
    assert tags[2:10] == sorted([f"sgd_lr/{n}" for n in TENSORS] + [f"sgd_momentum/{n}" for n in TENSORS])


@pytest.mark.slow
def test_real_server_serves_the_hparams_record(server, logdir):
    experiment = _post(server, "/data/plugin/hparams/experiment", {"experimentName": ""})
    types = {h["name"]: h["type"] for h in experiment["hparamInfos"]}
    for name in ("dataset", "model", "method", "strategy", "per"):
        assert types[name] == "DATA_TYPE_STRING", name
    for name in ("hyperparameters", "T", "K", "M", "budget", "meta_lr"):
        assert types[name] == "DATA_TYPE_FLOAT64", name
    for name in ("batch_hyper", "normalize", "stop_on_growth"):
        assert types[name] == "DATA_TYPE_BOOL", name  # not 1.0000
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"meta/val_loss", "summary/best_val_loss", "summary/best_test_accuracy"} <= metrics

    groups = _post(server, "/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
    })["sessionGroups"]
    assert len(groups) == 1
    hp = groups[0]["hparams"]
    assert hp["dataset"] == "digits" and hp["model"] == "MLP 64-16-10 (Tanh)"
    assert hp["hyperparameters"] == 8 and hp["method"] == "neumann" and hp["strategy"] == "gradient"
    assert (hp["T"], hp["K"], hp["M"], hp["budget"]) == (20, 4, 4, 4)
    assert hp["batch_hyper"] is True and hp["normalize"] is False
    assert "clip" in types and "clip" not in hp  # None: declared, left empty (not the string "None")
    res = json.loads((logdir / "results.json").read_text())
    values = {m["name"]["tag"]: m["value"] for m in groups[0]["metricValues"]}
    assert values["summary/best_val_loss"] == pytest.approx(res["evaluation"]["best"]["val_loss"], rel=1e-6)
    assert values["meta/val_loss"] == pytest.approx(res["val_loss"][-1], rel=1e-6)
    assert groups[0]["sessions"][0]["status"] == "STATUS_SUCCESS"
