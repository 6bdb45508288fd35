"""Tests of the continuous Hopfield recipe (paper §5.1): model, gradients, memory, CLI."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import hypergrad
from hypergrad.data import DataError, default_data_root
from hypergrad.implicit import _OneStepGraph  # the core's own J·u, the operator CG-RBP uses
from hypergrad.methods import METHODS as TABLE
from recipes._common import PAPER_METHODS as METHODS
from recipes.hopfield import run
from recipes.hopfield.model import (
    HopfieldNet,
    corrupt,
    hopfield_step,
    l1_loss,
    load_images,
    recall,
    train_step_grad,
)

RBP_METHODS = tuple(m for m in METHODS if TABLE[m].family == "implicit")

SMALL = {"n_obs": 6, "n_hidden": 5, "n_out": 6}


def _mnist_images() -> torch.Tensor:
    try:
        return load_images(default_data_root("mnist"))
    except DataError as exc:
        pytest.skip(f"MNIST IDX files not found ({exc})")


def _small_net(seed: int = 0, scale: float = 0.3, readout: str = "state") -> HopfieldNet:
    gen = torch.Generator().manual_seed(seed)
    return HopfieldNet.create(**SMALL, init_scale=scale, generator=gen, dtype=torch.float64,
                              readout_mode=readout)


def _binary_images(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, dim, generator=gen) > 0.5).to(torch.float64)


def test_step_is_euler_discretisation_of_eq18_with_clamped_units() -> None:
    net = _small_net(scale=0.5)
    images = _binary_images(3, SMALL["n_obs"])
    W = net.weights().detach()
    assert torch.equal(W, W.T)
    assert torch.all(W.diagonal() == 0)
    n_obs, a, b = net.n_obs, net.a, net.b
    gen = torch.Generator().manual_seed(1)
    h_free = torch.randn(3, net.n_free, generator=gen, dtype=torch.float64)
    # Full network: observed units clamped to I, I = 0 on free units, Euler step 1 of Eq. (18).
    h_all = torch.cat([images, h_free], dim=1)
    I_all = torch.cat([images, torch.zeros_like(h_free)], dim=1)
    euler = h_all + (-h_all / a + torch.sigmoid(b * h_all) @ W.T + I_all)
    w_ff, drive = net.params(images)
    (h_next,) = hopfield_step((h_free,), (w_ff.detach(), drive.detach()), a=a, b=b)
    torch.testing.assert_close(h_next, euler[:, n_obs:])


def test_model_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match="readout"):
        _small_net(readout="logits")
    with pytest.raises(ValueError, match="n_hidden"):
        HopfieldNet.create(n_obs=3, n_hidden=0, n_out=3)
    with pytest.raises(ValueError, match="unknown method 'lbfgs'; expected one of bptt, tbptt"):
        train_step_grad(_small_net(), _binary_images(1, SMALL["n_obs"]), "lbfgs", 2)
    with pytest.raises(ValueError, match="fraction"):
        corrupt(torch.ones(1, 4), 1.5)


def test_corrupt_zeroes_half_of_the_nonzero_pixels() -> None:
    images = _binary_images(4, 50, seed=3).float()
    out = corrupt(images, 0.5, generator=torch.Generator().manual_seed(0))
    for x, y in zip(images, out):
        nnz = int(x.sum())
        assert int((x - y).sum()) == nnz // 2  # only ones turned into zeros, floor(50%) of them
        assert torch.all(y <= x)
    other = corrupt(images, 0.5, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out, other)  # trials differ in corruption


def _full_size_point(seed: int = 0) -> tuple[HopfieldNet, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The 784/1024/784 model in float64 with weights large enough for a non-trivial Jacobian."""
    gen = torch.Generator().manual_seed(seed)
    net = HopfieldNet.create(init_scale=0.02, generator=gen, dtype=torch.float64)
    images = _binary_images(2, 784, seed=seed)
    w_ff, drive = net.params(images)
    params = (w_ff.detach(), drive.detach())
    state = hypergrad.unroll(net.step_fn(), net.initial_state(2), params, 5)
    return net, state, params


