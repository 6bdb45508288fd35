"""A zoo of user models for the contract tests: each a model, a loss and small offline data.

Every entry is tiny (64 training and 32 validation examples) so that the table crossed with
the inner-problem paths stays fast. The data are synthetic with a learnable rule, except the
CNN's, which are scikit-learn's bundled 8x8 digits (no download).

=================  =================================================================
``mlp``            tanh MLP, 3 classes
``cnn``            Conv2d + pooling on 8x8 digit images, 10 classes
``bn_dropout``     Linear-BatchNorm1d-ReLU-Dropout-Linear in train mode
``gru``            GRU sequence classifier (``torch.func.vmap`` cannot batch it)
``regression``     vector-output regression (targets of shape (N, 4)), MSE
``scalar_reg``     scalar regression (targets of shape (N,)), MSE
``frozen_shared``  a frozen layer and a weight shared by two Linear layers
``float64``        an MLP in float64
``mixed_dtype``    a float64 first layer feeding a float32 head
``two_inputs``     ``model(x_num, x_cat)``: a tuple of inputs
=================  =================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

N_TRAIN, N_VAL, BATCH = 64, 32, 16


@dataclass(frozen=True)
class ZooCase:
    """``build() -> (model, loss_fn, (x_train, y_train), (x_val, y_val))`` (seeded).

    ``build(n_train, n_val)`` gives larger data sets of the same task (the benchmark's).
    """

    name: str
    build: Callable[..., tuple[nn.Module, Callable[[Tensor, Tensor], Tensor], Any, Any]]
    metric: str | None = "accuracy"  # what the problem reports beside the loss by default
    batching: str = "vmap"
    stochastic: bool = False  # draws random numbers in the forward pass (Dropout)
    extra: dict[str, Any] = field(default_factory=dict)


def _split(x: Any, y: Tensor, n_train: int = N_TRAIN, n_val: int = N_VAL) -> tuple[Any, Any]:
    def cut(a: slice) -> Any:
        return (tuple(t[a] for t in x) if isinstance(x, tuple) else x[a]), y[a]

    return cut(slice(0, n_train)), cut(slice(n_train, n_train + n_val))


def _classes(x: Tensor, k: int, g: torch.Generator) -> Tensor:
    w = torch.randn(x.shape[-1], k, generator=g, dtype=x.dtype)
    return (x @ w).argmax(-1)


def _mlp(n_train: int = N_TRAIN, n_val: int = N_VAL) -> Any:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_train + n_val, 8, generator=g)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    return (model, F.cross_entropy, *_split(x, _classes(x, 3, g), n_train, n_val))


def _cnn(n_train: int = N_TRAIN, n_val: int = N_VAL) -> Any:
    from sklearn.datasets import load_digits

    xs, ys = load_digits(return_X_y=True)
    x = torch.tensor(xs[: n_train + n_val], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(ys[: n_train + n_val], dtype=torch.int64)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 10))
    return (model, F.cross_entropy, *_split(x, y, n_train, n_val))


def _bn_dropout(n_train: int = N_TRAIN, n_val: int = N_VAL) -> Any:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n_train + n_val, 8, generator=g) * 3 + 1
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    return (model.train(), F.cross_entropy, *_split(x, _classes(x, 3, g), n_train, n_val))


class GRUClassifier(nn.Module):
    def __init__(self, n_in: int = 3, hidden: int = 8, n_out: int = 2) -> None:
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.gru(x)
        return self.head(h[-1])


def _gru(n_train: int = N_TRAIN, n_val: int = N_VAL) -> Any:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n_train + n_val, 6, 3, generator=g)
    y = (x[:, :, 0].sum(1) > 0).long()
    torch.manual_seed(4)
    return (GRUClassifier(), F.cross_entropy, *_split(x, y, n_train, n_val))


def _regression(n_train: int = N_TRAIN, n_val: int = N_VAL) -> Any:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n_train + n_val, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 4, generator=g)) + 0.05 * torch.randn(n_train + n_val, 4, generator=g)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    return (model, F.mse_loss, *_split(x, y, n_train, n_val))


def _scalar_reg(n_train: int = N_TRAIN, n_val: int = N_VAL) -> Any:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(n_train + n_val, 5, generator=g)
    y = x[:, 0] * 0.5 - x[:, 1] ** 2 * 0.2
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 1), nn.Flatten(0))
    return (model, F.mse_loss, *_split(x, y, n_train, n_val))


class FrozenShared(nn.Module):
    """``enc`` and ``dec`` share one weight tensor (separate biases); ``frozen`` is not trained."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 8)
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.dec = nn.Linear(8, 8)
        self.dec.weight = self.enc.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.enc(x))
        h = torch.tanh(self.frozen(h))
        return self.head(torch.tanh(self.dec(h)))


def _frozen_shared(n_train: int = N_TRAIN, n_val: int = N_VAL) -> Any:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n_train + n_val, 8, generator=g)
    torch.manual_seed(7)
    return (FrozenShared(), F.cross_entropy, *_split(x, _classes(x, 3, g), n_train, n_val))


def _float64(n_train: int = N_TRAIN, n_val: int = N_VAL) -> Any:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(n_train + n_val, 5, generator=g, dtype=torch.float64)
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return (model, F.cross_entropy, *_split(x, _classes(x, 3, g), n_train, n_val))


class MixedDtype(nn.Module):
    """A float64 feature layer and a float32 head: the tensors keep their own dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(6, 10).double()
        self.head = nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.features(x)).float())


def _mixed_dtype(n_train: int = N_TRAIN, n_val: int = N_VAL) -> Any:
    g = torch.Generator().manual_seed(9)
    x = torch.randn(n_train + n_val, 6, generator=g, dtype=torch.float64)
    torch.manual_seed(9)
    return (MixedDtype(), F.cross_entropy, *_split(x, _classes(x, 3, g), n_train, n_val))


class TwoInputs(nn.Module):
    """``model(x_num, x_cat)``: numeric features and a categorical code."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.num = nn.Linear(6, 8)
        self.head = nn.Linear(12, 3)

    def forward(self, x_num: Tensor, x_cat: Tensor) -> Tensor:
        return self.head(torch.cat([torch.tanh(self.num(x_num)), self.embed(x_cat)], dim=-1))


def _two_inputs(n_train: int = N_TRAIN, n_val: int = N_VAL) -> Any:
    g = torch.Generator().manual_seed(10)
    x_num = torch.randn(n_train + n_val, 6, generator=g)
    x_cat = torch.randint(0, 5, (n_train + n_val,), generator=g)
    y = (_classes(x_num, 3, g) + x_cat) % 3
    torch.manual_seed(10)
    return (TwoInputs(), F.cross_entropy, *_split((x_num, x_cat), y, n_train, n_val))


ZOO: dict[str, ZooCase] = {c.name: c for c in (
    ZooCase("mlp", _mlp),
    ZooCase("cnn", _cnn),
    ZooCase("bn_dropout", _bn_dropout, stochastic=True),
    ZooCase("gru", _gru, batching="loop"),
    ZooCase("regression", _regression, metric=None),
    ZooCase("scalar_reg", _scalar_reg, metric=None),
    ZooCase("frozen_shared", _frozen_shared),
    ZooCase("float64", _float64),
    ZooCase("mixed_dtype", _mixed_dtype),
    ZooCase("two_inputs", _two_inputs),
)}
