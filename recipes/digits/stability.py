"""Stability of the tuner's defaults: every method, several seeds, digits and MNIST.

A run is *stable* when no meta step's validation loss exceeds ``ratio`` x the initial one
after the guard acted (we report the maximum), and the exported (best) hyperparameters end
below the initial validation loss. Writes a JSON file and a markdown table (``--plot-only``
re-writes the table from the JSON).

    python -m recipes.digits.stability --dataset digits --seeds 0,1,2,3,4 --out docs/results/stability_digits.json
    python -m recipes.digits.stability --plot-only --out docs/results/stability_digits.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from hypergrad import TuneConfig, Tuner
from hypergrad.config import RunConfig
from hypergrad.workloads import build_problem, load_split
from recipes._common import (
    PAPER_METHODS,
    add_methods_flag,
    add_output_flags,
    add_seeds_flag,
    plot_only_paths,
    recipe_parser,
)


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
    p = recipe_parser("python -m recipes.digits.stability", __doc__)
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    p.add_argument("--data-root", default=None)
    add_methods_flag(p, PAPER_METHODS)
    add_seeds_flag(p, range(5), "seeds (data split, initial weights, minibatch order)")
    p.add_argument("--inner-steps", type=int, default=100, help="inner SGD steps T")
    p.add_argument("--truncate", type=int, default=TuneConfig().truncate, help="K (TBPTT steps, solver iterations)")
    p.add_argument("--meta-steps", type=int, default=50)
    add_output_flags(p, out_default=None, out_help="results JSON (the markdown table goes beside it, .md)",
                     quick_help="tiny run for tests: 1 seed, 20 inner steps, K=5, 2 meta steps",
                     plot_only_help="markdown table")
    args = p.parse_args(argv)
    paths = plot_only_paths(p, args)
    if paths is not None:
        try:
            rows = [r for path in paths for r in json.loads(path.read_text())["rows"]]
        except (OSError, ValueError, KeyError) as exc:
            p.error(f"cannot read the rows of {', '.join(map(str, paths))}: {exc}")
        print(table(rows))
        return 0
    if args.out is None:
        p.error("--out is required (the results JSON)")
    if args.quick:
        args.seeds, args.inner_steps, args.truncate, args.meta_steps = args.seeds[:1], 20, 5, 2
    torch.set_num_threads(1)
    overrides = {"inner_steps": args.inner_steps, "truncate": args.truncate, "meta_steps": args.meta_steps}
    rows = []
    from tqdm.auto import tqdm

    jobs = [(m, s) for m in args.methods for s in args.seeds]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "plot_only"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for method, seed in tqdm(jobs, desc="runs", disable=args.no_progress, file=sys.stderr):
        rows.append(run_one(args.dataset, args.data_root, method, seed, overrides))
        args.out.write_text(json.dumps({"args": config, "rows": rows}, indent=2))
    md = table(rows)
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
