"""Train the continuous Hopfield network with BPTT, TBPTT and the RBP family (paper §5.1, Table A1).

Two experiments, both written to one JSON file (``--out``):

* ``curves`` (Fig. 1 and 2 analogues): one network per method, initialised from ``--curve-seed``,
  truncation ``--curve-truncate``, ``--curve-iterations`` Adam steps (0: no curves); training L1
  every iteration, validation L1 on the corrupted images every ``--val-every`` iterations; the
  images each method retrieves at the end and, per digit, whether the binarised answer is
  nearest (Hamming) to the right stored digit ("recalls").
* ``table`` (Table A1 analogue): per method and truncation of ``--truncate``, the trials of
  ``--seeds`` trained together as one batched program (``A`` stacked along a leading axis),
  ``--iterations`` Adam steps (0: no table); a trial succeeds (the paper's criterion) when its
  final training loss is below 50% of its initial loss, and recalls when at least 9 of the 10
  corrupted digits come back nearest to the right digit.
* ``profile`` (``--profile-iterations N``): seconds per training iteration of each method for one
  trial and for the stack of ``--seeds``.

Each Adam step takes ``--batch-size`` images; an epoch is one pass over the ten images in an
order drawn per epoch (the same for every method and trial).

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
from collections.abc import Callable, Iterator, Sequence
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
    median,
    median_seconds,
    plot_only_paths,
    recipe_parser,
    speedup_table,
)
from recipes.hopfield.model import READOUTS, HopfieldNet, corrupt, load_images, recall, train_step_grad, trial_l1

SCHEMA_VERSION = 3  # 3: recalls, batch size, hidden units, batched trials, profile (2: seeds listed)


def build_parser() -> argparse.ArgumentParser:
    p = recipe_parser("python -m recipes.hopfield.run", __doc__)
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder with the MNIST IDX files (default: default_data_root('mnist'))")
    add_methods_flag(p, PAPER_METHODS)
    add_seeds_flag(p, range(1, 21), "seeds of the table's trials, one trial per seed")
    p.add_argument("--inner-steps", type=int, default=50, help="inference steps T (paper: 50)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden units (paper: 1024)")
    p.add_argument("--batch-size", type=int, default=1, choices=(1, 2, 5, 10),
                   help="images per Adam step (released code: 1; 10: the full set)")
    p.add_argument("--truncate", type=int_list(1), default=[10, 20, 30], metavar="LIST",
                   help="truncations K of the table (comma list; default: 10,20,30)")
    p.add_argument("--iterations", type=int, default=20, help="Adam steps per table trial (0: no table)")
    p.add_argument("--curve-seed", type=int, default=0, help="seed of the curves run")
    p.add_argument("--curve-iterations", type=int, default=100,
                   help="Adam steps of the curves run (0: no curves)")
    p.add_argument("--curve-truncate", type=int, default=20, help="truncation K of the curves run")
    p.add_argument("--val-every", type=int, default=10, help="validation period of the curves run")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--readout", choices=READOUTS, default="state",
                   help="outputs raw h (the released code's loss; default) or phi(b h) (the paper's text)")
    p.add_argument("--corrupt", type=float, default=0.5, help="fraction of non-zero test pixels set to 0")
    p.add_argument("--figdir", type=Path, default=None, help="where to write the PNG figures (default: none)")
    p.add_argument("--fig-prefix", default="hopfield", help="file-name prefix of the figures")
    p.add_argument("--resume", action="store_true",
                   help="keep the table cells already in --out (same settings) and run the others")
    p.add_argument("--profile-iterations", type=int, default=0,
                   help="time this many iterations per method, one trial and the stack of --seeds (0: no profile)")
    add_output_flags(p, out_default=Path("runs/hopfield.json"), out_help="results JSON",
                     quick_help="tiny run for tests: 64 hidden units, 2 iterations, 2 trials, truncation 10",
                     plot_only_help="figures and tables (with several files, curves and table come from "
                                    "the first file that has them)")
    return p


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _bits(images: torch.Tensor) -> list[str]:
    return ["".join("1" if v >= 0.5 else "0" for v in row.tolist()) for row in images]


def _net(args: argparse.Namespace, seeds: Sequence[int]) -> HopfieldNet:
    """The trials of ``seeds`` as one stacked network (one trial: a stack of one)."""
    return HopfieldNet.stack(list(seeds), n_hidden=args.hidden, readout_mode=args.readout,
                             num_steps=args.inner_steps)


def _batches(images: torch.Tensor, batch_size: int, iterations: int) -> Iterator[torch.Tensor]:
    """``iterations`` minibatches: epochs over ``images`` in an order drawn per epoch (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    done = 0
    while True:
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch_size):
            if done == iterations:
                return
            yield images[order[i:i + batch_size]]
            done += 1


