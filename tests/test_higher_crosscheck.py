"""BPTT hypergradient against an independent implementation: ``higher``'s differentiable SGD."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests._problems import tiny_tuner

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::SyntaxWarning")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    higher = pytest.importorskip("higher")


@pytest.mark.parametrize("per", ["tensor", "layer"])
def test_bptt_hypergradient_matches_higher(per):
    from tests._problems import tiny_problem

    tuner = tiny_tuner(tiny_problem(torch.float64, per=per), method="bptt", inner_steps=10)
    problem, spec = tuner.problem, tuner.spec
    g = torch.Generator().manual_seed(5)
    hp = tuple(
        (h + 0.2 * torch.randn(h.shape, generator=g, dtype=h.dtype)).requires_grad_(True)
        for h in spec.init(0.3, 0.6, torch.float64)
    )
    batches = tuner.objective.batches(0)
    ours = tuner.objective.hypergradient(hp, 0, method="bptt").grad

    # Independent: torch.optim.SGD(lr = a(1-b), momentum = b, dampening = 0) unrolled by higher.
    model = problem.model
    with torch.no_grad():
        for p, w0 in zip(model.parameters(), problem.w0):
            p.copy_(w0)
    opt = torch.optim.SGD([{"params": [p]} for p in model.parameters()], lr=0.1, momentum=0.5)
    lrs, moms = spec.per_tensor(hp)
    override = {"lr": [a * (1 - b) for a, b in zip(lrs, moms)], "momentum": list(moms)}
    with higher.innerloop_ctx(model, opt, override=override, copy_initial_weights=True) as (fmodel, diffopt):
        for x, y in batches:
            loss = problem.loss_fn(fmodel(x), y)
            diffopt.step(loss)
        meta = problem.loss_fn(fmodel(problem.x_val), problem.y_val)
        theirs = torch.autograd.grad(meta, hp)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
