"""Where the inner loop's minibatches come from: tensors, a ``Dataset``, or a ``DataLoader``.

:class:`~hypergrad.inner.InnerProblem` never touches the storage of its data. It asks a
:class:`DataSource` for

* ``schedule(batch_size, num_steps, seed)``: the ``T`` minibatches of one inner run, a
  lazy, re-iterable :class:`Batches` sequence (the same batches on every pass);
* ``sample(m, batch_size, seed)``: ``M`` minibatches, e.g. those on which the RBP step
  map is linearised;
* ``chunks(size)``: one ordered pass over every example (the meta loss), and ``full()``:
  the whole set as one batch.

Every source delivers its batches on one device: ``source.to(device)`` (what
:class:`~hypergrad.inner.InnerProblem` calls with the model's device) moves in-memory
tensors there once and the batches of a ``Dataset`` or a loader as they are read.

A batch is ``(inputs, target)``; ``inputs`` is a tensor, or a tuple of tensors when the
model takes several (``model(*inputs)``). Three sources:

* :class:`TensorSource`: in-memory ``(x, y)`` tensors or NumPy arrays (the fast path:
  minibatches are gathered with ``index_select`` from a :class:`BatchSchedule`);
* :class:`DatasetSource`: a map-style ``torch.utils.data.Dataset``, read item by item with
  the same index order as tensors (a ``TensorDataset`` becomes a :class:`TensorSource`);
* :class:`LoaderSource`: a ``DataLoader`` or any re-iterable of ``(x, y)`` batches,
  streamed: nothing but the current batch is held. The loader's own batch size applies.
  **Reproducible order:** give the loader a generator,
  ``DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator())``; every
  schedule re-seeds it with the schedule's seed before its first batch, so the same meta
  step sees the same batches in every method, trial and pass. Without one, a shuffling
  loader draws its order from torch's global generator and no two passes agree.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data import default_collate as _collate

from hypergrad.data.schedule import BatchSchedule

__all__ = [
    "Batch",
    "Batches",
    "DataSource",
    "DatasetSource",
    "IndexBatches",
    "Inputs",
    "LoaderBatches",
    "LoaderSource",
    "TensorSource",
    "as_source",
    "batch_len",
    "batch_to",
    "shard_batch",
    "stack_batches",
]

Inputs = Tensor | tuple[Tensor, ...]
Batch = tuple[Inputs, Tensor]


def _leaves(inputs: Inputs) -> tuple[Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def batch_to(batch: Batch, device: torch.device | None) -> Batch:
    """``batch`` with every tensor on ``device`` (``None``: unchanged; no copy when already there)."""
    if device is None:
        return batch
    x, y = batch
    xs = tuple(t.to(device) for t in _leaves(x))
    return (xs if isinstance(x, tuple) else xs[0]), y.to(device)


def batch_len(batch: Batch) -> int:
    """The number of examples in a batch (the length of its target)."""
    return len(batch[1])


def _shard_rows(t: Tensor, rank: int, world_size: int, what: str) -> Tensor:
    n = t.shape[-1] if what == "index" else t.shape[0]
    if n % world_size:
        raise ValueError(f"batch size {n} is not divisible by the number of processes {world_size}")
    per = n // world_size
    return t[..., rank * per : (rank + 1) * per] if what == "index" else t[rank * per : (rank + 1) * per]


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """Rank ``rank``'s contiguous share of every tensor of ``batch`` (along the example axis)."""
    x, y = batch
    xs = tuple(_shard_rows(t, rank, world_size, "rows") for t in _leaves(x))
    return (xs if isinstance(x, tuple) else xs[0]), _shard_rows(y, rank, world_size, "rows")