def _evaluate(net: HopfieldNet, corrupted: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per trial: validation L1 on the corrupted inputs, L1 of the binarised outputs, digits recalled."""
    out = net.retrieve(corrupted)
    rec = recall(out, clean)
    return trial_l1(out, clean), trial_l1((out >= 0.5).to(clean.dtype), clean), rec.recalled.sum(-1)


def _train(net: HopfieldNet, images: torch.Tensor, method: str, truncate: int, args: argparse.Namespace,
           iterations: int, gen: torch.Generator,
           on_step: Callable[[int, torch.Tensor, Any, float, float], None] | None = None) -> list[torch.Tensor]:
    """``iterations`` Adam steps on ``net`` (all its trials at once); the per-trial loss of each step."""
    opt = torch.optim.Adam([net.A], lr=args.lr)
    losses = []
    for it, batch in enumerate(_batches(images, args.batch_size, iterations)):
        t0, c0 = time.perf_counter(), time.process_time()
        loss, info = train_step_grad(net, batch, method, truncate, generator=gen)
        opt.step()
        losses.append(loss)
        if on_step is not None:
            on_step(it, loss, info, time.perf_counter() - t0, time.process_time() - c0)
    return losses


def run_curves(images: torch.Tensor, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    """Fig. 1 and Fig. 2: one network per method from the same initialisation."""
    corrupted = corrupt(images, args.corrupt, generator=torch.Generator().manual_seed(args.curve_seed))
    curves: dict[str, Any] = {}
    retrieval: dict[str, list[str]] = {"clean": _bits(images), "corrupted": _bits(corrupted)}
    recalls: dict[str, Any] = {"corrupted": _recall_record(corrupted, images)}
    for method in args.methods:
        curves[method], out = _curve_run(method, images, corrupted, args, progress)
        retrieval[method] = _bits(out)
        recalls[method] = _recall_record(out, images)
    return {"truncation": args.curve_truncate, "methods": curves, "retrieval": retrieval, "recalls": recalls}


def _curve_run(method: str, images: torch.Tensor, corrupted: torch.Tensor, args: argparse.Namespace,
               progress: bool) -> tuple[dict[str, list[Any]], torch.Tensor]:
    """One method's curves run: its record and its answers to the corrupted images at the end."""
    gen = torch.Generator().manual_seed(args.curve_seed)
    net = _net(args, [args.curve_seed])
    rec: dict[str, list[Any]] = {"train_loss": [], "val_step": [], "val_loss": [], "val_binary": [],
                                 "val_recalls": [], "spectral_radius": [], "seconds": [],
                                 "cpu_seconds": [], "saturated": []}

    def validate(it: int) -> None:
        val, val_bin, n_rec = _evaluate(net, corrupted, images)
        rec["val_step"].append(it)
        rec["val_loss"].append(_finite(float(val[0])))
        rec["val_binary"].append(_finite(float(val_bin[0])))
        rec["val_recalls"].append(int(n_rec[0]))
        rec["saturated"].append(float(net.saturated_fraction(images)[0]))

    bar = tqdm(total=args.curve_iterations, desc=f"curves {label(method)}", disable=not progress, file=sys.stderr)

    def on_step(it: int, loss: torch.Tensor, info: Any, wall: float, cpu: float) -> None:
        rec["seconds"].append(wall)
        rec["cpu_seconds"].append(cpu)
        rec["train_loss"].append(_finite(float(loss[0])))
        rec["spectral_radius"].append(None if info is None else _finite(info.spectral_radius))
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss[0]):.4g}")
        if (it + 1) % args.val_every == 0 and it + 1 < args.curve_iterations:
            validate(it + 1)

    validate(0)
    _train(net, images, method, args.curve_truncate, args, args.curve_iterations, gen, on_step)
    validate(args.curve_iterations)
    bar.close()
    return rec, net.retrieve(corrupted)[0]


def _recall_record(output: torch.Tensor, clean: torch.Tensor) -> dict[str, list[int]]:
    rec = recall(output, clean)
    return {"nearest": rec.nearest.tolist(), "hamming": rec.distance.tolist()}


