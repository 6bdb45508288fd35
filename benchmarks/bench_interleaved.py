"""Table 2's time ratios with every method in ONE process, interleaved round by round (time only).

The §5.3 problem of :mod:`benchmarks.bench_meta_step`; each round runs one ``torch.optim.SGD``
training of T steps (the floor), one Neumann-RBP meta step per K (all K terms) and one BPTT meta
step, back to back, after one warm-up round. On a machine shared with other jobs the load drifts
over minutes; within a round of seconds it hits every method alike, so the ratios are taken within
each round and their medians reported (wall and CPU seconds). Memory is not measured here: that
needs a fresh process per method (:mod:`benchmarks.bench_meta_step`).

    python -m benchmarks.bench_interleaved --rounds 7 --out docs/results/perf_interleaved.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._driver import machine
from benchmarks.bench_meta_step import PAPER_TIME


def measure(ks: list[int], rounds: int, inner_steps: int, dataset: str, data_root: str | None) -> dict[str, Any]:
    from benchmarks._probe import sgd_train
    from hypergrad.config import RunConfig
    from hypergrad.tuner import TuneConfig, Tuner
    from hypergrad.workloads import build_problem

    torch.set_num_threads(1)
    base = TuneConfig(method="neumann", inner_steps=inner_steps, truncate=ks[0], meta_steps=10**6, seed=0,
                      stop_on_growth=False)
    problem, _ = build_problem(RunConfig(dataset=dataset, data_root=data_root, hidden=(50, 50, 50)), base)
    tuners = {f"neumann K={k}": Tuner(problem, dataclasses.replace(base, truncate=k)) for k in ks}
    tuners["bptt"] = Tuner(problem, dataclasses.replace(base, method="bptt"))
    objective = next(iter(tuners.values())).objective

    def clocked(fn: Any) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t0, time.process_time() - c0

    names = ["sgd", *tuners]
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(rounds + 1):  # round 0 warms up
        batches = objective.batches(r)
        got = {"sgd": clocked(lambda b=batches: sgd_train(problem, b))}
        got.update({n: clocked(t.meta_step) for n, t in tuners.items()})
        if r > 0:
            for n in names:
                times[n].append(got[n])
    ratios: dict[str, dict[str, list[float]]] = {}
    for clock, i in (("wall", 0), ("cpu", 1)):
        for k in ks:
            n = f"neumann K={k}"
            ratios.setdefault(f"BPTT ÷ Neumann-RBP K={k}", {})[clock] = [
                b[i] / x[i] for b, x in zip(times["bptt"], times[n])]
            ratios.setdefault(f"Neumann-RBP K={k} ÷ SGD", {})[clock] = [
                x[i] / s[i] for x, s in zip(times[n], times["sgd"])]
        ratios.setdefault("BPTT ÷ SGD", {})[clock] = [b[i] / s[i] for b, s in zip(times["bptt"], times["sgd"])]
    lines = ["| ratio, within each round | wall: median (min–max) | CPU: median (min–max) | paper |",
             "|---|---|---|---|"]
    for name, by in ratios.items():
        k = int(name.split("K=")[1].split()[0]) if "K=" in name else None
        paper = f"×{PAPER_TIME[k]}" if name.startswith("BPTT ÷ Neumann") and k in PAPER_TIME else "–"
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f})" for v in (by["wall"], by["cpu"])]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {paper} |")
    return {"times": {n: {"wall_s": [w for w, _ in v], "cpu_s": [c for _, c in v]} for n, v in times.items()},
            "ratios": ratios,
            "medians": {n: {c: statistics.median(v) for c, v in by.items()} for n, by in ratios.items()},
            "markdown": "\n".join(lines)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_interleaved", description=__doc__.split("\n")[0])
    p.add_argument("--truncate", default="10,50,100", help="comma list of K (10,50,100)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds after one warm-up round (7)")
    p.add_argument("--inner-steps", type=int, default=1000, help="T (1000)")
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        ks = [int(k) for k in args.truncate.split(",")]
    except ValueError:
        p.error(f"--truncate must be a comma list of integers, got {args.truncate!r}")
    if args.rounds < 1 or args.inner_steps < 1 or any(k < 1 or k > args.inner_steps for k in ks):
        p.error("need rounds >= 1, T >= 1 and 1 <= K <= T")
    info = machine()
    data = measure(ks, args.rounds, args.inner_steps, args.dataset, args.data_root)
    print(data["markdown"])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python -m benchmarks.bench_interleaved " + " ".join(sys.argv[1:] if argv is None else argv)
        args.out.write_text(json.dumps({"command": cmd, "machine": info, "rounds": args.rounds, **data}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