def as_batch(item: Any, where: str) -> Batch:
    """``(x, y)``, ``[x, y]`` or ``(x1, ..., xk, y)`` (a collated ``TensorDataset`` row) as ``(inputs, y)``."""
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        *xs, y = item
        if len(xs) == 1 and isinstance(xs[0], (tuple, list)):
            xs = list(xs[0])
        if isinstance(y, Tensor) and xs and all(isinstance(t, Tensor) for t in xs):
            return (xs[0] if len(xs) == 1 else tuple(xs)), y
    shown = type(item).__name__ if not isinstance(item, (tuple, list)) else (
        f"a {type(item).__name__} of {', '.join(type(t).__name__ for t in item)}")
    raise TypeError(f"{where} must yield (inputs, target) pairs of tensors; got {shown}")


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """``M`` batches of one size stacked along a new leading axis (the input of ``step_batched``)."""
    if not batches:
        raise ValueError("stack_batches needs at least one batch")
    sizes = sorted({batch_len(b) for b in batches})
    if len(sizes) > 1:
        raise ValueError(f"cannot stack batches of different sizes {sizes}; solve them one by one")
    first = batches[0][0]
    ys = torch.stack([b[1] for b in batches])
    if isinstance(first, tuple):
        return tuple(torch.stack([b[0][i] for b in batches]) for i in range(len(first))), ys  # type: ignore[index]
    return torch.stack([b[0] for b in batches]), ys  # type: ignore[misc]


# ---------------------------------------------------------------------- batch sequences
class Batches(Sequence[Batch]):
    """The ``T`` minibatches of one inner run: lazy, re-iterable, the same batches on every pass.

    Supports ``len``, iteration, integer indexing and contiguous slices (``batches[:k]``,
    ``batches[k:]``: the TBPTT prefix and tail), and :meth:`sharded` for data parallelism.
    """

    def sharded(self, rank: int, world_size: int) -> Batches:
        """The same batches, each cut to rank ``rank``'s contiguous share of its examples."""
        raise NotImplementedError


class IndexBatches(Batches):
    """Minibatches gathered from an indexed source by rows of example indices."""

    __slots__ = ("rows", "shard", "source")

    def __init__(self, source: IndexedSource, rows: Sequence[Tensor], shard: tuple[int, int] | None = None) -> None:
        self.source, self.rows, self.shard = source, rows, shard

    def __len__(self) -> int:
        return len(self.rows)

    def index_rows(self) -> Iterator[Tensor]:
        """The (sharded) rows of indices, in order."""
        if self.shard is None:
            yield from self.rows
        else:
            rank, world = self.shard
            for idx in self.rows:
                yield _shard_rows(idx, rank, world, "index")

    def __iter__(self) -> Iterator[Batch]:
        gather = self.source.gather
        for idx in self.index_rows():
            yield gather(idx)

    def __getitem__(self, key: int | slice) -> Any:  # type: ignore[override]
        if isinstance(key, slice):
            return IndexBatches(self.source, self.rows[key], self.shard)
        return next(iter(IndexBatches(self.source, [self.rows[key]], self.shard)))

    def sharded(self, rank: int, world_size: int) -> IndexBatches:
        return IndexBatches(self.source, self.rows, (rank, world_size))

    def __repr__(self) -> str:
        return f"IndexBatches({self.rows!r}, shard={self.shard})"


