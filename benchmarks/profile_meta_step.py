"""Where the time of one meta step goes: cProfile and torch.profiler on the §5.3 problem.

    python -m benchmarks.profile_meta_step --method neumann --inner-steps 1000 --truncate 10 \\
        --out docs/results/perf_profile_neumann.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_meta_step", description=__doc__.split("\n")[0])
    p.add_argument("--method", default="neumann")
    p.add_argument("--inner-steps", type=int, default=1000)
    p.add_argument("--truncate", type=int, default=10)
    p.add_argument("--per", default="tensor")
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from hypergrad.config import RunConfig
    from hypergrad.tuner import TuneConfig, Tuner
    from hypergrad.workloads import build_problem

    cfg = TuneConfig(method=args.method, inner_steps=args.inner_steps, truncate=args.truncate, per=args.per,
                     meta_steps=10**6)
    problem, _ = build_problem(RunConfig(dataset=args.dataset, data_root=args.data_root), cfg)
    tuner = Tuner(problem, cfg)
    tuner.meta_step()  # warm-up
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
            import json

            text = json.dumps({"command": "python -m benchmarks.profile_meta_step " + " ".join(sys.argv[1:]),
                               "wall_s_under_cprofile": wall, "text": text}, indent=1)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
