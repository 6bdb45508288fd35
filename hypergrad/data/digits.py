"""scikit-learn's bundled ``digits`` (1,797 8x8 images): the embedded, offline default."""

from __future__ import annotations

import numpy as np
import torch

from hypergrad.data.core import Split

__all__ = ["load_digits_split"]


def load_digits_split(*, seed: int = 0, n_val: int = 400, n_test: int = 400) -> Split:
    """Shuffle ``load_digits`` with ``seed`` and split it into train/val/test.

    Pixels are scaled to [0, 1] and mean-subtracted with the training mean.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(x))
    x = x[perm].astype(np.float32) / 16.0
    y = y[perm].astype(np.int64)
    n_train = len(x) - n_val - n_test
    mean = x[:n_train].mean(axis=0, keepdims=True)
    x = x - mean
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return Split(
        xt[:n_train], yt[:n_train],
        xt[n_train : n_train + n_val], yt[n_train : n_train + n_val],
        xt[n_train + n_val :], yt[n_train + n_val :],
    )
