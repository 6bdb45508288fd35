"""Run the §5.3 grid: methods x (T, K) x seeds x settings, one JSON file per run.

Every run restarts the MLP from the same initial weights at each meta step (the seed fixes the
data split, the initial weights and the minibatch order, shared by all methods) and records the
tuner's per-meta-step history. Finished runs are skipped, so an interrupted grid resumes.
``--plot-only`` draws the figures and tables from the runs (and ``hypergrad check-grad`` files).

    python -m recipes.hyperopt_mnist.run --data-root ../shared/datasets/mnist --out runs/hyperopt
    python -m recipes.hyperopt_mnist.run --setting default --grid 100x50 --seeds 0 --meta-steps 3
    python -m recipes.hyperopt_mnist.run --plot-only --out runs/hyperopt --figdir docs/results \\
        --summary docs/results/hyperopt_summary.json

``TuneResult``'s final evaluation (three more inner trainings) is skipped to save CPU time:
the reported "final" numbers are those of the last meta step's record (the meta loss and the
training loss on all training examples at ``w_T``, for the hyperparameters of that step).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
import torch

from hypergrad._profiling import library_version
from hypergrad.config import RunConfig
from hypergrad.methods import method_names
from hypergrad.tuner import TuneConfig, Tuner
from hypergrad.workloads import build_problem, load_split
from recipes._common import add_output_flags, label, methods_list, plot_only_paths, recipe_parser, seeds_list

DEFAULT_CONFIG = Path(__file__).with_name("config.toml")
SETTINGS = ("paper", "default")
#: ``--quick``: the tests' tiny grid on scikit-learn's digits (no download).
QUICK = {"dataset": "digits", "grid": [(12, 4)], "seeds": [0], "meta_steps": 2}


@dataclass(frozen=True)
class Job:
    """One tuning run."""

    setting: str
    method: str
    inner_steps: int
    truncate: int
    meta_steps: int
    seed: int

    def path(self, out_dir: Path) -> Path:
        return out_dir / self.setting / f"T{self.inner_steps}_K{self.truncate}" / f"{self.method}_seed{self.seed}.json"


def load_recipe(path: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """Read and check the recipe's TOML file."""
    with open(path, "rb") as f:
        recipe = tomllib.load(f)
    for key in ("dataset", "methods", "seeds", "grid", "settings"):
        if key not in recipe:
            raise ValueError(f"{path}: missing key {key!r}")
    for m in recipe["methods"]:
        if m not in method_names():
            raise ValueError(f"{path}: unknown method {m!r}; expected some of {', '.join(method_names())}")
    for name in recipe["settings"]:
        if name not in SETTINGS:
            raise ValueError(f"{path}: unknown setting {name!r}; expected {', '.join(SETTINGS)}")
    return recipe


def parse_grid(text: str) -> list[tuple[int, int]]:
    """``"100x50,1000x50"`` -> ``[(100, 50), (1000, 50)]``."""
    out = []
    for part in text.split(","):
        t, _, k = part.strip().partition("x")
        if not (t.isdigit() and k.isdigit()) or int(t) < 1 or int(k) < 1 or int(k) > int(t):
            raise ValueError(f"grid entries look like TxK with 1 <= K <= T, got {part!r}")
        out.append((int(t), int(k)))
    return out


def jobs_from(recipe: dict[str, Any], settings: list[str], grid: list[tuple[int, int]] | None,
              methods: list[str], seeds: list[int], meta_steps: int | None) -> list[Job]:
    """Jobs ordered grid point -> setting -> seed -> method, so partial grids stay comparable."""
    points = [(g["inner_steps"], g["truncate"], g.get("meta_steps", 10)) for g in recipe["grid"]]
    if grid is not None:
        known = {(t, k): n for t, k, n in points}
        points = [(t, k, known.get((t, k), 5)) for t, k in grid]
    jobs = []
    for t, k, n in points:
        for setting in settings:
            steps = meta_steps or (n[setting] if isinstance(n, dict) else n)
            for seed in seeds:
                for m in methods:
                    jobs.append(Job(setting, m, t, k, steps, seed))
    return jobs




def run_job(job: Job, recipe: dict[str, Any], split: Any, data_root: str | None) -> dict[str, Any]:
    """Tune with ``hypergrad.Tuner`` for ``job.meta_steps`` meta steps and return the record."""
    setting = recipe["settings"][job.setting]
    cfg = TuneConfig(method=job.method, inner_steps=job.inner_steps, truncate=job.truncate,
                     meta_steps=job.meta_steps, seed=job.seed, **setting)
    run = RunConfig(dataset=recipe["dataset"], data_root=data_root, hidden=tuple(recipe["hidden"]),
                    n_train=recipe.get("n_train"))
    problem, _ = build_problem(run, cfg, split)
    tuner = Tuner(problem, cfg)
    t0 = time.perf_counter()
    while tuner.step_count < cfg.meta_steps:
        tuner.meta_step()
    history = [
        {key: r[key] for key in ("step", "meta_loss", "val_loss", "train_loss", "hypergrad_norm",
                                 "events", "action", "seconds", "solver")}
        for r in (record.to_dict() for record in tuner.history)
    ]
    last = history[-1]
    return {
        "job": job.__dict__, "config": cfg.to_dict(), "dataset": recipe["dataset"],
        "num_hyperparameters": problem.spec.num_hyperparameters,
        "history": history,
        "final_meta_loss": last["meta_loss"], "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "divergence_events": sum(1 for r in history if r["events"]),
        "final_hyperparameters": tuner.spec.describe(tuner.hparams),
        "seconds": time.perf_counter() - t0,
        "library": library_version(),
    }


