"""Where the time of one meta step goes: cProfile and torch.profiler on the §5.3 problem.

    python -m benchmarks.profile_meta_step --method neumann --inner-steps 1000 --truncate 10 \\
        --out docs/results/perf_profile_neumann.json
    python -m benchmarks.profile_meta_step --method neumann --phases 7 --out docs/results/perf_phases_neumann.json

``--phases N``: instead of the profilers, N meta steps with each phase timed in CPU seconds of
the process (the T inner steps, the meta loss and its gradient over the validation set, the
hypergradient solve, the training-loss report; "rest" is the meta step minus them: stacking,
records, the Adam step, Python), interleaved with N plain ``torch.optim.SGD`` trainings of the
same T steps and batches (the floor); medians, and the median ratio of the wall times of the pairs.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PHASES = ("inner steps", "meta loss + gradient (validation set)", "hypergradient solve",
          "training-loss report", "rest")


def phases(tuner: Any, reps: int) -> dict[str, Any]:
    """CPU seconds of each phase of ``reps`` meta steps, interleaved with ``reps`` SGD trainings."""
    from benchmarks._probe import sgd_train

    problem, objective = tuner.problem, tuner.objective
    spent: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            c0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - c0
        return wrapper

    def report(*a: Any, **kw: Any) -> Any:  # eval_loss: the report when called by the strategy, not inside a solve
        return timed(PHASES[3], eval_loss)(*a, **kw)

    eval_loss = problem.eval_loss
    # instance attributes shadow the methods for this problem and objective only
    problem.train = timed(PHASES[0], problem.train)
    problem.eval_loss_and_grad = timed(PHASES[1], problem.eval_loss_and_grad)
    problem.eval_loss = report
    objective._solve = timed(PHASES[2], objective._solve)
    rows: list[dict[str, float]] = []
    floor: list[float] = []
    walls: list[tuple[float, float]] = []  # (SGD, meta step) wall seconds, side by side
    for r in range(reps):
        batches = objective.batches(10_000 + r)
        t0, c0 = time.perf_counter(), time.process_time()
        sgd_train(problem, batches)
        floor.append(time.process_time() - c0)
        sgd_wall = time.perf_counter() - t0
        spent.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        tuner.meta_step()
        total = time.process_time() - c0
        walls.append((sgd_wall, time.perf_counter() - t0))
        row = {name: spent.get(name, 0.0) for name in PHASES[:4]}
        row["rest"] = total - sum(row.values())
        row["meta step"] = total
        rows.append(row)
    for name in ("train", "eval_loss_and_grad", "eval_loss"):
        delattr(problem, name)
    del objective._solve
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    sgd = statistics.median(floor)
    lines = ["| phase | CPU s (median) | ÷ SGD training |", "|---|---|---|"]
    lines += [f"| {k} | {med[k]:.4f} | {med[k] / sgd:.3f} |" for k in (*PHASES, "meta step")]
    lines.append(f"| torch.optim.SGD, T steps | {sgd:.4f} | 1.000 |")
    wall_ratio = statistics.median(m / s for s, m in walls)
    lines.append(f"\nmeta step ÷ SGD training in wall time, the same pairs: {wall_ratio:.3f} (median)")
    cfg = tuner.config
    return {"method": cfg.method, "inner_steps": cfg.inner_steps, "truncate": cfg.truncate,
            "stop_on_growth": cfg.stop_on_growth, "reps": reps, "median_cpu_s": med, "sgd_cpu_s": sgd,
            "rows": rows, "sgd_cpu_s_all": floor, "wall_s_pairs": walls, "wall_ratio_median": wall_ratio,
            "torch": torch.__version__, "markdown": "\n".join(lines)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_meta_step", description=__doc__.split("\n")[0])
    p.add_argument("--method", default="neumann")
    p.add_argument("--inner-steps", type=int, default=1000)
    p.add_argument("--truncate", type=int, default=10)
    p.add_argument("--per", default="tensor")
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--phases", type=int, default=0, metavar="N",
                   help="time the phases of N meta steps (CPU seconds) beside N SGD trainings, no profilers")
    p.add_argument("--no-stop-on-growth", action="store_true", help="run all K Neumann terms")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from hypergrad.methods import get_method, method_names

    if args.phases > 0 and get_method(args.method).family != "implicit":
        p.error(f"--phases times the implicit methods' phases ({', '.join(method_names('implicit'))}), "
                f"not {args.method!r}")
    torch.set_num_threads(1)
    from hypergrad.config import RunConfig
    from hypergrad.tuner import TuneConfig, Tuner
    from hypergrad.workloads import build_problem

    cfg = TuneConfig(method=args.method, inner_steps=args.inner_steps, truncate=args.truncate, per=args.per,
                     meta_steps=10**6, stop_on_growth=not args.no_stop_on_growth)
    problem, _ = build_problem(RunConfig(dataset=args.dataset, data_root=args.data_root), cfg)
    tuner = Tuner(problem, cfg)
    tuner.meta_step()  # warm-up
    if args.phases > 0:
        data = phases(tuner, args.phases)
        data["command"] = "python -m benchmarks.profile_meta_step " + " ".join(sys.argv[1:] if argv is None else argv)
        print(data["markdown"])
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(data, indent=1))
        return 0
    out = io.StringIO()
    t0 = time.perf_counter()
    prof = cProfile.Profile()
    prof.enable()
    tuner.meta_step()
    prof.disable()
    wall = time.perf_counter() - t0
    out.write(f"# one meta step: {args.method}, T={args.inner_steps}, K={args.truncate}, per={args.per}, "
              f"{args.dataset}, torch {torch.__version__}, 1 thread; wall {wall:.3f} s under cProfile\n\n")
    out.write("## cProfile, by cumulative time\n")
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.top)
    out.write("## cProfile, by own time\n")
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as tp:
        tuner.meta_step()
    out.write("## torch.profiler, by self CPU time\n")
    out.write(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    text = out.getvalue()
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        site = Path(torch.__file__).resolve().parents[1]  # paths relative to the repository, site-packages, stdlib
        text = (text.replace(str(Path.cwd()) + "/", "").replace(str(site) + "/", "<site-packages>/")
                .replace(str(Path(os.__file__).parent) + "/", "<python-stdlib>/"))
        if args.out.suffix == ".json":  # {"command", "wall_s", "text"}
            text = json.dumps({"command": "python -m benchmarks.profile_meta_step " + " ".join(sys.argv[1:]),
                               "wall_s_under_cprofile": wall, "text": text}, indent=1)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
