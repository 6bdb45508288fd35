r"""Continuous Hopfield network for associative memory (paper §5.1, Eq. 18).

The dynamics of Eq. (18), discretised by forward Euler with step 1,

.. math::
    h_{t+1} = h_t + \Bigl(-\frac{h_t}{a} + W \phi(b\,h_t) + I\Bigr),

with :math:`a = 1`, :math:`b = 0.5` and :math:`\phi` the sigmoid. The neurons are
784 observed, 1024 hidden and 784 output units. The observed units are clamped to
the presented image ``I``; hidden and output units have :math:`I_i = 0` and start
at 0. ``W = (A + A^T) * (1 - eye)`` is symmetric with a zero diagonal.

Only the free (hidden + output) units evolve. Splitting ``W`` into its
free-free block ``W_ff`` and free-observed block ``W_fo``, the map of the free
units is

.. math::
    F(h; W_{ff}, c) = (1 - 1/a)\,h + \phi(b\,h) W_{ff}^\top + c,
    \qquad c = \phi(b\,I) W_{fo}^\top,

where the drive ``c`` of the clamped units is constant during inference. The
map's parameters are ``(W_ff, c)``: the core computes the gradient with respect
to them, and one autograd pull-back through ``W_ff(A)`` and ``c(A)`` gives the
gradient with respect to the learnable ``A``. This keeps the 2592 x 2592 matrix
out of the 50-step loop (each step is one ``(B, 1808) x (1808, 1808)`` product).

**Trials as one program.** Table A1's trials differ only in their weights, so ``A`` may carry a
leading axis of trials, ``(S, n, n)`` (:meth:`HopfieldNet.stack`): ``W_ff`` is then
``(S, n_free, n_free)``, the state ``(S, B, n_free)`` and each step one batched matmul. The
training loss is the sum of the trials' losses, so each trial's ``A`` gets its own gradient,
and Adam, acting entry by entry, updates each trial as it would alone. The implicit methods
solve the trials' systems as independent blocks (``blocks=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

import hypergrad
from hypergrad.data import read_idx
from hypergrad.data.mnist import find_mnist_file
from recipes._common import solves_blocks, stack_seeds

__all__ = [
    "READOUTS",
    "HopfieldNet",
    "Recall",
    "corrupt",
    "hopfield_step",
    "l1_loss",
    "load_images",
    "recall",
    "train_step_grad",
    "trial_l1",
]

#: ``sigmoid``: outputs are phi(b h) (the paper's text, §5.1); ``state``: outputs are the
#: raw states h of the output units (what the paper's released code feeds to its L1 loss).
READOUTS = ("sigmoid", "state")


def hopfield_step(state: tuple[Tensor, ...], params: tuple[Tensor, ...], *, a: float = 1.0,
                  b: float = 0.5) -> tuple[Tensor]:
    r"""One forward-Euler step (step size 1) of Eq. (18) for the free units.

    ``state = (h,)`` with ``h`` of shape ``(B, n_free)``; ``params = (W_ff, c)``
    with ``W_ff`` of shape ``(n_free, n_free)`` and the clamped units' drive
    ``c`` of shape ``(B, n_free)``. With a leading axis of ``S`` trials: ``h`` and ``c`` of
    shape ``(S, B, n_free)``, ``W_ff`` of shape ``(S, n_free, n_free)`` (a batched matmul).
    """
    (h,) = state
    w_ff, drive = params
    return ((1.0 - 1.0 / a) * h + torch.sigmoid(b * h) @ w_ff.mT + drive,)


def l1_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error (``nn.L1Loss``), over pixels and images."""
    return (output - target).abs().mean()


def trial_l1(output: Tensor, target: Tensor) -> Tensor:
    """:func:`l1_loss` of each trial: ``output`` ``(..., B, pixels)`` -> shape ``output.shape[:-2]``."""
    return (output - target).abs().mean(dim=(-2, -1))


