"""Planetoid citation graphs (Cora, CiteSeer, PubMed) from the raw ``ind.<name>.*`` files.

The files (Yang et al., 2016; distributed with kimiyoung/planetoid and tkipf/gcn) are
Python-2 pickles. Unpickling runs code, so they are read with :class:`RestrictedUnpickler`,
which resolves only the handful of classes these files need (NumPy array reconstruction,
``scipy.sparse.csr_matrix``, ``collections.defaultdict``, ``list``) and refuses every other
global with a :class:`~hypergrad.data.DataError` that names the file. Each loaded object is
then checked for the expected type, dtype and shape.

The graph is assembled as the standard GCN loader (tkipf/gcn ``utils.load_data``) does:
``features = vstack(allx, tx)`` and ``labels = vstack(ally, ty)`` with the test rows moved to
their ids, zero rows for the CiteSeer test-range ids that have no test row, and a symmetric
0/1 adjacency with duplicate neighbour entries removed (self-loops kept, as networkx does).
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from hypergrad.data.core import DataError

__all__ = [
    "PLANETOID_NAMES",
    "PlanetoidGraph",
    "RestrictedUnpickler",
    "load_planetoid",
    "planetoid_random_split",
    "read_planetoid_pickle",
]

PLANETOID_NAMES = ("cora", "citeseer", "pubmed")
_PICKLED = ("x", "y", "tx", "ty", "allx", "ally", "graph")
_HINT = "pass the folder holding the raw Planetoid files ind.<name>.{x,y,tx,ty,allx,ally,graph,test.index}"


def _reconstruct() -> Any:
    return np._core.multiarray._reconstruct


# (module, name) as written in the pickle -> a function returning the object it may resolve to.
# Python-2 pickles name ``__builtin__``; NumPy 2 moved ``numpy.core`` to ``numpy._core``;
# SciPy moved ``scipy.sparse.csr`` to ``scipy.sparse._csr`` (public name ``scipy.sparse``).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("scipy.sparse.csr", "csr_matrix"): lambda: sp.csr_matrix,
    ("scipy.sparse._csr", "csr_matrix"): lambda: sp.csr_matrix,
    ("scipy.sparse", "csr_matrix"): lambda: sp.csr_matrix,
    ("collections", "defaultdict"): lambda: collections.defaultdict,
    ("__builtin__", "list"): lambda: list,
    ("builtins", "list"): lambda: list,
    ("__builtin__", "int"): lambda: int,
    ("builtins", "int"): lambda: int,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the globals the Planetoid files use.

    Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises
    :class:`DataError` naming ``source``, before anything is called.
    """

    def __init__(self, file: io.BufferedIOBase, *, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise DataError(
                f"{self.source!r} pickles {module}.{name}, which a Planetoid file never contains; "
                "refusing to load it (only NumPy arrays, scipy.sparse.csr_matrix and "
                "defaultdict(list) are allowed)"
            )
        return resolve()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"Planetoid file {str(path)!r} not found; {_HINT}") from None
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc.strerror}") from None


def _expected_sha256(path: Path) -> str | None:
    sums = path.parent / "SHA256SUMS"
    if not sums.is_file():
        return None
    try:
        lines = sums.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read checksum list {str(sums)!r}: {exc}") from None
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == path.name:
            return parts[0].lower()
    return None


def _verify(path: Path, raw: bytes) -> None:
    want = _expected_sha256(path)
    if want is not None:
        got = hashlib.sha256(raw).hexdigest()
        if got != want:
            raise DataError(
                f"checksum mismatch for {str(path)!r}: sha256 {got[:16]}... is not the {want[:16]}... "
                "listed in SHA256SUMS (corrupt or altered file)"
            )


