"""Tune your own model: the Python API on a user-defined nn.Module, then train with torch.optim.SGD.

    python -m recipes.digits.tune_your_model --out docs/figures/tuning_trajectories.png

Tunes per-tensor learning rates and momenta of a small CNN-free MLP on scikit-learn's digits,
plots the meta loss and the hyperparameter trajectories, and trains from scratch with the
exported ``torch.optim.SGD`` param groups.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import hypergrad
from hypergrad.callbacks import ProgressBar
from hypergrad.data import load_digits_split


class MyNet(nn.Module):
    """Any nn.Module works; here a two-layer tanh network with a residual-free head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def plot(result: hypergrad.TuneResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = result.history
    steps = [r.step for r in hist]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(steps, [r.val_loss for r in hist], label="validation (meta loss)")
    axes[0].plot(steps, [r.train_loss for r in hist], label="training")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("meta step")
    axes[0].set_ylabel("loss after T inner steps")
    axes[0].legend()
    for name in hist[0].hyperparameters:
        axes[1].plot(steps, [r.hyperparameters[name]["lr"] for r in hist], label=name)
        axes[2].plot(steps, [r.hyperparameters[name]["momentum"] for r in hist], label=name)
    axes[1].set_yscale("log")
    axes[1].set_title("learning rate α per tensor")
    axes[2].set_title("momentum β per tensor")
    for ax in axes[1:]:
        ax.set_xlabel("meta step")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="neumann")
    p.add_argument("--meta-steps", type=int, default=60)
    p.add_argument("--out", default="docs/figures/tuning_trajectories.png")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_digits_split(seed=0)
    torch.manual_seed(0)
    model = MyNet()
    result = hypergrad.tune(
        model, F.cross_entropy, (data.x_train, data.y_train), (data.x_val, data.y_val),
        test_data=(data.x_test, data.y_test), method=args.method, inner_steps=100, truncate=10,
        meta_steps=args.meta_steps, callbacks=[ProgressBar()],
    )
    ev = result.evaluation
    print(f"validation loss {ev['initial']['val_loss']:.4f} -> {ev['best']['val_loss']:.4f}")
    # Hand the result to torch.optim: train from the same start for the same 100 steps.
    opt = torch.optim.SGD(result.param_groups(model))
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, len(data.x_train), (100,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean()
    print(f"test accuracy with torch.optim.SGD and the tuned param groups: {float(acc):.4f}")
    plot(result, Path(args.out))
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