@dataclass
class HopfieldNet:
    """The network's sizes, constants and learnable matrix ``A`` (``W = A + A^T``, zero diagonal).

    ``A`` is ``(n, n)`` for one network or ``(S, n, n)`` for ``S`` trials (:meth:`stack`).
    """

    A: Tensor
    n_obs: int = 784
    n_hidden: int = 1024
    n_out: int = 784
    a: float = 1.0
    b: float = 0.5
    num_steps: int = 50
    readout_mode: str = "sigmoid"
    _mask: Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.readout_mode not in READOUTS:
            raise ValueError(f"unknown readout {self.readout_mode!r}; expected one of {', '.join(READOUTS)}")

    @classmethod
    def create(cls, *, n_obs: int = 784, n_hidden: int = 1024, n_out: int = 784, init_scale: float = 1e-3,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               **kwargs: Any) -> HopfieldNet:
        """A network with ``A ~ init_scale * N(0, 1)`` (the paper's code uses 1e-3)."""
        for name, n in (("n_obs", n_obs), ("n_hidden", n_hidden), ("n_out", n_out)):
            if n < 1:
                raise ValueError(f"{name} must be >= 1, got {n}")
        if init_scale < 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale}")
        n = n_obs + n_hidden + n_out
        A = (torch.randn(n, n, generator=generator, dtype=dtype) * init_scale).requires_grad_(True)
        return cls(A, n_obs, n_hidden, n_out, **kwargs)

    @classmethod
    def stack(cls, seeds: list[int], *, n_obs: int = 784, n_hidden: int = 1024, n_out: int = 784,
              init_scale: float = 1e-3, dtype: torch.dtype = torch.float32, **kwargs: Any) -> HopfieldNet:
        """``len(seeds)`` trials as one network with ``A`` of shape ``(S, n, n)``.

        Trial ``i`` draws its ``A`` as :meth:`create` does from ``torch.Generator().manual_seed(seeds[i])``,
        so it starts where the one-trial network of that seed starts.
        """
        if not seeds:
            raise ValueError("seeds must name at least one trial")
        (A,) = stack_seeds(lambda g: (cls.create(n_obs=n_obs, n_hidden=n_hidden, n_out=n_out, init_scale=init_scale,
                                                 dtype=dtype, generator=g, **kwargs).A,),
                           [torch.Generator().manual_seed(s) for s in seeds])
        return cls(A, n_obs, n_hidden, n_out, **kwargs)

    @property
    def n_free(self) -> int:
        return self.n_hidden + self.n_out

    @property
    def trials(self) -> int | None:
        """``S`` for a stack of trials, ``None`` for one network."""
        return self.A.shape[0] if self.A.dim() == 3 else None

    def weights(self) -> Tensor:
        """``W = (A + A^T) * (1 - I)``: symmetric, no self-connections (for inspection)."""
        W = self.A + self.A.mT
        return W * (1.0 - torch.eye(W.shape[-1], dtype=W.dtype))

    def params(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(W_ff, c)`` of :func:`hopfield_step` for clamped ``images`` (B, n_obs), with a graph to ``A``.

        Only the blocks of ``W`` that act on the free units are formed:
        ``W_ff = (A_ff + A_ff^T)`` with its diagonal zeroed, ``W_fo = A_fo + A_of^T``.
        With a stack of ``S`` trials, ``W_ff`` is ``(S, n_free, n_free)`` and ``c`` is
        ``(S, B, n_free)``: every trial sees the same ``images``.
        """
        n = self.n_obs
        a_ff = self.A[..., n:, n:]
        w_ff = (a_ff + a_ff.mT) * self._offdiag_mask()
        w_fo = self.A[..., n:, :n] + self.A[..., :n, n:].mT
        drive = torch.sigmoid(self.b * images) @ w_fo.mT
        return w_ff, drive

    def _offdiag_mask(self) -> Tensor:
        if self._mask is None or self._mask.dtype != self.A.dtype:
            self._mask = 1.0 - torch.eye(self.n_free, dtype=self.A.dtype)
        return self._mask

    def step_fn(self) -> Callable[[tuple[Tensor, ...], tuple[Tensor, ...]], tuple[Tensor]]:
        a, b = self.a, self.b

        def step(state: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> tuple[Tensor]:
            return hopfield_step(state, params, a=a, b=b)

        return step

    def initial_state(self, batch: int) -> tuple[Tensor]:
        lead = () if self.trials is None else (self.trials,)
        return (torch.zeros(*lead, batch, self.n_free, dtype=self.A.dtype),)

    def readout(self, h: Tensor) -> Tensor:
        """Outputs :math:`x_i = \\phi(b h_i)` (or the raw ``h_i`` with ``readout_mode="state"``)."""
        h_out = h[..., self.n_hidden:]
        return torch.sigmoid(self.b * h_out) if self.readout_mode == "sigmoid" else h_out

    @torch.no_grad()
    def infer(self, images: Tensor) -> Tensor:
        """Run inference (``num_steps`` updates, no graph) on ``images``; return the free units' states."""
        w_ff, drive = self.params(images)
        (h,) = hypergrad.unroll(self.step_fn(), self.initial_state(len(images)), (w_ff, drive),
                                self.num_steps)
        return h

    def retrieve(self, images: Tensor) -> Tensor:
        """The outputs (:meth:`readout`) after inference on ``images``."""
        return self.readout(self.infer(images))

    def saturated_fraction(self, images: Tensor, threshold: float = 0.01) -> Tensor:
        """Fraction of free units whose gain phi'(b h) is below ``threshold`` times its maximum phi'(0).

        A scalar tensor for one network, one value per trial for a stack.
        """
        s = torch.sigmoid(self.b * self.infer(images))
        return ((s * (1 - s)) < 0.25 * threshold).to(s.dtype).mean(dim=(-2, -1))


def train_step_grad(net: HopfieldNet, images: Tensor, method: str, truncate: int,
                    generator: torch.Generator | None = None) -> tuple[Tensor, hypergrad.SolveInfo | None]:
    """Set ``net.A.grad`` to the gradient of the training L1 loss by ``method``.

    The gradient w.r.t. the map's parameters ``(W_ff, c)`` comes from
    :func:`hypergrad.gradient` over the ``net.num_steps`` inference steps (``truncate`` = K:
    TBPTT's steps, the RBP solvers' iterations); RBP starts from :math:`z_0 \\sim U[0, 1]`, as
    Algorithm 1 and the paper's code do. One autograd pull-back through ``W_ff(A)`` and
    ``c(A)`` then gives the gradient w.r.t. ``A``. For a stack of trials the loss is the sum of
    the trials' losses and the implicit solves treat each trial as a block (``blocks=True``).

    Returns the loss at :math:`h_T` (before the update; a scalar tensor, or one per trial) and
    the solver's info (implicit family, aggregated over the trials; ``None`` for BPTT and TBPTT).
    """
    w_ff, drive = net.params(images)
    params = (w_ff.detach(), drive.detach())

    def loss_fn(state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        per_trial = trial_l1(net.readout(state[0]), images)
        return per_trial.sum(), per_trial.detach()

    stacked = net.trials is not None
    res = hypergrad.gradient(net.step_fn(), net.initial_state(len(images)), params, loss_fn, method=method,
                             num_steps=net.num_steps, truncate=truncate, init="uniform", generator=generator,
                             has_aux=True, blocks=solves_blocks(method, stacked))
    net.A.grad = None
    torch.autograd.backward((w_ff, drive), res.grads)
    return res.aux, res.info


class Recall(NamedTuple):
    """What the network returns for corrupted inputs, digit by digit.

    Attributes:
        nearest: index of the stored digit nearest (Hamming) to the binarised output, ``(..., 10)``.
        distance: Hamming distance of the binarised output to its own digit, ``(..., 10)``.
        recalled: ``nearest == digit``, ``(..., 10)`` booleans; ``recalled.sum(-1)`` is "recalls".
    """

    nearest: Tensor
    distance: Tensor
    recalled: Tensor


def recall(output: Tensor, clean: Tensor) -> Recall:
    """Binarise ``output`` (``>= 0.5``, as the released code does) and find each row's nearest stored image.

    ``output``: ``(..., N, pixels)`` answers to the corrupted versions of ``clean`` ``(N, pixels)``,
    row ``i`` to image ``i``. Ties go to the lowest index.
    """
    bits = output >= 0.5
    ham = (bits.unsqueeze(-2) != (clean >= 0.5)).sum(-1)  # (..., N answers, N stored)
    nearest = ham.argmin(-1)
    digits = torch.arange(len(clean))
    return Recall(nearest, ham.diagonal(dim1=-2, dim2=-1), nearest == digits)


def load_images(root: str | Path) -> Tensor:
    """The first training image of each digit 0-9, binarised (pixel > 0 -> 1), shape (10, 784)."""
    images = read_idx(find_mnist_file(root, "train-images-idx3-ubyte"))
    labels = read_idx(find_mnist_file(root, "train-labels-idx1-ubyte"))
    idx = [int(np.flatnonzero(labels == d)[0]) for d in range(10)]
    x = (images[idx].reshape(10, -1) > 0).astype(np.float32)
    return torch.from_numpy(x)


def corrupt(images: Tensor, fraction: float = 0.5, *, generator: torch.Generator | None = None) -> Tensor:
    """Set ``floor(fraction * nnz)`` randomly chosen non-zero pixels of each image to zero."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    out = images.clone()
    for row in out:
        nz = torch.nonzero(row).flatten()
        k = int(len(nz) * fraction)
        drop = nz[torch.randperm(len(nz), generator=generator)[:k]]
        row[drop] = 0.0
    return out
