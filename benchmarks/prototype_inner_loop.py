"""Prototype (not library code): a faster no-graph inner loop, measured against the library's and SGD's.

The profile of a Neumann-RBP meta step at T=1000 (``docs/results/perf_profile_neumann.txt``) shows
that ``InnerProblem.train`` takes ~90% of it, and that about a fifth of ``train`` is
``torch.func.functional_call`` re-binding the module's parameters at every step. This prototype
runs the same update on the module's own parameters, in place (bound once per run), and checks
that it returns the same ``h_T`` as ``InnerProblem.train``. It times, interleaved, ``reps`` runs
of T steps of: the library's ``train``, the prototype (with and without ``index_select``),
``torch.optim.SGD`` on the same batches, and one whole Neumann-RBP (K=10) ``Tuner.meta_step`` —
interleaving makes the ratios robust to the load of a shared machine.

    python -m benchmarks.prototype_inner_loop --inner-steps 1000 --reps 5 --out docs/results/perf_inner_loop.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks._driver import machine, write_json
from benchmarks._probe import sgd_train


def fast_train(problem, hparams, batches, index_select: bool = False):
    """``InnerProblem.train`` without functional_call: update the module's parameters in place.

    With ``index_select``, minibatches are gathered by ``Tensor.index_select`` (about 3x faster on
    this CPU than advanced indexing ``x[idx]``, which the library uses).
    """
    model = problem.model
    params = [p for p in model.parameters() if p.requires_grad]
    lrs, moms = problem.spec.per_tensor([h.detach() for h in hparams])
    if lrs[0].dim() == 0:
        lrs = [float(a) for a in lrs]
        moms = [float(b) for b in moms]
    neg = [-(1.0 - b) for b in moms]
    with torch.no_grad():
        for p, w in zip(params, problem.w0):
            p.copy_(w)
    v = [torch.zeros_like(p) for p in params]
    for idx in batches:
        if index_select:
            x, y = problem.x_train.index_select(0, idx), problem.y_train.index_select(0, idx)
        else:
            x, y = problem.x_train[idx], problem.y_train[idx]
        loss = problem.loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            torch._foreach_mul_(v, moms)
            torch._foreach_add_(v, torch._foreach_mul(grads, neg))
            torch._foreach_add_(params, torch._foreach_mul(v, lrs))
    out = tuple(p.detach().clone() for p in params) + tuple(v)
    with torch.no_grad():  # leave the module as it was
        for p, w in zip(params, problem.w0):
            p.copy_(w)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prototype_inner_loop", description=__doc__.split("\n")[0])
    p.add_argument("--inner-steps", type=int, default=1000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--per", default="tensor")
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from hypergrad.config import RunConfig
    from hypergrad.tuner import TuneConfig, Tuner
    from hypergrad.workloads import build_problem

    cfg = TuneConfig(inner_steps=args.inner_steps, per=args.per)
    problem, _ = build_problem(RunConfig(dataset=args.dataset, data_root=args.data_root), cfg)
    tuner = Tuner(problem, cfg)
    hp = tuner.hparams
    batches = tuner.objective.batches(0).rows  # rows of indices, as the prototype indexes them
    ref = problem.train(hp, batches)
    new = fast_train(problem, hp, batches)
    new_is = fast_train(problem, hp, batches, index_select=True)
    max_diff = max(float((a - b).abs().max()) for a, b in zip(ref, new))
    max_diff = max(max_diff, max(float((a - b).abs().max()) for a, b in zip(ref, new_is)))
    times: dict[str, list[float]] = {"library_train": [], "prototype_in_place": [],
                                     "prototype_in_place_index_select": [], "torch_optim_sgd": [],
                                     "neumann_k10_meta_step": []}
    tuner.meta_step()  # warm-up of the whole meta step (Neumann-RBP, K=10, the tuner's defaults)
    for r in range(args.reps):
        b = tuner.objective.batches(r + 1).rows
        for name, fn in (("library_train", lambda b=b: problem.train(hp, b)),
                         ("prototype_in_place", lambda b=b: fast_train(problem, hp, b)),
                         ("prototype_in_place_index_select", lambda b=b: fast_train(problem, hp, b, True)),
                         ("torch_optim_sgd", lambda r=r: sgd_train(problem, tuner.objective.batches(r + 1))),
                         ("neumann_k10_meta_step", tuner.meta_step)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"machine": machine(), "inner_steps": args.inner_steps, "per": args.per, "reps": args.reps,
              "max_abs_diff_vs_library": max_diff, "median_s": med, "times_s": times,
              "library_over_sgd": med["library_train"] / med["torch_optim_sgd"],
              "prototype_over_sgd": med["prototype_in_place"] / med["torch_optim_sgd"],
              "neumann_meta_step_over_sgd": med["neumann_k10_meta_step"] / med["torch_optim_sgd"]}
    for k, v in med.items():
        print(f"{k:32s} {v:.3f} s  ({v / med['torch_optim_sgd']:.2f} x SGD)")
    print(f"max |h_T(prototype) - h_T(library)| = {max_diff:.3g}")
    if args.out is not None:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
