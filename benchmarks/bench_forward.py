r"""Forward mode against BPTT and Neumann-RBP: time and memory growth of one hypergradient.

Question: does forward mode (:func:`hypergrad.forward_grad`) give BPTT's exact hypergradient at a
memory that does not grow with the horizon ``T``, and what does it cost as the number of
hyperparameters grows?

Setup: the digits tanh MLP 64-50-50-50-10 (:func:`hypergrad.data.load_digits_split`, batch 100,
float32, one thread), SGD with momentum from :math:`\alpha = e^{-1}, \beta = 0.5`, the meta loss
the validation loss of :math:`w_T`; one hypergradient by :func:`hypergrad.methods.gradient` for
``T`` in 100, 1,000, 10,000 and ``per`` = global / layer / tensor (2 / 8 / 16 hyperparameters):

* ``forward``: ``gradient(method="forward")`` on :meth:`InnerProblem.functional_step` over the
  ``T`` minibatches (``inputs=``);
* ``bptt``: ``gradient(method="bptt")`` on :meth:`InnerProblem.step` over the same minibatches;
* ``neumann``: ``gradient(method="neumann", truncate=K)``, the ``T`` steps by
  :meth:`InnerProblem.train` (``run=``), the series on one minibatch at :math:`h_T`.

Each measurement runs in a fresh process under ``MALLOC_MMAP_THRESHOLD_=65536
MALLOC_TRIM_THRESHOLD_=0``: set-up and a short warm-up (``T = 3``), then the peak counter is reset
(``echo 5 > /proc/self/clear_refs``), the baseline ``VmRSS`` read, one hypergradient timed, and
``VmHWM`` read; the growth is ``VmHWM`` minus the baseline.

``python -m benchmarks.bench_forward`` writes ``docs/results/forward.json`` and
``docs/results/forward.md``; ``--quick`` is a small grid for the tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._driver import ENV, LABELS, REPO, machine, write_json

METHODS = ("forward", "bptt", "neumann")
PERS = {"global": 2, "layer": 8, "tensor": 16}  # hyperparameters of the 4-layer MLP
COMMAND = "python -m benchmarks.bench_forward"
MIB = 1024.0


# ---------------------------------------------------------------------- one measurement (a fresh process)
def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Set up, warm up, reset the peak, time one hypergradient, read the peak (see the module docs)."""
    import torch
    import torch.nn.functional as F

    from hypergrad._profiling import library_version, reset_peak, status_kib
    from hypergrad.data import load_digits_split
    from hypergrad.inner import InnerProblem
    from hypergrad.methods import gradient
    from hypergrad.workloads import mlp

    torch.set_num_threads(1)
    split = load_digits_split(seed=0)
    torch.manual_seed(0)
    problem = InnerProblem(mlp(split.num_features, (50, 50, 50), split.num_classes), F.cross_entropy,
                           split.x_train, split.y_train, split.x_val, split.y_val,
                           batch_size=spec["batch_size"], per=spec["per"])
    hp = problem.spec.init(math.exp(-1), 0.5)
    n = problem.num_tensors
    method, num_steps, k = spec["method"], spec["inner_steps"], spec["truncate"]
    fixed = problem.sample_batches(1, seed=1)[0]

    def meta_loss(state: tuple) -> torch.Tensor:
        return problem.eval_loss(state[:n])

    def hypergradient(steps: int) -> Any:
        batches = problem.schedule(steps, seed=0)
        if method == "forward":
            return gradient(lambda s, p, b: problem.functional_step(s, p, *b), problem.initial_state(), hp, meta_loss,
                            method="forward", num_steps=steps, inputs=batches)
        if method == "bptt":
            return gradient(lambda s, p, b: problem.step(s, p, *b), problem.initial_state(), hp, meta_loss,
                            method="bptt", num_steps=steps, inputs=batches)
        return gradient(lambda s, p: problem.step(s, p, *fixed), problem.initial_state(), hp, meta_loss,
                        method="neumann", num_steps=steps, truncate=k,
                        run=lambda s, p, _steps: problem.train(p, batches, state=s))

    hypergradient(3)  # warm-up: every code path once
    gc.collect()
    reset_ok = reset_peak()
    base = status_kib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    result = hypergradient(num_steps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = status_kib("VmHWM")
    norm = math.sqrt(sum(float(g.double().square().sum()) for g in result.grads))
    return {
        "method": method,
        "label": LABELS[method],
        "per": spec["per"],
        "num_hyperparameters": problem.spec.num_hyperparameters,
        "inner_steps": num_steps,
        "truncate": k if method == "neumann" else None,
        "batch_size": spec["batch_size"],
        "dataset": "digits",
        "wall_s": wall,
        "cpu_s": cpu,
        "ms_per_step": 1e3 * cpu / num_steps,  # CPU time: less sensitive than wall time to a shared machine
        "loadavg": os.getloadavg()[0],
        "peak_mib": (peak - base) / MIB,
        "total_peak_mib": peak / MIB,
        "baseline_mib": base / MIB,
        "grad_norm": norm,
        "meta_loss": float(result.loss),
        "reset_ok": reset_ok,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **library_version(),
    }


def probe(spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process with the allocator settings."""
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_forward", "--probe", json.dumps(spec)], cwd=REPO,
                         env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"probe {spec} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- the grid and the report
def grid(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The measurements to run, and the cells left out (with the reason)."""
    runs, skipped = [], []
    for per in args.per:
        for steps in args.steps:
            for method in args.methods:
                cell = {"method": method, "per": per, "inner_steps": steps}
                if method == "bptt" and steps > args.bptt_max_steps:
                    skipped.append({**cell, "reason": f"BPTT above T = {args.bptt_max_steps} (--bptt-max-steps): "
                                                      "its memory and time grow with T"})
                elif method == "forward" and steps > args.forward_max_steps.get(per, math.inf):
                    skipped.append({**cell, "reason": f"forward mode at T = {steps} with per={per} "
                                                      "(--forward-max-steps): the run's time budget"})
                else:
                    runs.append({**cell, "batch_size": args.batch_size, "truncate": args.truncate})
    return runs, skipped


def _cell(rows: list[dict[str, Any]], method: str, per: str, steps: int) -> dict[str, Any] | None:
    return next((r for r in rows if (r["method"], r["per"], r["inner_steps"]) == (method, per, steps)), None)


def markdown(data: dict[str, Any]) -> str:
    """The results page: question, setup, command, table, conclusion."""
    rows, pers, steps = data["rows"], data["per"], data["inner_steps"]
    head = ["Hyperparameters", "T"]
    for m in data["methods"]:
        head += [f"{LABELS[m]} CPU s", f"{LABELS[m]} MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for per in pers:
        for t in steps:
            cells = [f"{PERS[per]} ({per})", f"{t:,}"]
            for m in data["methods"]:
                r = _cell(rows, m, per, t)
                cells += ["—", "—"] if r is None else [f"{r['cpu_s']:.2f}", f"{r['peak_mib']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    why = {"bptt": "its memory and time grow with T; --bptt-max-steps",
           "forward": "the time budget; --forward-max-steps"}
    skipped = "".join(f"\n- not run: {LABELS[s['method']]}, {PERS[s['per']]} hyperparameters, T = {s['inner_steps']:,}"
                      f" ({why.get(s['method'], s['reason'])})" for s in data["skipped"])
    return f"""# Forward mode: BPTT's hypergradient at a memory that does not grow with T

**Question.** Forward mode (`hypergrad.forward_grad`, `method="forward"`) carries the tangents
dh_t/dθ through the inner run (Franceschi et al., 2017): exact like BPTT, with nothing stored per
step. Does its memory stay flat as the horizon T grows, and what does it cost as the number of
hyperparameters grows, against BPTT and Neumann-RBP (K = {data['truncate']})?

**Setup.** One hypergradient of the validation loss after T steps of SGD with momentum on the
digits tanh MLP 64-50-50-50-10 (batch {data['batch_size']}, float32, one thread), learning rates and
momenta per model (2 hyperparameters), per layer (8) or per tensor (16). Each cell is a fresh
process: set-up and a warm-up, the peak counter reset (`echo 5 > /proc/self/clear_refs`), one
hypergradient, then `VmHWM` minus the baseline `VmRSS` (the growth, MiB), under
`MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`. Forward mode runs
`InnerProblem.functional_step` (vmap over the hyperparameter directions); BPTT `InnerProblem.step`
over the same minibatches; Neumann-RBP the T steps without a graph (`InnerProblem.train`) and K
terms on one minibatch at h_T. Times are CPU seconds of the one process (the wall times, in the
JSON, depend on the load of the shared {data['machine']['cpu_count']}-core machine: {_load(data)} at the
start): compare them within the table, not with other pages. MiB is the memory growth. The grid
took {_minutes(data)}.

**Command.** `{data['command']}` (every row, wall times included: [forward.json](forward.json))

{table}
{skipped}

**Conclusion.** {conclusion(data)}
"""


def _minutes(data: dict[str, Any]) -> str:
    cpu = sum(r["cpu_s"] for r in data["rows"]) / 60
    wall = data.get("total_s")
    return f"{cpu:.1f} CPU minutes" + (f" ({wall / 60:.0f} minutes of wall time, set-up included)" if wall else "")


def _load(data: dict[str, Any]) -> str:
    load = data["machine"].get("loadavg_at_start")
    return f"{load[0]:.1f}" if load else "unknown"


def _growth_cells(rows: list[dict[str, Any]], method: str, per: str) -> list[dict[str, Any]]:
    return sorted((r for r in rows if r["method"] == method and r["per"] == per), key=lambda r: r["inner_steps"])


def _flat(first: float, last: float) -> bool:
    """Memory growth that does not depend on T: within 2 MiB or 10 % of the shortest run's."""
    return abs(last - first) <= max(2.0, 0.1 * abs(first))


def conclusion(data: dict[str, Any]) -> str:
    """The measured answer, in words, from the rows."""
    rows, parts = data["rows"], []
    spans = {per: cells for per in data["per"] if len(cells := _growth_cells(rows, "forward", per)) >= 2}
    if spans:
        flat = all(_flat(c[0]["peak_mib"], c[-1]["peak_mib"]) for c in spans.values())
        slope = max((c[-1]["peak_mib"] - c[0]["peak_mib"]) * 1024 / (c[-1]["inner_steps"] - c[0]["inner_steps"])
                    for c in spans.values())
        series = []
        for per, cells in spans.items():
            growth = ", ".join(f"{r['peak_mib']:.1f}" for r in cells)
            steps = ", ".join(f"{r['inner_steps']:,}" for r in cells)
            series.append(f"{growth} MiB at T = {steps} with {PERS[per]} hyperparameters")
        verdict = "does not depend on T" if flat else "changes with T"
        parts.append(f"Forward mode's memory growth {verdict}: " + "; ".join(series)
                     + f" (at most {max(slope, 0.0):.2f} KiB per inner step from the shortest to the longest run).")
    bptt = [r for r in rows if r["method"] == "bptt"]
    if bptt:
        big = max(bptt, key=lambda r: r["inner_steps"])
        parts.append(f"BPTT's grows with T: {big['peak_mib']:.0f} MiB at T = {big['inner_steps']:,} "
                     f"({1024 * big['peak_mib'] / big['inner_steps']:.0f} KiB per step).")
    neumann = [r for r in rows if r["method"] == "neumann"]
    if neumann:
        fastest = all(r["cpu_s"] <= o["cpu_s"] for r in neumann for o in rows
                      if (o["per"], o["inner_steps"]) == (r["per"], r["inner_steps"]))
        parts.append(f"Neumann-RBP's growth is at most {max(r['peak_mib'] for r in neumann):.1f} MiB"
                     + (" and it is the fastest in every row" if fastest else "")
                     + ", but its hypergradient is the implicit approximation at h_T, not BPTT's.")
    fwd = [r for r in rows if r["method"] == "forward"]
    if fwd:
        per_p = {}
        for per in data["per"]:
            cells = [r for r in fwd if r["per"] == per]
            if cells:
                per_p[PERS[per]] = min(r["ms_per_step"] for r in cells)
        costs = ", ".join(f"{v:.1f} ms of CPU per step with {p}" for p, v in sorted(per_p.items()))
        ratio = [r["cpu_s"] / b["cpu_s"] for r in fwd
                 if (b := _cell(rows, "bptt", r["per"], r["inner_steps"])) is not None]
        span = "" if not ratio else (f"{min(ratio):.1f}" if f"{min(ratio):.1f}" == f"{max(ratio):.1f}"
                                     else f"{min(ratio):.1f}–{max(ratio):.1f}")
        parts.append(f"The price is time, growing with the number of hyperparameters: {costs}"
                     + (f"; forward mode takes {span}× BPTT's time where both ran." if ratio else "."))
    parts.append("Forward mode suits few hyperparameters (or few shared ones, as in schedules) and long horizons; "
                 "BPTT many hyperparameters and short horizons.")
    return " ".join(parts)


# ---------------------------------------------------------------------- command line
def _ints(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _names(choices: tuple[str, ...] | dict[str, int]):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad) or repr(text)}; choose from {', '.join(choices)}")
        return values

    return parse


def _caps(text: str) -> dict[str, int]:
    """``tensor=1000,layer=1000`` -> the largest T forward mode runs at for each granularity."""
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        per, _, value = part.partition("=")
        if per not in PERS or not value.isdigit():
            raise argparse.ArgumentTypeError(f"expected per=T pairs (per in {', '.join(PERS)}), got {part!r}")
        out[per] = int(value)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=COMMAND, description="Forward mode against BPTT and Neumann-RBP: time and "
                                "memory growth of one hypergradient on the digits MLP.")
    p.add_argument("--quick", action="store_true", help="a small grid for the tests (T = 5, 20; per=global)")
    p.add_argument("--steps", type=_ints, default=[100, 1000, 10000], help="inner steps T (default 100,1000,10000)")
    p.add_argument("--per", type=_names(PERS), default=list(PERS), help="granularities (default global,layer,tensor)")
    p.add_argument("--methods", type=_names(METHODS), default=list(METHODS), help="default forward,bptt,neumann")
    p.add_argument("--truncate", type=int, default=10, help="Neumann-RBP's K (default 10)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--bptt-max-steps", type=int, default=1000, help="skip BPTT above this T (default 1000)")
    p.add_argument("--forward-max-steps", type=_caps, default={"layer": 1000},
                   help="per=T caps on forward mode, to fit the time budget (default layer=1000; '' for none)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "forward.json", help="the JSON results")
    p.add_argument("--markdown", type=Path, default=None, help="the results page (default: --out with .md)")
    p.add_argument("--report", action="store_true", help="only re-write the page from the JSON at --out")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.per = [5, 20], ["global"]
        args.bptt_max_steps, args.forward_max_steps = 10**9, {}
    if args.markdown is None:
        args.markdown = args.out.with_suffix(".md")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe is not None:
        print(json.dumps(measure(json.loads(args.probe))))
        return 0
    if args.report:
        data = json.loads(args.out.read_text())
        data["markdown"] = markdown(data)
        write_json(args.out, data)
        args.markdown.write_text(data["markdown"])
        print(f"wrote {args.out} and {args.markdown}")
        return 0
    runs, skipped = grid(args)
    data: dict[str, Any] = {
        "question": "memory growth and time of one hypergradient: forward mode vs BPTT vs Neumann-RBP",
        "command": COMMAND + (" --quick" if args.quick else ""),
        "dataset": "digits", "batch_size": args.batch_size, "truncate": args.truncate,
        "inner_steps": args.steps, "per": args.per, "methods": args.methods,
        "machine": machine(), "rows": [], "skipped": skipped,
    }
    start = time.perf_counter()
    for spec in runs:
        row = probe(spec)
        data["rows"].append(row)
        print(f"{row['label']:<12} {row['num_hyperparameters']:>3} hyperparameters  T={row['inner_steps']:>6}  "
              f"{row['wall_s']:8.2f} s ({row['cpu_s']:.2f} CPU s)  growth {row['peak_mib']:8.1f} MiB", flush=True)
    data["total_s"] = time.perf_counter() - start
    data["markdown"] = markdown(data)
    write_json(args.out, data)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(data["markdown"])
    print(f"wrote {args.out} and {args.markdown} ({data['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
