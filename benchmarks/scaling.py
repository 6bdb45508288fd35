"""Scaling of one meta step: time and peak memory against T and against the number of hyperparameters.

* ``--what steps``: BPTT, TBPTT(K) and Neumann-RBP(K) for T from 100 to 10,000 (BPTT capped by
  ``--bptt-max-steps``: its graph grows by about 1 MiB per step on this problem).
* ``--what per``: Neumann-RBP(K) and TBPTT(K) at T with the hyperparameters per global, layer,
  tensor and element (2 x 45,360 scalars for the 784-50-50-50-10 MLP).

Each point runs in a fresh process (:mod:`benchmarks._probe`); the plots use log axes.

    python -m benchmarks.scaling --what steps --out docs/results/perf_scaling_steps.json \\
        --plot docs/results/perf_scaling_steps.png
    python -m benchmarks.scaling --what per --out docs/results/perf_scaling_per.json \\
        --plot docs/results/perf_scaling_per.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._driver import LABELS, machine, probe, write_json

GRANULARITIES = ("global", "layer", "tensor", "element")


def _log(row: dict[str, Any], seconds: float) -> None:
    print(f"{LABELS[row['method']]:12s} T={row['inner_steps']:6d} per={row['per']:8s} "
          f"({row['num_hyperparameters']:6d} hp) {row['wall_s']:8.3f} s  +{row['peak_mib']:8.1f} MiB  "
          f"[{seconds:.0f} s]", file=sys.stderr, flush=True)


def run_steps(steps: list[int], methods: list[str], k: int, bptt_max: int, reps: int,
              base: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for t in steps:
        for m in methods:
            if m == "bptt" and t > bptt_max:
                continue
            t0 = time.perf_counter()
            row = probe({**base, "method": m, "inner_steps": t, "truncate": min(k, t),
                         "reps": reps if t < 5000 else max(1, min(reps, 2))})
            rows.append(row)
            _log(row, time.perf_counter() - t0)
    return rows


def run_per(pers: list[str], methods: list[str], t: int, k: int, reps: int,
            base: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for per in pers:
        for m in methods:
            t0 = time.perf_counter()
            row = probe({**base, "method": m, "inner_steps": t, "truncate": k, "per": per, "reps": reps})
            rows.append(row)
            _log(row, time.perf_counter() - t0)
    return rows


def plot(rows: list[dict[str, Any]], what: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = "inner_steps" if what == "steps" else "num_hyperparameters"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r[x_key], r["wall_s"], max(r["peak_mib"], 0.05)) for r in rows if r["method"] == m)
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], "o-", label=LABELS[m])
        axes[1].plot(xs, [p[2] for p in pts], "o-", label=LABELS[m])
    xlabel = "inner steps T" if what == "steps" else "number of hyperparameters"
    for ax, ylabel in zip(axes, ("seconds per meta step (median)", "peak RSS growth (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if what == "per":
        for r in rows:
            if r["method"] == rows[0]["method"]:
                axes[0].annotate(r["per"], (r[x_key], r["wall_s"]), fontsize=8)
    fig.suptitle("One meta step on MNIST (784-50-50-50-10 MLP, batch 100), 1 CPU thread")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--what", choices=("steps", "per"), required=True)
    p.add_argument("--steps", default="100,300,1000,3000,10000", help="T values for --what steps")
    p.add_argument("--inner-steps", type=int, default=1000, help="T for --what per (1000)")
    p.add_argument("--truncate", type=int, default=10, help="K (10)")
    p.add_argument("--methods", default=None, help="default: bptt,tbptt,neumann (steps); neumann,tbptt (per)")
    p.add_argument("--per", default=",".join(GRANULARITIES))
    p.add_argument("--bptt-max-steps", type=int, default=3000, help="skip BPTT above this T (3000)")
    p.add_argument("--reps", type=int, default=3, help="timed meta steps per point (3; 2 at T >= 5000)")
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-stop-on-growth", action="store_true",
                   help="run all K Neumann terms (the paper's Algorithm 2) instead of the tuner's early stop")
    p.add_argument("--no-batch-hyper", action="store_true",
                   help="solve the M hyper-batch systems one after another (less memory, more time)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    base = {"dataset": args.dataset, "data_root": args.data_root, "batch_hyper": not args.no_batch_hyper,
            "stop_on_growth": not args.no_stop_on_growth}
    start = time.perf_counter()
    info = machine()
    try:
        if args.what == "steps":
            methods = (args.methods or "bptt,tbptt,neumann").split(",")
            rows = run_steps([int(s) for s in args.steps.split(",")], methods, args.truncate,
                             args.bptt_max_steps, args.reps, base)
        else:
            methods = (args.methods or "neumann,tbptt").split(",")
            pers = args.per.split(",")
            bad = [g for g in pers if g not in GRANULARITIES]
            if bad:
                p.error(f"unknown granularity {bad}; choose from {', '.join(GRANULARITIES)}")
            rows = run_per(pers, methods, args.inner_steps, args.truncate, args.reps, base)
    except ValueError as exc:
        p.error(str(exc))
    if args.out is not None:
        write_json(args.out, {"command": "python -m benchmarks.scaling " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv),
                              "machine": info, "what": args.what, "seconds": time.perf_counter() - start,
                              "rows": rows})
    if args.plot is not None:
        plot(rows, args.what, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