class LoaderBatches(Batches):
    """``num_steps`` batches streamed from a loader, re-seeded with ``seed`` at the start of every pass."""

    __slots__ = ("_start", "_stop", "num_steps", "seed", "shard", "source")

    def __init__(self, source: LoaderSource, num_steps: int, seed: int, _start: int = 0,
                 _stop: int | None = None, shard: tuple[int, int] | None = None) -> None:
        self.source, self.num_steps, self.seed, self.shard = source, num_steps, seed, shard
        self._start, self._stop = _start, num_steps if _stop is None else _stop

    def __len__(self) -> int:
        return max(self._stop - self._start, 0)

    def __iter__(self) -> Iterator[Batch]:
        if len(self) == 0:
            return
        for batch in itertools.islice(self.source.stream(self.seed), self._start, self._stop):
            yield batch if self.shard is None else shard_batch(batch, *self.shard)

    def __getitem__(self, key: int | slice) -> Any:  # type: ignore[override]
        if isinstance(key, slice):
            start, stop, stride = key.indices(len(self))
            if stride != 1:
                raise ValueError("a LoaderBatches supports only contiguous slices")
            return LoaderBatches(self.source, self.num_steps, self.seed, self._start + start,
                                 self._start + max(stop, start), self.shard)
        t = int(key) + (len(self) if int(key) < 0 else 0)
        if not 0 <= t < len(self):
            raise IndexError(f"step {key} out of range for {len(self)} steps")
        return next(iter(self[t : t + 1]))

    def sharded(self, rank: int, world_size: int) -> LoaderBatches:
        return LoaderBatches(self.source, self.num_steps, self.seed, self._start, self._stop, (rank, world_size))

    def __repr__(self) -> str:
        return f"LoaderBatches(steps={self._start}:{self._stop}, seed={self.seed}, shard={self.shard})"


# ---------------------------------------------------------------------- sources
@runtime_checkable
class DataSource(Protocol):
    """What :class:`~hypergrad.inner.InnerProblem` needs from a training or validation set."""

    num_examples: int | None

    def schedule(self, batch_size: int, num_steps: int, seed: int) -> Batches: ...

    def sample(self, m: int, batch_size: int, seed: int) -> list[Batch]: ...

    def chunks(self, size: int) -> Iterator[Batch]: ...

    def full(self) -> Batch: ...

    def to(self, device: torch.device | str) -> DataSource: ...


class IndexedSource:
    """A source whose examples are addressed by index: batches follow :class:`BatchSchedule`."""

    num_examples: int

    def gather(self, idx: Tensor) -> Batch:
        raise NotImplementedError

    def schedule(self, batch_size: int, num_steps: int, seed: int) -> IndexBatches:
        """Consecutive shuffled epochs (:class:`BatchSchedule`), drawn lazily from ``seed``."""
        return IndexBatches(self, BatchSchedule(self.num_examples, batch_size, num_steps, seed))

    def sample(self, m: int, batch_size: int, seed: int) -> list[Batch]:
        """``m`` minibatches, each the first ``batch_size`` of a fresh permutation (one generator from ``seed``)."""
        gen = torch.Generator().manual_seed(seed)
        return [self.gather(torch.randperm(self.num_examples, generator=gen)[:batch_size]) for _ in range(m)]

    def chunks(self, size: int) -> Iterator[Batch]:
        for i in range(0, self.num_examples, size):
            yield self.gather(torch.arange(i, min(i + size, self.num_examples)))

    def full(self) -> Batch:
        return self.gather(torch.arange(self.num_examples))