def build_parser() -> argparse.ArgumentParser:
    p = recipe_parser("python -m recipes.hyperopt_mnist.run", __doc__)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe TOML (grid, settings, seeds)")
    p.add_argument("--data-root", default=None, help="MNIST folder (default: hypergrad.data.default_data_root)")
    p.add_argument("--dataset", choices=("mnist", "digits"), default=None, help="override (digits: tests)")
    p.add_argument("--setting", default=None, help="comma list of paper,default (default: both)")
    p.add_argument("--grid", default=None, help="comma list of TxK (inner steps x truncate), e.g. 100x50,1000x50")
    p.add_argument("--methods", type=methods_list(), default=None,
                   help=f"comma list from {','.join(method_names())} (default: the recipe's)")
    p.add_argument("--seeds", type=seeds_list, default=None, metavar="LIST",
                   help="comma list of seeds, ranges a-b allowed (default: the recipe's)")
    p.add_argument("--meta-steps", type=int, default=None, help="override the recipe's meta steps")
    p.add_argument("--deadline", type=float, default=None, help="start no job after this many seconds")
    p.add_argument("--figdir", type=Path, default=None, help="--plot-only: write the figures here (default: none)")
    p.add_argument("--summary", type=Path, default=None, help="--plot-only: write the table rows as JSON here")
    p.add_argument("--checkgrad", type=Path, default=None,
                   help="--plot-only: folder with checkgrad_*.json (default: the run folders)")
    p.add_argument("--checkgrad-stdout", type=Path, default=None,
                   help="--plot-only: saved output of `hypergrad check-grad` runs (instead of their --out JSON)")
    p.add_argument("--checkgrad-settings", default="",
                   help="comma list naming the setting (paper/default) of each table in --checkgrad-stdout")
    add_output_flags(p, out_default=Path("runs/hyperopt"), out_help="folder of the per-run JSON files",
                     quick_help="tiny grid for tests: digits, T=12, K=4, seed 0, 2 meta steps",
                     plot_only_help="figures and tables")
    return p


def _plot_only(parser: argparse.ArgumentParser, args: argparse.Namespace, roots: list[Path]) -> int:
    from recipes.hyperopt_mnist import plot

    runs = plot.load_runs(*roots)
    if not runs:
        parser.error(f"no runs under {', '.join(str(r) for r in roots)}")
    cos = plot.load_checkgrad(*([args.checkgrad] if args.checkgrad is not None else roots))
    if args.checkgrad_stdout is not None:
        try:
            cos += plot.parse_checkgrad_stdout(args.checkgrad_stdout.read_text(),
                                               [s for s in args.checkgrad_settings.split(",") if s])
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
    print(plot.report(runs, cos, args.figdir, args.summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    roots = plot_only_paths(p, args)
    if roots is not None:
        return _plot_only(p, args, roots)
    torch.set_num_threads(1)
    try:
        recipe = load_recipe(args.config)
        if args.quick:
            recipe["dataset"] = QUICK["dataset"]
        if args.dataset:
            recipe["dataset"] = args.dataset
        settings = args.setting.split(",") if args.setting else list(recipe["settings"])
        for s in settings:
            if s not in recipe["settings"]:
                raise ValueError(f"unknown setting {s!r}; expected some of {', '.join(recipe['settings'])}")
        methods = args.methods or list(recipe["methods"])
        seeds = args.seeds or (QUICK["seeds"] if args.quick else list(recipe["seeds"]))
        grid = parse_grid(args.grid) if args.grid else (QUICK["grid"] if args.quick else None)
        meta_steps = args.meta_steps or (QUICK["meta_steps"] if args.quick else None)
        jobs = jobs_from(recipe, settings, grid, methods, seeds, meta_steps)
    except (ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        p.error(str(exc))
    from tqdm.auto import tqdm

    start = time.perf_counter()
    splits: dict[int, Any] = {}
    bar = tqdm(jobs, desc="runs", disable=args.no_progress, file=sys.stderr)
    for job in bar:
        path = job.path(args.out)
        if path.exists():
            continue
        if args.deadline is not None and time.perf_counter() - start > args.deadline:
            bar.write(f"deadline reached; not starting {path}", file=sys.stderr)
            return 0
        if job.seed not in splits:
            run = RunConfig(dataset=recipe["dataset"], data_root=args.data_root, n_train=recipe.get("n_train"))
            splits = {job.seed: load_split(run, job.seed)}
        result = run_job(job, recipe, splits[job.seed], args.data_root)
        result["dataset"] = recipe["dataset"]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
        losses = " ".join(f"{r['meta_loss']:.4f}" if r["meta_loss"] is not None else "nan"
                          for r in result["history"])
        bar.write(f"{job.setting:7s} T={job.inner_steps:5d} K={job.truncate:3d} {label(job.method):12s} "
                  f"seed {job.seed}: meta loss {losses} ({result['seconds']:.1f} s, "
                  f"{result['divergence_events']} steps with events)", file=sys.stdout)
    bar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
