"""Figures and tables of the §5.3 runs: meta-loss curves, final losses, cosine to BPTT.

Drawn by ``python -m recipes.hyperopt_mnist.run --plot-only``, e.g.::

    python -m recipes.hyperopt_mnist.run --plot-only --out runs/hyperopt --figdir docs/results \\
        --summary docs/results/hyperopt_summary.json

Reads the per-run JSON files of :mod:`recipes.hyperopt_mnist.run` (``SETTING/T*_K*/METHOD_seedS.json``)
and the ``checkgrad_SETTING_T*_K*.json`` files of ``hypergrad check-grad --out``.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

from hypergrad.methods import method_names
from recipes._common import label

ORDER = method_names()
_GRID = re.compile(r"T(\d+)_K(\d+)")


def load_runs(*roots: Path) -> dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]]:
    """``{(setting, T, K): {method: [run, ...]}}`` from one or more run directories."""
    out: dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(p for root in roots for p in root.glob("*/T*_K*/*_seed*.json")):
        m = _GRID.fullmatch(path.parent.name)
        if m is None:
            continue
        run = json.loads(path.read_text())
        key = (path.parent.parent.name, int(m.group(1)), int(m.group(2)))
        out.setdefault(key, {}).setdefault(run["job"]["method"], []).append(run)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per (setting, T, K, method): final meta / training loss mean and std over seeds."""
    rows = []
    for (setting, t, k), by_method in sorted(runs.items()):
        for method in sorted(by_method, key=ORDER.index):
            rs = by_method[method]
            finals = [r["final_meta_loss"] for r in rs if r["final_meta_loss"] is not None]
            trains = [r["final_train_loss"] for r in rs if r["final_train_loss"] is not None]
            first = [r["history"][0]["meta_loss"] for r in rs if r["history"][0]["meta_loss"] is not None]
            fm, fs = _mean_std(finals)
            ratio = [r["final_meta_loss"] / r["history"][0]["meta_loss"] for r in rs
                     if r["final_meta_loss"] is not None and r["history"][0]["meta_loss"]]
            rm, rsd = _mean_std(ratio)
            tm, ts = _mean_std(trains)
            its = [h["solver"]["iterations"] for r in rs for h in r["history"]
                   if h.get("solver") and h["solver"].get("iterations") is not None]
            rows.append({
                "setting": setting, "inner_steps": t, "truncate": k, "method": method,
                "seeds": sorted(r["job"]["seed"] for r in rs), "meta_steps": rs[0]["job"]["meta_steps"],
                "initial_meta_loss": statistics.fmean(first) if first else None,
                "final_meta_loss_mean": fm, "final_meta_loss_std": fs,
                "final_over_initial_mean": rm, "final_over_initial_std": rsd,
                "final_train_loss_mean": tm, "final_train_loss_std": ts,
                "nonfinite_runs": len(rs) - len(finals),
                "steps_with_events": sum(r["divergence_events"] for r in rs),
                "events": sorted({e for r in rs for h in r["history"] for e in h["events"]}),
                "seconds_per_meta_step": statistics.fmean(h["seconds"] for r in rs for h in r["history"]),
                "solver_iterations": {"min": min(its), "max": max(its), "mean": statistics.fmean(its)} if its else None,
            })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | T | K | method | seeds | meta steps | initial meta loss | final meta loss (mean ± std) "
             "| final ÷ initial meta loss | final training loss (mean ± std) | steps with divergence events "
             "| s / meta step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ev = f"{r['steps_with_events']}" + (f" ({', '.join(r['events'])})" if r["events"] else "")
        lines.append(
            f"| {r['setting']} | {r['inner_steps']} | {r['truncate']} | {label(r['method'])} | {len(r['seeds'])} | "
            f"{r['meta_steps']} | {r['initial_meta_loss']:.4f} | {r['final_meta_loss_mean']:.4f} ± "
            f"{r['final_meta_loss_std']:.4f} | "
            f"{r['final_over_initial_mean']:.4f} ± {r['final_over_initial_std']:.4f} | "
            f"{r['final_train_loss_mean']:.4f} ± {r['final_train_loss_std']:.4f} | "
            f"{ev} | {r['seconds_per_meta_step']:.1f} |")
    return "\n".join(lines)