def _as_tensor(a: Any, name: str) -> Tensor:
    if isinstance(a, Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise TypeError(f"{name} is a NumPy array of Python objects; expected numbers")
        return torch.as_tensor(a)
    raise TypeError(f"{name} must be a tensor or a NumPy array, got {type(a).__name__}")


class TensorSource(IndexedSource):
    """In-memory inputs ``x`` (a tensor, or a tuple of tensors) and targets ``y`` (NumPy arrays accepted)."""

    def __init__(self, x: Any, y: Any, *, name: str = "data") -> None:
        if isinstance(x, (tuple, list)):
            if not x:
                raise ValueError(f"{name}: the tuple of inputs is empty")
            xs = tuple(_as_tensor(t, f"{name} input {i}") for i, t in enumerate(x))
            self.x: Inputs = xs
        else:
            xs = (_as_tensor(x, f"{name} inputs"),)
            self.x = xs[0]
        self.y = _as_tensor(y, f"{name} targets")
        for i, t in enumerate((*xs, self.y)):
            if t.dim() == 0:
                raise ValueError(f"{name}: {'targets' if i == len(xs) else 'inputs'} are a 0-dimensional tensor; "
                                 "expected one row per example")
        n = len(self.y)
        for i, t in enumerate(xs):
            if len(t) != n:
                which = "inputs" if len(xs) == 1 else f"input {i}"
                raise ValueError(f"{name}: {which} have {len(t)} rows but the targets have {n}")
        if n == 0:
            raise ValueError(f"{name} is empty: it holds no examples")
        self.num_examples = n
        self._xs = xs
        self.name = name

    @property
    def device(self) -> torch.device:
        return self.y.device

    def to(self, device: torch.device | str) -> TensorSource:
        """The same examples on ``device`` (this source itself when they are there already)."""
        device = torch.device(device)
        if all(t.device == device for t in (*self._xs, self.y)):
            return self
        x = tuple(t.to(device) for t in self._xs)
        return TensorSource(x if isinstance(self.x, tuple) else x[0], self.y.to(device), name=self.name)

    def gather(self, idx: Tensor) -> Batch:
        idx = idx.to(self.y.device)
        x = tuple(t.index_select(0, idx) for t in self._xs)
        return (x if isinstance(self.x, tuple) else x[0]), self.y.index_select(0, idx)

    def chunks(self, size: int) -> Iterator[Batch]:
        for i in range(0, self.num_examples, size):
            x = tuple(t[i : i + size] for t in self._xs)
            yield (x if isinstance(self.x, tuple) else x[0]), self.y[i : i + size]

    def full(self) -> Batch:
        return self.x, self.y


class DatasetSource(IndexedSource):
    """A map-style ``Dataset`` (``len`` and ``dataset[i] -> (x, y)``), collated with ``default_collate``."""

    def __init__(self, dataset: Dataset, *, name: str = "data") -> None:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"{name}: a Dataset without len() cannot be indexed; wrap it in a DataLoader") from None
        if n == 0:
            raise ValueError(f"{name} is empty: the Dataset has length 0")
        self.dataset, self.num_examples, self.name = dataset, n, name
        self.device: torch.device | None = None

    def to(self, device: torch.device | str) -> DatasetSource:
        """The same source, its batches moved to ``device`` as they are collated."""
        moved = copy.copy(self)
        moved.device = torch.device(device)
        return moved

    def gather(self, idx: Tensor) -> Batch:
        batch = as_batch(_collate([self.dataset[i] for i in idx.tolist()]), f"{self.name} (a Dataset)")
        return batch_to(batch, self.device)


def _generators(loader: Any) -> list[torch.Generator]:
    """The generators that decide a loader's order (its own, its sampler's, its batch sampler's)."""
    found: list[torch.Generator] = []
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


