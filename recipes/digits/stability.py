"""Stability of the tuner's defaults: every method, several seeds, digits and MNIST.

A run is *stable* when no meta step's validation loss exceeds ``ratio`` x the initial one
after the guard acted (we report the maximum), and the exported (best) hyperparameters end
below the initial validation loss. Writes a JSON file and a markdown table.

    python -m recipes.digits.stability --dataset digits --seeds 0,1,2,3,4 --out docs/results/stability_digits.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hypergrad import TuneConfig, Tuner
from hypergrad.config import RunConfig
from hypergrad.workloads import build_problem, load_split


def run_one(dataset: str, data_root: str | None, method: str, seed: int, overrides: dict) -> dict:
    cfg = TuneConfig(method=method, seed=seed, **overrides)
    run = RunConfig(dataset=dataset, data_root=data_root)
    problem, split = build_problem(run, cfg, load_split(run, seed))
    tuner = Tuner(problem, cfg, x_test=split.x_test, y_test=split.y_test)
    t0 = time.perf_counter()
    result = tuner.run()
    vals = [r.val_loss for r in result.history if r.val_loss is not None]
    ev = result.evaluation
    return {
        "method": method,
        "seed": seed,
        "initial_val": ev["initial"]["val_loss"],
        "best_val": ev["best"]["val_loss"],
        "final_val": ev["final"]["val_loss"],
        "max_val_during": max(vals) if vals else None,
        "initial_test_acc": ev["initial"]["test_accuracy"],
        "best_test_acc": ev["best"]["test_accuracy"],
        "events": sum(1 for r in result.history if r.events),
        "actions": sorted({r.action for r in result.history}),
        "seconds": time.perf_counter() - t0,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| method | seeds | initial val | best val (exported) | final val | max val during run | "
        "test acc initial -> best | guard events |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]

        def ms(key: str, rs: list[dict] = rs) -> str:
            xs = [r[key] for r in rs]
            return f"{statistics.mean(xs):.4f} ± {statistics.pstdev(xs):.4f}"

        lines.append(
            f"| {method} | {len(rs)} | {ms('initial_val')} | {ms('best_val')} | {ms('final_val')} | "
            f"{max(r['max_val_during'] for r in rs):.3f} | {ms('initial_test_acc')} -> {ms('best_test_acc')} | "
            f"{sum(r['events'] for r in rs)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--methods", default="bptt,tbptt,rbp,cg,neumann")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--inner-steps", type=int, default=100)
    p.add_argument("--meta-steps", type=int, default=50)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    overrides = {"inner_steps": args.inner_steps, "meta_steps": args.meta_steps}
    rows = []
    from tqdm.auto import tqdm

    jobs = [(m, int(s)) for m in args.methods.split(",") for s in args.seeds.split(",")]
    for method, seed in tqdm(jobs, desc="runs"):
        rows.append(run_one(args.dataset, args.data_root, method, seed, overrides))
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    md = table(rows)
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
