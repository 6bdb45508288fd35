"""Data sets: scikit-learn's ``digits`` (embedded), MNIST (IDX files), Planetoid citation graphs."""

from hypergrad.data.core import DataError, Split, default_data_root
from hypergrad.data.digits import load_digits_split
from hypergrad.data.mnist import load_mnist_split, read_idx

__all__ = [
    "DataError",
    "Split",
    "default_data_root",
    "load_digits_split",
    "load_mnist_split",
    "read_idx",
]
