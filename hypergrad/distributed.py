"""Data-parallel tuning on ``torch.distributed`` (launched by ``torchrun``).

Semantics (DDP on the functional inner loop):

* every rank builds the same problem from the same seed (data split, model
  initialisation and minibatch order are identical on all ranks);
* **inner loop:** rank ``r`` of ``R`` takes the ``r``-th contiguous shard of every
  minibatch of the global ``--batch-size B`` (``B`` must be divisible by ``R``);
  the gradients are averaged with ``all_reduce`` before each update, so every
  rank holds identical weights and velocity;
* **hypergradients (RBP family):** the ``M`` hyper-batches are dealt round-robin
  to the ranks, each rank solves its own, and the sums (and sums of squares,
  for the spread) are ``all_reduce``-d: the meta update is identical everywhere;
* unrolled methods (``bptt``, ``tbptt``) would need differentiable collectives
  through ``T`` steps and are refused with a clear message;
* only rank 0 logs, shows progress, and writes results and checkpoints.

Backend: ``nccl`` when CUDA is available, else ``gloo`` (override with
``--dist-backend``). Under ``nccl`` every rank runs on its own GPU, ``cuda:LOCAL_RANK``
(:attr:`DataParallel.device`): the CLI builds the problem there, so the model, the batches,
the hyperparameters and every tensor a collective reduces live on it (NCCL reduces
only CUDA tensors). Under ``gloo`` the problem stays where ``--device`` puts it (CPU by default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DataParallel", "init_from_env", "launched_by_torchrun"]


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables name more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class DataParallel:
    """Rank, world size, this rank's device and the collectives the tuner needs.

    ``device``: where this rank's problem runs (``cuda:LOCAL_RANK`` under NCCL; ``None``:
    wherever the caller puts it, the CPU for gloo). The flags of :meth:`any` are reduced there.
    """

    rank: int
    world_size: int
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: Tensor) -> Tensor:
        """This rank's contiguous shard of a row of minibatch indices."""
        n = idx.shape[-1]
        if n % self.world_size:
            raise ValueError(
                f"batch size {n} is not divisible by the number of processes {self.world_size}"
            )
        per = n // self.world_size
        return idx[..., self.rank * per : (self.rank + 1) * per]

    def all_reduce_mean_(self, tensors: Sequence[Tensor]) -> None:
        """In-place mean over ranks (one flattened collective)."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def all_reduce_sum(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Sums over ranks (new tensors)."""
        if not tensors:
            return []
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        out, offset = [], 0
        for t in tensors:
            out.append(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
            offset += t.numel()
        return out

    def any(self, flag: bool) -> bool:
        """Logical OR over ranks (so every rank takes the same decision)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        dist.barrier()


def init_from_env(backend: str = "auto") -> DataParallel:
    """Initialise the default process group from torchrun's environment variables.

    Args:
        backend: ``"auto"`` (nccl with CUDA, else gloo), ``"gloo"`` or ``"nccl"``.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"unknown distributed backend {backend!r}; expected auto, gloo or nccl")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = None
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("--dist-backend nccl needs CUDA, which is not available; use gloo")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DataParallel(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
