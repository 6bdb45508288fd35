"""Tune your own model: the Python API on a user-defined nn.Module, then train with torch.optim.SGD.

    python -m recipes.digits.tune_your_model --out docs/figures/tuning_trajectories.png
    python -m recipes.digits.tune_your_model --methods neumann,tbptt --out /tmp/trajectories.png

Tunes per-tensor learning rates and momenta of a small CNN-free MLP on scikit-learn's digits
(once per method of ``--methods``), plots the meta loss and the hyperparameter trajectories,
and trains from scratch with the exported ``torch.optim.SGD`` param groups.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import hypergrad
from hypergrad.callbacks import ProgressBar
from hypergrad.data import load_digits_split
from recipes._common import add_methods_flag, label, recipe_parser


class MyNet(nn.Module):
    """Any nn.Module works; here a two-layer tanh network with a residual-free head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def plot(results: dict[str, hypergrad.TuneResult], path: Path) -> None:
    """Meta loss and per-tensor learning rates and momenta against the meta step, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    styles = ("-", "--", ":", "-.")
    for i, (method, result) in enumerate(results.items()):
        hist, ls = result.history, styles[i % len(styles)]
        suffix = f", {label(method)}" if len(results) > 1 else ""
        steps = [r.step for r in hist]
        axes[0].plot(steps, [r.val_loss for r in hist], ls, color="C0", label=f"validation (meta loss){suffix}")
        axes[0].plot(steps, [r.train_loss for r in hist], ls, color="C1", label=f"training{suffix}")
        for j, tensor in enumerate(hist[0].hyperparameters):
            kw = {"color": f"C{j}", "linestyle": ls, "label": f"{tensor}{suffix}"}
            axes[1].plot(steps, [r.hyperparameters[tensor]["lr"] for r in hist], **kw)
            axes[2].plot(steps, [r.hyperparameters[tensor]["momentum"] for r in hist], **kw)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("meta step")
    axes[0].set_ylabel("loss after T inner steps")
    axes[0].legend(fontsize=7 if len(results) > 1 else None)
    axes[1].set_yscale("log")
    axes[1].set_title("learning rate α per tensor")
    axes[2].set_title("momentum β per tensor")
    for ax in axes[1:]:
        ax.set_xlabel("meta step")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = recipe_parser("python -m recipes.digits.tune_your_model", __doc__)
    add_methods_flag(p, ["neumann"])
    p.add_argument("--inner-steps", type=int, default=100, help="inner SGD steps T")
    p.add_argument("--truncate", type=int, default=10, help="K (TBPTT steps, solver iterations)")
    p.add_argument("--meta-steps", type=int, default=60)
    p.add_argument("--out", type=Path, default=Path("docs/figures/tuning_trajectories.png"), help="the figure")
    p.add_argument("--quick", action="store_true", help="tiny run for tests: 20 inner steps, K=5, 2 meta steps")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    if args.quick:
        args.inner_steps, args.truncate, args.meta_steps = 20, 5, 2
    torch.set_num_threads(1)
    data = load_digits_split(seed=0)
    results = {}
    for method in args.methods:
        torch.manual_seed(0)
        model = MyNet()
        result = hypergrad.tune(
            model, F.cross_entropy, (data.x_train, data.y_train), (data.x_val, data.y_val),
            test_data=(data.x_test, data.y_test), method=method, inner_steps=args.inner_steps,
            truncate=args.truncate, meta_steps=args.meta_steps, callbacks=[] if args.no_progress else [ProgressBar()],
        )
        results[method] = result
        ev = result.evaluation
        print(f"{label(method)}: validation loss {ev['initial']['val_loss']:.4f} -> {ev['best']['val_loss']:.4f}")
        # Hand the result to torch.optim: train from the same start for the same inner steps.
        opt = torch.optim.SGD(result.param_groups(model))
        gen = torch.Generator().manual_seed(0)
        for _ in range(args.inner_steps):
            idx = torch.randint(0, len(data.x_train), (100,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
        with torch.no_grad():
            acc = (model(data.x_test).argmax(1) == data.y_test).float().mean()
        print(f"{label(method)}: test accuracy with torch.optim.SGD and the tuned param groups: {float(acc):.4f}")
    plot(results, args.out)
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
