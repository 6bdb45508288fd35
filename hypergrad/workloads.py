"""The built-in workloads of the CLI: data sets and the paper's tanh MLP."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hypergrad.config import RunConfig, TuneConfig
from hypergrad.data import Split, default_data_root, load_digits_split, load_mnist_split
from hypergrad.distributed import DataParallel
from hypergrad.inner import InnerProblem

__all__ = ["build_problem", "load_split", "mlp", "run_device"]


def mlp(n_in: int, hidden: Sequence[int], n_out: int) -> nn.Sequential:
    """The paper's fully connected tanh network (§5.3: 784-50-50-50-10)."""
    layers: list[nn.Module] = []
    sizes = [n_in, *hidden]
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.Tanh()]
    layers.append(nn.Linear(sizes[-1], n_out))
    return nn.Sequential(*layers)


def run_device(run: RunConfig, parallel: DataParallel | None = None) -> torch.device:
    """The device of a CLI run: each rank's GPU under NCCL, else ``--device`` (default the CPU).

    Raises ``ValueError`` for a CUDA device when CUDA is not available, or a ``--device`` that
    contradicts the NCCL rank's GPU.
    """
    wanted = torch.device(run.device) if run.device is not None else None
    if parallel is not None and parallel.device is not None:
        if wanted is not None and wanted.type != parallel.device.type:
            raise ValueError(f"--device {run.device} contradicts the NCCL backend, which runs each rank on its GPU "
                             f"({parallel.device}); use --dist-backend gloo for {run.device}")
        return parallel.device
    device = wanted or torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {run.device}: CUDA is not available on this machine (torch "
                         f"{torch.__version__}); use --device cpu")
    return device


def load_split(run: RunConfig, seed: int) -> Split:
    if run.dataset == "digits":
        return load_digits_split(seed=seed)
    root = run.data_root if run.data_root is not None else default_data_root("mnist")
    return load_mnist_split(root, n_train=run.n_train or 10_000, seed=seed)


def build_problem(
    run: RunConfig, cfg: TuneConfig, split: Split | None = None, parallel: DataParallel | None = None
) -> tuple[InnerProblem, Split]:
    """The inner problem of a CLI run; the model is initialised from ``cfg.seed``.

    Every rank of a data-parallel run calls this with the same arguments, so all
    ranks hold the same split, initial weights and minibatch order. The model is built on
    the CPU (the same initial weights everywhere) and moved to :func:`run_device`; the data
    follow it (:attr:`InnerProblem.device`).
    """
    split = split if split is not None else load_split(run, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = mlp(split.num_features, run.hidden, split.num_classes).to(run_device(run, parallel))
    problem = InnerProblem(
        model, F.cross_entropy, split.x_train, split.y_train, split.x_val, split.y_val,
        batch_size=cfg.batch_size, per=cfg.per, parallel=parallel,
    )
    return problem, split
