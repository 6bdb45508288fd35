"""Fig. 3 analogues and the Table 1 analogue from the JSON written by ``run.py --out``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from recipes.gnn_citation.train import GNN_METHODS, METHODS, label

__all__ = ["epochs_table", "load_records", "markdown_table", "mean_curve", "merge_records", "plot_records"]

# Schema 1 files named two methods the recipe's own way.
_OLD_NAMES = {"cg_rbp": "cg", "neumann_rbp": "neumann"}


def _renamed(rec: dict) -> dict:
    def rename(d: dict) -> dict:
        return {_OLD_NAMES.get(k, k): v for k, v in d.items()}

    rec = {**rec, "results": rename(rec["results"])}
    for key in ("summary", "paper"):
        if key in rec:
            rec[key] = rename(rec[key])
    if "methods" in rec:
        rec["methods"] = [_OLD_NAMES.get(m, m) for m in rec["methods"]]
    for runs in rec["results"].values():
        for r in runs:
            r["method"] = _OLD_NAMES.get(r.get("method"), r.get("method"))
            if r.get("best_epoch") == -1:  # schema 1's "none yet"
                r["best_epoch"], r["best_val_acc"] = None, None
    return rec


def load_records(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        rec = json.loads(Path(path).read_text())
        if "results" not in rec or "dataset" not in rec:
            raise ValueError(f"{path} is not a results file of recipes.gnn_citation.run")
        records.append(_renamed(rec))
    return records


def merge_records(records: list[dict]) -> list[dict]:
    """Merge records of the same data set (e.g. one file per method or per group of seeds)."""
    from recipes.gnn_citation.run import summarize

    merged: dict[str, dict] = {}
    for rec in records:
        ds = rec["dataset"]
        if ds not in merged:
            merged[ds] = {**rec, "results": {m: list(r) for m, r in rec["results"].items()},
                          "seeds": list(rec["seeds"]), "sources": [rec.get("command", "")]}
            continue
        into = merged[ds]
        if into["config"] != rec["config"] or into["hidden"] != rec["hidden"]:
            raise ValueError(f"cannot merge {ds} records with different settings")
        for m, runs in rec["results"].items():
            have = {r["seed"] for r in into["results"].get(m, [])}
            into["results"].setdefault(m, []).extend(r for r in runs if r["seed"] not in have)
        into["seeds"] = sorted(set(into["seeds"]) | set(rec["seeds"]))
        into["sources"].append(rec.get("command", ""))
    for rec in merged.values():
        rec["results"] = {m: sorted(rec["results"][m], key=lambda r: r["seed"])
                          for m in METHODS if m in rec["results"]}
        rec["summary"] = summarize(rec["results"])
    return list(merged.values())


def mean_curve(curves: list[list[float]]) -> np.ndarray:
    """Mean over runs at each index; a run that stopped early holds its last value."""
    if not curves or not any(curves):
        return np.zeros(0)
    n = max(len(c) for c in curves)
    padded = np.array([list(c) + [c[-1]] * (n - len(c)) for c in curves if c], dtype=float)
    return padded.mean(axis=0)


def plot_records(records: list[dict], figdir: Path, *, tag: str = "") -> list[Path]:
    """One PNG per data set: (a) training loss, (b) validation accuracy per epoch,
    (c) ``||h_t - h_{t-1}||`` per propagation step at the last epoch (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir = Path(figdir)
    figdir.mkdir(parents=True, exist_ok=True)
    written = []
    for rec in records:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for method in METHODS:
            runs = rec["results"].get(method, [])
            if not runs:
                continue
            kw = {"color": f"C{METHODS.index(method)}", "label": label(method),
                  "linestyle": "--" if method == "baseline" else "-"}
            loss = mean_curve([r["train_loss"] for r in runs])
            axes[0].plot(np.arange(len(loss)), loss, **kw)
            val = mean_curve([r["val_acc"] for r in runs])
            axes[1].plot(np.arange(len(val)), val, **kw)
            if method in GNN_METHODS:
                diff = mean_curve([r["diff_norm_last"] for r in runs])
                axes[2].semilogy(np.arange(1, len(diff) + 1), diff, **kw)
        n_seeds = len(rec["seeds"])
        axes[0].set(xlabel="epoch", ylabel="training loss", title=f"(a) {rec['dataset']}: training loss")
        axes[1].set(xlabel="epoch", ylabel="validation accuracy (%)", title="(b) validation accuracy")
        axes[2].set(xlabel="propagation step t", ylabel=r"$\|h_t - h_{t-1}\|$",
                    title="(c) difference norm, last epoch")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        cfg = rec["config"]
        stop = f", early stopping {cfg['patience']}" if cfg.get("patience") else ""
        fig.suptitle(f"GRU-GNN on {rec['dataset']} ({rec.get('device') or 'cpu'}, {cfg['epochs']} epochs max{stop},"
                     f" T={cfg['num_steps']}, truncation {cfg['truncate']}): mean over {n_seeds} seed(s)")
        fig.tight_layout()
        path = figdir / f"gnn_{rec['dataset']}{tag}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _fmt(mean: float, std: float) -> str:
    return "n/a" if not math.isfinite(mean) else f"{mean:.2f} ± {std:.2f}"


def markdown_table(records: list[dict]) -> str:
    """Table 1 analogue: ours (mean ± std over seeds) beside the paper's numbers."""
    datasets = [r["dataset"] for r in records]
    head = "| Test acc. (%) | " + " | ".join(f"{d} (ours) | {d} (paper)" for d in datasets) + " |"
    sep = "|---|" + "---|---|" * len(datasets)
    lines = [head, sep]
    shown = [m for m in METHODS if any(m in rec["results"] or m in rec["paper"] for rec in records)]
    for method in shown:
        cells = []
        for rec in records:
            s = rec.get("summary", {}).get(method)
            ours = _fmt(s["mean"], s["std"]) + f" (n={s['n']})" if s else "—"
            paper = rec["paper"].get(method)
            cells += [ours, f"{paper[0]:.2f} ± {paper[1]:.1f}" if paper else "—"]
        lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def epochs_table(records: list[dict]) -> str:
    """Per data set and method: epochs run and best epoch (mean over seeds), runs stopped by the
    time limit, and whether the mean test accuracy meets the paper's mean."""
    lines = ["| data set | method | epochs run (mean) | best epoch (mean) | out of time | ours vs paper |",
             "|---|---|---|---|---|---|"]
    for rec in records:
        for method, s in rec.get("summary", {}).items():
            paper = rec["paper"].get(method)
            verdict = "—" if not paper or not math.isfinite(s["mean"]) else (
                f"{'met' if s['mean'] >= paper[0] else 'missed'} ({s['mean'] - paper[0]:+.2f})")
            best = "—" if s.get("mean_best_epoch") is None else f"{s['mean_best_epoch']:.0f}"
            lines.append(f"| {rec['dataset']} | {label(method)} | {s['mean_epochs_run']:.0f} | {best} "
                         f"| {s.get('out_of_time', 0)}/{s['n']} | {verdict} |")
    return "\n".join(lines)
