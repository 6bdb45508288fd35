"""Command-line interface: ``hypergrad <command> ...``.

Commands: ``tune`` (the main job), ``check-grad`` (hypergradient fidelity against BPTT),
``compare`` (hypergradients against Optuna samplers at a matched budget). The flags of the
tuner's and the run's settings are generated from :class:`hypergrad.config.TuneConfig` and
:class:`hypergrad.config.RunConfig`; this module holds all of the CLI's argparse.

Exit codes:
  0  success
  1  the run stopped on a divergence (``--on-divergence stop``)
  2  invalid input: flags, config file, data files or checkpoint (one line on stderr)
  130  interrupted (Ctrl-C); the last checkpoint is kept, continue with ``--resume DIR``
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypergrad._imports import MissingDependency
from hypergrad._io import json_safe as _json_safe
from hypergrad._io import write_json as _write_json
from hypergrad.config import (
    TUNER_METHODS,
    ConfigError,
    RunConfig,
    TuneConfig,
    add_config_flags,
    build_configs,
    flag_values,
    int_flag,
    load_config_file,
    method_names,
    validate_keys,
)

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

__all__ = ["EXIT_DIVERGED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]


class UsageError(Exception):
    """A user error reported as one line on stderr with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, no traceback
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


_positive_int = int_flag(1)


def _add_problem_flags(p: argparse.ArgumentParser) -> None:
    """``--config`` and the data, model and inner-problem flags (shared by every command)."""
    g = p.add_argument_group("data and model")
    g.add_argument("--config", metavar="FILE", help="TOML or YAML file with the same keys as these flags")
    add_config_flags(g, RunConfig, groups=["data"])
    add_config_flags(g, TuneConfig, groups=["tuner"])


