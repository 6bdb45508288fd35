"""MNIST from the IDX files in torchvision's raw layout, without torchvision.

Accepted layouts under ``root``: the four files directly, ``root/MNIST/raw/`` (torchvision),
each either gzipped (``*.gz``) or not.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch

from hypergrad.data.core import DataError, Split

__all__ = ["MNIST_SHA256", "find_mnist_file", "load_mnist_split", "read_idx"]

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# sha256 of the original gzipped files.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_HINT = (
    "get the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) and pass their folder as --data-root"
)


def find_mnist_file(root: str | Path, stem: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"MNIST data root {str(root)!r} is not a directory; {_HINT}")
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"MNIST file {stem}(.gz) not found under {str(root)!r}; {_HINT}")


def read_idx(path: str | Path, *, verify: bool = True) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a uint8 array, validating its header.

    With ``verify``, a gzipped file whose name is a known MNIST file must match its sha256.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if verify and path.name in MNIST_SHA256:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != MNIST_SHA256[path.name]:
            raise DataError(f"checksum mismatch for {str(path)!r}: sha256 {digest[:16]}... is not the original")
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{str(path)!r} is not a valid gzip file ({exc})") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8 or raw[3] not in (1, 3):
        raise DataError(f"{str(path)!r} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{str(path)!r} is truncated (incomplete header)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    payload = len(raw) - 4 - 4 * ndim
    if payload != expected:
        raise DataError(f"{str(path)!r} is truncated or corrupt: {payload} data bytes, header says {expected}")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist_arrays(root: str | Path, *, verify: bool = True) -> dict[str, np.ndarray]:
    out = {key: read_idx(find_mnist_file(root, stem), verify=verify) for key, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        if len(out[f"{split}_images"]) != len(out[f"{split}_labels"]):
            raise DataError(f"MNIST {split} images and labels differ in count under {str(root)!r}")
    return out


def load_mnist_split(
    root: str | Path,
    *,
    n_train: int = 10_000,
    n_val: int = 10_000,
    n_test: int = 10_000,
    seed: int = 0,
    verify: bool = True,
) -> Split:
    """The paper's setting (§5.3): ``n_train`` training images, pixels / 255, mean-subtracted.

    Train and validation images are disjoint draws (by ``seed``) from the 60,000 training
    images; the test images are the first ``n_test`` of the official test set.
    """
    arr = load_mnist_arrays(root, verify=verify)
    n_avail = len(arr["train_images"])
    if n_train + n_val > n_avail:
        raise DataError(f"asked for {n_train} + {n_val} training/validation images, only {n_avail} exist")
    perm = np.random.default_rng(seed).permutation(n_avail)
    tr, va = perm[:n_train], perm[n_train : n_train + n_val]
    x = arr["train_images"].reshape(n_avail, -1).astype(np.float32) / 255.0
    xt = arr["test_images"][:n_test].reshape(min(n_test, len(arr["test_images"])), -1).astype(np.float32) / 255.0
    mean = x[tr].mean(axis=0, keepdims=True)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    y = arr["train_labels"].astype(np.int64)
    return Split(
        t(x[tr] - mean), t(y[tr]), t(x[va] - mean), t(y[va]),
        t(xt - mean), t(arr["test_labels"][:n_test].astype(np.int64)),
    )
