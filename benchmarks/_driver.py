"""Shared driver: run probes in fresh processes with the allocator settings, collect rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypergrad.methods import METHODS

ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
REPO = Path(__file__).resolve().parents[1]
LABELS = {**{name: m.label for name, m in METHODS.items()}, "sgd": "torch.optim.SGD (T steps)"}


def probe(spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run :func:`benchmarks._probe.measure` on ``spec`` in a fresh Python process."""
    full = {"batch_size": 100, "per": "tensor", "hyper_batches": 4, "dataset": "mnist", "reps": 5,
            "truncate": 10, **spec}
    env = {**os.environ, **ENV}
    res = subprocess.run([sys.executable, "-m", "benchmarks._probe", json.dumps(full)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"probe {full} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def machine() -> dict[str, Any]:
    import platform

    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "loadavg_at_start": load}
