"""BatchSchedule: the lazily drawn minibatches of one inner run equal the eager index table."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypergrad.inner import BatchSchedule, batch_indices


def eager(n: int, b: int, steps: int, seed: int) -> torch.Tensor:
    """The reference: materialise every epoch's permutation, then cut to ``steps`` rows."""
    gen = torch.Generator().manual_seed(seed)
    per = max(n // b, 1)
    rows = []
    for _ in range(-(-steps // per)):
        perm = torch.randperm(n, generator=gen)
        perm = perm[: per * b] if n >= b else perm.repeat(-(-b // n))[:b]
        rows.append(perm.view(-1, b))
    return torch.cat(rows)[:steps] if rows else torch.empty(0, b, dtype=torch.int64)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    b=st.integers(1, 25),
    steps=st.integers(0, 40),
    seed=st.integers(-(2**40), 2**40),
    cut=st.tuples(st.integers(-45, 45), st.integers(-45, 45)),
)
def test_schedule_equals_the_eager_table(n, b, steps, seed, cut):
    sched, ref = BatchSchedule(n, b, steps, seed), eager(n, b, steps, seed)
    assert len(sched) == len(ref)
    assert torch.equal(sched.tensor(), ref)
    assert torch.equal(sched.tensor(), sched.tensor())  # every pass restarts from the seed
    lo, hi = cut
    part = sched[lo:hi]
    assert torch.equal(part.tensor(), ref[lo:hi])
    assert torch.equal(part[1:].tensor(), ref[lo:hi][1:])  # slices of slices
    for t in range(-len(ref), len(ref)):
        assert torch.equal(sched[t], ref[t])
    if n >= b and steps:
        assert all(int(r.max()) < n and r.unique().numel() == b for r in sched)


def test_batch_indices_is_the_eager_form():
    gen = torch.Generator().manual_seed(42)
    assert torch.equal(batch_indices(100, 10, 23, gen), eager(100, 10, 23, 42))
    assert torch.equal(batch_indices(100, 10, 23, 42), eager(100, 10, 23, 42))


def test_rows_are_views_of_one_epoch_permutation():
    # however long the run, the live index memory is one permutation of the n examples
    n, b = 1000, 100
    sched = BatchSchedule(n, b, 10**9, seed=0)
    first = next(iter(sched))
    assert first.untyped_storage().nbytes() == n * 8
    assert len(sched) == 10**9 and len(sched[10**9 - 5 :]) == 5  # nothing is drawn up front


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        BatchSchedule(10, 0, 5, 0)
    with pytest.raises(IndexError, match="out of range"):
        BatchSchedule(10, 2, 5, 0)[5]
    with pytest.raises(ValueError, match="contiguous"):
        BatchSchedule(10, 2, 5, 0)[::2]
