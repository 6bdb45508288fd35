"""GRU graph neural network on Cora / Pubmed with BPTT, TBPTT, RBP, CG-RBP, Neumann-RBP (§5.2).

Examples (from the repository root)::

    python -m recipes.gnn_citation.run --dataset cora --quick --out /tmp/gnn_quick.json
    python -m recipes.gnn_citation.run --dataset cora --seeds 0-9 --epochs 30 --patience 10 \\
        --out runs/gnn_cora.json --figdir docs/results
    python -m recipes.gnn_citation.run --plot-only runs/gnn_cora.json runs/gnn_pubmed.json --figdir docs/results
    python -m recipes.gnn_citation.run --dataset cora --seeds 0-9 --profile-epochs 3 --out runs/gnn_profile.json

The seeds of a method train together as one batched program (``--seed-batch``: how many at
once; default all); ``--profile-epochs N`` times an epoch per method for one seed and for the
batch of ``--seeds`` instead of training.
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
from recipes._common import (
    add_methods_flag,
    add_output_flags,
    add_seeds_flag,
    median_seconds,
    plot_only_paths,
    recipe_parser,
    speedup_table,
)
from recipes.gnn_citation import config as C
from recipes.gnn_citation.model import init_params, make_step, pca_features, sparse_adjacency, stack_params
from recipes.gnn_citation.train import (
    DEFAULT_METHODS,
    GNN_METHODS,
    TrainConfig,
    batches_of,
    gnn_gradients,
    label,
    train_seeds,
)

SCHEMA_VERSION = 3  # 3: seeds batched (seconds: a seed's share of its batch), seed_batch, profile
# 2: hypergrad's method names (cg, neumann; were cg_rbp, neumann_rbp), null best_epoch


def build_parser() -> argparse.ArgumentParser:
    p = recipe_parser("python -m recipes.gnn_citation.run", __doc__)
    p.add_argument("--dataset", choices=C.DATASETS, default="cora")
    add_methods_flag(p, DEFAULT_METHODS, allowed=GNN_METHODS, extra=("baseline",))
    add_seeds_flag(p, range(10), "seeds (data split and initialisation), one run per seed and method")
    p.add_argument("--epochs", type=int, default=C.PAPER_EPOCHS, help="maximum epochs (paper: 2000)")
    p.add_argument("--patience", type=int, default=None,
                   help="early stopping: epochs without a better validation accuracy (default: none)")
    p.add_argument("--inner-steps", type=int, default=C.NUM_STEPS, help="propagation steps T (paper: 100)")
    p.add_argument("--truncate", type=int, default=C.TRUNCATE, help="TBPTT steps / RBP iterations K (paper: 5)")
    p.add_argument("--hidden", type=int, default=None, help="PCA dim = GRU size (default: cora 64, pubmed 16)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--data-root", type=Path, default=None, help="folder with ind.<name>.* (default: shared data)")
    p.add_argument("--figdir", type=Path, default=None, help="write Fig. 3 analogues (PNG) here")
    p.add_argument("--tag", default="", help="suffix of the figure names: <figdir>/gnn_<dataset><tag>.png")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu (default) or cuda")
    p.add_argument("--seed-batch", type=int, default=None,
                   help="seeds trained at once as one batched program (default: all of --seeds)")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="per batch of seeds: start no epoch after this many minutes (the record says which "
                        "runs it stopped; rerun with --epochs set to the epochs that ran for the same numbers)")
    p.add_argument("--profile-epochs", type=int, default=None, metavar="N",
                   help="profile instead of training: median seconds of N epochs (after one warm-up) per "
                        "method, for one seed and for the batch of --seeds")
    add_output_flags(p, out_default=None, out_help="write the results as JSON here",
                     quick_help="smoke test: 3 epochs, 1 seed, 10 steps, truncate 3",
                     plot_only_help="figures (with --figdir) and the table")
    return p


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Test accuracy mean ± sample std over seeds, per method."""
    out = {}
    for method, runs in results.items():
        accs = [r["test_acc"] for r in runs if math.isfinite(r["test_acc"])]
        best = [r["best_epoch"] for r in runs if r["best_epoch"] is not None]
        out[method] = {
            "mean": statistics.fmean(accs) if accs else float("nan"),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "n": len(accs),
            "mean_epochs_run": statistics.fmean(r["epochs_run"] for r in runs) if runs else 0.0,
            "mean_best_epoch": statistics.fmean(best) if best else None,
            "out_of_time": sum(bool(r.get("out_of_time")) for r in runs),
            "seconds": sum(r["seconds"] for r in runs),
        }
    return out


def _setup(args: argparse.Namespace) -> tuple:
    """The graph, H, the device, the PCA features h_0, the labels and the propagation map."""
    torch.set_num_threads(args.threads)
    root = args.data_root if args.data_root is not None else default_data_root("planetoid")
    graph = load_planetoid(root, args.dataset)
    hidden = args.hidden if args.hidden is not None else C.HIDDEN[args.dataset]
    dev = torch.device(args.device)
    features = pca_features(graph.features, hidden, seed=C.PCA_SEED).to(dev)
    return graph, hidden, dev, features, graph.labels.to(dev), make_step(sparse_adjacency(graph).to(dev))


