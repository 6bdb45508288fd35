"""GRU graph neural network on Cora / Pubmed with BPTT, TBPTT, RBP, CG-RBP, Neumann-RBP (§5.2).

Examples (from the repository root)::

    python -m recipes.gnn_citation.run --dataset cora --quick --out /tmp/gnn_quick.json
    python -m recipes.gnn_citation.run --dataset cora --seeds 10 --epochs 30 --patience 10 \\
        --out runs/gnn_cora.json --figdir docs/results
    python -m recipes.gnn_citation.run --replot runs/gnn_cora.json runs/gnn_pubmed.json --figdir docs/results
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from hypergrad.data import DataError, default_data_root
from hypergrad.data.planetoid import load_planetoid, planetoid_random_split
from recipes.gnn_citation import config as C
from recipes.gnn_citation.model import make_step, pca_features, sparse_adjacency
from recipes.gnn_citation.train import LABELS, METHODS, TrainConfig, train_run

SCHEMA_VERSION = 1


def _parse_methods(text: str) -> list[str]:
    methods = [m.strip().lower().replace("-", "_") for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    return methods


def _parse_seeds(text: str) -> list[int]:
    """``10`` -> seeds 0..9; ``3,5,7`` -> those seeds."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count or a comma list, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--seeds must be >= 1, got {n}")
    return list(range(n))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.gnn_citation.run", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=C.DATASETS, default="cora")
    p.add_argument("--methods", type=_parse_methods, default=list(METHODS),
                   help=f"comma list from {','.join(METHODS)} (default: all)")
    p.add_argument("--seeds", type=_parse_seeds, default=list(range(10)), help="count (0..n-1) or comma list")
    p.add_argument("--epochs", type=int, default=C.PAPER_EPOCHS, help="maximum epochs (paper: 2000)")
    p.add_argument("--patience", type=int, default=None,
                   help="early stopping: epochs without a better validation accuracy (default: none)")
    p.add_argument("--truncate", type=int, default=C.TRUNCATE, help="TBPTT steps / RBP iterations (paper: 5)")
    p.add_argument("--steps", type=int, default=C.NUM_STEPS, help="propagation steps (paper: 100)")
    p.add_argument("--hidden", type=int, default=None, help="PCA dim = GRU size (default: cora 64, pubmed 16)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--data-root", type=Path, default=None, help="folder with ind.<name>.* (default: shared data)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--figdir", type=Path, default=None, help="write Fig. 3 analogues (PNG) here")
    p.add_argument("--tag", default="", help="suffix of the figure names: <figdir>/gnn_<dataset><tag>.png")
    p.add_argument("--replot", type=Path, nargs="+", default=None, metavar="JSON",
                   help="only re-draw figures / the table from earlier --out files")
    p.add_argument("--quick", action="store_true", help="smoke test: 3 epochs, 1 seed, 10 steps, truncate 3")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu (default) or cuda")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Test accuracy mean ± sample std over seeds, per method."""
    out = {}
    for method, runs in results.items():
        accs = [r["test_acc"] for r in runs if math.isfinite(r["test_acc"])]
        out[method] = {
            "mean": statistics.fmean(accs) if accs else float("nan"),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "n": len(accs),
            "mean_epochs_run": statistics.fmean(r["epochs_run"] for r in runs) if runs else 0.0,
            "mean_best_epoch": statistics.fmean(r["best_epoch"] for r in runs) if runs else 0.0,
            "seconds": sum(r["seconds"] for r in runs),
        }
    return out


def run_experiment(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    root = args.data_root if args.data_root is not None else default_data_root("planetoid")
    graph = load_planetoid(root, args.dataset)
    hidden = args.hidden if args.hidden is not None else C.HIDDEN[args.dataset]
    dev = torch.device(args.device)
    features = pca_features(graph.features, hidden, seed=C.PCA_SEED).to(dev)
    labels = graph.labels.to(dev)
    step = make_step(sparse_adjacency(graph).to(dev))
    cfg = TrainConfig(
        num_steps=args.steps, truncate=args.truncate, epochs=args.epochs, patience=args.patience,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
    )
    record: dict = {
        "schema": SCHEMA_VERSION,
        "dataset": args.dataset,
        "num_nodes": graph.num_nodes,
        "num_edges": int(graph.edge_index.shape[1]),
        "num_classes": graph.num_classes,  # from the data: 7 for Cora, 3 for Pubmed
        "hidden": hidden,
        "device": str(dev),
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "methods": list(args.methods),
        "seeds": list(args.seeds),
        "command": "python -m recipes.gnn_citation.run " + " ".join(sys.argv[1:]),
        "paper": C.PAPER_TABLE1[args.dataset],
        "results": {m: [] for m in args.methods},
    }
    total = len(args.methods) * len(args.seeds) * cfg.epochs
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=args.dataset, unit="epoch", mininterval=2.0, file=sys.stderr)
    started = time.perf_counter()
    for seed in args.seeds:
        split = planetoid_random_split(graph, train_frac=C.TRAIN_FRAC, val_frac=C.VAL_FRAC, seed=seed)
        record.setdefault("split_sizes", [len(s) for s in split])
        split = tuple(s.to(dev) for s in split)
        for method in args.methods:
            if bar is not None:
                bar.set_postfix_str(f"{LABELS[method]} seed {seed}")

            def on_epoch(epoch: int, loss: float, val: float) -> None:
                if bar is not None:
                    bar.update(1)

            res = train_run(method, step, features, labels, split, graph.num_classes,
                            seed=seed, config=cfg, on_epoch=on_epoch)
            if bar is not None:
                bar.update(cfg.epochs - res.epochs_run)
                bar.write(f"{args.dataset} {LABELS[method]:12s} seed {seed}: test {res.test_acc:.2f} "
                          f"(best val {res.best_val_acc:.2f} @ epoch {res.best_epoch}, "
                          f"{res.epochs_run} epochs, {res.seconds:.1f}s)")
            record["results"][method].append(res.to_json())
            record["summary"] = summarize(record["results"])
            record["seconds"] = time.perf_counter() - started
            if args.out is not None:  # save after every run, so a stopped job keeps its results
                _write_json(args.out, record)
    if bar is not None:
        bar.close()
    return record


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=True))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replot is not None:
        from recipes.gnn_citation.plot import load_records, markdown_table, merge_records, plot_records

        records = merge_records(load_records(args.replot))
        if args.figdir is not None:
            for path in plot_records(records, args.figdir, tag=args.tag):
                print(f"wrote {path}")
        print(markdown_table(records))
        return 0
    if args.quick:
        args.epochs, args.seeds, args.steps, args.truncate = 3, args.seeds[:1], 10, 3
    for name in ("epochs", "steps", "truncate", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.truncate > args.steps:
        parser.error(f"--truncate ({args.truncate}) must not exceed --steps ({args.steps})")
    try:
        record = run_experiment(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.figdir is not None:
        from recipes.gnn_citation.plot import plot_records

        for path in plot_records([record], args.figdir, tag=args.tag):
            print(f"wrote {path}")
    for method, s in record["summary"].items():
        print(f"{record['dataset']} {LABELS[method]:12s} test acc {s['mean']:.2f} ± {s['std']:.2f} (n={s['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
