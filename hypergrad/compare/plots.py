"""Figures and TensorBoard runs of a comparison; matplotlib and TensorBoard are imported only here, when called."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypergrad._imports import optional_import
from hypergrad.compare.trace import Trace, best_at, best_at_seconds, trace_from_json

__all__ = ["TraceWriter", "log_tensorboard", "plot"]


def plot(runs: Sequence[dict[str, Any]], methods: Sequence[str], path: str | Path, title: str = "") -> None:
    """Best-so-far meta loss against inner trainings and against wall seconds (mean over seeds, ± std band)."""
    matplotlib = optional_import("matplotlib", "matplotlib", purpose="the comparison plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    traces = {m: [trace_from_json(r) for r in runs if r["method"] == m] for m in methods}
    budget = max((t.cost[-1] for ts in traces.values() for t in ts if t.cost), default=1.0)
    t_max = max((t.seconds[-1] for ts in traces.values() for t in ts if t.seconds), default=1.0)
    grid_c = np.linspace(budget / 200, budget, 200)
    grid_s = np.linspace(t_max / 300, t_max, 300)
    for m, ts in traces.items():
        if not ts:
            continue
        for ax, grid, fn in ((axes[0], grid_c, best_at), (axes[1], grid_s, best_at_seconds)):
            vals = np.array([[np.nan if (v := fn(t, x)) is None else v for x in grid] for t in ts], dtype=float)
            ok = ~np.isnan(vals).any(axis=0)
            if fn is best_at_seconds:  # a curve ends where its slowest seed ended
                ok &= grid <= max(t.seconds[-1] for t in ts)
            if not ok.any():
                continue
            mean, std = vals[:, ok].mean(0), vals[:, ok].std(0)
            (line,) = ax.plot(grid[ok], mean, label=m, lw=1.6, ls="--" if m.startswith("tpe+") else "-")
            ax.fill_between(grid[ok], mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    axes[0].set_xlabel("inner trainings (T SGD steps each)")
    axes[1].set_xlabel("wall seconds")
    for ax in axes:
        ax.set_ylabel("best validation meta loss so far")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


class TraceWriter:
    """Stream a trace to the TensorBoard run ``logdir/<method>/seed<S>`` while the search runs.

    :meth:`write` adds the points that arrived since the last call (call it after every
    evaluation), so the curves can be watched live. Scalars: ``compare/meta_loss`` and
    ``compare/best_meta_loss`` against inner SGD steps spent (``inner trainings x T``), and
    ``compare/best_meta_loss_vs_ms`` against wall milliseconds.
    """

    def __init__(self, logdir: str | Path, method: str, seed: int, inner_steps: int) -> None:
        tensorboard = optional_import("torch.utils.tensorboard", "tensorboard", purpose="--logdir")
        self.writer = tensorboard.SummaryWriter(log_dir=str(Path(logdir) / method / f"seed{seed}"))
        self.inner_steps = inner_steps
        self.written = 0

    def write(self, trace: Trace) -> None:
        """Write ``trace``'s points from the first one not yet written."""
        best = trace.best_so_far
        for i in range(self.written, len(trace.cost)):
            step = round(trace.cost[i] * self.inner_steps)
            if trace.meta_loss[i] is not None:
                self.writer.add_scalar("compare/meta_loss", trace.meta_loss[i], step)
            if best[i] is not None:
                self.writer.add_scalar("compare/best_meta_loss", best[i], step)
                self.writer.add_scalar("compare/best_meta_loss_vs_ms", best[i], round(trace.seconds[i] * 1000))
        self.written = len(trace.cost)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def log_tensorboard(logdir: Path, trace: Trace, inner_steps: int) -> None:
    """Write a finished ``trace`` as the TensorBoard run ``logdir/<method>/seed<S>`` (see :class:`TraceWriter`)."""
    writer = TraceWriter(logdir, trace.method, trace.seed, inner_steps)
    try:
        writer.write(trace)
    finally:
        writer.close()
