"""Shared types and helpers for the data readers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

__all__ = ["DataError", "Split", "default_data_root"]


class DataError(ValueError):
    """A data file is missing, corrupt, or does not match its checksum. The message names the file."""


class Split(NamedTuple):
    """Train/validation/test tensors: ``x_*`` float features, ``y_*`` int64 class labels."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max(), self.y_test.max())) + 1


def default_data_root(name: str) -> Path:
    """Where to look for the data set ``name`` when no ``--data-root`` is given: ``$HYPERGRAD_DATA/<name>``.

    Raises:
        DataError: ``HYPERGRAD_DATA`` is unset or empty. The embedded digits data needs no root.
    """
    env = os.environ.get("HYPERGRAD_DATA")
    if not env:
        raise DataError(
            f"no data root for {name!r}: pass --data-root DIR (the folder with the {name} files) or set "
            f"HYPERGRAD_DATA to the folder that holds {name}/"
        )
    return Path(env) / name