def run_table(images: torch.Tensor, args: argparse.Namespace, progress: bool,
              on_cell: Callable[[dict[str, Any]], None] | None = None,
              done: dict[str, Any] | None = None) -> dict[str, Any]:
    """Table A1: success rate per method and truncation (BPTT, which has no truncation, is left out).

    The trials of a cell (one per seed of ``args.seeds``) train together: ``A`` stacked along a
    leading axis, one batched program (see :mod:`recipes.hopfield.model`). Trial ``s`` starts
    from the ``A`` of seed ``s``; RBP's random starts come from one generator per cell (seed
    ``seeds[0]``). Success (the paper's code) is judged on the clean training loss of the first
    and last iterations; recall on the images corrupted with seed ``--curve-seed``. The cells of
    ``done`` (an earlier table of the same configuration) are kept, not run again.
    """
    methods = [m for m in args.methods if get_method(m).uses_truncate]
    corrupted = corrupt(images, args.corrupt, generator=torch.Generator().manual_seed(args.curve_seed))
    cells: dict[str, dict[str, Any]] = {m: dict((done or {}).get(m, {})) for m in methods}  # method -> K -> trials
    table = {"truncations": args.truncate, "iterations": args.iterations, "seeds": args.seeds, "cells": cells}
    bar = tqdm(total=len(methods) * len(args.truncate) * args.iterations, desc="table", disable=not progress,
               file=sys.stderr)
    for k in args.truncate:  # row by row: an interrupted run keeps whole rows
        for method in methods:
            if str(k) in cells[method]:
                bar.update(args.iterations)
                continue
            net = _net(args, args.seeds)
            t0, c0 = time.perf_counter(), time.process_time()
            losses = _train(net, images, method, k, args, args.iterations,
                            torch.Generator().manual_seed(args.seeds[0]),
                            lambda *_: bar.update(1))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # As the paper's code records it: the training loss of the first and the last iteration.
            initial, final = losses[0].tolist(), losses[-1].tolist()
            _, _, n_rec = _evaluate(net, corrupted, images)
            cells[method][str(k)] = {
                "initial": [_finite(v) for v in initial],
                "final": [_finite(v) for v in final],
                "success": [bool(math.isfinite(f) and f < 0.5 * i) for i, f in zip(initial, final)],
                "recalls": n_rec.tolist(),
                "seconds_per_iteration": wall / args.iterations,
                "cpu_seconds_per_iteration": cpu / args.iterations,
            }
            bar.set_postfix(method=method, k=k)
            if on_cell is not None:  # partial results survive an interrupted run
                on_cell(table)
    bar.close()
    return table


