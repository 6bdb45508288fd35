r"""Which hypergradient a strategy uses: exact BPTT when its unrolled graph fits in memory, RBP otherwise.

BPTT (:func:`hypergrad.methods.gradient`, Eq. 5) keeps the graph of all ``T`` inner steps, so
its memory grows linearly in ``T``; the RBP family (Eq. 8-9) keeps none. For optimiser
hyperparameters the RBP hypergradient at a true fixed point is zero (:math:`\partial F /
\partial\alpha = v'` vanishes there) and away from one Neumann-RBP(K) equals TBPTT(K)
(Prop. 2), a short-horizon estimate; BPTT's is the exact gradient of the meta objective.
The strategies of this package therefore take BPTT whenever

    (bytes one inner step saves for the backward pass) x T  <=  max_memory

and fall back to Neumann-RBP (or ``config.method`` when that is an RBP method) otherwise; a
schedule (``segments > 1``), which RBP cannot differentiate, falls back to forward mode
(:func:`hypergrad.forward_grad`: BPTT's gradient, memory constant in ``T``, time growing with
the number of hyperparameters). ``method="forward"`` takes forward mode whatever the memory.
The bytes of one step are measured, not guessed: one step with its graph is run under
:func:`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd keeps.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from hypergrad.config import TuneConfig
from hypergrad.methods import get_method
from hypergrad.objective import MetaObjective

__all__ = ["DEFAULT_MAX_MEMORY", "Estimator", "choose_estimator", "default_max_memory", "step_graph_bytes"]

logger = logging.getLogger("hypergrad")

GIB = 2**30
#: The memory budget of BPTT's graph when ``max_memory`` is not set (capped by the free memory).
DEFAULT_MAX_MEMORY = 2 * GIB


@dataclass(frozen=True, kw_only=True)
class Estimator:
    """The hypergradient method a strategy uses, and why.

    Attributes:
        method: a name of :data:`hypergrad.methods.METHODS` (``"bptt"`` or an RBP method).
        reason: one sentence for the log and the result.
        graph_bytes: the estimated bytes of BPTT's unrolled graph (one step's saved tensors x ``T``).
        limit_bytes: the memory budget it was compared with.
        limit_source: ``"max_memory"`` (configured) or what the default was measured from.
    """

    method: str
    reason: str
    graph_bytes: int
    limit_bytes: int
    limit_source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Estimator:
        return cls(method=str(data["method"]), reason=str(data["reason"]), graph_bytes=int(data["graph_bytes"]),
                   limit_bytes=int(data["limit_bytes"]), limit_source=str(data["limit_source"]))


def step_graph_bytes(objective: MetaObjective) -> int:
    """Bytes autograd saves for the backward pass of ONE inner step (with its graph through :math:`\\nabla_w L`)."""
    problem = objective.problem
    x, y = next(iter(objective.batches(0)))
    hp = tuple(h.detach().requires_grad_(True) for h in objective.spec.at_segment(objective.initial_hparams(), 0))
    state = tuple(s.detach().requires_grad_(s.is_floating_point()) for s in problem.initial_state())
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = [0]

    def pack(t: Tensor) -> Tensor:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        problem.step(state, hp, x, y)
    return total[0]


def default_max_memory(device: torch.device) -> tuple[int, str]:
    """``min(2 GiB, a share of the free memory)``: half the free GPU memory, a quarter of the available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        share, source = free // 2, "half the free GPU memory"
    else:
        share, source = _available_ram() // 4, "a quarter of the available RAM"
    if share <= 0 or share >= DEFAULT_MAX_MEMORY:
        return DEFAULT_MAX_MEMORY, "default 2 GiB"
    return int(share), source


def _available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _fallback(config: TuneConfig) -> str:
    """The method when BPTT's graph does not fit: ``config.method`` if it keeps no graph of the steps
    (an RBP method, or forward mode), forward mode for a schedule (RBP cannot differentiate one),
    else Neumann-RBP."""
    family = get_method(config.method).family
    if family == "forward" or (family == "implicit" and config.segments == 1):
        return config.method
    return "forward" if config.segments > 1 else "neumann"


def choose_estimator(objective: MetaObjective, config: TuneConfig) -> Estimator:
    """BPTT when its graph fits ``config.max_memory`` (GiB; default :func:`default_max_memory`), else RBP.

    Under ``torch.distributed`` the unrolled methods are not available (they would need
    differentiable collectives), so the RBP method is taken whatever the memory.
    """
    problem = objective.problem
    fallback = _fallback(config)
    if config.max_memory is not None:
        limit, source = int(config.max_memory * GIB), "max_memory"
    else:
        limit, source = default_max_memory(problem.w0[0].device)
    if problem.parallel is not None:  # only the RBP family reduces its hypergradient over ranks
        if config.segments > 1:
            raise ValueError(f"segments={config.segments} (a schedule) is not available under torch.distributed: "
                             "it needs BPTT or forward mode, which do not run across ranks")
        rbp = config.method if get_method(config.method).family == "implicit" else "neumann"
        return Estimator(method=rbp, reason=f"{rbp}: BPTT and forward mode are not available under "
                         "torch.distributed", graph_bytes=0, limit_bytes=limit, limit_source=source)
    if config.method == "forward":
        return Estimator(method="forward", reason="forward: requested by method (BPTT's hypergradient, carried "
                         "forward at a memory that does not grow with T)", graph_bytes=0, limit_bytes=limit,
                         limit_source=source)
    per_step = step_graph_bytes(objective)
    graph = per_step * config.inner_steps
    sizes = f"{_mib(graph)} (T={config.inner_steps} steps x {_mib(per_step)})"
    if graph <= limit:
        return Estimator(method="bptt", reason=f"bptt: the unrolled graph, {sizes}, fits in {_mib(limit)} ({source})",
                         graph_bytes=graph, limit_bytes=limit, limit_source=source)
    keeps = ("forward mode carries tangents instead" if fallback == "forward"
             else "RBP keeps no graph of the inner steps")
    return Estimator(method=fallback, reason=f"{fallback}: BPTT's unrolled graph, {sizes}, exceeds {_mib(limit)} "
                     f"({source}); {keeps}",
                     graph_bytes=graph, limit_bytes=limit, limit_source=source)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
