"""Read ``hypergrad compare`` results: best-so-far curves and per-seed gaps to a reference method.

``compare.json`` tables report the best meta loss at 25/50/100% of the budget. The docs also quote
the mean best-so-far on a grid of inner trainings and of wall seconds, and per-seed differences to
TPE; this prints them from one or more ``compare.json`` files (runs of several files are pooled,
e.g. a Neumann run and a TPE run made separately with the same seeds):

    python -m benchmarks.compare_curves runs/optuna/optuna_digits.json --seconds 5,10,15,20 \\
        --versus tpe --at 40,100
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from hypergrad.compare import Trace, best_at, best_at_seconds, trace_from_json


def _fmt(values: list[float | None]) -> str:
    return " ".join("  n/a " if v is None else f"{v:.4f}" for v in values)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if len(vals) == len(values) and vals else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_curves", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="compare.json files (their runs are pooled)")
    p.add_argument("--every", type=int, default=10, help="grid step in inner trainings (10)")
    p.add_argument("--seconds", default="", help="comma list of wall seconds for the seconds axis")
    p.add_argument("--versus", default=None, help="reference method for per-seed differences (e.g. tpe)")
    p.add_argument("--at", default="", help="comma list of budgets for the per-seed differences")
    args = p.parse_args(argv)
    runs = []
    budget = 0
    for f in args.files:
        data = json.loads(f.read_text())
        runs += data["runs"]
        budget = max(budget, int(data["budget"]))
    traces: dict[str, list[Trace]] = {}
    for r in runs:
        traces.setdefault(r["method"], []).append(trace_from_json(r))
    for ts in traces.values():
        ts.sort(key=lambda t: t.seed)
    grid = list(range(args.every, budget + 1, args.every))
    print(f"mean best-so-far at {grid} inner trainings")
    for m, ts in traces.items():
        print(f"  {m:14s} {_fmt([_mean([best_at(t, b) for t in ts]) for b in grid])}")
    if args.seconds:
        secs = [float(s) for s in args.seconds.split(",")]
        print(f"mean best-so-far at {secs} wall seconds (n/a: some seed had no point yet)")
        for m, ts in traces.items():
            print(f"  {m:14s} {_fmt([_mean([best_at_seconds(t, s) for t in ts]) for s in secs])}")
        for m, ts in traces.items():
            print(f"  {m:14s} total seconds per seed: " + ", ".join(f"{t.seconds[-1]:.1f}" for t in ts))
    for r in sorted(runs, key=lambda r: (r["method"], r["seed"])):  # the tuner's guard actions, if any
        for part, info in (r.get("info") or {}).items():
            if isinstance(info, dict) and "actions" in info:
                print(f"  {r['method']:14s} seed {r['seed']} {part}: actions {info['actions']}")
    if args.versus:
        if args.versus not in traces:
            p.error(f"--versus {args.versus!r}: no such method in the files ({', '.join(traces)})")
        ref = {t.seed: t for t in traces[args.versus]}
        for b in [float(x) for x in args.at.split(",") if x] or [float(budget)]:
            print(f"per-seed difference to {args.versus} at {b:g} inner trainings")
            for m, ts in traces.items():
                if m == args.versus:
                    continue
                diffs = [None if (a := best_at(t, b)) is None or (c := best_at(ref[t.seed], b)) is None
                         else a - c for t in ts if t.seed in ref]
                print(f"  {m:14s} " + ", ".join("n/a" if d is None else f"{d:+.4f}" for d in diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
