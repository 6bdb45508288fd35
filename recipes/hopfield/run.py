"""Train the continuous Hopfield network with BPTT, TBPTT and the RBP family (paper §5.1, Table A1).

Two experiments, both written to one JSON file (``--out``):

* ``curves`` (Fig. 1 and 2 analogues): one network per method, initialised from ``--curve-seed``,
  truncation ``--curve-truncate``, ``--curve-iterations`` Adam steps (0: no curves); training L1
  every iteration, validation L1 on the corrupted images every ``--val-every`` iterations; the
  images each method retrieves at the end.
* ``table`` (Table A1 analogue): one trial per seed of ``--seeds``, per method and per truncation
  of ``--truncate``, ``--iterations`` Adam steps each (0: no table); a trial succeeds when its
  final training loss is below 50% of its initial loss.

Examples::

    python -m recipes.hopfield.run --quick --out /tmp/hopfield_quick.json --figdir /tmp
    python -m recipes.hopfield.run --out runs/hopfield.json --figdir docs/results
    python -m recipes.hopfield.run --plot-only runs/hopfield.json --figdir docs/results
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hypergrad.data import DataError, default_data_root
from hypergrad.methods import get_method, method_names
from recipes._common import (
    PAPER_METHODS,
    add_methods_flag,
    add_output_flags,
    add_seeds_flag,
    int_list,
    label,
    plot_only_paths,
    recipe_parser,
)
from recipes.hopfield.model import READOUTS, HopfieldNet, corrupt, l1_loss, load_images, train_step_grad

SCHEMA_VERSION = 2  # 2: the table lists its trials' seeds (was: trials_requested)


def build_parser() -> argparse.ArgumentParser:
    p = recipe_parser("python -m recipes.hopfield.run", __doc__)
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder with the MNIST IDX files (default: default_data_root('mnist'))")
    add_methods_flag(p, PAPER_METHODS)
    add_seeds_flag(p, range(1, 21), "seeds of the table's trials, one trial per seed")
    p.add_argument("--inner-steps", type=int, default=50, help="inference steps T (paper: 50)")
    p.add_argument("--truncate", type=int_list(1), default=[10, 20, 30], metavar="LIST",
                   help="truncations K of the table (comma list; default: 10,20,30)")
    p.add_argument("--iterations", type=int, default=20, help="Adam steps per table trial (0: no table)")
    p.add_argument("--curve-seed", type=int, default=0, help="seed of the curves run")
    p.add_argument("--curve-iterations", type=int, default=100,
                   help="Adam steps of the curves run (0: no curves)")
    p.add_argument("--curve-truncate", type=int, default=20, help="truncation K of the curves run")
    p.add_argument("--val-every", type=int, default=10, help="validation period of the curves run")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--readout", choices=READOUTS, default="sigmoid",
                   help="outputs phi(b h) (paper's text; default) or raw h (paper's released code)")
    p.add_argument("--corrupt", type=float, default=0.5, help="fraction of non-zero test pixels set to 0")
    p.add_argument("--figdir", type=Path, default=None, help="where to write the PNG figures (default: none)")
    p.add_argument("--fig-prefix", default="hopfield", help="file-name prefix of the figures")
    add_output_flags(p, out_default=Path("runs/hopfield.json"), out_help="results JSON",
                     quick_help="tiny run for tests: 2 iterations, 1 trial, truncation 10",
                     plot_only_help="figures and tables (with several files, curves and table come from "
                                    "the first file that has them)")
    return p


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _bits(images: torch.Tensor) -> list[str]:
    return ["".join("1" if v >= 0.5 else "0" for v in row.tolist()) for row in images]


def _evaluate(net: HopfieldNet, corrupted: torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    """Validation L1 of the outputs on the corrupted inputs, and of the binarised outputs."""
    out = net.retrieve(corrupted)
    return float(l1_loss(out, clean)), float(l1_loss((out >= 0.5).to(clean.dtype), clean))


def run_curves(images: torch.Tensor, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    """Fig. 1 and Fig. 2: one network per method from the same initialisation."""
    corrupted = corrupt(images, args.corrupt, generator=torch.Generator().manual_seed(args.curve_seed))
    curves: dict[str, Any] = {}
    retrieval: dict[str, list[str]] = {"clean": _bits(images), "corrupted": _bits(corrupted)}
    for method in args.methods:
        gen = torch.Generator().manual_seed(args.curve_seed)
        net = HopfieldNet.create(generator=gen, readout_mode=args.readout, num_steps=args.inner_steps)
        opt = torch.optim.Adam([net.A], lr=args.lr)
        rec: dict[str, list[Any]] = {"train_loss": [], "val_step": [], "val_loss": [], "val_binary": [],
                                     "spectral_radius": [], "seconds": [], "cpu_seconds": [],
                                     "saturated": []}
        bar = tqdm(range(args.curve_iterations), desc=f"curves {label(method)}", disable=not progress,
                   file=sys.stderr)
        for it in bar:
            if it % args.val_every == 0:
                val, val_bin = _evaluate(net, corrupted, images)
                rec["val_step"].append(it)
                rec["val_loss"].append(_finite(val))
                rec["val_binary"].append(_finite(val_bin))
                rec["saturated"].append(net.saturated_fraction(images))
            t0, c0 = time.perf_counter(), time.process_time()
            loss, info = train_step_grad(net, images, method, args.curve_truncate, generator=gen)
            opt.step()
            rec["seconds"].append(time.perf_counter() - t0)
            rec["cpu_seconds"].append(time.process_time() - c0)
            rec["train_loss"].append(_finite(loss))
            rec["spectral_radius"].append(None if info is None else _finite(info.spectral_radius))
            bar.set_postfix(loss=f"{loss:.4g}")
        val, val_bin = _evaluate(net, corrupted, images)
        rec["val_step"].append(args.curve_iterations)
        rec["val_loss"].append(_finite(val))
        rec["val_binary"].append(_finite(val_bin))
        rec["saturated"].append(net.saturated_fraction(images))
        curves[method] = rec
        retrieval[method] = _bits(net.retrieve(corrupted))
    return {"truncation": args.curve_truncate, "methods": curves, "retrieval": retrieval}


def run_table(images: torch.Tensor, args: argparse.Namespace, progress: bool,
              on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Table A1: success rate per method and truncation (BPTT, which has no truncation, is left out).

    The trial of seed ``s`` initialises ``A`` (and RBP's random start) from ``s``. Corruption plays
    no part: success is judged on the (clean) training loss.
    """
    methods = [m for m in args.methods if get_method(m).uses_truncate]
    cells: dict[str, dict[str, Any]] = {
        m: {str(k): {"initial": [], "final": [], "success": []} for k in args.truncate} for m in methods
    }
    table = {"truncations": args.truncate, "iterations": args.iterations, "seeds": args.seeds, "cells": cells}
    total = len(args.seeds) * len(methods) * len(args.truncate)
    bar = tqdm(total=total, desc="table", disable=not progress, file=sys.stderr)
    for seed in args.seeds:
        for method in methods:
            for k in args.truncate:
                gen = torch.Generator().manual_seed(seed)
                net = HopfieldNet.create(generator=gen, readout_mode=args.readout, num_steps=args.inner_steps)
                opt = torch.optim.Adam([net.A], lr=args.lr)
                losses = []
                for _ in range(args.iterations):
                    loss, _ = train_step_grad(net, images, method, k, generator=gen)
                    opt.step()
                    losses.append(loss)
                # As the paper's code records it: the training loss of the first and the last iteration.
                initial, final = losses[0], losses[-1]
                cell = cells[method][str(k)]
                cell["initial"].append(_finite(initial))
                cell["final"].append(_finite(final))
                cell["success"].append(bool(math.isfinite(final) and final < 0.5 * initial))
                bar.update(1)
                bar.set_postfix(method=method, k=k, seed=seed)
        if on_trial is not None:  # partial results survive an interrupted run
            on_trial(table)
    bar.close()
    return table


