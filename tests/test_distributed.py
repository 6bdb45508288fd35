"""Data-parallel tuning under torchrun (gloo, loopback): identical to one process with the global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hypergrad.distributed import DataParallel
from tests._problems import tiny_problem, tiny_tuner

FLAGS = ["--inner-steps", "20", "--truncate", "8", "--meta-steps", "4", "--batch-size", "50", "--hidden", "16",
         "--hyper-batches", "3", "--no-progress"]
# A small initial lr: the Neumann series of the 3 hyper-batches then stop on growth after different
# numbers of terms (up to 7), the case where a stacked series stopped as one used to break equality.
CONFIG = "init_lr = 0.05\n"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_match_one_process(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    flags = [*FLAGS, "--config", str(config)]
    subprocess.run([sys.executable, "-m", "hypergrad", "tune", *flags, "--out", str(one)], check=True,
                   env=_env(), timeout=240, capture_output=True)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "hypergrad", "tune", *flags, "--out", str(two)],
        env=_env(), timeout=240, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["meta_loss"] == pytest.approx(a["meta_loss"], rel=1e-5, abs=1e-5)
    assert b["hypergrad_norm"] == pytest.approx(a["hypergrad_norm"], rel=1e-5)
    for name, hp in a["final_hyperparameters"].items():
        for key in ("lr", "momentum"):
            assert b["final_hyperparameters"][name][key] == pytest.approx(hp[key], rel=1e-5, abs=1e-5)
    assert "data-parallel over 2 processes" in proc.stderr
    assert max(h["solver"]["iterations"] for h in a["history"]) > 0  # the series did run some terms


def test_unrolled_methods_are_refused_under_data_parallelism():
    problem = tiny_problem()
    problem.parallel = DataParallel(rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"not supported with torch\.distributed"):
        tiny_tuner(problem, method="bptt")


def test_shard_splits_every_batch_into_equal_contiguous_parts():
    idx = torch.arange(12).view(2, 6)
    parts = [DataParallel(rank=r, world_size=3).shard(idx) for r in range(3)]
    assert torch.equal(torch.cat(parts, dim=-1), idx)
    with pytest.raises(ValueError, match="not divisible by the number of processes 4"):
        DataParallel(rank=0, world_size=4).shard(idx)
