"""Data: readers (scikit-learn's ``digits``, MNIST IDX files, Planetoid graphs) and data sources.

:mod:`hypergrad.data.source` adapts what a user passes (tensors, NumPy arrays, a ``Dataset``,
a ``DataLoader``) to the one interface the inner problem uses. The Planetoid reader (and
SciPy with it) is imported on first use.
"""

from typing import Any

from hypergrad.data.core import DataError, Split, default_data_root
from hypergrad.data.digits import load_digits_split
from hypergrad.data.mnist import find_mnist_file, load_mnist_split, read_idx
from hypergrad.data.schedule import BatchSchedule, batch_indices
from hypergrad.data.source import (
    Batches,
    DatasetSource,
    DataSource,
    LoaderSource,
    TensorSource,
    as_source,
)

_PLANETOID = ("PLANETOID_NAMES", "PlanetoidGraph", "RestrictedUnpickler", "load_planetoid",
              "planetoid_random_split", "read_planetoid_pickle")

__all__ = [
    "PLANETOID_NAMES",
    "BatchSchedule",
    "Batches",
    "DataError",
    "DataSource",
    "DatasetSource",
    "LoaderSource",
    "PlanetoidGraph",
    "RestrictedUnpickler",
    "Split",
    "TensorSource",
    "as_source",
    "batch_indices",
    "default_data_root",
    "find_mnist_file",
    "load_digits_split",
    "load_mnist_split",
    "load_planetoid",
    "planetoid_random_split",
    "read_idx",
    "read_planetoid_pickle",
]


def __getattr__(name: str) -> Any:
    if name in _PLANETOID:
        from hypergrad.data import planetoid

        return getattr(planetoid, name)
    raise AttributeError(f"module 'hypergrad.data' has no attribute {name!r}")
