"""Markdown tables and the issue's targets from the benchmark JSON files.

    python -m benchmarks.report --table2 docs/results/perf_table2.json \\
        --steps docs/results/perf_scaling_steps.json --per docs/results/perf_scaling_per.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks._driver import LABELS


def _load(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path is not None and path.exists() else None


def scaling_table(rows: list[dict[str, Any]], key: str) -> str:
    lines = [f"| method | {'T' if key == 'inner_steps' else 'per'} | hyperparameters | wall s (median) | "
             "hypergradient s | peak growth MiB | total peak MiB | reps |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["num_hyperparameters"], r["inner_steps"])):
        hs = r["hypergrad_s"]
        lines.append(f"| {LABELS[r['method']]} | {r[key]} | {r['num_hyperparameters']} | {r['wall_s']:.3f} | "
                     f"{'–' if hs is None else f'{hs:.3f}'} | {r['peak_mib']:.1f} | {r['total_peak_mib']:.1f} | "
                     f"{r['reps']} |")
    return "\n".join(lines)


def targets(t2: dict[str, Any] | None, steps: dict[str, Any] | None, per: dict[str, Any] | None) -> str:
    """The issue's targets, each as measured / met or not met."""
    out = ["| measure | paper (GPU) | target | measured here | met? |", "|---|---|---|---|---|"]

    def find(rows: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
        return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)

    if t2 is not None:
        rows = t2["rows"]
        bptt, sgd = find(rows, method="bptt"), find(rows, method="sgd")
        ks = (10, 50, 100)
        neu = [find(rows, method="neumann", truncate=k) for k in ks]
        if bptt and all(neu):
            tr = [bptt["wall_s"] / n["wall_s"] for n in neu]
            ok = all(a >= b for a, b in zip(tr, (3.5, 3.2, 3.0)))
            out.append(f"| BPTT ÷ Neumann-RBP time, K=10/50/100 | 3.02/2.87/2.68 | ≥ 3.5/3.2/3.0 | "
                       f"{'/'.join(f'{x:.2f}' for x in tr)} | {'met' if ok else 'not met'} |")
            if sgd:
                r = neu[0]["wall_s"] / sgd["wall_s"]
                out.append(f"| Neumann-RBP (K=10) ÷ torch.optim.SGD, T steps | – | ≤ 1.0 | {r:.2f} | "
                           f"{'met' if r <= 1.0 else 'not met'} |")
            g = [bptt["peak_mib"] / max(n["peak_mib"], 1e-9) for n in neu]
            out.append(f"| BPTT ÷ Neumann-RBP memory growth, T=1000 (K=10/50/100) | – | ≥ 200 | "
                       f"{'/'.join(f'{x:.0f}' for x in g)} | {'met' if min(g) >= 200 else 'not met'} |")
            tp = [bptt["total_peak_mib"] / n["total_peak_mib"] for n in neu]
            out.append(f"| BPTT ÷ Neumann-RBP total peak memory (K=10/50/100) | 4.35/4.25/4.11 | ≥ 5 | "
                       f"{'/'.join(f'{x:.2f}' for x in tp)} | {'met' if min(tp) >= 5 else 'not met'} |")
    if steps is not None:
        neu = sorted((r["inner_steps"], r["peak_mib"]) for r in steps["rows"] if r["method"] == "neumann")
        if neu:
            worst = max(p for _, p in neu)
            vals = ", ".join(f"{p:.1f}" for _, p in neu)
            out.append(f"| Neumann-RBP memory growth, T={neu[0][0]} → {neu[-1][0]} | – | < 10 MiB at "
                       f"every T | {vals} MiB | {'met' if worst < 10 else 'not met'} |")
    if per is not None:
        for m in ("neumann", "tbptt"):
            e, t = find(per["rows"], method=m, per="element"), find(per["rows"], method=m, per="tensor")
            if e and t:
                r = e["wall_s"] / t["wall_s"]
                out.append(f"| per-element ÷ per-tensor hyperparameters, time ({LABELS[m]}, K=10) | – | ≤ 1.2 | "
                           f"{r:.2f} | {'met' if r <= 1.2 else 'not met'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    p.add_argument("--table2", type=Path, default=None)
    p.add_argument("--steps", type=Path, default=None)
    p.add_argument("--per", type=Path, default=None)
    args = p.parse_args(argv)
    t2, steps, per = _load(args.table2), _load(args.steps), _load(args.per)
    if t2:
        print("## Table 2\n\n" + t2["markdown"] + "\n")
    if steps:
        print("## Scaling in T\n\n" + scaling_table(steps["rows"], "inner_steps") + "\n")
    if per:
        print("## Scaling in the number of hyperparameters\n\n" + scaling_table(per["rows"], "per") + "\n")
    print("## Targets\n\n" + targets(t2, steps, per))
    return 0


if __name__ == "__main__":
    sys.exit(main())
