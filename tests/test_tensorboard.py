"""TensorBoard logs: read back with EventAccumulator, and through a real tensorboard server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hypergrad.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

RUN = ["tune", "--inner-steps", "20", "--truncate", "4", "--meta-steps", "4", "--batch-size", "50",
       "--hidden", "16", "--no-progress"]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tb") / "run"
    assert main([*RUN, "--logdir", str(d)]) == 0
    return d


def test_event_files_hold_the_documented_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"meta/val_loss", "meta/train_loss", "hypergrad/norm", "solver/residual", "solver/iterations",
                "time/seconds_per_meta_step", "hyper/lr/0.weight", "hyper/momentum/2.bias"}
    assert expected <= tags, expected - tags
    vals = [e.value for e in acc.Scalars("meta/val_loss")]
    res = json.loads((logdir / "results.json").read_text())
    assert vals == pytest.approx(res["val_loss"], rel=1e-6)
    assert [e.step for e in acc.Scalars("meta/val_loss")] == [0, 1, 2, 3]
    # add_hparams writes the session summary at the end of the run
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_tensorboard_server_serves_meta_val_loss(logdir):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?tag=meta%2Fval_loss&run=."
    try:
        deadline = time.monotonic() + 90
        data = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    data = json.loads(r.read())
                if data:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert data, "tensorboard did not serve meta/val_loss in time"
        res = json.loads((logdir / "results.json").read_text())
        # rows are [wall_time, step, value]
        assert [row[1] for row in data] == [0, 1, 2, 3]
        assert [row[2] for row in data] == pytest.approx(res["val_loss"], rel=1e-6)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
