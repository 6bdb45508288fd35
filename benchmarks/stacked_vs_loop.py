"""How far apart are the hypergradients of the stacked and the looped hyper-batch solves?

In exact arithmetic ``batch_hyper=True`` (the M systems stacked, block-diagonal) and ``False`` (one
after another) give the same hypergradient. In float32 they differ by round-off, which CG-RBP
amplifies. This runs one tuner along its own meta steps and, every ``--every`` steps, computes the
relative difference ``|g_stacked - g_loop| / |g_loop|`` at the current hyperparameters:

    python -m benchmarks.stacked_vs_loop --methods cg,neumann --seeds 0,3 --steps 30 --every 6
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from hypergrad import TuneConfig, Tuner
from hypergrad._tree import tree_norm, tree_sub
from hypergrad.config import RunConfig
from hypergrad.workloads import build_problem, load_split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stacked_vs_loop", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--methods", default="cg,neumann")
    p.add_argument("--seeds", default="0,3")
    p.add_argument("--steps", type=int, default=30, help="meta steps to walk along (30)")
    p.add_argument("--every", type=int, default=6, help="compare every this many meta steps (6)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    run = RunConfig(dataset=args.dataset, data_root=args.data_root)
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = TuneConfig(method=method, seed=seed)
            problem, _ = build_problem(run, cfg, load_split(run, seed))
            stacked = Tuner(problem, cfg)
            looped = Tuner(problem, dataclasses.replace(cfg, batch_hyper=False))
            diffs, residuals = [], []
            for step in range(0, args.steps, args.every):
                hp = tuple(h.detach().clone() for h in stacked.hparams)
                result = stacked.objective.hypergradient(hp, step)
                residuals.append(result.solver.residual)
                g_s, g_l = result.grad, looped.objective.hypergradient(hp, step).grad
                diffs.append(tree_norm(tree_sub(g_s, g_l)) / max(tree_norm(g_l), 1e-30))
                for _ in range(args.every):
                    stacked.meta_step()
            print(f"{method:8s} seed {seed}: relative difference at meta steps "
                  f"{list(range(0, args.steps, args.every))}: " + ", ".join(f"{d:.1e}" for d in diffs)
                  + "; solver residual (stacked): " + ", ".join(f"{r:.2f}" for r in residuals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
