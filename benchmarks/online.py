"""What one ``strategy="online"`` run costs against one plain ``torch.optim.SGD`` training (issue 15.3).

Both train the same ``T = --inner-steps`` minibatches (``objective.batches(0)``) of the digits
(or MNIST) MLP from the same :math:`w_0`: SGD with the initial hyperparameters as
``torch.optim.SGD`` param groups, the online run with a Neumann-RBP hypergradient (``--truncate``
terms, ``--hyper-batches`` minibatches) and an Adam step every ``P`` steps for each ``P`` of
``--periods``. Runs are interleaved (SGD, then each ``P``) ``--repeats`` times and the table
shows the medians and the ratio online / SGD.

    python -m benchmarks.online --inner-steps 1000 --periods 10,20,50 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any

import torch


def sgd_seconds(problem: Any, objective: Any) -> float:
    """One plain torch.optim.SGD training of the run's T batches from w0 (the initial hyperparameters)."""
    from hypergrad import to_sgd_param_groups

    model = problem.fresh_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(to_sgd_param_groups(problem.spec, objective.initial_hparams(), params))
    t0 = time.perf_counter()
    for x, y in objective.batches(0):
        opt.zero_grad(set_to_none=True)
        problem.loss_fn(model(x), y).backward()
        opt.step()
    return time.perf_counter() - t0


def online_seconds(problem: Any, cfg: Any) -> tuple[float, Any]:
    from hypergrad.tuner import Tuner

    tuner = Tuner(problem, cfg, strategy="online")
    t0 = time.perf_counter()
    result = tuner.run()
    return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> int:
    from hypergrad.config import RunConfig, TuneConfig
    from hypergrad.objective import MetaObjective
    from hypergrad.workloads import build_problem

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--inner-steps", type=int, default=1000)
    p.add_argument("--periods", default="10,20,50")
    p.add_argument("--truncate", type=int, default=10)
    p.add_argument("--hyper-batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = RunConfig(dataset=args.dataset, n_train=args.n_train)
    base = TuneConfig(strategy="online", inner_steps=args.inner_steps, truncate=args.truncate,
                      hyper_batches=args.hyper_batches, seed=args.seed)
    problem, _ = build_problem(run, base)
    objective = MetaObjective(problem, base)
    periods = [int(s) for s in args.periods.split(",")]
    sgd: list[float] = []
    online: dict[int, list[float]] = {q: [] for q in periods}
    vals: dict[int, float] = {}
    sgd_seconds(problem, objective)  # warm-up
    for _ in range(args.repeats):
        sgd.append(sgd_seconds(problem, objective))
        for q in periods:
            seconds, result = online_seconds(problem, dataclasses.replace(base, online_period=q))
            online[q].append(seconds)
            vals[q] = result.evaluation["final"]["val_loss"]
    s = statistics.median(sgd)
    print(f"{args.dataset}, T = {args.inner_steps}, K = {args.truncate}, M = {args.hyper_batches}, "
          f"median of {args.repeats}; torch.optim.SGD: {s:.3f} s")
    print("| P | meta steps | online s | SGD s | online / SGD | run's val loss |")
    print("|---:|---:|---:|---:|---:|---:|")
    for q in periods:
        o = statistics.median(online[q])
        print(f"| {q} | {args.inner_steps // q - 1} | {o:.3f} | {s:.3f} | {o / s:.2f} | {vals[q]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