def run_profile(images: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per training iteration (median of ``--profile-iterations``) per method: one trial
    (the unstacked network, as the recipe ran trials before) and the stack of ``--seeds``."""
    rows: dict[str, Any] = {}
    batch = images[: args.batch_size]
    k = args.curve_truncate
    for method in args.methods:
        row = {}
        for key, net in (("one", HopfieldNet.create(n_hidden=args.hidden, readout_mode=args.readout,
                                                    num_steps=args.inner_steps,
                                                    generator=torch.Generator().manual_seed(args.seeds[0]))),
                         ("stack", _net(args, args.seeds))):
            opt = torch.optim.Adam([net.A], lr=args.lr)
            gen = torch.Generator().manual_seed(0)

            def iteration(net: HopfieldNet = net, opt: torch.optim.Optimizer = opt, gen: torch.Generator = gen,
                          method: str = method) -> None:
                train_step_grad(net, batch, method, k, generator=gen)
                opt.step()

            row[key] = median_seconds(iteration, args.profile_iterations)  # after one warm-up iteration
        rows[method] = row
    return {"trials": len(args.seeds), "iterations": args.profile_iterations, "truncation": k, "methods": rows}


def success_table(results: dict[str, Any], column: str = "success") -> str:
    """Markdown table per method (columns) and truncation (rows): the paper's success rate
    (``column="success"``), the share of trials that recall >= 9 of 10 digits (``"recalls"``), or
    the trials' final / initial training loss, median (min–max) (``"ratio"``)."""
    table = results.get("table")
    if not table:
        return "(no table in these results)"
    methods = list(table["cells"])
    lines = ["| Truncation | " + " | ".join(label(m) for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for k in table["truncations"]:
        row = []
        for m in methods:
            cell = table["cells"][m].get(str(k), {})
            if column == "ratio":
                ratios = [f / i if f is not None and i else math.inf
                          for i, f in zip(cell.get("initial", []), cell.get("final", []))]
                row.append(f"{median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "-")
                continue
            hits = cell.get("success", []) if column == "success" else [r >= 9 for r in cell.get("recalls", [])]
            row.append(f"{100.0 * sum(hits) / len(hits):.0f}% ({sum(hits)}/{len(hits)})" if hits else "-")
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def recall_table(results: dict[str, Any]) -> str:
    """Markdown table of the curves run: per method and digit, the stored digit nearest to the answer."""
    curves = results.get("curves")
    if not curves or "recalls" not in curves:
        return "(no recalls in these results)"
    lines = ["| Method | " + " | ".join(str(d) for d in range(10)) + " | recalls | mean Hamming to target |",
             "|---|" + "---|" * 12]
    for m, rec in curves["recalls"].items():
        marks = [("✓" if n == d else f"✗ {n}") for d, n in enumerate(rec["nearest"])]
        hits = sum(n == d for d, n in enumerate(rec["nearest"]))
        name = "corrupted input" if m == "corrupted" else label(m)
        lines.append(f"| {name} | " + " | ".join(marks) + f" | {hits}/10 | {sum(rec['hamming']) / 10:.1f} |")
    return "\n".join(lines)


def profile_table(results: dict[str, Any]) -> str:
    prof = results.get("profile")
    if not prof:
        return "(no profile in these results)"
    rows = {label(m): (row["one"]["cpu_seconds"], row["stack"]["cpu_seconds"]) for m, row in prof["methods"].items()}
    return speedup_table("Method", "iter", prof["trials"], rows)


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
    with_recalls = all(rec.get("val_recalls") for rec in curves.values())
    fig, axes = plt.subplots(1, 3 if with_recalls else 2, figsize=(16 if with_recalls else 11, 4))
    ax_tr, ax_va = axes[0], axes[1]
    for m, rec in curves.items():
        tr = [float("nan") if v is None else v for v in rec["train_loss"]]
        ax_tr.plot(range(len(tr)), tr, label=label(m))
        va = [float("nan") if v is None else v for v in rec["val_loss"]]
        ax_va.plot(rec["val_step"], va, marker=".", label=label(m))
        if with_recalls:
            axes[2].plot(rec["val_step"], rec["val_recalls"], marker=".", label=label(m))
    k = results["curves"]["truncation"]
    for ax, title in ((ax_tr, "training"), (ax_va, "validation (corrupted inputs)")):
        ax.set_yscale("log")
        ax.set_xlabel("training iteration (Adam step)")
        ax.set_ylabel("L1 loss")
        ax.set_title(f"{title}, truncation {k}")
        ax.legend()
    if with_recalls:
        axes[2].set_xlabel("training iteration (Adam step)")
        axes[2].set_ylabel("digits recalled (nearest in Hamming distance)")
        axes[2].set_ylim(-0.3, 10.3)
        axes[2].set_title(f"recall from 50%-corrupted inputs, truncation {k}")
        axes[2].legend()
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
            for key in ("curves", "table", "profile"):
                if part.get(key) and not results.get(key):
                    results[key] = part[key]
        return _report(results, args)
    if args.quick:
        args.seeds, args.iterations, args.curve_iterations = args.seeds[:2], 2, 2
        args.truncate, args.val_every, args.hidden = [10], 2, 64
        args.curve_truncate = 10
        args.profile_iterations = min(args.profile_iterations, 1)
    for name in ("iterations", "curve_iterations", "profile_iterations"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("inner_steps", "val_every", "curve_truncate", "hidden"):
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
    done = _resumed_cells(parser, args, config)  # read before this run overwrites --out
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

        results["table"] = run_table(images, args, progress, on_cell=save_table, done=done)
    if args.profile_iterations > 0:
        results["profile"] = run_profile(images, args)
    results["seconds"] = time.perf_counter() - t0
    save()
    print(f"wrote {args.out}")
    return _report(results, args)


def _resumed_cells(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   config: dict[str, Any]) -> dict[str, Any] | None:
    """With ``--resume``: the table cells already in ``--out``, which must hold the same configuration."""
    if not args.resume or not args.out.exists():
        return None
    try:
        earlier = json.loads(args.out.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        parser.exit(1, f"error: cannot resume from {args.out}: {exc}\n")
    same = {k: v for k, v in config.items() if k not in ("resume", "no_progress")}
    old = {k: v for k, v in earlier.get("config", {}).items() if k not in ("resume", "no_progress")}
    if old != same:
        diff = sorted(k for k in same.keys() | old.keys() if same.get(k) != old.get(k))
        parser.exit(1, f"error: --resume: {args.out} was written with other settings ({', '.join(diff)})\n")
    return (earlier.get("table") or {}).get("cells")


def _report(results: dict, args: argparse.Namespace) -> int:
    """Figures (with ``--figdir``) and the two summary tables."""
    if args.figdir is not None:
        for path in make_figures(results, args.figdir, args.fig_prefix):
            print(f"wrote {path}")
    print(curve_summary(results))
    print(recall_table(results))
    print("success (final training loss < 50% of the initial one):")
    print(success_table(results))
    print("trials that recall >= 9 of 10 digits:")
    print(success_table(results, "recalls"))
    print("final / initial training loss, median (min-max) over the trials:")
    print(success_table(results, "ratio"))
    print(profile_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
