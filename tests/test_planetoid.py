"""The Planetoid reader: restricted unpickling, file errors, GCN-style assembly, random splits."""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hypergrad.data import DataError, default_data_root
from hypergrad.data.planetoid import (
    PlanetoidGraph,
    load_planetoid,
    planetoid_random_split,
    read_planetoid_pickle,
)

ROOT = default_data_root("planetoid")
SUFFIXES = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")


def _have(name: str) -> bool:
    return all((ROOT / f"ind.{name}.{s}").is_file() for s in SUFFIXES)


needs_cora = pytest.mark.skipif(not _have("cora"), reason=f"raw Planetoid Cora files not found under {ROOT}")


# --------------------------------------------------------------------------- synthetic files
def _write_synthetic(folder: Path, name: str = "toy") -> dict:
    """A 9-node Planetoid-format data set (pickle protocol 4; protocol 2 from Python 3 needs _codecs).

    Nodes 0..5 are allx (0, 1 labelled = x), test ids are 8, 6 (in that file order) and
    node 7 lies in the test range but has no test row (like CiteSeer's isolated nodes).
    """
    rng = np.random.default_rng(0)
    allx = sp.csr_matrix(rng.integers(0, 2, size=(6, 4)).astype(np.float32))
    tx = sp.csr_matrix(np.array([[5, 0, 0, 5], [7, 7, 0, 0]], dtype=np.float32))
    ally = np.eye(3, dtype=np.int32)[[0, 1, 2, 0, 1, 2]]
    ty = np.eye(3, dtype=np.int32)[[2, 1]]
    graph = collections.defaultdict(list)
    for a, b in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 8), (0, 8)]:
        graph[a].append(b)
        graph[b].append(a)
    graph[1].append(0)  # a repeated neighbour entry, as in the real files
    graph[7] = []
    objs = {"x": allx[:2], "y": ally[:2], "tx": tx, "ty": ty, "allx": allx, "ally": ally, "graph": graph}
    for suffix, obj in objs.items():
        (folder / f"ind.{name}.{suffix}").write_bytes(pickle.dumps(obj, protocol=4))
    (folder / f"ind.{name}.test.index").write_text("8\n6\n")
    return objs


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_crafted_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "ind.toy.graph"
    bad.write_bytes(pickle.dumps(_Evil(marker), protocol=4))
    with pytest.raises(DataError, match=r"ind\.toy\.graph.*(posix|os|nt)\.system"):
        read_planetoid_pickle(bad)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps((eval, ("1 + 1",)), protocol=2),  # a global that is not allowed
        b"\x80\x02csubprocess\nPopen\nq\x00.",  # GLOBAL subprocess.Popen
        pickle.dumps(collections.OrderedDict(a=1), protocol=2),
    ],
)
def test_other_globals_are_refused(tmp_path, payload):
    path = tmp_path / "ind.toy.x"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=r"ind\.toy\.x"):
        read_planetoid_pickle(path)


def test_crafted_file_inside_a_data_set_is_refused(tmp_path):
    _write_synthetic(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "ind.toy.graph").write_bytes(pickle.dumps(_Evil(marker), protocol=4))
    with pytest.raises(ValueError, match="unknown Planetoid data set"):
        load_planetoid(tmp_path, "toy")  # only the three real names are accepted ...
    with pytest.raises(DataError, match=r"ind\.toy\.graph"):
        read_planetoid_pickle(tmp_path / "ind.toy.graph")  # ... and the file itself is refused
    assert not marker.exists()


