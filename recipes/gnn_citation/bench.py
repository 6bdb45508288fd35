"""Peak memory and time per epoch of each gradient method, each in a fresh process.

The driver starts one probe process per (method, steps). A probe loads the data, builds the
model, then resets the kernel's peak-RSS counter (``5 > /proc/self/clear_refs``), runs one
training epoch and reads ``VmHWM`` from ``/proc/self/status``: the peak minus the RSS at the
reset is the memory the gradient computation needed. Probes run with
``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`` so that freed tensors leave the
RSS. The probe also counts the bytes autograd saved for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``), a deterministic measure of the graph kept,
and times a few more epochs.

    python -m recipes.gnn_citation.bench --dataset cora --out runs/gnn/bench_cora.json
    python -m recipes.gnn_citation.bench --dataset cora --methods bptt,neumann --inner-steps 25,50,100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from hypergrad._profiling import reset_peak, status_kib
from recipes._common import PAPER_METHODS, add_methods_flag, int_list, recipe_parser
from recipes.gnn_citation import config as C
from recipes.gnn_citation.train import GNN_METHODS, gnn_gradients, label

# Memory probes: freed tensors leave the RSS. Timing probes: the settings of the full runs
# (large tensors stay in the heap instead of being mmap-ed and page-faulted in at every step).
_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
_TIMING_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4000000000",
               "MALLOC_TOP_PAD_": "536870912", "OMP_NUM_THREADS": "1"}






class SavedBytes:
    """Counts the bytes of the tensors autograd saves for backward inside the context."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()

    def __enter__(self) -> SavedBytes:
        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.layout == torch.strided:
                key = t.untyped_storage().data_ptr()
                if key not in self._seen:  # count each storage once (views share it)
                    self._seen.add(key)
                    self.bytes += t.untyped_storage().nbytes()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def probe(dataset: str, method: str, steps: int, truncate: int, epochs: int, data_root: str | None) -> dict:
    """Run in a fresh process: set up, reset the peak, one epoch, read the peak, time more epochs."""
    torch.set_num_threads(1)
    from hypergrad.data import default_data_root
    from hypergrad.data.planetoid import load_planetoid, planetoid_random_split
    from recipes.gnn_citation.model import init_params, make_step, pca_features, sparse_adjacency

    graph = load_planetoid(data_root or default_data_root("planetoid"), dataset)
    x = pca_features(graph.features, C.HIDDEN[dataset], seed=C.PCA_SEED)
    step = make_step(sparse_adjacency(graph))
    train_idx, _, _ = planetoid_random_split(graph, seed=0)
    gen = torch.Generator().manual_seed(0)
    params = init_params(x.shape[1], graph.num_classes, generator=gen)
    opt = torch.optim.SGD(params.all(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def epoch(counter: SavedBytes | None = None) -> None:
        if counter is None:
            g_gru, g_out, *_ = gnn_gradients(method, step, x, params, graph.labels, train_idx,
                                             num_steps=steps, truncate=truncate, generator=gen)
        else:
            with counter:
                g_gru, g_out, *_ = gnn_gradients(method, step, x, params, graph.labels, train_idx,
                                                 num_steps=steps, truncate=truncate, generator=gen)
        for p, g in zip(params.all(), (*g_gru, *g_out)):
            p.grad = g
        opt.step()

    reset_ok = reset_peak()
    base = status_kib("VmRSS")
    epoch()
    peak = status_kib("VmHWM")
    counter = SavedBytes()
    epoch(counter)
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        epoch()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "dataset": dataset, "method": method, "steps": steps, "truncate": truncate,
        "peak_extra_mib": (peak - base) / 1024, "rss_at_reset_mib": base / 1024, "reset_ok": reset_ok,
        "autograd_saved_mib": counter.bytes / 2**20,
        "epoch_cpu_seconds_median": statistics.median(cpu) if cpu else float("nan"), "epoch_wall_seconds": wall,
        "epoch_cpu_seconds": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    p = recipe_parser("python -m recipes.gnn_citation.bench", __doc__)
    p.add_argument("--dataset", choices=C.DATASETS, default="cora")
    add_methods_flag(p, PAPER_METHODS, allowed=GNN_METHODS)
    p.add_argument("--inner-steps", type=int_list(1), default=[C.NUM_STEPS], metavar="LIST",
                   help=f"comma list of propagation step counts T (default: {C.NUM_STEPS})")
    p.add_argument("--truncate", type=int, default=C.TRUNCATE, help="TBPTT steps / RBP iterations K")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (in the timing probe)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    methods, steps_list = args.methods, args.inner_steps
    if args.probe:
        print(json.dumps(probe(args.dataset, methods[0], steps_list[0], args.truncate, args.epochs,
                               args.data_root)))
        return 0
    rows = []
    for steps in steps_list:
        for method in methods:
            cmd = [sys.executable, "-m", "recipes.gnn_citation.bench", "--probe", "--dataset", args.dataset,
                   "--methods", method, "--inner-steps", str(steps), "--truncate", str(args.truncate)]
            if args.data_root:
                cmd += ["--data-root", args.data_root]
            out = []
            for env, n in ((_MEMORY_ENV, 0), (_TIMING_ENV, args.epochs)):  # two fresh processes
                res = subprocess.run([*cmd, "--epochs", str(n)], env={**os.environ, **env},
                                     capture_output=True, text=True, check=False)
                if res.returncode != 0:
                    print(res.stderr, file=sys.stderr)
                    return res.returncode
                out.append(json.loads(res.stdout.strip().splitlines()[-1]))
            row = {**out[0], **{k: v for k, v in out[1].items() if k.startswith("epoch_")}}
            rows.append(row)
            print(f"{args.dataset} T={steps:3d} {label(method):12s} peak +{row['peak_extra_mib']:8.1f} MiB  "
                  f"autograd saved {row['autograd_saved_mib']:8.1f} MiB  "
                  f"{row['epoch_cpu_seconds_median']:.3f} CPU s/epoch", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python -m recipes.gnn_citation.bench "
                                        + " ".join(sys.argv[1:]), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