def _add_tune_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("meta optimisation")
    add_config_flags(g, TuneConfig, groups=["meta"])
    o = p.add_argument_group("output")
    add_config_flags(o, RunConfig, groups=["output"])
    o.add_argument("--resume", default=None, metavar="DIR", help="continue the run checkpointed in DIR")
    o.add_argument("--overwrite", action="store_true",
                   help="start afresh even if --logdir has a checkpoint (its TensorBoard event files are removed)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = p.add_argument_group("optuna studies (refine a study; share the hybrid strategy's global phase)")
    s.add_argument("--from-study", default=None, metavar="STORAGE",
                   help="start from the best completed trials of the Optuna study --study-name in STORAGE "
                        "(sqlite:///FILE.db, journal:FILE, postgresql://...): the hybrid strategy's refinement "
                        "from the --refine-from best (strategies auto, sign, hybrid), or the gradient strategy "
                        "from the best one; --budget (default --meta-steps) more inner trainings, each written "
                        "back to the study as a trial (user attrs method, cost, seconds)")
    s.add_argument("--study-name", default=None, metavar="NAME", help="the study of --from-study or --storage")
    s.add_argument("--storage", default=None, metavar="STORAGE",
                   help="--strategy hybrid: run the global phase's TPE trials into the study --study-name in "
                        "STORAGE (made if missing), shared with any --worker processes given the same flags; "
                        "then refine from the study's best trials and write every step back")
    s.add_argument("--worker", action="store_true",
                   help="with --storage: run TPE trials of the shared global phase only, then exit. Trial k is "
                        "drawn by TPE seeded from --seed and k, seeing the trials finished so far: one process "
                        "draws what an in-memory run draws (reproducible by seed); with several, what each "
                        "trial saw depends on timing, so the global phase is not reproducible (the refinement "
                        "from a given study is)")
    s.add_argument("--refine-from", type=_positive_int, default=2, metavar="K",
                   help="the hybrid strategy refines from the K best distinct trials in turn (default 2)")
    s.add_argument("--wait-workers", type=float, default=600.0, metavar="SECONDS",
                   help="with --storage: how long to wait for trials still running in workers (600)")
    d = p.add_argument_group("distributed (under torchrun)")
    d.add_argument(
        "--dist-backend",
        choices=("auto", "gloo", "nccl"),
        default="auto",
        help="torch.distributed backend when launched by torchrun (auto: nccl with CUDA, else gloo)",
    )


def _collect(args: argparse.Namespace) -> dict[str, Any]:
    """Config-file values overridden by the flags that were given."""
    values: dict[str, Any] = load_config_file(args.config) if getattr(args, "config", None) else {}
    values.update(flag_values(args))
    return values


def column_format(values: list[float], digits: int = 4) -> str:
    """One format spec for a whole column: fixed ``digits`` decimals, or scientific if a value needs it.

    Fixed decimals are used when every value is 0 or at least ``10**-(digits-1)`` in size
    (so each keeps ``digits`` significant digits or more) and below ``1e6``; otherwise the
    whole column is written as ``.{digits-1}e``.
    """
    finite = [abs(v) for v in values if v == v and abs(v) != float("inf")]
    if all(v == 0 or 10.0 ** -(digits - 1) <= v < 1e6 for v in finite):
        return f".{digits}f"
    return f".{digits - 1}e"


# ---------------------------------------------------------------------- tune
def _describe_strategy(cfg: TuneConfig) -> str:
    """``neumann`` (the gradient strategy's method) or ``the sign strategy`` (N: its budget of inner trainings)."""
    return cfg.method if cfg.strategy == "gradient" else f"the {cfg.strategy} strategy"


def cmd_tune(args: argparse.Namespace) -> int:
    from hypergrad.callbacks import LoggingCallback, ProgressBar, TensorBoardLogger
    from hypergrad.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
    from hypergrad.distributed import init_from_env, launched_by_torchrun
    from hypergrad.tuner import DivergenceError, Tuner
    from hypergrad.workloads import build_problem

    state = None
    if args.resume:
        state = load_checkpoint(args.resume)
        if not isinstance(state.get("run"), dict) or not isinstance(state.get("tuner"), dict):
            raise UsageError(f"checkpoint in {str(args.resume)!r} is not a 'hypergrad tune' checkpoint")
        values = validate_keys(dict(state["run"]), source=f"checkpoint {args.resume}")
        values["logdir"] = str(args.resume)
        if args.meta_steps is not None:  # allow extending a finished run
            values["meta_steps"] = args.meta_steps
        if args.budget is not None:
            values["budget"] = args.budget
    else:
        values = _collect(args)
    cfg, run = build_configs(values)
    if run.logdir and Path(run.logdir).exists() and not Path(run.logdir).is_dir():
        raise UsageError(f"--logdir {run.logdir!r} exists and is not a directory")
    if run.out and Path(run.out).is_dir():
        raise UsageError(f"--out {run.out!r} is a directory; give a file name such as results.json")
    parallel = None
    if launched_by_torchrun():
        parallel = init_from_env(args.dist_backend)
    main_rank = parallel is None or parallel.is_main
    logdir = Path(run.logdir) if run.logdir else None
    if logdir is not None and state is None and (logdir / CHECKPOINT_NAME).exists() and not args.overwrite:
        raise UsageError(
            f"{str(logdir)!r} already holds a checkpoint; continue it with --resume {logdir}, "
            "or pass --overwrite / another --logdir"
        )
    if logdir is not None and state is None and args.overwrite and main_rank and logdir.is_dir():
        for old in logdir.glob("events.out.tfevents.*"):  # the old run's curves would overlay the new one's
            old.unlink()
    if logdir is not None and state is None and parallel is not None:
        parallel.barrier()  # every rank checks the folder before rank 0 writes to it
    from hypergrad.study_runs import plan_from_args

    if (args.from_study or args.storage) and cfg.segments > 1:
        raise UsageError(f"--from-study and --storage cannot hold a schedule (--segments {cfg.segments}): an Optuna "
                         "trial holds one value per hyperparameter")
    plan = plan_from_args(args, cfg, state.get("study") if state is not None else None)
    study = plan.open(cfg, run, create=plan.mode == "shared") if plan is not None else None
    problem, split = build_problem(run, cfg, parallel=parallel)
    callbacks: list[Any] = []
    if main_rank:
        callbacks.append(LoggingCallback())
    periods = cfg.inner_steps // cfg.online_period if cfg.strategy == "online" else None  # online: a step a period
    progress = ProgressBar(total=periods) if main_rank and not args.no_progress else None
    if progress is not None:
        callbacks.append(progress)
    strategy: Any = cfg.strategy
    if plan is not None:
        strategy = plan.make_strategy()
    elif cfg.strategy == "hybrid":
        from hypergrad.strategies import HybridStrategy

        strategy = HybridStrategy(refine_from=args.refine_from)
    tuner = Tuner(problem, cfg, callbacks=callbacks, x_test=split.x_test, y_test=split.y_test, strategy=strategy)
    if state is not None:
        tuner.load_state_dict(state["tuner"])
    budget = None
    if plan is not None and plan.worker:
        done = plan.run_worker(tuner, study, cfg)
        if run.out:
            _write_json(run.out, done)
        return EXIT_OK
    if plan is not None and main_rank:  # other ranks neither read nor write the study
        budget = plan.start(tuner, study, cfg, resumed=state is not None)
        if progress is not None:
            progress.total = budget if budget is not None else getattr(tuner.state, "budget", None)
    if logdir is not None and main_rank:
        offset = getattr(tuner.state, "inner_step", tuner.step_count)  # online runs log against inner steps
        tuner.callbacks.append(TensorBoardLogger(logdir, global_step_offset=offset, dataset=run.dataset))
    saved_values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}

    def checkpoint(t: Tuner) -> None:
        if logdir is not None and main_rank:
            extra = {"study": plan.to_checkpoint()} if plan is not None else {}
            save_checkpoint(logdir, {"run": saved_values, "tuner": t.state_dict(), **extra})

    if parallel is not None and main_rank:
        print(f"data-parallel over {parallel.world_size} processes (torch.distributed)", file=sys.stderr)
    if main_rank:
        print(
            f"tuning {cfg.per} learning rates and momenta{_schedule_words(cfg)} ({tuner.spec.num_hyperparameters} "
            f"hyperparameters) "
            f"of an MLP {split.num_features}-{'-'.join(map(str, run.hidden))}-{split.num_classes} on {run.dataset} "
            f"with {_describe_strategy(cfg)} (T={cfg.inner_steps}, K={cfg.truncate}, M={cfg.hyper_batches}, "
            f"N={cfg.meta_steps if cfg.budget is None else cfg.budget})",
            file=sys.stderr,
        )
    code = EXIT_OK
    try:
        result = tuner.run(budget=budget, on_checkpoint=checkpoint)
    except DivergenceError as exc:
        print(f"hypergrad: error: {exc}; the best hyperparameters so far are kept", file=sys.stderr)
        result = tuner.finish()
        code = EXIT_DIVERGED
    if parallel is not None:
        import torch.distributed as dist

        dist.destroy_process_group()
        if not main_rank:
            return code
    out = run.out or (str(logdir / "results.json") if logdir is not None else None)
    summary = result.to_json()
    summary["run"] = saved_values
    if plan is not None:
        from hypergrad.compare import redact

        summary["study"] = {"storage": redact(plan.storage), "study_name": plan.study_name, "mode": plan.mode}
    if out:
        _write_json(out, summary)
    ev = result.evaluation
    if result.weights is not None:  # the online strategy: one run, evaluated as it is
        info = result.info
        print(f"validation loss: {ev['final']['val_loss']:.4f} (the one online run's weights after "
              f"{info['inner_steps']} inner steps, {info['meta_updates']} meta steps every {info['online_period']})")
        if "test_accuracy" in ev["final"]:
            print(f"test accuracy:   {ev['final']['test_accuracy']:.4f}")
        print("the run's schedule (one segment per period) is in the results JSON's \"schedule\"; the "
              "param groups below are its last period's values")
    else:
        _print_losses(result)
        if "test_accuracy" in ev["initial"]:
            print(f"test accuracy:   {ev['initial']['test_accuracy']:.4f} -> {ev['best']['test_accuracy']:.4f}")
    if problem.spec.per != "element" and result.spec.segments > 1:
        _print_schedule(result)
    elif problem.spec.per != "element":
        print("torch.optim.SGD param groups (lr = alpha*(1-beta), momentum = beta, dampening = 0):")
        groups = result.param_groups()
        lr_fmt = column_format([g["lr"] for g in groups])
        width = max(len(g["name"]) for g in groups)
        for g in groups:
            print(f"  {g['name']:<{width}}  lr={g['lr']:{lr_fmt}}  momentum={g['momentum']:.4f}")
    if out:
        print(f"results: {out}")
    if logdir is not None:
        print(f"TensorBoard: tensorboard --logdir {logdir}")
    return code


def _print_losses(result: Any) -> None:
    """The summary line of a run that restarts: initial -> best (-> final) validation loss."""
    ev = result.evaluation
    final = f"; final {ev['final']['val_loss']:.4f}" if "final" in ev else ""
    where = "" if "selection" not in result.info else (
        f", mean of {len(result.info['selection']['salts'])} unseen batch orders")
    print(
        f"validation loss: {ev['initial']['val_loss']:.4f} (initial) -> {ev['best']['val_loss']:.4f} "
        f"(best, meta step {result.best_step}{where}){final}"
    )
    if result.info:
        print(f"inner trainings: {result.info['inner_trainings']} of a budget of {result.info['budget']}; "
              f"hypergradient: {result.info['estimator']['reason']}")


def _schedule_words(cfg: TuneConfig) -> str:
    return f" as a schedule of {cfg.segments} segments" if cfg.segments > 1 else ""


def _print_schedule(result: Any) -> None:
    """The tuned schedule: per tensor, the SGD lr and momentum of each segment (steps a-b)."""
    from hypergrad.hyperparams import segment_bounds

    bounds = segment_bounds(result.config.inner_steps, result.spec.segments)
    print(f"schedule of {len(bounds)} segments, inner steps "
          + ", ".join(f"{a}-{b - 1}" for a, b in bounds)
          + " (lr = alpha*(1-beta) for torch.optim.SGD, dampening = 0; export: result.scheduler(optimizer)):")
    described = result.hyperparameters
    lr_fmt = column_format([x for d in described.values() for x in d["lr"]])
    width = max(len(name) for name in described)
    for name, d in described.items():
        lrs = " ".join(f"{x:{lr_fmt}}" for x in d["lr"])
        moms = " ".join(f"{x:.4f}" for x in d["momentum"])
        print(f"  {name:<{width}}  lr=[{lrs}]  momentum=[{moms}]")


# ---------------------------------------------------------------------- check-grad
def cmd_check_grad(args: argparse.Namespace) -> int:
    import torch

    from hypergrad._tree import tree_dot, tree_norm
    from hypergrad.objective import MetaObjective
    from hypergrad.workloads import build_problem

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in TUNER_METHODS:
            raise UsageError(f"unknown method {m!r} in --methods; expected some of {', '.join(TUNER_METHODS)}")
    values = _collect(args)
    values.setdefault("method", "bptt")
    cfg, run = build_configs(values)
    problem, _ = build_problem(run, cfg)
    rows = []
    ref = None
    for m in ["bptt", *[m for m in methods if m != "bptt"]]:
        objective = MetaObjective(problem, cfg.__class__(**{**cfg.to_dict(), "method": m}))
        t0 = time.perf_counter()
        result = objective.hypergradient(objective.initial_hparams(), 0, method=m)
        seconds = time.perf_counter() - t0
        grad, loss = result.grad, result.meta_loss
        if ref is None:
            ref = grad
        cos = float(tree_dot(grad, ref)) / max(tree_norm(grad) * tree_norm(ref), 1e-300)
        rel = tree_norm(tuple(a - b for a, b in zip(grad, ref))) / max(tree_norm(ref), 1e-300)
        rows.append(
            {
                "method": m,
                "cosine_vs_bptt": cos,
                "rel_error_vs_bptt": rel,
                "norm": tree_norm(grad),
                "seconds": seconds,
                "meta_loss": float(loss),
                "solver": result.solver.to_dict() if result.solver is not None else None,
                "grad": [g.tolist() for g in grad],
            }
        )
    print(
        f"hypergradients at the initial hyperparameters ({run.dataset}, T={cfg.inner_steps}, K={cfg.truncate}, "
        f"M={cfg.hyper_batches}, seed {cfg.seed}); reference: BPTT"
    )
    print(f"{'method':<8} {'cosine':>8} {'rel.err':>10} {'norm':>10} {'seconds':>8}")
    for r in rows:
        if r["method"] in methods or r["method"] == "bptt":
            print(
                f"{r['method']:<8} {r['cosine_vs_bptt']:>8.4f} {r['rel_error_vs_bptt']:>10.4f} "
                f"{r['norm']:>10.4g} {r['seconds']:>8.2f}"
            )
    if args.out:
        _write_json(args.out, _json_safe({"config": cfg.to_dict(), "run": {"dataset": run.dataset}, "rows": rows}))
    del torch
    return EXIT_OK


# ---------------------------------------------------------------------- compare
def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 1e-3,10, got {text!r}") from None
    return lo, hi


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``compare`` flags: tune's data/model and tuner flags plus methods, budget, seeds, Optuna and output."""
    from hypergrad.baselines import PRUNERS, SAMPLERS
    from hypergrad.compare.methods import DEFAULT_METHODS

    _add_problem_flags(parser)
    g = parser.add_argument_group("comparison")
    g.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated gradient methods ({', '.join(method_names())}), samplers "
                        f"({', '.join(SAMPLERS)}) and hybrids tpe+<gradient method> (default {DEFAULT_METHODS})")
    g.add_argument("--budget", type=_positive_int, default=100,
                   help="inner trainings per method and seed (one trial = one meta step = one; default 100)")
    g.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds, from --seed on (3)")
    g.add_argument("--hybrid-split", type=float, default=0.3,
                   help="fraction of the budget TPE spends before the tuner refines (0.3)")
    t = parser.add_argument_group("the tuner's meta optimisation (gradient methods and hybrids)")
    add_config_flags(t, TuneConfig, groups=["meta"], exclude=["method", "meta_steps", "strategy", "budget"])
    o = parser.add_argument_group("optuna")
    o.add_argument("--storage", default=None,
                   help="Optuna storage: sqlite:///FILE.db, postgresql://..., journal:FILE or FILE.log/.journal "
                        "(journal file); default in memory")
    o.add_argument("--study-name", default="hypergrad-compare",
                   help="prefix of the study names (<name>.<method>.seed<S>); studies resume")
    o.add_argument("--n-jobs", type=_positive_int, default=1, help="parallel Optuna trials (threads) per study")
    o.add_argument("--worker", type=int_flag(0), default=None, metavar="I",
                   help="this worker's index (0, 1, ...) on a shared --storage: its sampler is seeded from "
                        "--seed and I, so a stored run is reproducible. Without it the sampler is seeded from "
                        "--seed and the process id (workers never repeat each other's points, but a rerun "
                        "draws other points). With several workers TPE also sees the others' trials in the "
                        "order they finish, so only a single worker's search repeats exactly; gradient methods "
                        "are reproducible by seed either way. Their meta steps are stored as trials too")
    o.add_argument("--pruner", choices=PRUNERS, default="none",
                   help="median: prune on intermediate validation losses (off by default: budgets stay comparable)")
    o.add_argument("--prune-every", type=_positive_int, default=None,
                   help="report the validation loss every S inner steps (default T/10)")
    o.add_argument("--lr-range", type=_range, default=(1e-3, 10.0), metavar="LOW,HIGH",
                   help="log-uniform learning-rate range of the search (1e-3,10)")
    o.add_argument("--momentum-range", type=_range, default=(0.0, 0.99), metavar="LOW,HIGH",
                   help="uniform momentum range of the search (0,0.99)")
    out = parser.add_argument_group("output")
    out.add_argument("--logdir", default=None, metavar="DIR", help="TensorBoard runs DIR/<method>/seed<S>")
    out.add_argument("--out", default=None, metavar="FILE",
                     help="results JSON (default compare.json); the table and plot go next to it (.md, .png)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison; user errors raise ``ValueError`` / ``ConfigError``."""
    from hypergrad._imports import optional_import
    from hypergrad.baselines import SearchSpace, make_storage
    from hypergrad.compare import OptunaSettings, compare, markdown_table, method_kind, parse_methods, plot, redact
    from hypergrad.data import Split
    from hypergrad.inner import InnerProblem
    from hypergrad.workloads import build_problem, load_split

    optuna = optional_import("optuna", "optuna", purpose="hypergrad compare")
    methods = parse_methods(args.methods)
    values = _collect(args)
    values.pop("method", None)
    values.setdefault("method", "neumann")
    out = Path(values.pop("out", None) or "compare.json")
    logdir = values.pop("logdir", None)
    cfg, run = build_configs(values)
    if cfg.per == "element" and any(method_kind(m) != "gradient" for m in methods):
        raise ValueError("--per element cannot be searched by Optuna; use tensor, layer or global")
    if not 0.0 < args.hybrid_split < 1.0:
        raise ValueError(f"--hybrid-split must lie in (0, 1), got {args.hybrid_split}")
    for m in methods:
        if m.endswith("tbptt") and cfg.truncate > cfg.inner_steps:
            raise ValueError(f"--truncate ({cfg.truncate}) must not exceed --inner-steps ({cfg.inner_steps})")
    space = SearchSpace(args.lr_range[0], args.lr_range[1], args.momentum_range[0], args.momentum_range[1])
    storage = make_storage(args.storage)
    settings = OptunaSettings(
        storage=storage, study_name=args.study_name, pruner=args.pruner, prune_every=args.prune_every,
        n_jobs=args.n_jobs, space=space, worker=args.worker,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = list(range(cfg.seed, cfg.seed + args.seeds))
    run_key = {"dataset": run.dataset, "hidden": list(run.hidden), "n_train": run.n_train}

    def problems(seed: int) -> tuple[InnerProblem, Split]:
        scfg = dataclasses.replace(cfg, seed=seed)
        return build_problem(run, scfg, load_split(run, seed))

    print(
        f"comparing {', '.join(methods)} on {run.dataset} (MLP hidden {','.join(map(str, run.hidden))}, "
        f"T={cfg.inner_steps}, K={cfg.truncate}, per={cfg.per}) with {args.budget} inner trainings each, "
        f"seeds {seeds[0]}..{seeds[-1]}",
        file=sys.stderr,
    )
    result = compare(
        problems, cfg, methods, args.budget, seeds, settings=settings, hybrid_split=args.hybrid_split,
        logdir=logdir, run_key=run_key, progress=not args.no_progress,
    )
    result["run"] = {"dataset": run.dataset, "data_root": run.data_root, "hidden": list(run.hidden),
                     "n_train": run.n_train, "argv": [redact(a) if "://" in a else a for a in sys.argv[1:]]}
    _write_json(out, result)
    table = markdown_table(result["summary"], args.budget)
    md = out.with_suffix(".md")
    md.write_text(table, encoding="utf-8")
    png = out.with_suffix(".png")
    plot(result["runs"], methods, png, title=f"{run.dataset}, T={cfg.inner_steps}, {len(seeds)} seed(s)")
    print(table)
    print(f"results: {out}  table: {md}  plot: {png}")
    if logdir:
        print(f"TensorBoard: tensorboard --logdir {logdir}")
    return EXIT_OK


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "tune": (cmd_tune, "tune per-tensor learning rates and momenta of an MLP"),
    "check-grad": (cmd_check_grad, "compare every method's hypergradient with BPTT's"),
    "compare": (cmd_compare, "hypergradient methods against Optuna samplers at a matched budget"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hypergrad",
        description="Gradient-based hyperparameter optimisation with recurrent back-propagation.",
        epilog=__doc__.split("Exit codes:", 1)[1].join(["Exit codes:", ""]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch intra-op threads (default 1: fastest for small models on a shared CPU)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=parser.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "compare":
            add_compare_arguments(p)
            continue
        _add_problem_flags(p)
        if name == "tune":
            _add_tune_flags(p)
        if name == "check-grad":
            p.add_argument("--methods", default=",".join(TUNER_METHODS), help="comma-separated methods to compare")
            p.add_argument("--out", default=None, metavar="FILE", help="JSON with every hypergradient")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="hypergrad: %(levelname)s: %(message)s", level=logging.INFO)
    import torch

    from hypergrad.checkpoint import CheckpointError
    from hypergrad.data import DataError

    torch.set_num_threads(args.threads)
    handler = COMMANDS[args.command][0]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("hypergrad: interrupted; the last checkpoint is kept (continue with --resume DIR)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ConfigError, DataError, CheckpointError, MissingDependency, ValueError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"hypergrad: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