def plot_curves(runs: dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]], setting: str, path: Path) -> bool:
    """Meta loss against meta step, one column per (T, K): mean ± std over seeds (top) and, paired by
    seed, the meta loss divided by its value at meta step 0 (bottom; every method starts from the
    same first inner run, so this removes the seed-to-seed spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(k for k in runs if k[0] == setting)
    if not keys:
        return False
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 6.4), squeeze=False)
    for col, key in enumerate(keys):
        for method in sorted(runs[key], key=ORDER.index):
            rs = runs[key][method]
            n = min(len(r["history"]) for r in rs)
            curves = [[h["meta_loss"] if h["meta_loss"] is not None else float("nan") for h in r["history"][:n]]
                      for r in rs]
            rel = [[v / c[0] for v in c] for c in curves]
            for row, data in enumerate((curves, rel)):
                ax = axes[row][col]
                mean = [statistics.fmean(c[i] for c in data) for i in range(n)]
                std = [statistics.stdev(c[i] for c in data) if len(data) > 1 else 0.0 for i in range(n)]
                line, = ax.plot(range(n), mean, "o-", ms=3, label=f"{label(method)} ({len(rs)} seeds)")
                ax.fill_between(range(n), [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=line.get_color(), alpha=0.12)
        for row in range(2):
            ax = axes[row][col]
            ax.set_yscale("log")
            ax.set_xlabel("meta step")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][col].set_title(f"T={key[1]}, K={key[2]}")
    name = "training loss, 10k images" if setting == "paper" else "validation loss"
    axes[0][0].set_ylabel(f"meta loss ({name})")
    axes[1][0].set_ylabel("meta loss ÷ meta loss at step 0")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"MNIST hyperparameter optimisation, {setting} setting (mean ± std over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def load_checkgrad(*roots: Path) -> list[dict[str, Any]]:
    """Rows of the ``checkgrad_SETTING_T*_K*.json`` files written by ``hypergrad check-grad --out``."""
    rows = []
    for path in sorted(p for root in roots for p in root.glob("checkgrad_*_T*_K*.json")):
        m = re.fullmatch(r"checkgrad_(\w+?)_T(\d+)_K(\d+)\.json", path.name)
        if m is None:
            continue
        data = json.loads(path.read_text())
        for r in data["rows"]:
            rows.append({"setting": m.group(1), "inner_steps": int(m.group(2)), "truncate": int(m.group(3)),
                         "method": r["method"], "cosine_vs_bptt": r["cosine_vs_bptt"],
                         "rel_error_vs_bptt": r["rel_error_vs_bptt"], "norm": r["norm"], "seconds": r["seconds"]})
    return rows


_CG_HEADER = re.compile(r"hypergradients at the initial hyperparameters \((\w+), T=(\d+), K=(\d+), M=(\d+), "
                        r"seed (\d+)\); reference: BPTT")


def parse_checkgrad_stdout(text: str, settings: list[str]) -> list[dict[str, Any]]:
    """Rows from the table that ``hypergrad check-grad`` prints, one block per entry of ``settings``.

    The printed header names the data set, T, K, M and the seed but not the meta-loss setting, so
    the caller names the setting of each block, in order.
    """
    rows: list[dict[str, Any]] = []
    blocks = _CG_HEADER.split(text)[1:]
    n_blocks = len(blocks) // 6
    if n_blocks != len(settings):
        raise ValueError(f"found {n_blocks} check-grad tables but {len(settings)} settings were named")
    for i, setting in enumerate(settings):
        _, t, k, _, seed, body = blocks[6 * i: 6 * i + 6]
        for line in body.splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[0] in ORDER:
                rows.append({"setting": setting, "inner_steps": int(t), "truncate": int(k), "seed": int(seed),
                             "method": parts[0], "cosine_vs_bptt": float(parts[1]),
                             "rel_error_vs_bptt": float(parts[2]), "norm": float(parts[3]),
                             "seconds": float(parts[4])})
    return rows


def plot_cosine(rows: list[dict[str, Any]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["setting"], r["inner_steps"], r["truncate"]) for r in rows})
    methods = [m for m in ORDER if m != "bptt" and any(r["method"] == m for r in rows)]
    if not groups or not methods:
        return False
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 3, 3.8))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        vals = []
        for g in groups:
            hit = [r["cosine_vs_bptt"] for r in rows if (r["setting"], r["inner_steps"], r["truncate"]) == g
                   and r["method"] == m]
            vals.append(hit[0] if hit else float("nan"))
        ax.bar([i + j * width for i in range(len(groups))], vals, width, label=label(m))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{s}\nT={t}, K={k}" for s, t, k in groups], fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("cosine(method, BPTT)")
    ax.set_title("Hypergradient at the initial hyperparameters vs BPTT (hypergrad check-grad, seed 0)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(runs: dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]], cos: list[dict[str, Any]],
           figdir: Path | None, summary: Path | None) -> str:
    """The figures (with ``figdir``), the summary JSON (with ``summary``) and the markdown tables."""
    rows = summarize(runs)
    if figdir is not None:
        for setting in sorted({k[0] for k in runs}):
            plot_curves(runs, setting, figdir / f"hyperopt_{setting}.png")
        if cos:
            plot_cosine(cos, figdir / "hyperopt_cosine.png")
    text = markdown(rows)
    if cos:
        text += ("\n\n| setting | T | K | method | cosine vs BPTT | rel. error vs BPTT | norm | seconds |\n"
                 "|---|---|---|---|---|---|---|---|")
        for r in cos:
            text += (f"\n| {r['setting']} | {r['inner_steps']} | {r['truncate']} | {label(r['method'])} | "
                     f"{r['cosine_vs_bptt']:.3f} | {r['rel_error_vs_bptt']:.3f} | {r['norm']:.4g} "
                     f"| {r['seconds']:.1f} |")
    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        curves = {f"{st}/T{t}_K{k}/{m}": {str(r["job"]["seed"]): [h["meta_loss"] for h in r["history"]] for r in rs}
                  for (st, t, k), by_m in sorted(runs.items()) for m, rs in by_m.items()}
        summary.write_text(json.dumps({"runs": rows, "check_grad": cos, "meta_loss_curves": curves}, indent=1))
    return text