class LoaderSource:
    """A ``DataLoader`` or any re-iterable of ``(x, y)`` batches, streamed batch by batch.

    Every :meth:`stream` re-seeds the loader's generators (see :func:`_generators`) with its
    seed, then cycles through passes over the loader. :meth:`chunks` is one pass in the
    loader's order. A loader that shuffles without a generator is not reproducible
    (:attr:`reproducible` is ``False``).
    """

    def __init__(self, loader: Iterable[Any], *, name: str = "data") -> None:
        self.loader, self.name = loader, name
        dataset = getattr(loader, "dataset", None)
        try:
            self.num_examples: int | None = len(dataset) if dataset is not None else None  # type: ignore[arg-type]
        except TypeError:
            self.num_examples = None
        self.batch_size: int | None = getattr(loader, "batch_size", None)
        self.device: torch.device | None = None

    def to(self, device: torch.device | str) -> LoaderSource:
        """The same loader, its batches moved to ``device`` as they are read."""
        moved = copy.copy(self)
        moved.device = torch.device(device)
        return moved

    @property
    def reproducible(self) -> bool:
        """False for a ``DataLoader`` whose ``RandomSampler`` has no generator to seed."""
        sampler = getattr(self.loader, "sampler", None)
        shuffles = isinstance(sampler, torch.utils.data.RandomSampler)
        return not shuffles or bool(_generators(self.loader))

    def _one_pass(self) -> Iterator[Batch]:
        for item in self.loader:
            yield batch_to(as_batch(item, self.name), self.device)

    def stream(self, seed: int) -> Iterator[Batch]:
        """Endless batches: passes over the loader, its generators seeded once with ``seed``."""
        for gen in _generators(self.loader):
            gen.manual_seed(seed)
        while True:
            empty = True
            for batch in self._one_pass():
                empty = False
                yield batch
            if empty:
                raise ValueError(f"{self.name} yielded no batches")

    def schedule(self, batch_size: int, num_steps: int, seed: int) -> LoaderBatches:
        """``num_steps`` batches of the loader's own size (``batch_size`` is not used)."""
        return LoaderBatches(self, num_steps, seed)

    def sample(self, m: int, batch_size: int, seed: int) -> list[Batch]:
        """The first ``m`` batches of the stream seeded with ``seed`` that have the first one's size.

        (A pass's short last batch is skipped, so the ``m`` batches can be stacked.)
        """
        out: list[Batch] = []
        if m < 1:
            return out
        for batch in self.stream(seed):
            if not out or batch_len(batch) == batch_len(out[0]):
                out.append(batch)
            if len(out) == m:
                break
        return out

    def chunks(self, size: int) -> Iterator[Batch]:
        """One pass over the loader, in its order (``size`` is not used)."""
        return self._one_pass()

    def full(self) -> Batch:
        """Every batch of one pass concatenated: the whole set in memory."""
        batches = list(self._one_pass())
        if not batches:
            raise ValueError(f"{self.name} yielded no batches")
        ys = torch.cat([b[1] for b in batches])
        if isinstance(batches[0][0], tuple):
            k = len(batches[0][0])
            return tuple(torch.cat([b[0][i] for b in batches]) for i in range(k)), ys
        return torch.cat([b[0] for b in batches]), ys  # type: ignore[misc]


def _is_array(a: Any) -> bool:
    return isinstance(a, (Tensor, np.ndarray))


ACCEPTED = ("an (x, y) pair of tensors or NumPy arrays (x may be a tuple of tensors), a torch Dataset, "
            "a DataLoader, or a re-iterable of (x, y) batches")


def as_source(data: Any, name: str = "data") -> TensorSource | DatasetSource | LoaderSource:
    """The :class:`DataSource` for what a user passes as ``train_data`` or ``val_data``.

    Raises ``TypeError`` naming ``name`` for anything else (a one-shot iterator, a dict, ...).
    """
    if isinstance(data, (TensorSource, DatasetSource, LoaderSource)):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        x_ok = _is_array(x) or (isinstance(x, (tuple, list)) and len(x) > 0 and all(_is_array(t) for t in x))
        if x_ok and _is_array(y):
            return TensorSource(x, y, name=name)
    if isinstance(data, DataLoader):
        return LoaderSource(data, name=name)
    if isinstance(data, TensorDataset):
        *xs, y = data.tensors
        if not xs:
            raise ValueError(f"{name}: a TensorDataset needs at least an input and a target tensor")
        return TensorSource(xs[0] if len(xs) == 1 else tuple(xs), y, name=name)
    if isinstance(data, IterableDataset):
        raise TypeError(f"{name} is an IterableDataset, which yields single examples; wrap it in "
                        "DataLoader(dataset, batch_size=...) to yield batches")
    if isinstance(data, Dataset):
        return DatasetSource(data, name=name)
    if isinstance(data, Iterator):
        raise TypeError(f"{name} is an iterator ({type(data).__name__}), which can be consumed only once; "
                        f"expected {ACCEPTED}")
    if isinstance(data, (str, bytes, dict)) or _is_array(data) or not isinstance(data, Iterable):
        raise TypeError(f"{name} must be {ACCEPTED}; got {type(data).__name__}")
    return LoaderSource(data, name=name)
