"""Small inner problems shared by the tuner tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hypergrad import InnerProblem, TuneConfig, Tuner


def tiny_problem(dtype: torch.dtype = torch.float64, per: str = "tensor", n: int = 64, batch_size: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    xv = torch.randn(32, 5, generator=g, dtype=dtype)
    yv = torch.randint(0, 3, (32,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    return InnerProblem(model, F.cross_entropy, x, y, xv, yv, batch_size=batch_size, per=per)


def tiny_tuner(problem: InnerProblem | None = None, **config) -> Tuner:
    problem = problem or tiny_problem()
    config.setdefault("per", problem.per)
    config.setdefault("batch_size", problem.batch_size)
    return Tuner(problem, TuneConfig(**config))
