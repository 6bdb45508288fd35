"""Table 2 of Liao et al. (2018): time and memory of one meta step, each method in a fresh process.

Methods BPTT, TBPTT(K), RBP(K), CG-RBP(K), Neumann-RBP(K) on the §5.3 problem (MNIST, 10,000
training images, 784-50-50-50-10 tanh MLP, 16 hyperparameters, batch 100, M = 4 minibatches for
the RBP methods), T inner steps, and the floor: plain training of the same T steps with
``torch.optim.SGD``. Per row: median wall time of one meta step (``Tuner.meta_step``: the T inner
steps, the meta loss, the hypergradient, the Adam step), the hypergradient phase alone (time
after the T inner steps), the peak-RSS growth above a baseline taken after set-up, and the total
peak RSS; a second table gives the time ratios in the process's CPU seconds, which a shared,
loaded machine inflates less than the wall time. See :mod:`benchmarks._probe` for the measurement.

    python -m benchmarks.bench_meta_step --out docs/results/perf_table2.json
    python -m benchmarks.bench_meta_step --quick --out /tmp/bench.json      # < 1 minute
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._driver import LABELS, machine, probe, write_json

METHODS = ("bptt", "tbptt", "rbp", "cg", "neumann", "sgd")
# Table 2 of the paper (GPU, T = 1000): BPTT's cost divided by Neumann-RBP's.
PAPER_TIME = {10: 3.02, 50: 2.87, 100: 2.68}
PAPER_MEMORY = {10: 4.35, 50: 4.25, 100: 4.11}


def _rows_for(methods: list[str], ks: list[int], base: dict[str, Any], log: bool = True) -> list[dict[str, Any]]:
    rows = []
    for m in methods:
        for k in ([ks[0]] if m in ("bptt", "sgd") else ks):
            t0 = time.perf_counter()
            row = probe({**base, "method": m, "truncate": k})
            rows.append(row)
            if log:
                hs = row["hypergrad_s"]
                print(f"{LABELS[m]:26s} K={'-' if row['truncate'] is None else row['truncate']!s:>4} "
                      f"{row['wall_s']:8.3f} s (hypergradient {'-' if hs is None else f'{hs:.3f}'} s)  "
                      f"+{row['peak_mib']:8.1f} MiB (total {row['total_peak_mib']:7.1f} MiB)  "
                      f"[{time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    return rows


def ratio_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: BPTT's cost divided by each method's, beside the paper's Neumann-RBP ratios.

    Memory is the process's peak RSS on the CPU, the caching allocator's peak on a GPU.
    """
    bptt = next((r for r in rows if r["method"] == "bptt"), None)
    sgd = next((r for r in rows if r["method"] == "sgd"), None)
    lines = [
        "| method | K | wall s (median) | hypergradient s | peak growth MiB | total peak MiB "
        "| BPTT ÷ method, time | paper time | BPTT ÷ method, growth | BPTT ÷ method, total peak "
        "| paper memory | method ÷ SGD time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def div(a: float | None, b: float | None) -> str:
        return "–" if a is None or b is None or b <= 0 else f"{a / b:.2f}"

    def growth(r: dict[str, Any] | None) -> float | None:
        return None if r is None else r.get("gpu_peak_mib", r["peak_mib"])

    def total(r: dict[str, Any] | None) -> float | None:
        return None if r is None else r.get("gpu_total_peak_mib", r["total_peak_mib"])

    for r in rows:
        k = r["truncate"]
        paper = r["method"] == "neumann" and k in PAPER_TIME
        hs = r["hypergrad_s"]
        lines.append(
            f"| {LABELS[r['method']]} | {'–' if k is None else k} | {r['wall_s']:.3f} | "
            f"{'–' if hs is None else f'{hs:.3f}'} | {growth(r):.1f} | {total(r):.1f} | "
            f"{div(bptt and bptt['wall_s'], r['wall_s'])} | {f'×{PAPER_TIME[k]}' if paper else '–'} | "
            f"{div(growth(bptt), growth(r))} | {div(total(bptt), total(r))} | "
            f"{f'×{PAPER_MEMORY[k]}' if paper else '–'} | {div(r['wall_s'], sgd and sgd['wall_s'])} |"
        )
    return "\n".join(lines)


def cpu_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: the same time ratios in CPU seconds of the process (rows without ``cpu_s`` are left out).

    On a machine shared with other jobs the wall time counts the seconds the process waited
    for a core; its CPU time does not, so these ratios move less with the load.
    """
    rows = [r for r in rows if r.get("cpu_s") is not None]
    bptt = next((r["cpu_s"] for r in rows if r["method"] == "bptt"), None)
    sgd = next((r["cpu_s"] for r in rows if r["method"] == "sgd"), None)
    lines = ["| method | K | CPU s (median) | BPTT ÷ method, CPU time | paper time | method ÷ SGD, CPU time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        k, c = r["truncate"], r["cpu_s"]
        paper = f"×{PAPER_TIME[k]}" if r["method"] == "neumann" and k in PAPER_TIME else "–"
        lines.append(f"| {LABELS[r['method']]} | {'–' if k is None else k} | {c:.3f} | "
                     f"{'–' if bptt is None or c <= 0 else f'{bptt / c:.2f}'} | {paper} | "
                     f"{'–' if sgd is None or sgd <= 0 else f'{c / sgd:.2f}'} |")
    return "\n".join(lines)


def merge_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per probe: the first round's, with the times and memory replaced by medians over the rounds."""
    if len(rounds) == 1:
        return rounds[0]
    merged = []
    for i, row in enumerate(rounds[0]):
        same = [r[i] for r in rounds]
        out = dict(row, rounds=len(rounds))
        for key in ("wall_s", "cpu_s", "hypergrad_s", "peak_mib", "total_peak_mib", "baseline_mib"):
            vals = [r[key] for r in same if r.get(key) is not None]
            out[key] = statistics.median(vals) if vals else None
            out[f"{key}_rounds"] = [r.get(key) for r in same]
        merged.append(out)
    return merged


def round_ratios(rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """BPTT ÷ Neumann-RBP and Neumann-RBP ÷ SGD within each round (wall and CPU time), and their medians."""
    ratios: dict[str, list[float]] = {}
    for rows in rounds:
        by = {(r["method"], r["truncate"]): r for r in rows}
        bptt, sgd = by.get(("bptt", None)), by.get(("sgd", None))
        for (m, k), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            if m != "neumann":
                continue
            for clock in ("wall_s", "cpu_s"):
                if bptt is not None:
                    ratios.setdefault(f"BPTT ÷ Neumann-RBP K={k}, {clock}", []).append(bptt[clock] / r[clock])
                if sgd is not None:
                    ratios.setdefault(f"Neumann-RBP K={k} ÷ SGD, {clock}", []).append(r[clock] / sgd[clock])
    lines = ["| ratio (within each round) | median | min | max | paper |", "|---|---|---|---|---|"]
    for name, vals in ratios.items():
        k = int(name.split("K=")[1].split()[0].rstrip(","))
        paper = f"×{PAPER_TIME[k]}" if name.startswith("BPTT") and k in PAPER_TIME else "–"
        lines.append(f"| {name.replace('_s', '')} | {statistics.median(vals):.2f} | {min(vals):.2f} | "
                     f"{max(vals):.2f} | {paper} |")
    return {"ratios": ratios, "medians": {n: statistics.median(v) for n, v in ratios.items()},
            "markdown": "\n".join(lines)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_meta_step", description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--inner-steps", type=int, default=1000, help="T (1000)")
    p.add_argument("--truncate", default="10,50,100", help="comma list of K (10,50,100)")
    p.add_argument("--reps", type=int, default=5, help="timed meta steps per process; the median is kept (5)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (model and data on the GPU)")
    p.add_argument("--no-stop-on-growth", action="store_true",
                   help="run all K Neumann terms (the tuner's default stops the series when a term grows)")
    p.add_argument("--no-batch-hyper", action="store_true",
                   help="solve the M hyper-batch systems one after another instead of stacked")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole set of probes this many times, one round after another, and keep each "
                        "row's median over the rounds; the ratios are medians of the per-round ratios (1)")
    p.add_argument("--quick", action="store_true", help="T=20, K=5,10, 2 reps: checks the pipeline in < 1 min")
    p.add_argument("--out", type=Path, default=None, help="JSON with every row")
    p.add_argument("--markdown", type=Path, default=None, help="write the ratio table here too")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    try:
        ks = [int(k) for k in args.truncate.split(",")]
    except ValueError:
        p.error(f"--truncate must be a comma list of integers, got {args.truncate!r}")
    t, reps = args.inner_steps, args.reps
    if args.quick:
        t, ks, reps = 20, [5, 10], 2
    if t < 1 or reps < 1 or args.rounds < 1 or any(k < 1 or k > t for k in ks):
        p.error("need T >= 1, reps >= 1, rounds >= 1 and 1 <= K <= T")
    base = {"inner_steps": t, "reps": reps, "batch_size": args.batch_size, "dataset": args.dataset,
            "data_root": args.data_root, "device": args.device, "stop_on_growth": not args.no_stop_on_growth,
            "batch_hyper": not args.no_batch_hyper}
    start = time.perf_counter()
    info = machine()
    rounds = [_rows_for(methods, ks, base) for _ in range(args.rounds)]
    rows = merge_rounds(rounds)
    table, cpu = ratio_table(rows), cpu_table(rows)
    summary = round_ratios(rounds) if args.rounds > 1 else None
    print(table + "\n\n" + cpu + ("" if summary is None else "\n\n" + summary["markdown"]))
    if args.out is not None:
        write_json(args.out, {"command": "python -m benchmarks.bench_meta_step " + " ".join(sys.argv[1:] if argv
                                                                                            is None else argv),
                              "machine": info, "inner_steps": t, "truncate": ks, "reps": reps,
                              "seconds": time.perf_counter() - start, "rows": rows, "markdown": table,
                              "markdown_cpu": cpu, "rounds": args.rounds, "round_ratios": summary})
    if args.markdown is not None:
        args.markdown.write_text(table + "\n\n" + cpu + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