def run_experiment(args: argparse.Namespace) -> dict:
    graph, hidden, dev, features, labels, step = _setup(args)
    cfg = TrainConfig(
        num_steps=args.inner_steps, truncate=args.truncate, epochs=args.epochs, patience=args.patience,
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
    splits = {}
    for seed in args.seeds:
        split = planetoid_random_split(graph, train_frac=C.TRAIN_FRAC, val_frac=C.VAL_FRAC, seed=seed)
        record.setdefault("split_sizes", [len(s) for s in split])
        splits[seed] = tuple(s.to(dev) for s in split)
    record["seed_batch"] = args.seed_batch
    for method in args.methods:
        for batch in batches_of(method, list(args.seeds), args.seed_batch):
            if bar is not None:
                bar.set_postfix_str(f"{label(method)} seeds {batch[0]}-{batch[-1]}")

            def on_epoch(epoch: int, loss: object, val: object, n: int = len(batch)) -> None:
                if bar is not None:
                    bar.update(n)

            runs = train_seeds(method, step, features, labels, [splits[s] for s in batch], graph.num_classes,
                               seeds=batch, config=cfg, on_epoch=on_epoch,
                               time_limit=None if args.time_limit is None else 60.0 * args.time_limit)
            if bar is not None:
                bar.update(len(batch) * cfg.epochs - len(batch) * max(r.epochs_run for r in runs))
                for res in runs:
                    best = ("no finished epoch" if res.best_val_acc is None
                            else f"best val {res.best_val_acc:.2f} @ epoch {res.best_epoch}")
                    bar.write(f"{args.dataset} {label(method):12s} seed {res.seed}: test {res.test_acc:.2f} "
                              f"({best}, {res.epochs_run} epochs)")
            record["results"][method].extend(r.to_json() for r in runs)
            record["summary"] = summarize(record["results"])
            record["seconds"] = time.perf_counter() - started
            if args.out is not None:  # save after every batch, so a stopped job keeps its results
                _write_json(args.out, record)
    if bar is not None:
        bar.close()
    return record


def run_profile(args: argparse.Namespace) -> dict:
    """Median seconds of one training epoch (gradient + SGD step) per GNN method: one seed (the
    one-network map, ``(N, H)`` states) and the batch of ``args.seeds`` (``(S, N, H)``)."""
    graph, hidden, dev, x, labels, step = _setup(args)
    splits = [planetoid_random_split(graph, train_frac=C.TRAIN_FRAC, val_frac=C.VAL_FRAC, seed=s)[0].to(dev)
              for s in args.seeds]
    rows: dict[str, dict] = {}
    for method in (m for m in args.methods if m != "baseline"):
        row = {}
        for key, seeds in (("one", args.seeds[:1]), ("batch", list(args.seeds))):
            gens = [torch.Generator().manual_seed(s) for s in seeds]
            if key == "one":
                params = init_params(hidden, graph.num_classes, generator=gens[0])
                gen, idx = gens[0], splits[0]
            else:
                params = stack_params(hidden, graph.num_classes, gens)
                gen, idx = gens, torch.stack(splits)
            params = params.to(dev)
            opt = torch.optim.SGD(params.all(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)

            def epoch(params=params, opt=opt, gen=gen, idx=idx, method=method) -> None:
                g_gru, g_out, *_ = gnn_gradients(method, step, x, params, labels, idx, num_steps=args.inner_steps,
                                                 truncate=args.truncate, generator=gen)
                for p, g in zip(params.all(), (*g_gru, *g_out)):
                    p.grad = g
                opt.step()

            if key == "batch" and len(seeds) == 1:
                row[key] = row["one"]
                continue
            row[key] = median_seconds(epoch, args.profile_epochs)
        rows[method] = row
    return {"schema": SCHEMA_VERSION, "dataset": args.dataset, "device": str(dev), "seeds": list(args.seeds),
            "epochs": args.profile_epochs, "inner_steps": args.inner_steps, "truncate": args.truncate,
            "threads": args.threads, "command": "python -m recipes.gnn_citation.run " + " ".join(sys.argv[1:]),
            "methods": rows}


def profile_table(prof: dict, key: str = "cpu_seconds") -> str:
    """CPU (``key="seconds"``: wall) seconds per epoch: one seed, ten one after another, the batch."""
    rows = {label(m): (row["one"][key], row["batch"][key]) for m, row in prof["methods"].items()}
    return speedup_table(f"{prof['dataset']} (T={prof['inner_steps']}, K={prof['truncate']})", "epoch",
                         len(prof["seeds"]), rows, noun="seed")


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=True))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plot_paths = plot_only_paths(parser, args)
    if plot_paths is not None:
        from recipes.gnn_citation.plot import epochs_table, load_records, markdown_table, merge_records, plot_records

        try:
            records = merge_records(load_records(plot_paths))
        except (OSError, ValueError) as exc:
            parser.exit(1, f"error: {exc}\n")
        if args.figdir is not None:
            for path in plot_records(records, args.figdir, tag=args.tag):
                print(f"wrote {path}")
        print(markdown_table(records))
        print()
        print(epochs_table(records))
        return 0
    if args.quick:
        args.epochs, args.seeds, args.inner_steps, args.truncate = 3, args.seeds[:1], 10, 3
    for name in ("epochs", "inner_steps", "truncate", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.truncate > args.inner_steps:
        parser.error(f"--truncate ({args.truncate}) must not exceed --inner-steps ({args.inner_steps})")
    for name in ("seed_batch", "profile_epochs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.time_limit is not None and not args.time_limit > 0:
        parser.error("--time-limit must be > 0 minutes")
    try:
        record = run_experiment(args) if args.profile_epochs is None else run_profile(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.profile_epochs is not None:
        if args.out is not None:
            _write_json(args.out, record)
        print(profile_table(record))
        return 0
    if args.figdir is not None:
        from recipes.gnn_citation.plot import plot_records

        for path in plot_records([record], args.figdir, tag=args.tag):
            print(f"wrote {path}")
    for method, s in record["summary"].items():
        print(f"{record['dataset']} {label(method):12s} test acc {s['mean']:.2f} ± {s['std']:.2f} (n={s['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
