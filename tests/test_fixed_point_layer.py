"""Tests of :class:`hypergrad.FixedPoint`: the RBP backward of a layer equals BPTT through a long
converged forward iteration, for the weights of ``f`` and for its inputs, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hypergrad
from tests._maps import DT, rel_err

BATCH, HIDDEN, N_IN = 3, 5, 4
TOTAL = BATCH * HIDDEN

# (id, kwargs) that solve the backward to convergence.
LAYER_METHODS = [
    ("neumann", {"method": "neumann", "max_iter": 2000, "tol": 1e-14}),
    ("rbp", {"method": "rbp", "max_iter": 2000, "tol": 1e-14}),
    ("cg", {"method": "cg", "max_iter": 500, "tol": 1e-14}),
    ("gmres", {"method": "gmres", "max_iter": TOTAL + 5}),
]
IDS = [m[0] for m in LAYER_METHODS]


class TanhCell(nn.Module):
    """f(h, x) = tanh(W h + U x + b) with ||W||_2 = 0.9."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(HIDDEN, HIDDEN, dtype=DT, generator=gen)
        self.w = nn.Parameter(0.9 * w / torch.linalg.matrix_norm(w, ord=2))
        self.u = nn.Parameter(torch.randn(HIDDEN, N_IN, dtype=DT, generator=gen) * 0.5)
        self.b = nn.Parameter(torch.randn(HIDDEN, dtype=DT, generator=gen) * 0.3)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(h @ self.w.T + x @ self.u.T + self.b)


class GRUMap(nn.Module):
    """f(h, x) = GRUCell(x, h) with small weights."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.cell = nn.GRUCell(N_IN, HIDDEN).double()
        with torch.no_grad():
            for p in self.cell.parameters():
                p.mul_(0.8)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.cell(x, h)


def inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, N_IN, dtype=DT, generator=gen)
    target = torch.randn(BATCH, HIDDEN, dtype=DT, generator=gen)
    return x, target


def loss_fn(h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((h - target) ** 2).sum() + (h**3).sum()


def bptt_grads(f: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 400):
    f.zero_grad()
    x = x.clone().requires_grad_(True)
    h = torch.zeros(BATCH, HIDDEN, dtype=DT)
    for _ in range(steps):
        h = f(h, x)
    loss_fn(h, target).backward()
    return [p.grad.clone() for p in f.parameters()], x.grad.clone(), h.detach()


def layer_grads(layer: hypergrad.FixedPoint, x: torch.Tensor, target: torch.Tensor):
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    out = layer(torch.zeros(BATCH, HIDDEN, dtype=DT), x)
    loss_fn(out, target).backward()
    return [p.grad.clone() for p in layer.f.parameters()], x.grad.clone(), out.detach()


@pytest.mark.parametrize("cell", [TanhCell, GRUMap], ids=["tanh", "gru"])
@pytest.mark.parametrize(("mid", "kwargs"), LAYER_METHODS, ids=IDS)
def test_layer_matches_bptt_through_converged_forward(cell, mid: str, kwargs: dict) -> None:
    f = cell()
    x, target = inputs()
    w_ref, x_ref, h_ref = bptt_grads(f, x, target)
    layer = hypergrad.FixedPoint(f, forward_max_iter=500, forward_tol=1e-15, **kwargs)
    w_got, x_got, h_got = layer_grads(layer, x, target)
    assert rel_err(h_got, h_ref) <= 1e-13
    for a, b in zip(w_got, w_ref):
        assert rel_err(a, b) <= 1e-8
    assert rel_err(x_got, x_ref) <= 1e-8  # gradient w.r.t. the layer's input
    info = layer.backward_info
    assert isinstance(info, hypergrad.SolveInfo)
    assert info.method == kwargs["method"] and info.converged and not info.diverged


def test_layer_agrees_with_fixed_point_grad() -> None:
    f = TanhCell(seed=2)
    x, target = inputs(seed=3)
    layer = hypergrad.FixedPoint(f, method="neumann", max_iter=15, forward_max_iter=500, forward_tol=1e-15)
    w_got, x_got, h = layer_grads(layer, x, target)
    names = [n for n, _ in f.named_parameters()]

    def step(state, params):
        named = dict(zip([*names, "x"], params))
        return (torch.tanh(state[0] @ named["w"].T + named["x"] @ named["u"].T + named["b"]),)

    params = (*(p.detach() for p in f.parameters()), x)
    hh = h.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(hh, target), hh)
    grads, info = hypergrad.fixed_point_grad(step, (h,), params, (g,), method="neumann", max_iter=15)
    assert rel_err((*w_got, x_got), grads) <= 1e-12
    assert info.residual == pytest.approx(layer.backward_info.residual, rel=1e-10)


def test_forward_statistics_and_truncated_backward_info() -> None:
    f = TanhCell()
    x, target = inputs()
    layer = hypergrad.FixedPoint(f, method="neumann", max_iter=3, forward_max_iter=500, forward_tol=1e-10)
    out = layer(torch.zeros(BATCH, HIDDEN, dtype=DT), x)
    assert 1 < layer.forward_steps < 500
    assert layer.forward_residual <= 1e-10
    assert layer.backward_info is None
    loss_fn(out, target).backward()
    info = layer.backward_info
    assert info.iterations == 3 and not info.converged and 0 < info.residual < 1
    # the forward stops at forward_max_iter when forward_tol is not reached
    short = hypergrad.FixedPoint(f, forward_max_iter=4, forward_tol=0.0)
    short(torch.zeros(BATCH, HIDDEN, dtype=DT), x)
    assert short.forward_steps == 4 and short.forward_residual > 1e-6


def test_no_grad_forward_returns_the_fixed_point_without_graph() -> None:
    f = TanhCell()
    x, _ = inputs()
    layer = hypergrad.FixedPoint(f, forward_max_iter=500, forward_tol=1e-15)
    with torch.no_grad():
        h = layer(torch.zeros(BATCH, HIDDEN, dtype=DT), x)
    assert h.grad_fn is None
    with torch.no_grad():
        assert rel_err(f(h, x), h) <= 1e-14


def test_layer_memory_is_one_application_of_f() -> None:
    """Saved activations do not grow with the forward iteration count."""
    f = TanhCell()
    x, target = inputs()

    def saved(forward_max_iter: int) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel()
            return t

        layer = hypergrad.FixedPoint(f, forward_max_iter=forward_max_iter, forward_tol=0.0)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = layer(torch.zeros(BATCH, HIDDEN, dtype=DT), x)
        loss_fn(out, target).backward()
        return total

    assert saved(10) == saved(300) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "adam"}, r"unknown method 'adam'"),
        ({"max_iter": 0}, r"max_iter must be an integer >= 1, got 0"),
        ({"tol": -0.5}, r"tol must be a finite number >= 0, got -0\.5"),
        ({"forward_max_iter": 0}, r"forward_max_iter must be an integer >= 1, got 0"),
    ],
)
def test_bad_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hypergrad.FixedPoint(TanhCell(), **kwargs)


@pytest.mark.parametrize("forward_tol", [-1.0, float("nan")])
def test_bad_forward_tol(forward_tol: float) -> None:
    with pytest.raises(ValueError, match=r"forward_tol"):
        hypergrad.FixedPoint(TanhCell(), forward_tol=forward_tol)


@pytest.mark.parametrize("forward_max_iter", [2.5, True])
def test_non_integer_forward_max_iter(forward_max_iter) -> None:
    with pytest.raises(ValueError, match=r"forward_max_iter"):
        hypergrad.FixedPoint(TanhCell(), forward_max_iter=forward_max_iter)
