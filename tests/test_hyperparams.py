"""Hyperparameter layout, granularities and the exact export to torch.optim.SGD."""

from __future__ import annotations

import math

import pytest
import torch

from hypergrad import HyperSpec, to_sgd_param_groups
from hypergrad.workloads import mlp
from tests._problems import tiny_problem


def _spec(per: str) -> HyperSpec:
    model = mlp(784, (50, 50, 50), 10)
    return HyperSpec.build([(n, p.shape) for n, p in model.named_parameters()], per)


@pytest.mark.parametrize(
    ("per", "count"),
    [("tensor", 16), ("layer", 8), ("global", 2), ("element", 2 * (784 * 50 + 50 + 2 * (50 * 50 + 50) + 510))],
)
def test_paper_mlp_hyperparameter_counts(per, count):
    # §5.3: 4 weights + 4 biases, one lr and one momentum each -> 16.
    assert _spec(per).num_hyperparameters == count


def test_init_values_are_the_papers_defaults():
    spec = _spec("tensor")
    hp = spec.init(math.exp(-1), 0.5)
    lrs, moms = spec.per_tensor(hp)
    assert all(torch.allclose(a, torch.tensor(math.exp(-1))) for a in lrs)
    assert all(torch.allclose(b, torch.tensor(0.5)) for b in moms)


def test_layer_groups_share_weight_and_bias():
    spec = _spec("layer")
    assert spec.group_of == (0, 0, 1, 1, 2, 2, 3, 3)


@pytest.mark.parametrize(("lr", "mom"), [(0.0, 0.5), (-1.0, 0.5), (float("nan"), 0.5), (0.1, 0.0), (0.1, 1.0)])
def test_init_rejects_out_of_range(lr, mom):
    with pytest.raises(ValueError, match="initial"):
        _spec("tensor").init(lr, mom)


def test_unknown_granularity():
    with pytest.raises(ValueError, match="per='neuron'"):
        _spec("neuron")


@pytest.mark.parametrize("per", ["tensor", "layer", "global"])
def test_exported_sgd_reproduces_the_inner_loop(per):
    """v' = b v - (1-b) g, w' = w + a v'  ==  SGD(lr=a(1-b), momentum=b, dampening=0)."""
    problem = tiny_problem(torch.float64, per=per)
    spec = problem.spec
    g = torch.Generator().manual_seed(3)
    hp = tuple(t + 0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype) for t in spec.init(0.2, 0.6, torch.float64))
    batches = torch.randint(0, len(problem.x_train), (25, problem.batch_size), generator=g)
    h_t = problem.train(hp, batches)

    params = [w.clone().requires_grad_(True) for w in problem.w0]
    opt = torch.optim.SGD(to_sgd_param_groups(spec, hp, params))
    for idx in batches:
        opt.zero_grad()
        problem.loss(params, problem.x_train[idx], problem.y_train[idx]).backward()
        opt.step()
    for got, want in zip(params, h_t[: problem.num_tensors]):
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-12)


def test_element_export_is_refused():
    spec = _spec("element")
    with pytest.raises(ValueError, match="element"):
        to_sgd_param_groups(spec, spec.init(0.1, 0.5))
