"""The minibatch order of one inner run over ``n`` indexed examples: consecutive shuffled epochs.

Every method, trial and rank trains on the same batches because the order is a pure
function of ``(n, batch_size, num_steps, seed)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["BatchSchedule", "batch_indices"]


class BatchSchedule(Sequence[Tensor]):
    """The ``num_steps`` minibatches of one inner run, drawn lazily: consecutive shuffled epochs.

    Behaves like the ``(num_steps, batch_size)`` index tensor it stands for (``len``,
    iteration over rows, integer and slice indexing, :meth:`tensor`), but holds only the
    current epoch's permutation, so an inner run of any length ``T`` costs ``O(n)`` index
    memory instead of ``O(T * batch_size)``. Iterating twice gives the same rows: every
    pass restarts the generator from ``seed``.
    """

    __slots__ = ("_start", "_stop", "batch_size", "n", "num_steps", "seed")

    def __init__(self, n: int, batch_size: int, num_steps: int, seed: int, _start: int = 0, _stop: int | None = None):
        if n < 1 or batch_size < 1 or num_steps < 0:
            raise ValueError(f"need n >= 1, batch_size >= 1, num_steps >= 0; got {n}, {batch_size}, {num_steps}")
        self.n, self.batch_size, self.num_steps, self.seed = n, batch_size, num_steps, seed
        self._start = _start
        self._stop = num_steps if _stop is None else _stop

    @property
    def per_epoch(self) -> int:
        return max(self.n // self.batch_size, 1)

    def _epochs(self, first: int = 0) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(epoch, rows)`` with ``rows`` of shape ``(per_epoch, batch_size)``, from epoch ``first``."""
        gen = torch.Generator().manual_seed(self.seed)
        n, b, per = self.n, self.batch_size, self.per_epoch
        epoch = 0
        while True:
            perm = torch.randperm(n, generator=gen)
            if epoch >= first:
                if n >= b:
                    yield epoch, perm[: per * b].view(per, b)
                else:
                    yield epoch, perm.repeat(-(-b // n))[:b].view(1, b)
            epoch += 1

    def __len__(self) -> int:
        return max(self._stop - self._start, 0)

    def __iter__(self) -> Iterator[Tensor]:
        if len(self) == 0:
            return
        per = self.per_epoch
        t = self._start
        for epoch, rows in self._epochs(self._start // per):
            while t < self._stop and t // per == epoch:
                yield rows[t - epoch * per]
                t += 1
            if t >= self._stop:
                return

    def __getitem__(self, key: int | slice) -> Tensor | BatchSchedule:  # type: ignore[override]
        if isinstance(key, slice):
            start, stop, stride = key.indices(len(self))
            if stride != 1:
                raise ValueError("a BatchSchedule supports only contiguous slices")
            return BatchSchedule(self.n, self.batch_size, self.num_steps, self.seed,
                                 self._start + start, self._start + max(stop, start))
        t = int(key)
        if t < 0:
            t += len(self)
        if not 0 <= t < len(self):
            raise IndexError(f"step {key} out of range for {len(self)} steps")
        return next(iter(self[t : t + 1]))

    def tensor(self) -> Tensor:
        """The schedule as a ``(len(self), batch_size)`` int64 tensor."""
        rows = list(self)
        return torch.stack(rows) if rows else torch.empty(0, self.batch_size, dtype=torch.int64)

    def __repr__(self) -> str:
        return (f"BatchSchedule(n={self.n}, batch_size={self.batch_size}, steps={self._start}:{self._stop}, "
                f"seed={self.seed})")


def batch_indices(n: int, batch_size: int, num_steps: int, generator: torch.Generator | int) -> Tensor:
    """``(num_steps, batch_size)`` indices: consecutive shuffled epochs over ``n`` examples.

    The eager form of :class:`BatchSchedule` (``generator``: a seed, or a fresh
    generator whose initial seed is used).
    """
    seed = generator if isinstance(generator, int) else generator.initial_seed()
    return BatchSchedule(n, batch_size, num_steps, seed).tensor()
