"""InnerProblem under concurrent threads (Optuna's ``n_jobs``): every thread sees only its own weights.

``torch.func.functional_call`` swaps tensors into the module it runs for the duration of
the call. Two threads running the same module would see each other's weights, and a deep
copy taken meanwhile would copy swapped-in tensors (CI once failed that way).
"""

from __future__ import annotations

import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

from hypergrad.inner import InnerProblem


class SlowLinear(nn.Module):
    """A linear layer that yields the GIL between reading its weight and its bias."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.weight.T
        time.sleep(0.002)
        return out + self.bias


def _problem() -> InnerProblem:
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    return InnerProblem(SlowLinear(4, 3), F.cross_entropy, x, y, x[:8], y[:8], batch_size=8)


def _run_threads(fn, args: list) -> list:
    results: list = [None] * len(args)
    errors: list = []
    barrier = threading.Barrier(len(args))

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = fn(args[i])
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def test_concurrent_forward_uses_each_threads_own_weights():
    problem = _problem()
    weights = [tuple(torch.full_like(w, float(k)) for w in problem.w0) for k in range(4)]
    x = problem.x_val
    expected = [problem.forward(w, x) for w in weights]

    def many(w):
        return [problem.forward(w, x) for _ in range(10)]

    for got, want in zip(_run_threads(many, weights), expected):
        for out in got:
            torch.testing.assert_close(out, want)


def test_concurrent_train_matches_serial_train():
    problem = _problem()
    hp = [problem.spec.init(lr=lr, momentum=0.5) for lr in (0.05, 0.1, 0.2, 0.4)]
    batches = torch.arange(32).view(4, 8).repeat(3, 1)
    expected = [problem.train(h, batches) for h in hp]

    def mixed(h):  # train while other threads run functional_call on the shared problem
        problem.eval_loss(problem.w0)
        return problem.train(h, batches)

    for got, want in zip(_run_threads(mixed, hp), expected):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_the_users_module_is_never_touched():
    problem = _problem()
    model = problem.model
    before = [p.detach().clone() for p in model.parameters()]
    problem.train(problem.spec.init(lr=0.1, momentum=0.5), torch.arange(32).view(4, 8))
    problem.eval_loss(tuple(torch.zeros_like(w) for w in problem.w0))
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    fresh = problem.fresh_model()
    assert fresh is not model
    for p, w in zip(fresh.parameters(), problem.w0):
        assert torch.equal(p, w)


def test_a_problem_survives_pickling_and_deepcopy():
    import copy
    import pickle

    problem = _problem()
    problem.forward(problem.w0, problem.x_val)  # this thread now holds a module copy
    for clone in (copy.deepcopy(problem), pickle.loads(pickle.dumps(problem))):
        torch.testing.assert_close(clone.eval_loss(clone.w0), problem.eval_loss(problem.w0))
        assert clone._module() is not problem._module()
