"""InnerProblem.eval_loss_and_grad: the meta loss and its gradient, one chunk of examples at a time."""

from __future__ import annotations

import pytest
import torch

from tests._problems import tiny_problem


@pytest.mark.parametrize("split", ["val", "train"])
@pytest.mark.parametrize("chunk", [1, 7, 32, 1000])
def test_chunked_gradient_equals_the_whole_graph(split: str, chunk: int) -> None:
    problem = tiny_problem(n=50)  # 50 training and 32 validation rows: chunks of 7 leave a remainder
    g = torch.Generator().manual_seed(3)
    w = tuple(t + 0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype) for t in problem.w0)
    leaves = tuple(t.clone().requires_grad_(True) for t in w)
    whole = problem.eval_loss(leaves, split, chunk=10**6)
    expected = torch.autograd.grad(whole, leaves)
    value, grads = problem.eval_loss_and_grad(w, split, chunk=chunk)
    assert value.requires_grad is False
    torch.testing.assert_close(value, whole.detach(), rtol=1e-13, atol=0)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # the value is summed exactly as eval_loss sums it with the same chunk
    assert torch.equal(value, problem.eval_loss(w, split, chunk=chunk))
    # the weights passed in are left alone
    assert all(not t.requires_grad for t in w)