def read_planetoid_pickle(path: str | Path, *, verify: bool = True) -> Any:
    """Unpickle one raw Planetoid file with :class:`RestrictedUnpickler`.

    With ``verify``, the file must match its entry in a ``SHA256SUMS`` file beside it, when
    there is one. A missing, truncated or corrupt file, or one that pickles a disallowed
    type, raises :class:`DataError` naming the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if verify:
        _verify(path, raw)
    try:
        return RestrictedUnpickler(io.BytesIO(raw), source=str(path)).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError, UnicodeDecodeError) as exc:
        raise DataError(f"{str(path)!r} is truncated or not a valid Planetoid pickle ({exc!r})") from None


def _read_test_index(path: Path, *, verify: bool) -> np.ndarray:
    raw = _read_bytes(path)
    if verify:
        _verify(path, raw)
    try:
        ids = np.array([int(line) for line in raw.decode("ascii").split()], dtype=np.int64)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{str(path)!r} is not a list of integer node ids ({exc})") from None
    if ids.size == 0 or ids.min() < 0:
        raise DataError(f"{str(path)!r} holds no node ids or a negative id")
    return ids


def _as_features(obj: Any, path: Path) -> sp.csr_matrix:
    if not isinstance(obj, (sp.csr_matrix, sp.csr_array)):
        raise DataError(f"{str(path)!r} should hold a scipy.sparse csr_matrix, got {type(obj).__name__}")
    try:
        obj.check_format(full_check=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{str(path)!r} holds an inconsistent sparse matrix ({exc})") from None
    if obj.dtype.kind != "f":
        raise DataError(f"{str(path)!r} should hold float features, got dtype {obj.dtype}")
    return sp.csr_matrix(obj)


def _as_labels(obj: Any, path: Path) -> np.ndarray:
    if not isinstance(obj, np.ndarray) or obj.ndim != 2 or obj.dtype.kind not in "iub":
        desc = f"{type(obj).__name__} {getattr(obj, 'dtype', '')} {getattr(obj, 'shape', '')}"
        raise DataError(f"{str(path)!r} should hold a 2-d integer one-hot label array, got {desc}")
    return obj


def _as_graph(obj: Any, path: Path) -> dict[int, list[int]]:
    if not isinstance(obj, dict):
        raise DataError(f"{str(path)!r} should hold a dict of neighbour lists, got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, int) or not isinstance(value, list) or not all(
            isinstance(v, int) for v in value
        ):
            raise DataError(f"{str(path)!r}: node {key!r} does not map to a list of integer ids")
    return obj


class PlanetoidGraph(NamedTuple):
    """A Planetoid citation graph in the standard GCN node order.

    Attributes:
        name: ``"cora"``, ``"citeseer"`` or ``"pubmed"``.
        features: ``(N, F)`` float32 node features (dense).
        labels: ``(N,)`` int64 class ids; ``-1`` for the few CiteSeer nodes with no label.
        edge_index: ``(2, E)`` int64, both directions of every undirected edge (and each
            self-loop once), duplicates removed, sorted by row then column.
        num_classes: the width of the one-hot label arrays (from the data, e.g. 3 for PubMed).
        train_idx, val_idx, test_idx: the standard Planetoid split (``len(y)`` labelled
            training nodes, the next 500 for validation, the 1000 test ids).
    """

    name: str
    features: Tensor
    labels: Tensor
    edge_index: Tensor
    num_classes: int
    train_idx: Tensor
    val_idx: Tensor
    test_idx: Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    def adjacency(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The symmetric 0/1 adjacency as a sparse COO tensor of shape ``(N, N)``."""
        n = self.num_nodes
        values = torch.ones(self.edge_index.shape[1], dtype=dtype)
        return torch.sparse_coo_tensor(self.edge_index, values, (n, n), check_invariants=True).coalesce()