@pytest.mark.parametrize("jvp", ["double_vjp", "forward"])
def test_core_jvp_matches_central_finite_differences_on_this_model(jvp: str) -> None:
    net, state, params = _full_size_point()
    step = net.step_fn()
    u = (torch.randn(state[0].shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64),)
    graph = _OneStepGraph(step, state, params, jvp)
    (ju,) = graph.jvp(u)
    eps = 1e-5
    (fp,) = step((state[0] + eps * u[0],), params)
    (fm,) = step((state[0] - eps * u[0],), params)
    fd = (fp - fm) / (2 * eps)
    assert float(fd.norm()) > 1e-2  # the Jacobian is not negligible at this point
    torch.testing.assert_close(ju, fd, rtol=1e-6, atol=1e-8)
    # J^T is the adjoint of J: <J u, v> == <u, J^T v>.
    v = (torch.randn(state[0].shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64),)
    (jtv,) = graph.vjp(v)
    torch.testing.assert_close(torch.sum(ju * v[0]), torch.sum(u[0] * jtv), rtol=1e-9, atol=0.0)


def test_paper_code_forward_jacobian_product_disagrees_with_finite_differences() -> None:
    """The released code's ``_update_forward_diff`` uses sigmoid(W h) * (1 - .) * W v; J u is
    W (b * sigmoid'(b h) * u). This documents why the recipe relies on the core's generic J·u."""
    net, state, params = _full_size_point()
    w_ff, _ = params
    h = state[0]
    u = torch.randn(h.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sig_wh = torch.sigmoid(h @ w_ff.T)
    paper = net.b * sig_wh * (1 - sig_wh) * (u @ w_ff.T)
    eps = 1e-5
    fd = (net.step_fn()((h + eps * u,), params)[0] - net.step_fn()((h - eps * u,), params)[0]) / (2 * eps)
    assert float((paper - fd).norm() / fd.norm()) > 0.1


@pytest.mark.parametrize("jvp", ["double_vjp", "forward"])
def test_cg_rbp_matches_dense_implicit_gradient(jvp: str) -> None:
    """CG-RBP through the public API equals (I - J^T)^{-1} g pulled back, J from finite differences."""
    net = _small_net(scale=0.4)
    images = _binary_images(2, SMALL["n_obs"], seed=1)
    w_ff, drive = net.params(images)
    params = (w_ff.detach(), drive.detach())
    step = net.step_fn()
    (h_star,) = hypergrad.unroll(step, net.initial_state(2), params, 300)
    torch.testing.assert_close(step((h_star,), params)[0], h_star, rtol=0, atol=1e-10)
    target = images
    h_leaf = h_star.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(l1_loss(net.readout(h_leaf), target), h_leaf)

    n = h_star.numel()
    eps = 1e-6
    J = torch.empty(n, n, dtype=torch.float64)
    for k in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[k] = eps
        plus = step((h_star + e.view_as(h_star),), params)[0].flatten()
        minus = step((h_star - e.view_as(h_star),), params)[0].flatten()
        J[:, k] = (plus - minus) / (2 * eps)
    z = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - J.T, g.flatten()).view_as(h_star)
    p_leaf = tuple(p.clone().requires_grad_(True) for p in params)
    expected = torch.autograd.grad(step((h_star,), p_leaf)[0], p_leaf, z)

    grads, info = hypergrad.fixed_point_grad(step, (h_star,), params, (g,), method="cg", max_iter=4 * n,
                                             tol=1e-12, jvp=jvp)
    assert info.residual < 1e-8
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def _grad_of_a(net: HopfieldNet, images: torch.Tensor, method: str, truncate: int) -> tuple[torch.Tensor, float, Any]:
    loss, info = train_step_grad(net, images, method, truncate, generator=torch.Generator().manual_seed(0))
    return net.A.grad.clone(), float(loss), info


def test_methods_agree_with_bptt_at_a_converged_state() -> None:
    """The recipe's gradient w.r.t. A, by every method, through hypergrad.gradient."""
    net = _small_net(scale=0.3)
    images = _binary_images(2, SMALL["n_obs"], seed=2)
    results = {m: _grad_of_a(net, images, m, 30) for m in METHODS}
    ref, ref_loss, _ = results["bptt"]
    assert ref.norm() > 0
    # BPTT by hand: autograd through the 50 steps and the pull-back to A.
    A = net.A.detach().clone().requires_grad_(True)
    by_hand = HopfieldNet(A, **SMALL, readout_mode="state")
    w_ff, drive = by_hand.params(images)
    (h,) = by_hand.initial_state(2)
    for _ in range(by_hand.num_steps):
        (h,) = hopfield_step((h,), (w_ff, drive))
    (want,) = torch.autograd.grad(l1_loss(by_hand.readout(h), images), A)
    torch.testing.assert_close(ref, want, rtol=1e-10, atol=1e-14)
    for m, (grad, loss, info) in results.items():
        assert loss == pytest.approx(ref_loss, rel=1e-9)
        assert (info is None) == (m not in RBP_METHODS)
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-9, msg=m)
    # TBPTT(K) and Neumann-RBP(K - 1) are the same series at a fixed point (Proposition 2).
    tb = _grad_of_a(net, images, "tbptt", 3)[0]
    ne = _grad_of_a(net, images, "neumann", 2)[0]
    torch.testing.assert_close(tb, ne, rtol=1e-7, atol=1e-12)


