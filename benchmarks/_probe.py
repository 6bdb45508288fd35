"""One measurement in a fresh process: time and peak memory of one meta step (or plain SGD training).

Run by :mod:`benchmarks.bench_meta_step` and :mod:`benchmarks.scaling` as
``python -m benchmarks._probe '<json spec>'``; prints one JSON row on stdout.

Procedure: load the data and build the problem (set-up); one short warm-up meta step; reset the
kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``) and read the baseline ``VmRSS``;
run ``reps`` timed meta steps; ``VmHWM`` after the first of them gives the peak. Memory growth
(``peak_mib``) is the peak minus the baseline; ``total_peak_mib`` includes the baseline (the
data, torch itself). Run with ``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`` so that
freed tensors leave the RSS (the driver sets them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from hypergrad._profiling import library_version, reset_peak, status_kib

MIB = 1024.0  # /proc reports KiB


def sgd_train(problem: Any, batches: torch.Tensor, lr: float = math.exp(-1), mom: float = 0.5) -> None:
    """The floor: the same T steps and minibatches with torch.optim.SGD on the problem's nn.Module."""
    model = problem.model
    with torch.no_grad():
        for p, w in zip(model.parameters(), problem.w0):
            p.copy_(w)
    opt = torch.optim.SGD(model.parameters(), lr=lr * (1 - mom), momentum=mom)
    for x, y in batches:  # (x, y) minibatches, e.g. MetaObjective.batches(salt)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _setup(spec: dict[str, Any]):
    from hypergrad.config import RunConfig
    from hypergrad.inner import InnerProblem
    from hypergrad.tuner import TuneConfig, Tuner
    from hypergrad.workloads import build_problem, load_split, mlp

    method = spec["method"] if spec["method"] != "sgd" else "neumann"
    cfg = TuneConfig(method=method, inner_steps=spec["inner_steps"], truncate=spec["truncate"],
                     batch_size=spec["batch_size"], per=spec["per"], hyper_batches=spec["hyper_batches"],
                     seed=0, meta_steps=10**6, stop_on_growth=spec.get("stop_on_growth", True),
                     batch_hyper=spec.get("batch_hyper", True))
    run = RunConfig(dataset=spec["dataset"], data_root=spec.get("data_root"), hidden=(50, 50, 50))
    device = spec.get("device", "cpu")
    if device == "cpu":
        problem, split = build_problem(run, cfg)
    else:  # as build_problem, with the model and the data moved to the device
        split = load_split(run, cfg.seed)
        split = type(split)(*(t.to(device) for t in split))
        torch.manual_seed(cfg.seed)
        model = mlp(split.num_features, run.hidden, split.num_classes).to(device)
        problem = InnerProblem(model, F.cross_entropy, split.x_train, split.y_train, split.x_val, split.y_val,
                               batch_size=cfg.batch_size, per=cfg.per)
    return cfg, problem, split, Tuner


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Set up, warm up, then time ``spec["reps"]`` meta steps and read the peak RSS."""
    torch.set_num_threads(1)
    cfg, problem, _split, Tuner = _setup(spec)
    method = spec["method"]
    device = spec.get("device", "cpu")
    warm_t = min(cfg.inner_steps, max(cfg.truncate, 20))
    if method == "sgd":
        # The floor: the same T steps and minibatches with torch.optim.SGD on the same nn.Module.
        tuner = Tuner(problem, cfg)

        def once(batches: torch.Tensor) -> None:
            sgd_train(problem, batches)

        def step(salt: int) -> tuple[float, float, float]:
            b = tuner.objective.batches(salt)
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            once(b)
            _sync(device)
            return time.perf_counter() - t0, float("nan"), time.process_time() - c0

        once(tuner.objective.batches(0)[:warm_t])
    else:
        warm = Tuner(problem, dataclasses.replace(cfg, inner_steps=warm_t))
        warm.meta_step()
        del warm
        tuner = Tuner(problem, cfg)
        def step(salt: int) -> tuple[float, float, float]:
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            record = tuner.meta_step()
            _sync(device)
            t1, c1 = time.perf_counter(), time.process_time()
            # the phase after the T inner steps (Tuner records how long the inner steps took)
            inner = record.inner_seconds
            return t1 - t0, (t1 - t0 - inner) if inner is not None else float("nan"), c1 - c0

    _sync(device)
    reset_ok = reset_peak()
    base = status_kib("VmRSS")
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    walls, hyper, cpus = [], [], []
    peak = base
    for r in range(spec["reps"]):
        w, h, c = step(r)
        walls.append(w)
        hyper.append(h)
        cpus.append(c)
        if r == 0:
            peak = status_kib("VmHWM")
            if device != "cpu":
                gpu_peak = torch.cuda.max_memory_allocated()
    finite_h = [h for h in hyper if math.isfinite(h)]
    extra: dict[str, Any] = {}
    history = getattr(tuner, "history", None) if method != "sgd" else None
    if history:  # solver iterations actually run (Neumann stops early on a growing term by default)
        its = [h.solver.iterations for h in history if h.solver is not None and h.solver.skipped is None]
        extra["solver_iterations"] = [i for i in its if math.isfinite(i)]
    if device != "cpu":  # on a GPU the memory that matters is the device's, from the caching allocator
        extra = {"gpu_peak_mib": (gpu_peak - gpu_base) / 2**20, "gpu_total_peak_mib": gpu_peak / 2**20,
                 "gpu_name": torch.cuda.get_device_name()}
    return {
        "method": method,
        "inner_steps": cfg.inner_steps,
        "truncate": None if method in ("bptt", "sgd") else cfg.truncate,
        "per": cfg.per,
        "num_hyperparameters": problem.spec.num_hyperparameters,
        "batch_size": cfg.batch_size,
        "hyper_batches": cfg.hyper_batches,
        "dataset": spec["dataset"],
        "wall_s": statistics.median(walls),
        "wall_s_all": walls,
        # CPU seconds of the process (all its threads): what a loaded, shared machine inflates least
        "cpu_s": statistics.median(cpus),
        "cpu_s_all": cpus,
        "hypergrad_s": statistics.median(finite_h) if finite_h else None,
        "peak_mib": (peak - base) / MIB,
        "total_peak_mib": peak / MIB,
        "baseline_mib": base / MIB,
        "reps": spec["reps"],
        "reset_ok": reset_ok,
        "threads": torch.get_num_threads(),
        "device": device,
        "stop_on_growth": cfg.stop_on_growth,
        "batch_hyper": cfg.batch_hyper,
        **library_version(),
        "torch": torch.__version__,
        **extra,
    }


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