def success_table(results: dict[str, Any]) -> str:
    """Markdown table: success rate per method (columns) and truncation (rows)."""
    table = results.get("table")
    if not table:
        return "(no table in these results)"
    methods = list(table["cells"])
    lines = ["| Truncation | " + " | ".join(label(m) for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for k in table["truncations"]:
        row = []
        for m in methods:
            succ = table["cells"][m][str(k)]["success"]
            row.append(f"{100.0 * sum(succ) / len(succ):.0f}% ({sum(succ)}/{len(succ)})" if succ else "-")
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def curve_summary(results: dict[str, Any]) -> str:
    """Markdown table of the curves run: losses, median seconds per iteration, saturated free units."""
    curves = results.get("curves")
    if not curves:
        return "(no curves in these results)"

    def fmt(v: float | None, spec: str = ".4g") -> str:
        return "nan/inf" if v is None else format(v, spec)

    lines = ["| Method | first train L1 | final train L1 | final val L1 | final val L1 (binarised) "
             "| median s/iter (CPU; wall if absent) | saturated free units (end) |", "|---|---|---|---|---|---|---|"]
    for m, rec in curves["methods"].items():
        secs = sorted(rec.get("cpu_seconds") or rec["seconds"])
        lines.append(
            f"| {label(m)} | {fmt(rec['train_loss'][0])} | {fmt(rec['train_loss'][-1])} "
            f"| {fmt(rec['val_loss'][-1])} | {fmt(rec['val_binary'][-1])} "
            f"| {secs[len(secs) // 2]:.2f} | {fmt(rec['saturated'][-1], '.0%') if rec.get('saturated') else '-'} |")
    return "\n".join(lines)


def plot_curves(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = results["curves"]["methods"]
    fig, (ax_tr, ax_va) = plt.subplots(1, 2, figsize=(11, 4))
    for m, rec in curves.items():
        tr = [float("nan") if v is None else v for v in rec["train_loss"]]
        ax_tr.plot(range(len(tr)), tr, label=label(m))
        va = [float("nan") if v is None else v for v in rec["val_loss"]]
        ax_va.plot(rec["val_step"], va, marker=".", label=label(m))
    k = results["curves"]["truncation"]
    for ax, title in ((ax_tr, "training"), (ax_va, "validation (corrupted inputs)")):
        ax.set_yscale("log")
        ax.set_xlabel("training iteration (full batch of 10 images)")
        ax.set_ylabel("L1 loss")
        ax.set_title(f"{title}, truncation {k}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_retrieval(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ret = results["curves"]["retrieval"]
    methods = [m for m in method_names() if m in ret]
    columns = ["corrupted", *methods, "clean"]
    titles = ["corrupted input", *(label(m) for m in methods), "target"]
    n = len(ret["corrupted"])
    fig, axes = plt.subplots(n, len(columns), figsize=(1.3 * len(columns), 1.3 * n), squeeze=False)
    for j, col in enumerate(columns):
        for i in range(n):
            img = np.array([int(c) for c in ret[col][i]], dtype=np.float32).reshape(28, 28)
            ax = axes[i][j]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def make_figures(results: dict[str, Any], figdir: Path, prefix: str) -> list[Path]:
    figdir.mkdir(parents=True, exist_ok=True)
    paths = []
    if results.get("curves"):
        paths += [figdir / f"{prefix}_curves.png", figdir / f"{prefix}_retrieval.png"]
        plot_curves(results, paths[0])
        plot_retrieval(results, paths[1])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plot_paths = plot_only_paths(parser, args)
    if plot_paths is not None:
        results: dict[str, Any] = {}
        for path in plot_paths:
            try:
                part = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                parser.exit(1, f"error: cannot read {path}: {exc}\n")
            for key in ("curves", "table"):
                if part.get(key) and not results.get(key):
                    results[key] = part[key]
        return _report(results, args)
    if args.quick:
        args.seeds, args.iterations, args.curve_iterations = args.seeds[:1], 2, 2
        args.truncate, args.val_every = [10], 2
        args.curve_truncate = 10
    for name in ("iterations", "curve_iterations"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("inner_steps", "val_every", "curve_truncate"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if "tbptt" in args.methods and max([*args.truncate, args.curve_truncate]) > args.inner_steps:
        parser.error(f"TBPTT's truncations must not exceed the {args.inner_steps} inference steps (--inner-steps)")
    torch.set_num_threads(1)
    try:
        images = load_images(args.data_root or default_data_root("mnist"))
    except DataError as exc:
        parser.exit(1, f"error: {exc}\n")
    progress = not args.no_progress
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("data_root", "plot_only", "figdir", "out")}
    cli = sys.argv[1:] if argv is None else list(argv)
    results = {"schema_version": SCHEMA_VERSION, "config": config,
               "command": "python -m recipes.hopfield.run " + " ".join(cli)}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(results))

    t0 = time.perf_counter()
    if args.curve_iterations > 0:
        results["curves"] = run_curves(images, args, progress)
        save()
    if args.iterations > 0:

        def save_table(table: dict[str, Any]) -> None:
            results["table"] = table
            save()

        results["table"] = run_table(images, args, progress, on_trial=save_table)
    results["seconds"] = time.perf_counter() - t0
    save()
    print(f"wrote {args.out}")
    return _report(results, args)


def _report(results: dict, args: argparse.Namespace) -> int:
    """Figures (with ``--figdir``) and the two summary tables."""
    if args.figdir is not None:
        for path in make_figures(results, args.figdir, args.fig_prefix):
            print(f"wrote {path}")
    print(curve_summary(results))
    print(success_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