class _CountingStep:
    """Wraps the step map; records, per call, whether it built a graph."""

    def __init__(self, step: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        self.step = step
        self.graph_calls = 0
        self.calls = 0

    def __call__(self, state: tuple[torch.Tensor, ...],
                 params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        out = self.step(state, params)
        self.calls += 1
        self.graph_calls += int(any(t.requires_grad for t in out))
        return out


def _saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (the graph's memory)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("method", METHODS)
def test_rbp_methods_keep_no_trajectory_graph(method: str) -> None:
    net = HopfieldNet.create(n_obs=20, n_hidden=30, n_out=20, init_scale=0.05,
                             generator=torch.Generator().manual_seed(0))
    images = _binary_images(2, 20).float()
    w_ff, drive = net.params(images)
    params = (w_ff.detach(), drive.detach())

    def loss_fn(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return l1_loss(net.readout(state[0]), images)

    def run_with(num_steps: int) -> tuple[_CountingStep, int]:
        counter = _CountingStep(net.step_fn())
        nbytes = _saved_bytes(lambda: hypergrad.gradient(counter, net.initial_state(2), params, loss_fn,
                                                         method=method, num_steps=num_steps, truncate=5))
        return counter, nbytes

    counter50, bytes50 = run_with(50)
    _, bytes10 = run_with(10)
    expected_graph_steps = {"bptt": 50, "tbptt": 5}.get(method, 1)
    assert counter50.graph_calls == expected_graph_steps
    assert counter50.calls >= 50
    if method in RBP_METHODS:
        # Only the one-step graph at h_50 (and the loss) is saved: memory does not grow with the steps.
        assert bytes50 == bytes10
    elif method == "bptt":
        assert bytes50 > 4 * bytes10


def test_loads_first_image_of_each_digit_binarised() -> None:
    images = _mnist_images()
    assert images.shape == (10, 784)
    assert set(images.unique().tolist()) == {0.0, 1.0}
    assert len({tuple(x.tolist()) for x in images}) == 10


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    try:
        load_images(default_data_root("mnist"))
    except DataError as exc:
        pytest.skip(f"MNIST IDX files not found ({exc})")
    out_dir = tmp_path_factory.mktemp("hopfield")
    out = out_dir / "results.json"
    code = run.main(["--quick", "--no-progress", "--out", str(out), "--figdir", str(out_dir)])
    assert code == 0
    return json.loads(out.read_text()), out_dir


def test_quick_run_writes_curves_and_success_rates(quick_results: tuple[dict, Path]) -> None:
    results, out_dir = quick_results
    assert results["schema_version"] == run.SCHEMA_VERSION
    assert results["table"]["seeds"] == [1, 2]  # --quick: the first two of the default seeds 1-20
    assert results["config"]["hidden"] == 64
    curves = results["curves"]["methods"]
    assert list(curves) == list(METHODS)
    for rec in curves.values():
        assert len(rec["train_loss"]) == 2
        assert all(v is not None and v > 0 for v in rec["train_loss"])
        assert rec["val_step"] == [0, 2]
        assert len(rec["val_loss"]) == 2
        assert len(rec["val_recalls"]) == 2 and all(0 <= v <= 10 for v in rec["val_recalls"])
        assert len(rec["saturated"]) == 2 and all(0.0 <= v <= 1.0 for v in rec["saturated"])
    ret = results["curves"]["retrieval"]
    for key in ("clean", "corrupted", *METHODS):
        assert len(ret[key]) == 10 and all(len(s) == 784 for s in ret[key])
    # The recalls agree with the stored answers: nearest digit and Hamming distance recomputed from the bits.
    clean = torch.tensor([[float(c) for c in row] for row in ret["clean"]])
    for key in ("corrupted", *METHODS):
        answers = torch.tensor([[float(c) for c in row] for row in ret[key]])
        ham = (answers[:, None] != clean[None]).sum(-1)
        assert results["curves"]["recalls"][key]["hamming"] == ham.diagonal().tolist()
        assert results["curves"]["recalls"][key]["nearest"] == ham.argmin(1).tolist()
    cells = results["table"]["cells"]
    assert set(cells) == {"tbptt", "rbp", "cg", "neumann"}
    for per_k in cells.values():
        cell = per_k["10"]
        assert len(cell["success"]) == len(cell["recalls"]) == 2
        assert cell["initial"][0] != cell["initial"][1]  # two trials, two initialisations
        for i in range(2):
            assert cell["success"][i] == (cell["final"][i] < 0.5 * cell["initial"][i])
            assert 0 <= cell["recalls"][i] <= 10
        assert cell["seconds_per_iteration"] > 0
    assert (out_dir / "hopfield_curves.png").stat().st_size > 0
    assert (out_dir / "hopfield_retrieval.png").stat().st_size > 0


def test_plot_only_regenerates_figures_and_table(quick_results: tuple[dict, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, out_dir = quick_results
    table_only = tmp_path / "table_only.json"
    results = json.loads((out_dir / "results.json").read_text())
    table_only.write_text(json.dumps({"table": results["table"]}))
    results.pop("table")
    curves_only = tmp_path / "curves_only.json"
    curves_only.write_text(json.dumps(results))
    assert run.main(["--plot-only", str(curves_only), str(table_only), "--figdir", str(tmp_path),
                     "--fig-prefix", "again"]) == 0
    assert (tmp_path / "again_curves.png").is_file()
    assert (tmp_path / "again_retrieval.png").is_file()
    assert "| 10 |" in capsys.readouterr().out


def test_success_table_counts_trials() -> None:
    results = {"table": {"truncations": [10], "cells": {
        "rbp": {"10": {"success": [True, False, False, False]}},
        "neumann": {"10": {"success": [True, True]}},
    }}}
    table = run.success_table(results)
    assert "25% (1/4)" in table and "100% (2/2)" in table
    results["table"]["cells"]["rbp"]["10"]["recalls"] = [10, 9, 8, 0]
    results["table"]["cells"]["neumann"]["10"]["recalls"] = [3, 10]
    table = run.success_table(results, "recalls")
    assert "50% (2/4)" in table and "50% (1/2)" in table
    results["table"]["cells"]["neumann"]["10"].update(initial=[0.2, 0.4, 0.5], final=[0.1, None, 0.25])
    assert "0.50 (0.50–inf)" in run.success_table(results, "ratio")  # None: diverged
    assert "| - |" in run.success_table(results, "ratio")  # rbp's cell has no losses


def test_recall_finds_the_nearest_stored_image() -> None:
    clean = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    assert recall(clean, clean).recalled.all()  # a perfect memory
    answers = torch.tensor([[0.9, 0.7, 0.1, -2.0],  # binarises to image 0
                            [0.9, 0.2, 0.6, 0.0],  # image 2
                            [0.0, 0.0, 0.0, 0.0]])  # distance 2 to each: the tie goes to image 0
    rec = recall(answers, clean)
    assert rec.nearest.tolist() == [0, 2, 0]
    assert rec.distance.tolist() == [0, 2, 2]
    assert rec.recalled.tolist() == [True, False, False]
    stacked = recall(torch.stack([answers, clean]), clean)  # a leading axis of trials
    assert stacked.recalled.sum(-1).tolist() == [1, 3]


def test_batches_visit_every_image_once_per_epoch() -> None:
    images = torch.arange(10.0)[:, None]
    for size in (1, 5, 10):
        seen = torch.cat(list(run._batches(images, size, 20 // size))).flatten()  # two epochs
        assert sorted(seen[:10].tolist()) == list(range(10)) == sorted(seen[10:].tolist())
    assert len(list(run._batches(images, 1, 3))) == 3


@pytest.mark.parametrize("method", [m for m in METHODS if m != "rbp"])
def test_stacked_trials_train_as_separate_networks(method: str) -> None:
    """Trials stacked along a leading axis (one batched program) = each trial trained alone: losses
    and weights after three Adam steps. (RBP's random start z0 is drawn for the whole stack; its
    stacked solve is checked from z0 = 0 in the next test.)"""
    kw = {**SMALL, "init_scale": 0.3, "dtype": torch.float64, "readout_mode": "state"}
    images = _binary_images(4, SMALL["n_obs"], seed=4)
    args = argparse.Namespace(lr=0.01, batch_size=2)
    seeds = [3, 7, 11]
    stack = HopfieldNet.stack(seeds, **kw)
    assert stack.trials == 3 and stack.initial_state(2)[0].shape == (3, 2, stack.n_free)

    def train(net: HopfieldNet) -> list[torch.Tensor]:
        return run._train(net, images, method, 4, args, 3, torch.Generator().manual_seed(0))

    start = stack.A.detach().clone()
    losses = torch.stack(train(stack))  # (iterations, trials)
    assert not torch.equal(start, stack.A.detach())
    for i, seed in enumerate(seeds):
        one = HopfieldNet.create(generator=torch.Generator().manual_seed(seed), **kw)
        assert torch.equal(one.A.detach(), start[i])  # the same start as the trial of this seed alone
        alone = torch.stack(train(one))
        torch.testing.assert_close(alone, losses[:, i], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(one.A.detach(), stack.A.detach()[i], rtol=1e-9, atol=1e-12, msg=method)


def test_stacked_rbp_from_zero_start_solves_each_trial_alone() -> None:
    kw = {**SMALL, "init_scale": 0.3, "dtype": torch.float64, "readout_mode": "state"}
    images = _binary_images(2, SMALL["n_obs"], seed=5)
    stack = HopfieldNet.stack([1, 2], **kw)

    def grads(net: HopfieldNet) -> tuple[torch.Tensor, ...]:
        w_ff, drive = net.params(images)
        params = (w_ff.detach(), drive.detach())
        res = hypergrad.gradient(net.step_fn(), net.initial_state(2), params,
                                 lambda s: l1_loss(net.readout(s[0]), images) * (net.trials or 1),
                                 method="rbp", num_steps=50, truncate=6, blocks=net.trials is not None)
        return res.grads

    g_stack = grads(stack)
    for i, seed in enumerate([1, 2]):
        g_one = grads(HopfieldNet.create(generator=torch.Generator().manual_seed(seed), **kw))
        for a, b in zip(g_one, g_stack):
            torch.testing.assert_close(a, b[i], rtol=1e-9, atol=1e-12)


def test_cli_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run.main(["--methods", "bptt,adam"])
    assert exc.value.code == 2
    assert "choose from bptt,tbptt,rbp,cg,neumann,gmres" in capsys.readouterr().err.replace(", ", ",")
    with pytest.raises(SystemExit) as exc:
        run.main(["--truncate", "10,0"])
    assert exc.value.code == 2
    assert "integers >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run.main(["--methods", "tbptt", "--truncate", "60"])  # K > the 50 inference steps
    assert "TBPTT" in capsys.readouterr().err
    for old in (["--truncations", "10"], ["--trials", "3"], ["--seed", "0"], ["--curve-truncation", "5"]):
        with pytest.raises(SystemExit):
            run.main(old)  # the old flag names are gone
    capsys.readouterr()


def test_resume_keeps_the_finished_cells_and_refuses_other_settings(
        quick_results: tuple[dict, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out_dir = quick_results
    partial = json.loads((out_dir / "results.json").read_text())
    partial["table"]["cells"]["rbp"]["10"]["recalls"] = [-1, -1]  # a marker no run writes
    for m in ("tbptt", "cg"):
        partial["table"]["cells"][m] = {}  # these cells were not finished
    out = tmp_path / "resumed.json"
    out.write_text(json.dumps(partial))
    with pytest.raises(SystemExit) as exc:
        run.main(["--quick", "--no-progress", "--lr", "0.01", "--out", str(out), "--resume"])
    assert exc.value.code == 1 and "other settings (lr)" in capsys.readouterr().err
    assert run.main(["--quick", "--no-progress", "--out", str(out), "--resume"]) == 0
    cells = json.loads(out.read_text())["table"]["cells"]
    assert cells["rbp"]["10"]["recalls"] == [-1, -1]  # kept, not run again
    assert all(0 <= r <= 10 for m in ("tbptt", "cg") for r in cells[m]["10"]["recalls"])  # run now