def load_planetoid(root: str | Path, name: str, *, verify: bool = True) -> PlanetoidGraph:
    """Read ``ind.<name>.*`` under ``root`` and assemble the graph as tkipf/gcn does.

    Args:
        root: the folder holding the eight raw files per data set.
        name: ``"cora"``, ``"citeseer"`` or ``"pubmed"`` (case-insensitive).
        verify: check each file against ``root/SHA256SUMS`` when that file exists.

    Raises:
        ValueError: for an unknown ``name``.
        DataError: a file is missing, truncated, corrupt, fails its checksum, pickles a
            disallowed type, or the arrays do not fit together.
    """
    if not isinstance(name, str) or name.lower() not in PLANETOID_NAMES:
        raise ValueError(f"unknown Planetoid data set {name!r}; expected one of {', '.join(PLANETOID_NAMES)}")
    name = name.lower()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Planetoid data root {str(root)!r} is not a directory; {_HINT}")
    paths = {s: root / f"ind.{name}.{s}" for s in (*_PICKLED, "test.index")}
    objs = {s: read_planetoid_pickle(paths[s], verify=verify) for s in _PICKLED}
    x, tx, allx = (_as_features(objs[s], paths[s]) for s in ("x", "tx", "allx"))
    y, ty, ally = (_as_labels(objs[s], paths[s]) for s in ("y", "ty", "ally"))
    graph = _as_graph(objs["graph"], paths["graph"])
    test_ids = _read_test_index(paths["test.index"], verify=verify)

    def check(cond: bool, msg: str) -> None:
        if not cond:
            raise DataError(f"Planetoid {name} under {str(root)!r}: {msg}")

    nfeat, ncls = allx.shape[1], ally.shape[1]
    check(x.shape[1] == nfeat and tx.shape[1] == nfeat, "x, tx and allx differ in feature count")
    check(y.shape[1] == ncls and ty.shape[1] == ncls, "y, ty and ally differ in class count")
    check(x.shape[0] == y.shape[0] and tx.shape[0] == ty.shape[0] and allx.shape[0] == ally.shape[0],
          "a feature file and its label file differ in row count")
    check(len(test_ids) == tx.shape[0], f"{len(test_ids)} test ids but {tx.shape[0]} test rows")
    check(len(np.unique(test_ids)) == len(test_ids), "test.index repeats a node id")
    n_all = allx.shape[0]
    check(test_ids.min() >= n_all, "a test id falls inside the allx rows")
    num_nodes = int(test_ids.max()) + 1

    # Standard GCN assembly; rows n_all..num_nodes-1 not named in test.index stay zero (CiteSeer).
    # tkipf/gcn: features[test_idx_reorder] = features[test_idx_range], i.e. the k-th tx row
    # belongs to node test_ids[k]; ids in the test range not named in test.index stay zero.
    feats = np.zeros((num_nodes, nfeat), dtype=np.float32)
    feats[:n_all] = allx.toarray()
    feats[test_ids] = tx.toarray()
    onehot = np.zeros((num_nodes, ncls), dtype=np.int64)
    onehot[:n_all] = ally
    onehot[test_ids] = ty
    check(((onehot == 0) | (onehot == 1)).all() and (onehot.sum(1) <= 1).all(), "labels are not one-hot")
    labels = np.where(onehot.sum(1) == 1, onehot.argmax(1), -1).astype(np.int64)

    check(set(graph.keys()) <= set(range(num_nodes)), "the graph names a node id outside 0..N-1")
    rows, cols = [], []
    for node, nbrs in graph.items():
        rows.extend([node] * len(nbrs))
        cols.extend(nbrs)
    r, c = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    check(r.size == 0 or (c.min() >= 0 and c.max() < num_nodes), "a neighbour id is outside 0..N-1")
    adj = sp.coo_matrix((np.ones(r.size, dtype=np.float32), (r, c)), shape=(num_nodes, num_nodes)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float32).tocoo()  # symmetric, duplicates removed
    order = np.lexsort((adj.col, adj.row))
    edge_index = np.stack([adj.row[order], adj.col[order]]).astype(np.int64)

    n_train = y.shape[0]
    return PlanetoidGraph(
        name=name,
        features=torch.from_numpy(feats),
        labels=torch.from_numpy(labels),
        edge_index=torch.from_numpy(edge_index),
        num_classes=int(ncls),
        train_idx=torch.arange(n_train),
        val_idx=torch.arange(n_train, n_train + 500),
        test_idx=torch.from_numpy(np.sort(test_ids)),
    )


def planetoid_random_split(
    graph: PlanetoidGraph, *, train_frac: float = 0.01, val_frac: float = 0.49, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """A random train/validation/test split of the labelled nodes (the paper's §5.2 setting).

    ``floor(train_frac * n)`` training nodes, ``floor(val_frac * n)`` validation nodes and
    the rest for testing, drawn by a permutation from ``numpy.random.default_rng(seed)``.
    Returns sorted int64 index tensors ``(train, val, test)``.
    """
    for label, frac in (("train_frac", train_frac), ("val_frac", val_frac)):
        if not isinstance(frac, (int, float)) or not 0.0 < frac < 1.0:
            raise ValueError(f"{label} must be in (0, 1), got {frac!r}")
    if train_frac + val_frac >= 1.0:
        raise ValueError(f"train_frac + val_frac must be < 1, got {train_frac + val_frac}")
    labelled = np.flatnonzero(graph.labels.numpy() >= 0)
    n = labelled.size
    n_train, n_val = int(train_frac * n), int(val_frac * n)
    if n_train < 1 or n - n_train - n_val < 1:
        raise ValueError(f"split of {n} labelled nodes leaves an empty training or test set")
    perm = labelled[np.random.default_rng(seed).permutation(n)]
    parts = (perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :])
    return tuple(torch.from_numpy(np.sort(p)) for p in parts)  # type: ignore[return-value]
