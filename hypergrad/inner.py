r"""The inner training loop as a stationary RNN over (weights, velocity) (paper §5.3).

One step of SGD with momentum, in the form of Maclaurin et al. (2015):

.. math::
    v' = \beta \odot v - (1 - \beta) \odot \nabla_w L_\text{train}(w; B_t), \qquad
    w' = w + \alpha \odot v'.

The state is :math:`h = (w_1..w_n, v_1..v_n)` and the "parameters" of this RNN
are the hyperparameters :math:`(\alpha, \beta)`. The user's ``nn.Module`` is run
through :func:`torch.func.functional_call`; its buffers (e.g. BatchNorm running
statistics) are held fixed at their values when the problem is built.

:class:`InnerProblem` is shared by the tuner, the Optuna objective, ``check-grad``
and the benchmarks, so every method trains exactly the same way.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hypergrad._tree import Tree
from hypergrad.distributed import DataParallel
from hypergrad.hyperparams import HyperSpec

__all__ = ["BatchSchedule", "InnerProblem", "batch_indices"]

LossFn = Callable[[Tensor, Tensor], Tensor]


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

    def _epochs(self, first: int = 0):
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

    def __iter__(self):
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

    def __getitem__(self, key):  # type: ignore[override]
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


@dataclass
class InnerProblem:
    """A model, a loss and data, seen as the recurrent map of SGD with momentum.

    Args:
        model: the user's module. Its current trainable parameters are the
            starting weights :math:`w_0` of every inner run (a snapshot is taken).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (e.g. ``F.cross_entropy``).
        x_train, y_train: training inputs and targets.
        x_val, y_val: validation inputs and targets (the default meta loss).
        batch_size: inner minibatch size.
        per: hyperparameter granularity (see :mod:`hypergrad.hyperparams`).
        parallel: data-parallel context under ``torchrun``: :meth:`train` then uses
            this rank's shard of every minibatch and averages the gradients over
            ranks (:mod:`hypergrad.distributed`). ``None``: one process.
    """

    model: nn.Module
    loss_fn: LossFn
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    batch_size: int = 100
    per: str = "tensor"
    parallel: DataParallel | None = None
    spec: HyperSpec = field(init=False)
    w0: tuple[Tensor, ...] = field(init=False)
    buffers: dict[str, Tensor] = field(init=False)
    _template: nn.Module = field(init=False, repr=False, compare=False)
    _local: threading.local = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.spec = HyperSpec.build([(n, p.shape) for n, p in named], self.per)
        self.w0 = tuple(p.detach().clone() for _, p in named)
        # functional_call swaps tensors into the module it runs for the duration of the
        # call, so one module must never serve two threads at once (Optuna's n_jobs): a
        # pristine template is only ever deep-copied, and every thread runs its own copy.
        self._template = copy.deepcopy(self.model)
        self._local = threading.local()
        self.buffers = {n: b.detach() for n, b in self._template.named_buffers()}
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        for name, x, y in (("train", self.x_train, self.y_train), ("val", self.x_val, self.y_val)):
            if len(x) != len(y):
                raise ValueError(f"x_{name} has {len(x)} rows but y_{name} has {len(y)}")
            if len(x) == 0:
                raise ValueError(f"the {name} set is empty")

    def __getstate__(self) -> dict:
        """Pickling and ``copy.deepcopy`` leave out the per-thread module copies."""
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    # ------------------------------------------------------------------ the model
    @property
    def num_tensors(self) -> int:
        return len(self.w0)

    def _module(self) -> nn.Module:
        """This thread's own copy of the model, the one :func:`functional_call` runs."""
        module = getattr(self._local, "module", None)
        if module is None:
            module = self._local.module = copy.deepcopy(self._template)
        return module

    def fresh_model(self, weights: Sequence[Tensor] | None = None) -> nn.Module:
        """A private deep copy of the model holding ``weights`` (default :math:`w_0`) and the initial buffers."""
        model = copy.deepcopy(self._template)
        trainable = (p for p in model.parameters() if p.requires_grad)
        with torch.no_grad():
            for p, w in zip(trainable, self.w0 if weights is None else weights):
                p.copy_(w)
        return model

    def forward(self, weights: Sequence[Tensor], x: Tensor) -> Tensor:
        """The model's output with ``weights`` substituted for its parameters."""
        params = dict(zip(self.spec.param_names, weights))
        params.update(self.buffers)
        return functional_call(self._module(), params, (x,))

    def loss(self, weights: Sequence[Tensor], x: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(self.forward(weights, x), y)

    def initial_state(self) -> Tree:
        """:math:`h_0 = (w_0, 0)`."""
        return tuple(w.clone() for w in self.w0) + tuple(torch.zeros_like(w) for w in self.w0)

    # ------------------------------------------------------------------ the map F
    def step(self, state: Tree, hparams: Tree, x: Tensor, y: Tensor) -> Tree:
        r"""One inner step :math:`h' = F(h, (\alpha, \beta); B)`, differentiable in state and hparams.

        Under ``torch.no_grad`` it keeps no graph; with grad mode on it builds the
        graph through :math:`\nabla_w L` (``create_graph``), as BPTT and RBP need.
        """
        n = self.num_tensors
        w, v = state[:n], state[n:]
        build_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            w_in = tuple(t if (build_graph and t.requires_grad) else t.detach().requires_grad_(True) for t in w)
            loss = self.loss(w_in, x, y)
            grads = torch.autograd.grad(loss, w_in, create_graph=build_graph)
        lrs, moms = self.spec.per_tensor(hparams)
        if build_graph:
            v_new = tuple(b * vi - (1 - b) * g for b, vi, g in zip(moms, v, grads))
            w_new = tuple(wi + a * vn for wi, a, vn in zip(w, lrs, v_new))
        else:
            v_new = torch._foreach_mul(v, moms)
            torch._foreach_add_(v_new, torch._foreach_mul(grads, [-(1 - b) for b in moms]))
            w_new = torch._foreach_add(w, torch._foreach_mul(v_new, lrs))
        return tuple(w_new) + tuple(v_new)

    def step_batched(self, state: Tree, hparams: Tree, x: Tensor, y: Tensor) -> Tree:
        r""":meth:`step` for ``M`` minibatches at once: every tensor carries a leading ``M`` axis.

        ``state`` holds ``M`` copies of :math:`h` (shape ``(M, *shape)``), ``hparams`` ``M``
        copies of the hyperparameters, and ``x``/``y`` ``M`` stacked minibatches. The loss
        of copy ``m`` depends only on weights ``m``, so one backward pass through the summed
        (``torch.func.vmap``-ed) loss yields all ``M`` gradients. The Jacobian is block
        diagonal: RBP on this map solves the ``M`` systems together, with ``M`` times larger
        tensor operations instead of ``M`` Python loops, and differentiating with respect to
        the ``M`` copies of the hyperparameters gives the per-minibatch hypergradients.
        """
        n = self.num_tensors
        w, v = state[:n], state[n:]
        build_graph = torch.is_grad_enabled()
        names = self.spec.param_names
        module = self._module()

        def one_loss(weights: tuple[Tensor, ...], xb: Tensor, yb: Tensor) -> Tensor:
            params = dict(zip(names, weights))
            params.update(self.buffers)
            return self.loss_fn(functional_call(module, params, (xb,)), yb)

        with torch.enable_grad():
            w_in = tuple(t if (build_graph and t.requires_grad) else t.detach().requires_grad_(True) for t in w)
            losses = vmap(one_loss)(w_in, x, y)
            grads = torch.autograd.grad(losses.sum(), w_in, create_graph=build_graph)
        lrs, moms = self.spec.per_tensor(hparams)

        def expand(h: Tensor, like: Tensor) -> Tensor:  # (M,) or (M, *shape) -> broadcastable to (M, *shape)
            return h.reshape(h.shape + (1,) * (like.dim() - h.dim()))

        v_new = tuple(expand(b, vi) * vi - (1 - expand(b, vi)) * g for b, vi, g in zip(moms, v, grads))
        w_new = tuple(wi + expand(a, wi) * vn for wi, a, vn in zip(w, lrs, v_new))
        return tuple(w_new) + tuple(v_new)

    def train(
        self,
        hparams: Tree,
        batches: Sequence[Tensor] | Tensor,
        *,
        state: Tree | None = None,
        on_step: Callable[[int, Tree], None] | None = None,
    ) -> Tree:
        """Run the inner loop over ``batches`` (rows of indices) without a graph.

        The hot path, as lean as ``torch.optim``: a private deep copy of the model is
        trained in place (its parameters bound once, no ``functional_call`` per step),
        with foreach updates and the learning rates and momenta fixed for the run. The
        copy makes concurrent calls safe (Optuna's ``n_jobs`` threads) and starts every
        run from the model's initial buffers. Under ``parallel``, each rank computes the
        gradient on its shard of every row and the gradients are averaged over ranks.
        """
        par = self.parallel
        n = self.num_tensors
        h = self.initial_state() if state is None else tuple(t.detach() for t in state)
        model = self.fresh_model(h[:n])
        w = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():
            v = [t.clone() for t in h[n:]]
            lrs, moms = self.spec.per_tensor([p.detach() for p in hparams])
            if lrs[0].dim() == 0:
                lrs_s: list = [float(a) for a in lrs]
                moms_s: list = [float(b) for b in moms]
                neg_damp: list = [-(1.0 - b) for b in moms_s]
            else:
                lrs_s, moms_s, neg_damp = lrs, moms, [-(1.0 - b) for b in moms]
            for t, idx in enumerate(batches):
                if par is not None:
                    idx = par.shard(idx)
                x = self.x_train.index_select(0, idx)
                y = self.y_train.index_select(0, idx)
                with torch.enable_grad():
                    grads = torch.autograd.grad(self.loss_fn(model(x), y), w)
                if par is not None:
                    par.all_reduce_mean_(grads)
                torch._foreach_mul_(v, moms_s)
                torch._foreach_add_(v, torch._foreach_mul(grads, neg_damp))
                torch._foreach_add_(w, torch._foreach_mul(v, lrs_s))
                if on_step is not None:
                    on_step(t, tuple(w) + tuple(v))
            return tuple(wi.detach().clone() for wi in w) + tuple(v)

    # ------------------------------------------------------------------ losses
    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        return (self.x_val, self.y_val) if split == "val" else (self.x_train, self.y_train)

    def eval_loss(self, weights: Sequence[Tensor], split: str = "val", chunk: int = 1024) -> Tensor:
        """Mean loss over a whole split (``"val"`` or ``"train"``), differentiable in ``weights``."""
        x, y = self._split(split)
        total = None
        for i in range(0, len(x), chunk):
            part = self.loss(weights, x[i : i + chunk], y[i : i + chunk]) * len(x[i : i + chunk])
            total = part if total is None else total + part
        assert total is not None  # non-empty sets are validated in __post_init__
        return total / len(x)

    def eval_loss_and_grad(
        self, weights: Sequence[Tensor], split: str = "val", chunk: int = 1024
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """:meth:`eval_loss` and its gradient in ``weights``, one chunk of examples at a time.

        The same value and gradient as ``autograd.grad(eval_loss(w), w)`` (up to the order
        of the sums), but only one chunk's graph is ever alive, so the memory does not grow
        with the size of the split (the RBP methods' meta-loss gradient).
        """
        x, y = self._split(split)
        n = len(x)
        leaves = tuple(w.detach().requires_grad_(True) for w in weights)
        total = torch.zeros((), dtype=leaves[0].dtype if leaves else torch.float32)
        grads = [torch.zeros_like(w) for w in leaves]
        with torch.enable_grad():
            for i in range(0, n, chunk):  # the value is summed exactly as eval_loss sums it
                part = self.loss(leaves, x[i : i + chunk], y[i : i + chunk]) * len(x[i : i + chunk])
                for acc, g in zip(grads, torch.autograd.grad(part, leaves, allow_unused=True)):
                    if g is not None:
                        acc.add_(g)
                total = total + part.detach()
        return total / n, tuple(g.div_(n) for g in grads)

    def accuracy(self, weights: Sequence[Tensor], x: Tensor, y: Tensor) -> float:
        with torch.no_grad():
            pred = self.forward(weights, x).argmax(dim=-1)
        return float((pred == y).float().mean())
