"""Data sets: scikit-learn's ``digits`` (embedded), MNIST (IDX files), Planetoid citation graphs."""

from hypergrad.data.core import DataError, Split, default_data_root
from hypergrad.data.digits import load_digits_split
from hypergrad.data.mnist import find_mnist_file, load_mnist_split, read_idx
from hypergrad.data.planetoid import (
    PLANETOID_NAMES,
    PlanetoidGraph,
    RestrictedUnpickler,
    load_planetoid,
    planetoid_random_split,
    read_planetoid_pickle,
)

__all__ = [
    "PLANETOID_NAMES",
    "DataError",
    "PlanetoidGraph",
    "RestrictedUnpickler",
    "Split",
    "default_data_root",
    "find_mnist_file",
    "load_digits_split",
    "load_mnist_split",
    "load_planetoid",
    "planetoid_random_split",
    "read_idx",
    "read_planetoid_pickle",
]
