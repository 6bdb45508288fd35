"""The GNN recipe (§5.2): the map, the five gradient methods, memory, the CLI's --quick schema."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hypergrad.data import default_data_root
from hypergrad.data.planetoid import PlanetoidGraph
from recipes.gnn_citation.bench import SavedBytes
from recipes.gnn_citation.model import (
    GNNParams,
    SymmetricSpMM,
    gru_cell,
    init_params,
    make_step,
    readout,
    sparse_adjacency,
)
from recipes.gnn_citation.train import DEFAULT_METHODS, GNN_METHODS, TrainConfig, gnn_gradients, train_run

ROOT = default_data_root("planetoid")


def _toy_graph(n: int = 12, seed: int = 0) -> PlanetoidGraph:
    g = torch.Generator().manual_seed(seed)
    ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    extra = torch.randint(0, n, (2, n), generator=g)
    extra = extra[:, extra[0] != extra[1]]
    ei = torch.unique(torch.cat([ring, ring.flip(0), extra, extra.flip(0)], 1), dim=1)
    labels = torch.arange(n) % 3
    return PlanetoidGraph("toy", torch.zeros(n, 1), labels, ei, 3, torch.arange(4), torch.arange(4, 8),
                          torch.arange(8, n))


def _params64(hidden: int, scale: float, seed: int = 0) -> GNNParams:
    p = init_params(hidden, 3, generator=torch.Generator().manual_seed(seed))
    gru = tuple((t.detach() * scale).double() for t in p.gru)
    return GNNParams(gru=gru, out=tuple(t.detach().double() for t in p.out))


def test_gru_cell_matches_torch_gru_cell():
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(5, 5)
    x, h = torch.randn(7, 5), torch.randn(7, 5)
    ours = gru_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(ours, cell(x, h))


def test_symmetric_spmm_is_twice_differentiable():
    graph = _toy_graph()
    adj = sparse_adjacency(graph).to(torch.float64)
    dense = adj.to_dense()
    assert torch.equal(dense, dense.t())
    h = torch.randn(graph.num_nodes, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(SymmetricSpMM.apply(h, adj), dense @ h)
    fn = lambda x: torch.tanh(SymmetricSpMM.apply(x, adj)) ** 2  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h,))
    assert torch.autograd.gradgradcheck(fn, (h,))


def _reference_loss(graph, h0, params, steps):
    adj = graph.adjacency(torch.float64).to_dense()
    h = h0
    for _ in range(steps):
        h = gru_cell(adj @ h, h, *params.gru)
    return torch.nn.functional.cross_entropy(readout(h, params.out)[graph.train_idx], graph.labels[graph.train_idx])


def _setup(scale=1.0, hidden=4, steps_seed=0):
    graph = _toy_graph()
    step = make_step(sparse_adjacency(graph).to(torch.float64))
    h0 = torch.randn(graph.num_nodes, hidden, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return graph, step, h0, _params64(hidden, scale, steps_seed)


def test_bptt_matches_autograd_through_a_plain_loop():
    graph, step, h0, params = _setup()
    g_gru, g_out, loss, logits, info = gnn_gradients(
        "bptt", step, h0, params, graph.labels, graph.train_idx, num_steps=6, truncate=6
    )
    leaves = tuple(p.clone().requires_grad_(True) for p in params.all())
    ref_loss = _reference_loss(graph, h0, GNNParams(leaves[:4], leaves[4:]), 6)
    ref = torch.autograd.grad(ref_loss, leaves)
    torch.testing.assert_close(loss, ref_loss.detach())
    for ours, want in zip((*g_gru, *g_out), ref):
        torch.testing.assert_close(ours, want)
    assert info is None and logits.shape == (graph.num_nodes, 3)


def test_tbptt_with_full_truncation_is_bptt():
    graph, step, h0, params = _setup()
    a = gnn_gradients("bptt", step, h0, params, graph.labels, graph.train_idx, num_steps=5, truncate=5)
    b = gnn_gradients("tbptt", step, h0, params, graph.labels, graph.train_idx, num_steps=5, truncate=5)
    for x, y in zip((*a[0], *a[1]), (*b[0], *b[1])):
        torch.testing.assert_close(x, y)


def test_rbp_family_at_a_fixed_point():
    """With a contractive GRU (small weights) h_T is a fixed point. Then TBPTT(K) equals
    Neumann-RBP(K-1) (Prop. 2), and RBP / CG-RBP / Neumann-RBP with many iterations all
    approach the implicit gradient, which BPTT over many steps also approaches."""
    graph, step, h0, params = _setup(scale=0.1)
    kw = dict(labels=graph.labels, train_idx=graph.train_idx, num_steps=150)
    tb = gnn_gradients("tbptt", step, h0, params, truncate=4, **kw)
    ne = gnn_gradients("neumann", step, h0, params, truncate=3, **kw)
    for x, y in zip((*tb[0], *tb[1]), (*ne[0], *ne[1])):
        torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-10)
    assert ne[4] is not None and ne[4].method == "neumann"
    full = gnn_gradients("bptt", step, h0, params, truncate=150, **kw)
    gen = torch.Generator().manual_seed(0)
    for method in ("rbp", "cg", "neumann", "gmres"):
        got = gnn_gradients(method, step, h0, params, truncate=60, generator=gen, **kw)
        for x, y in zip(got[0], full[0]):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)
        for x, y in zip(got[1], full[1]):  # the output layer: ordinary backprop, identical
            torch.testing.assert_close(x, y)


def test_rbp_methods_keep_no_propagation_graph():
    """Autograd saves O(T) tensors for BPTT but a T-independent amount for the RBP family."""
    graph, step, h0, params = _setup(hidden=8)
    saved = {}
    for method in GNN_METHODS:
        for steps in (10, 40):
            with SavedBytes() as counter:
                gnn_gradients(method, step, h0, params, graph.labels, graph.train_idx,
                              num_steps=steps, truncate=3, generator=torch.Generator().manual_seed(0))
            saved[method, steps] = counter.bytes
    assert saved["bptt", 40] > 3.5 * saved["bptt", 10]
    for method in ("tbptt", "rbp", "cg", "neumann", "gmres"):
        assert saved[method, 40] == saved[method, 10] > 0
        assert saved[method, 40] < saved["bptt", 40] / 4


def test_train_run_records_curves_and_stops_early():
    graph = _toy_graph(n=30)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    step = make_step(sparse_adjacency(graph))
    split = (graph.train_idx, graph.val_idx, graph.test_idx)
    cfg = TrainConfig(num_steps=8, truncate=2, epochs=40, patience=3, lr=1e-6)
    res = train_run("neumann", step, x, graph.labels, split, 3, seed=0, config=cfg)
    assert res.epochs_run < 40  # lr 1e-6: validation accuracy cannot improve for long
    assert res.epochs_run == len(res.train_loss) == len(res.val_acc)
    assert res.best_epoch == max(range(len(res.val_acc)), key=lambda e: (res.val_acc[e], -e))
    assert len(res.diff_norm_last) == 8 and all(d >= 0 for d in res.diff_norm_last)
    assert 0.0 <= res.test_acc <= 100.0 and math.isfinite(res.solver_residual_last)
    base = train_run("baseline", step, x, graph.labels, split, 3, seed=0,
                     config=TrainConfig(epochs=20, lr=0.5, momentum=0.0, weight_decay=0.0))
    assert base.train_loss[-1] < base.train_loss[0] and base.diff_norm_last == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=5, truncate=6), "truncate"),
        (dict(epochs=0), "epochs"),
        (dict(patience=0), "patience"),
        (dict(lr=-1.0), "lr"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_unknown_method_is_rejected():
    graph, step, h0, params = _setup()
    with pytest.raises(ValueError, match="unknown GNN method"):
        gnn_gradients("adjoint", step, h0, params, graph.labels, graph.train_idx, num_steps=2, truncate=1)


@pytest.mark.skipif(not (ROOT / "ind.cora.graph").is_file(), reason=f"raw Planetoid Cora files not under {ROOT}")
def test_quick_mode_writes_the_documented_schema(tmp_path):
    from recipes.gnn_citation.run import main

    out = tmp_path / "quick.json"
    # --hidden 8 keeps the PCA cheap; the recipe's default for Cora is 64.
    rc = main(["--quick", "--dataset", "cora", "--hidden", "8", "--out", str(out), "--figdir", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["dataset"] == "cora" and rec["num_classes"] == 7 and rec["hidden"] == 8
    assert rec["split_sizes"] == [27, 1326, 1355]
    assert list(rec["results"]) == list(DEFAULT_METHODS) == list(rec["summary"])
    assert list(DEFAULT_METHODS) == ["baseline", "bptt", "tbptt", "rbp", "cg", "neumann"]
    assert rec["paper"]["neumann"] == [46.63, 8.3]
    for method, runs in rec["results"].items():
        assert len(runs) == 1
        r = runs[0]
        assert r["epochs_run"] == len(r["train_loss"]) == len(r["val_acc"]) == 3
        assert 0.0 <= r["test_acc"] <= 100.0 and 0 <= r["best_epoch"] < 3
        assert len(r["diff_norm_last"]) == (0 if method == "baseline" else 10)
        assert rec["summary"][method]["n"] == 1
    assert (tmp_path / "gnn_cora.png").stat().st_size > 0
    # re-plot from the JSON: named, or --out by default
    (tmp_path / "gnn_cora.png").unlink()
    assert main(["--plot-only", str(out), "--figdir", str(tmp_path)]) == 0
    assert (tmp_path / "gnn_cora.png").is_file()
    (tmp_path / "gnn_cora.png").unlink()
    assert main(["--plot-only", "--out", str(out), "--figdir", str(tmp_path)]) == 0
    assert (tmp_path / "gnn_cora.png").is_file()


def test_cli_rejects_bad_arguments(capsys):
    from recipes.gnn_citation.run import build_parser, main

    with pytest.raises(SystemExit):
        main(["--methods", "bptt,adjoint"])
    assert "choose from bptt, tbptt, rbp, cg, neumann, gmres, baseline" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--methods", "cg_rbp"])  # the recipe's old name: the library's is "cg"
    with pytest.raises(SystemExit):
        main(["--truncate", "7", "--inner-steps", "5"])
    assert "truncate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--plot-only"])  # nothing to re-draw: no paths and no --out
    for old in (["--replot", "x.json"], ["--steps", "5"]):
        with pytest.raises(SystemExit):
            main(old)
    # --seeds is always a list: "10" is seed 10, not ten seeds.
    assert build_parser().parse_args(["--seeds", "10"]).seeds == [10]
    assert build_parser().parse_args(["--seeds", "0-2,7"]).seeds == [0, 1, 2, 7]
    assert build_parser().parse_args([]).seeds == list(range(10))


def test_schema_1_files_are_read_with_the_librarys_names(tmp_path):
    from recipes.gnn_citation.plot import load_records, markdown_table

    run = {"method": "cg_rbp", "seed": 0, "test_acc": 40.0, "epochs_run": 0, "best_epoch": -1,
           "best_val_acc": -1.0, "seconds": 1.0}
    old = {"dataset": "cora", "results": {"cg_rbp": [run]}, "summary": {}, "methods": ["cg_rbp"],
           "paper": {"cg_rbp": [39.26, 6.5]}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    (rec,) = load_records([path])
    assert list(rec["results"]) == ["cg"] and rec["methods"] == ["cg"] and rec["paper"] == {"cg": [39.26, 6.5]}
    assert rec["results"]["cg"][0]["best_epoch"] is None
    rec["summary"] = {"cg": {"mean": 40.0, "std": 0.0, "n": 1}}
    assert "| CG-RBP | 40.00 ± 0.00 (n=1) | 39.26 ± 6.5 |" in markdown_table([rec])


def test_divergence_stops_training_and_keeps_the_best_model():
    graph = _toy_graph(n=30)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    step = make_step(sparse_adjacency(graph))
    split = (graph.train_idx, graph.val_idx, graph.test_idx)
    cfg = TrainConfig(num_steps=8, truncate=2, epochs=50, lr=1e30)
    res = train_run("bptt", step, x, graph.labels, split, 3, seed=0, config=cfg)
    assert res.diverged and res.epochs_run < 50
    assert all(math.isfinite(v) for v in res.train_loss) and math.isfinite(res.test_acc)


@pytest.mark.parametrize("method", ["rbp", "neumann"])
def test_a_non_finite_propagation_stops_an_implicit_run(method):
    """A propagation that blew up has no fixed point: a NaN loss and a "nonfinite" info, no exception."""
    graph, step, h0, params = _setup()
    g_gru, _, loss, _, info = gnn_gradients(method, step, torch.full_like(h0, float("nan")), params,
                                            graph.labels, graph.train_idx, num_steps=4, truncate=2)
    assert not math.isfinite(float(loss)) and all(bool(torch.isnan(g).all()) for g in g_gru)
    assert info is not None and info.stop_reason == "nonfinite" and info.iterations == 0


def _stack64(params: list[GNNParams]) -> GNNParams:
    return GNNParams(gru=tuple(torch.stack(ts) for ts in zip(*(p.gru for p in params))),
                     out=tuple(torch.stack(ts) for ts in zip(*(p.out for p in params))))


@pytest.mark.parametrize("method", ["bptt", "tbptt", "rbp", "cg", "neumann"])
def test_a_stack_of_seeds_gives_each_seed_its_one_seed_gradient(method):
    """Seeds stacked along a leading axis (own weights, own training nodes, own RBP start) ==
    the one-network path seed by seed, to round-off; the difference norms too."""
    graph = _toy_graph()
    step = make_step(sparse_adjacency(graph).to(torch.float64))
    h0 = torch.randn(graph.num_nodes, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seeds = [0, 1, 2]
    params = [_params64(4, 0.5, seed=s) for s in seeds]
    idx = [torch.randperm(graph.num_nodes, generator=torch.Generator().manual_seed(s))[:5] for s in seeds]
    kw = dict(num_steps=7, truncate=3)
    sink: list[torch.Tensor] = []
    g_gru, g_out, loss, logits, _ = gnn_gradients(
        method, step, h0, _stack64(params), graph.labels, torch.stack(idx), diff_sink=sink,
        generator=[torch.Generator().manual_seed(10 + s) for s in seeds], **kw)
    assert loss.shape == (3,) and logits.shape == (3, graph.num_nodes, 3)
    for i, s in enumerate(seeds):
        one_sink: list[torch.Tensor] = []
        want = gnn_gradients(method, step, h0, params[i], graph.labels, idx[i], diff_sink=one_sink,
                             generator=torch.Generator().manual_seed(10 + s), **kw)
        for got, ref in zip((*g_gru, *g_out), (*want[0], *want[1])):
            torch.testing.assert_close(got[i], ref)
        torch.testing.assert_close(loss[i], want[2])
        torch.testing.assert_close(logits[i], want[3])
        torch.testing.assert_close(torch.stack(sink)[:, i], torch.stack(one_sink))


@pytest.mark.parametrize("method", ["baseline", "tbptt", "rbp", "neumann"])
def test_train_seeds_batched_equals_the_per_seed_loop(method):
    """A few epochs of three seeds trained as one program == each seed trained alone: curves,
    best epoch, test accuracy; with early stopping that stops the seeds at different epochs."""
    from recipes.gnn_citation.train import train_seeds

    graph = _toy_graph(n=30)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    step = make_step(sparse_adjacency(graph))
    seeds = [3, 4, 5]
    splits = []
    for s in seeds:
        perm = torch.randperm(30, generator=torch.Generator().manual_seed(s))
        splits.append((perm[:6], perm[6:18], perm[18:]))
    cfg = TrainConfig(num_steps=6, truncate=2, epochs=12, patience=3, lr=0.2)
    batched = train_seeds(method, step, x, graph.labels, splits, 3, seeds=seeds, config=cfg)
    loop = [train_run(method, step, x, graph.labels, sp, 3, seed=s, config=cfg) for s, sp in zip(seeds, splits)]
    for got, want in zip(batched, loop):
        assert got.seed == want.seed and got.epochs_run == want.epochs_run > 0
        assert got.val_acc == want.val_acc and got.best_epoch == want.best_epoch
        assert got.test_acc == want.test_acc and got.diverged == want.diverged
        torch.testing.assert_close(torch.tensor(got.train_loss), torch.tensor(want.train_loss))
        torch.testing.assert_close(torch.tensor(got.diff_norm_last), torch.tensor(want.diff_norm_last))
    assert len({r.epochs_run for r in loop}) > 1  # the seeds stopped at different epochs


def test_train_seeds_rejects_splits_of_different_sizes():
    from recipes.gnn_citation.train import train_seeds

    graph = _toy_graph(n=30)
    x = torch.randn(30, 4)
    step = make_step(sparse_adjacency(graph))
    a = (torch.arange(6), torch.arange(6, 18), torch.arange(18, 30))
    b = (torch.arange(5), torch.arange(5, 18), torch.arange(18, 30))
    with pytest.raises(ValueError, match="same sizes"):
        train_seeds("tbptt", step, x, graph.labels, [a, b], 3, seeds=[0, 1], config=TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="one split per seed"):
        train_seeds("tbptt", step, x, graph.labels, [a], 3, seeds=[0, 1], config=TrainConfig(epochs=1))


def test_time_limit_stops_the_batch_and_says_so():
    from recipes.gnn_citation.train import train_seeds

    graph = _toy_graph(n=30)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    step = make_step(sparse_adjacency(graph))
    split = (graph.train_idx, graph.val_idx, graph.test_idx)
    cfg = TrainConfig(num_steps=4, truncate=2, epochs=50)
    runs = train_seeds("tbptt", step, x, graph.labels, [split, split], 3, seeds=[0, 1], config=cfg,
                       time_limit=1e-9)
    assert [r.epochs_run for r in runs] == [1, 1] and all(r.out_of_time for r in runs)
    full = train_seeds("tbptt", step, x, graph.labels, [split], 3, seeds=[0], config=cfg)
    assert full[0].epochs_run == 50 and not full[0].out_of_time
    with pytest.raises(ValueError, match="time_limit"):
        train_seeds("tbptt", step, x, graph.labels, [split], 3, seeds=[0], config=cfg, time_limit=0)


@pytest.mark.skipif(not (ROOT / "ind.cora.graph").is_file(), reason=f"raw Planetoid Cora files not under {ROOT}")
def test_profile_mode_times_one_seed_and_the_batch(tmp_path, capsys):
    from recipes.gnn_citation.run import main

    out = tmp_path / "profile.json"
    rc = main(["--dataset", "cora", "--hidden", "8", "--seeds", "0,1", "--methods", "tbptt,neumann",
               "--inner-steps", "4", "--truncate", "2", "--profile-epochs", "1", "--out", str(out)])
    assert rc == 0
    prof = json.loads(out.read_text())
    assert prof["seeds"] == [0, 1] and list(prof["methods"]) == ["tbptt", "neumann"]
    for row in prof["methods"].values():
        assert set(row) == {"one", "batch"} and all(v["seconds"] > 0 for v in row.values())
    text = capsys.readouterr().out
    assert "| 2 seeds batched (s/epoch) |" in text and "| Neumann-RBP |" in text


def test_epochs_table_says_met_or_missed():
    from recipes.gnn_citation.plot import epochs_table

    rec = {"dataset": "cora", "paper": {"tbptt": [46.55, 6.4], "neumann": [46.63, 8.3]},
           "summary": {"tbptt": {"mean": 47.0, "std": 1.0, "n": 10, "mean_epochs_run": 900.0,
                                 "mean_best_epoch": 700.0, "out_of_time": 0},
                       "neumann": {"mean": 40.0, "std": 1.0, "n": 10, "mean_epochs_run": 80.0,
                                   "mean_best_epoch": 79.0, "out_of_time": 10}}}
    text = epochs_table([rec])
    assert "| cora | TBPTT | 900 | 700 | 0/10 | met (+0.45) |" in text
    assert "| cora | Neumann-RBP | 80 | 79 | 10/10 | missed (-6.63) |" in text