def test_missing_truncated_and_garbage_files_name_the_file(tmp_path):
    objs = _write_synthetic(tmp_path)
    with pytest.raises(DataError, match=r"ind\.toy\.nope.*not found"):
        read_planetoid_pickle(tmp_path / "ind.toy.nope")
    raw = pickle.dumps(objs["allx"], protocol=4)
    for cut in (1, len(raw) // 3, len(raw) - 1):
        (tmp_path / "ind.toy.allx").write_bytes(raw[:cut])
        with pytest.raises(DataError, match=r"ind\.toy\.allx"):
            read_planetoid_pickle(tmp_path / "ind.toy.allx")
    (tmp_path / "ind.toy.allx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match=r"ind\.toy\.allx"):
        read_planetoid_pickle(tmp_path / "ind.toy.allx")


def test_checksum_list_is_honoured(tmp_path):
    _write_synthetic(tmp_path)
    path = tmp_path / "ind.toy.y"
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{good}  ind.toy.y\n{'0' * 64}  ind.toy.ty\n")
    assert read_planetoid_pickle(path).shape == (2, 3)
    with pytest.raises(DataError, match=r"checksum mismatch.*ind\.toy\.ty"):
        read_planetoid_pickle(tmp_path / "ind.toy.ty")
    assert read_planetoid_pickle(tmp_path / "ind.toy.ty", verify=False).shape == (2, 3)


def _load_synthetic(folder: Path) -> PlanetoidGraph:
    """Load the synthetic files under the accepted name ``cora``."""
    for s in SUFFIXES:
        (folder / f"ind.toy.{s}").rename(folder / f"ind.cora.{s}")
    return load_planetoid(folder, "cora")


def test_assembly_follows_the_gcn_loader(tmp_path):
    objs = _write_synthetic(tmp_path)
    g = _load_synthetic(tmp_path)
    assert g.num_nodes == 9 and g.num_classes == 3
    feats = g.features.numpy()
    np.testing.assert_array_equal(feats[:6], objs["allx"].toarray())
    np.testing.assert_array_equal(feats[8], [5, 0, 0, 5])  # 1st tx row -> 1st id in test.index (8)
    np.testing.assert_array_equal(feats[6], [7, 7, 0, 0])
    np.testing.assert_array_equal(feats[7], 0)  # in the test range, no test row
    assert g.labels.tolist() == [0, 1, 2, 0, 1, 2, 1, -1, 2]
    edges = set(map(tuple, g.edge_index.t().tolist()))
    assert len(edges) == g.edge_index.shape[1] == 16  # 8 undirected edges, duplicate removed
    assert all((b, a) in edges for a, b in edges)
    assert g.train_idx.tolist() == [0, 1] and g.test_idx.tolist() == [6, 8]
    dense = g.adjacency().to_dense()
    assert torch.equal(dense, dense.t()) and float(dense.sum()) == 16


def test_inconsistent_files_are_rejected(tmp_path):
    _write_synthetic(tmp_path)
    (tmp_path / "ind.toy.ty").write_bytes(pickle.dumps(np.eye(4, dtype=np.int32)[:2], protocol=4))
    with pytest.raises(DataError, match="class count"):
        _load_synthetic(tmp_path)
    (tmp_path / "ind.cora.ty").write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(DataError, match=r"ind\.cora\.ty.*one-hot"):
        load_planetoid(tmp_path, "cora")


def test_bad_root_and_name(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_planetoid(tmp_path / "absent", "cora")
    with pytest.raises(ValueError, match="unknown Planetoid data set"):
        load_planetoid(tmp_path, "reddit")


# --------------------------------------------------------------------------- the real files
@needs_cora
def test_cora_matches_the_published_statistics_and_torch_geometric():
    g = load_planetoid(ROOT, "cora")
    assert g.features.shape == (2708, 1433) and g.features.dtype == torch.float32
    assert g.num_classes == 7 and int(g.labels.min()) == 0 and int(g.labels.max()) == 6
    assert g.edge_index.shape[1] == 2 * 5278  # no self-loops in Cora
    assert len(g.train_idx) == 140 and len(g.val_idx) == 500 and len(g.test_idx) == 1000
    # An independent reader: torch-geometric's (it drops self-loops; Cora has none).
    io = pytest.importorskip("torch_geometric.io")
    ref = io.read_planetoid_data(str(ROOT), "cora")
    assert torch.equal(ref.x, g.features) and torch.equal(ref.y, g.labels)
    assert set(map(tuple, ref.edge_index.t().tolist())) == set(map(tuple, g.edge_index.t().tolist()))
    assert torch.equal(ref.test_mask.nonzero().flatten(), g.test_idx)


@pytest.mark.skipif(not _have("pubmed"), reason=f"raw Planetoid Pubmed files not found under {ROOT}")
def test_pubmed_has_three_classes():
    g = load_planetoid(ROOT, "pubmed")
    assert g.num_classes == 3  # the paper's config said 7
    assert g.features.shape == (19717, 500)
    loops = int((g.edge_index[0] == g.edge_index[1]).sum())
    assert (g.edge_index.shape[1] - loops) == 2 * 44324


@needs_cora
def test_real_file_checksums_and_tampering(tmp_path):
    for s in SUFFIXES:
        shutil.copy(ROOT / f"ind.cora.{s}", tmp_path / f"ind.cora.{s}")
    if (ROOT / "SHA256SUMS").is_file():
        shutil.copy(ROOT / "SHA256SUMS", tmp_path / "SHA256SUMS")
    else:
        lines = [f"{hashlib.sha256((tmp_path / f'ind.cora.{s}').read_bytes()).hexdigest()}  ind.cora.{s}"
                 for s in SUFFIXES]
        (tmp_path / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert load_planetoid(tmp_path, "cora").num_nodes == 2708
    raw = bytearray((tmp_path / "ind.cora.allx").read_bytes())
    raw[-100] ^= 0xFF
    (tmp_path / "ind.cora.allx").chmod(0o644)
    (tmp_path / "ind.cora.allx").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"checksum mismatch.*ind\.cora\.allx"):
        load_planetoid(tmp_path, "cora")
    (tmp_path / "ind.cora.allx").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match=r"ind\.cora\.allx"):
        load_planetoid(tmp_path, "cora", verify=False)


# --------------------------------------------------------------------------- random splits
def test_random_split_sizes_disjoint_and_seeded(tmp_path):
    g = _load_synthetic_graph_of(n=2708)
    tr, va, te = planetoid_random_split(g, seed=3)
    assert (len(tr), len(va), len(te)) == (27, 1326, 1355)
    allidx = torch.cat([tr, va, te])
    assert len(torch.unique(allidx)) == 2708
    again = planetoid_random_split(g, seed=3)
    other = planetoid_random_split(g, seed=4)
    assert all(torch.equal(a, b) for a, b in zip((tr, va, te), again))
    assert not torch.equal(tr, other[0])


def test_random_split_skips_unlabelled_and_validates():
    g = _load_synthetic_graph_of(n=300, unlabelled=(5, 6, 7))
    tr, va, te = planetoid_random_split(g, train_frac=0.1, val_frac=0.3, seed=0)
    used = set(torch.cat([tr, va, te]).tolist())
    assert used.isdisjoint({5, 6, 7}) and len(used) == 297
    with pytest.raises(ValueError, match="train_frac"):
        planetoid_random_split(g, train_frac=0.0)
    with pytest.raises(ValueError, match="< 1"):
        planetoid_random_split(g, train_frac=0.6, val_frac=0.5)


def _load_synthetic_graph_of(n: int, unlabelled: tuple[int, ...] = ()) -> PlanetoidGraph:
    labels = torch.arange(n) % 3
    labels[list(unlabelled)] = -1
    ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    return PlanetoidGraph("toy", torch.zeros(n, 2), labels, torch.cat([ring, ring.flip(0)], 1), 3,
                          torch.arange(2), torch.arange(2, 4), torch.arange(4, 6))
