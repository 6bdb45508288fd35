r"""The inner training loop as a stationary RNN over (weights, velocity) (paper §5.3).

One step of SGD with momentum, in the form of Maclaurin et al. (2015):

.. math::
    v' = \beta \odot v - (1 - \beta) \odot \nabla_w L_\text{train}(w; B_t), \qquad
    w' = w + \alpha \odot v'.

The update is :func:`sgd_momentum_step` (pure, differentiable) and its in-place foreach
twin :func:`sgd_momentum_step_` (the no-graph hot loop); every inner path uses one of them.

The state is :math:`h = (w_1..w_n, v_1..v_n)` and the "parameters" of this RNN
are the hyperparameters :math:`(\alpha, \beta)`: one pair per trainable tensor (frozen
tensors, ``requires_grad=False``, are left alone; a tensor shared by two modules is one
tensor with one pair). The user's ``nn.Module`` is run through
:func:`torch.func.functional_call` in the mode it is in:

* **BatchNorm** (any ``_NormBase``) in train mode normalises with the statistics of the
  batch at hand, in every path (inner steps, the ``M`` hyper-batches, the meta loss, which
  is computed in chunks of ``chunk`` examples). Running statistics are never read in train
  mode; the functional paths (:meth:`~InnerProblem.step`, :meth:`~InnerProblem.step_batched`,
  the losses) leave them at their values when the problem was built, and
  :meth:`~InnerProblem.train`'s private copy of the model updates them as torch would.
  In eval mode the (initial, fixed) running statistics are used everywhere.
* **Dropout** in train mode draws fresh masks at every call from torch's global generator;
  the hypergradient is that of the masks drawn. ``with problem.rng(seed):`` makes a run a
  function of ``seed`` (the inner run and the steps draw in the same order, so a BPTT run
  and :meth:`~InnerProblem.train` over the same schedule see the same masks).
* :meth:`~InnerProblem.step_batched` vectorises over the ``M`` hyper-batches with
  ``torch.func.vmap`` and falls back to a loop over them for models vmap cannot batch
  (``nn.GRU``, ``nn.LSTM``, data-dependent control flow): :attr:`~InnerProblem.batching`.

**Device.** The problem runs where the model's parameters are (:attr:`InnerProblem.device`):
the data are moved there by their source, and every state, hyperparameter and solve
follows the weights.

The data sit behind a :class:`~hypergrad.data.source.DataSource`: :meth:`InnerProblem.schedule`
gives the ``T`` minibatches of one inner run, :meth:`InnerProblem.sample_batches` ``M``
independent ones, :meth:`InnerProblem.full_batch` a whole split.

:class:`InnerProblem` is shared by the tuner, the Optuna objective, ``check-grad``
and the benchmarks, so every method trains exactly the same way.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hypergrad._flat import FlatMomentum
from hypergrad._models import as_dtypes, call_model, default_metric, freeze_running_stats, grads_or_zeros
from hypergrad._tree import Tree
from hypergrad.data.schedule import BatchSchedule, batch_indices
from hypergrad.data.source import (
    Batch,
    Batches,
    DatasetSource,
    IndexBatches,
    Inputs,
    LoaderSource,
    TensorSource,
    as_batch,
    as_source,
    batch_len,
    batch_to,
    shard_batch,
)
from hypergrad.data.source import stack_batches as stack_batches
from hypergrad.distributed import DataParallel
from hypergrad.hyperparams import HyperSpec

__all__ = [
    "BatchSchedule",
    "InnerProblem",
    "batch_indices",
    "default_metric",
    "sgd_momentum_step",
    "sgd_momentum_step_",
    "stack_batches",
]
logger = logging.getLogger("hypergrad")

LossFn = Callable[[Tensor, Tensor], Tensor]
Source = TensorSource | DatasetSource | LoaderSource
Scalars = Sequence[Tensor] | Sequence[float]


def sgd_momentum_step(
    weights: Sequence[Tensor], velocity: Sequence[Tensor], grads: Sequence[Tensor], lrs: Scalars, moms: Scalars
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    r"""One step of SGD with momentum (paper §5.3, after Maclaurin et al., 2015), as a pure function.

    .. math::
        v' = \beta \odot v - (1 - \beta) \odot g, \qquad w' = w + \alpha \odot v'.

    Args:
        weights, velocity, grads: one tensor per parameter tensor.
        lrs, moms: :math:`\alpha` and :math:`\beta` per parameter tensor (numbers, or tensors
            broadcastable against it); see :meth:`HyperSpec.per_tensor`.

    Returns:
        ``(w', v')``. Differentiable in every argument (BPTT and RBP build their graph
        through it). ``torch.optim.SGD`` with ``lr = alpha * (1 - beta)``, ``momentum = beta``
        and ``dampening = 0`` takes the same step (:func:`~hypergrad.hyperparams.to_sgd_param_groups`).
    """
    v_new = tuple(b * v - (1 - b) * g for b, v, g in zip(moms, velocity, grads))
    w_new = tuple(w + a * vn for w, a, vn in zip(weights, lrs, v_new))
    return w_new, v_new


def sgd_momentum_step_(
    weights: list[Tensor], velocity: list[Tensor], grads: Sequence[Tensor], lrs: Scalars, moms: Scalars,
    *, damping: Scalars | None = None,
) -> None:
    r""":func:`sgd_momentum_step` in place, with foreach kernels (no graph): the inner loop's hot path.

    Overwrites ``velocity`` with :math:`v'` and ``weights`` with :math:`w'`; the same values
    as :func:`sgd_momentum_step` (``tests/test_inner_kernel.py``). ``damping``: the
    precomputed :math:`-(1 - \beta)` per tensor, for a loop that reuses it every step.
    """
    torch._foreach_mul_(velocity, moms)
    torch._foreach_add_(velocity, torch._foreach_mul(grads, damping if damping is not None else
                                                     [-(1 - b) for b in moms]))
    torch._foreach_add_(weights, torch._foreach_mul(velocity, lrs))


class InnerProblem:
    """A model, a loss and data, seen as the recurrent map of SGD with momentum.

    Args:
        model: the user's module. Its current trainable parameters are the
            starting weights :math:`w_0` of every inner run (a snapshot is taken).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (e.g. ``F.cross_entropy``).
        x_train, y_train, x_val, y_val: in-memory training and validation tensors (the
            original form; ``train=(x_train, y_train), val=(x_val, y_val)`` is the same).
        train, val: the training data and the validation data (the default meta loss), as
            anything :func:`~hypergrad.data.source.as_source` accepts: ``(x, y)`` tensors or
            NumPy arrays (``x`` may be a tuple of tensors, passed as ``model(*x)``), a
            ``Dataset``, a ``DataLoader`` or any re-iterable of ``(x, y)`` batches.
        batch_size: inner minibatch size (a loader's own batch size takes precedence).
        per: hyperparameter granularity (see :mod:`hypergrad.hyperparams`).
        parallel: data-parallel context under ``torchrun``: :meth:`train` then uses
            this rank's shard of every minibatch and averages the gradients over
            ranks (:mod:`hypergrad.distributed`). ``None``: one process.
        metric: ``metric(outputs, targets) -> scalar`` reported beside the loss by
            :meth:`evaluate` (a mean over the batch; averaged over batches by size). Default:
            :func:`default_metric`, accuracy for class targets and nothing otherwise.

    Attributes:
        batching: how :meth:`step_batched` batches the ``M`` copies: ``"auto"`` (not yet
            called), ``"vmap"``, or ``"loop"`` (vmap failed once on this model; the reason is
            in :attr:`batching_reason`).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        x_train: Any = None,
        y_train: Any = None,
        x_val: Any = None,
        y_val: Any = None,
        *,
        train: Any = None,
        val: Any = None,
        batch_size: int = 100,
        per: str = "tensor",
        parallel: DataParallel | None = None,
        metric: Callable[[Tensor, Tensor], Tensor | float] | None = None,
    ) -> None:
        tensors = (x_train, y_train, x_val, y_val)
        if train is not None or val is not None:
            if any(t is not None for t in tensors):
                raise TypeError("pass the data either as x_train, y_train, x_val, y_val or as train=, val=, not both")
            if train is None or val is None:
                raise TypeError(f"{'train' if train is None else 'val'}= is missing: pass both train= and val=")
            self.train_source: Source = as_source(train, "train_data")
            self.val_source: Source = as_source(val, "val_data")
        else:
            names = ("x_train", "y_train", "x_val", "y_val")
            missing = [n for n, t in zip(names, tensors) if t is None]
            if missing:
                raise TypeError(f"missing data: {', '.join(missing)} (or pass train=(x, y), val=(x, y))")
            self.train_source = TensorSource(x_train, y_train, name="train_data")
            self.val_source = TensorSource(x_val, y_val, name="val_data")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model, self.loss_fn = model, loss_fn
        if metric is not None and not callable(metric):
            raise TypeError(f"metric must be a callable metric(outputs, targets), got {type(metric).__name__}")
        self.batch_size, self.per, self.parallel, self.metric = batch_size, per, parallel, metric
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.spec = HyperSpec.build([(n, p.shape) for n, p in named], per)
        self.w0: tuple[Tensor, ...] = tuple(p.detach().clone() for _, p in named)
        # functional_call swaps tensors into the module it runs for the duration of the
        # call, so one module must never serve two threads at once (Optuna's n_jobs): a
        # pristine template is only ever deep-copied, and every thread runs its own copy.
        # The functional copy's train-mode normalisation layers track no running statistics.
        self._template = copy.deepcopy(model)
        self._functional = freeze_running_stats(copy.deepcopy(model))
        self._local = threading.local()
        self.buffers: dict[str, Tensor] = {n: b.detach() for n, b in self._functional.named_buffers()}
        self.batching, self.batching_reason = "auto", ""
        #: Where the problem runs: the device of the model's first trainable tensor. The data
        #: are delivered there (in-memory tensors moved once, loader batches as they are read).
        self.device = self.w0[0].device if self.w0 else torch.device("cpu")
        self.train_source = self.train_source.to(self.device)
        self.val_source = self.val_source.to(self.device)

    def __repr__(self) -> str:
        return (f"InnerProblem(model={type(self.model).__name__}, train={type(self.train_source).__name__}, "
                f"val={type(self.val_source).__name__}, batch_size={self.batch_size}, per={self.per!r}, "
                f"tensors={self.num_tensors})")

    def __getstate__(self) -> dict:
        """Pickling and ``copy.deepcopy`` leave out the per-thread module copies."""
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    # ------------------------------------------------------------------ the data
    def _tensors(self, split: str) -> TensorSource:
        source = self.val_source if split == "val" else self.train_source
        if not isinstance(source, TensorSource):
            raise TypeError(f"the {split} data are a {type(source).__name__}, not in-memory tensors; "
                            f"use problem.schedule/sample_batches/full_batch({split!r})")
        return source

    @property
    def x_train(self) -> Inputs:
        """The training inputs (in-memory tensor data only)."""
        return self._tensors("train").x

    @x_train.setter
    def x_train(self, x: Inputs) -> None:
        self.train_source = TensorSource(x, self._tensors("train").y, name="train_data").to(self.device)

    @property
    def y_train(self) -> Tensor:
        return self._tensors("train").y

    @property
    def x_val(self) -> Inputs:
        """The validation inputs (in-memory tensor data only)."""
        return self._tensors("val").x

    @x_val.setter
    def x_val(self, x: Inputs) -> None:
        self.val_source = TensorSource(x, self._tensors("val").y, name="val_data").to(self.device)

    @property
    def y_val(self) -> Tensor:
        return self._tensors("val").y

    def _source(self, split: str) -> Source:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return self.val_source if split == "val" else self.train_source

    def schedule(self, num_steps: int, seed: int, *, batch_size: int | None = None) -> Batches:
        """The ``num_steps`` training minibatches of one inner run, as ``(x, y)`` batches.

        Lazy and re-iterable (every pass yields the same batches) and sliceable
        (``batches[:k]``, ``batches[k:]``). In-memory data: consecutive shuffled epochs
        drawn from ``seed`` (:class:`BatchSchedule`: the tuner's historical order).
        A loader: its own batches, its generator re-seeded with ``seed``
        (:class:`~hypergrad.data.source.LoaderSource`). Not sharded: :meth:`train` takes
        this rank's share under ``parallel``.
        """
        return self.train_source.schedule(batch_size or self.batch_size, num_steps, seed)

    def sample_batches(self, m: int, seed: int, *, batch_size: int | None = None) -> list[Batch]:
        """``m`` training minibatches drawn independently of any schedule (the RBP hyper-batches).

        In-memory data: one generator seeded with ``seed``, each batch the first
        ``batch_size`` of a fresh permutation. A loader: the first ``m`` batches of a pass
        seeded with ``seed``.
        """
        return self.train_source.sample(m, batch_size or self.batch_size, seed)

    def full_batch(self, split: str = "train") -> Batch:
        """A whole split as one ``(x, y)`` batch (a loader's batches are concatenated)."""
        return self._source(split).full()

    def _training_batches(self, batches: Iterable[Any]) -> Iterable[Batch]:
        """``batches`` as ``(x, y)`` batches, cut to this rank's share under ``parallel``.

        Accepts :meth:`schedule`'s sequences and, for in-memory data, the original form:
        rows of training indices (a :class:`BatchSchedule`, a ``(T, B)`` tensor, a list of rows).
        """
        par = self.parallel
        shard = None if par is None else (par.rank, par.world_size)
        if isinstance(batches, Batches):
            return batches if shard is None else batches.sharded(*shard)
        if isinstance(batches, (Tensor, BatchSchedule)):
            source = self.train_source
            if not isinstance(source, (TensorSource, DatasetSource)):
                raise TypeError("rows of indices need indexed training data; pass problem.schedule(...) instead")
            return IndexBatches(source, batches, shard)
        return self._mixed_batches(batches, shard)

    def _mixed_batches(self, batches: Iterable[Any], shard: tuple[int, int] | None) -> Iterator[Batch]:
        for item in batches:
            if isinstance(item, Tensor):  # a row of indices
                yield next(iter(self._training_batches(item.unsqueeze(0))))
            else:
                batch = batch_to(as_batch(item, "batches"), self.device)
                yield batch if shard is None else shard_batch(batch, *shard)

    # ------------------------------------------------------------------ the model
    @property
    def num_tensors(self) -> int:
        return len(self.w0)

    def _module(self) -> nn.Module:
        """This thread's own copy of the model, the one :func:`functional_call` runs."""
        module = getattr(self._local, "module", None)
        if module is None:  # not under torch.func transforms: a copy made there holds their wrappers
            with torch._C._DisableFuncTorch():
                module = self._local.module = copy.deepcopy(self._functional)
        return module

    def rng(self, seed: int) -> contextlib.AbstractContextManager[None]:
        """A context in which torch's generators (CPU, and the model's GPU) start from ``seed``.

        Restored on exit. Dropout masks drawn inside are a function of ``seed`` and of the
        order of the calls. Not thread-safe (the generators are process-wide).
        """
        devices = sorted({w.device.index or 0 for w in self.w0 if w.device.type == "cuda"})

        @contextlib.contextmanager
        def seeded() -> Iterator[None]:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                yield

        return seeded()

    def fresh_model(self, weights: Sequence[Tensor] | None = None) -> nn.Module:
        """A private deep copy of the model holding ``weights`` (default :math:`w_0`) and the initial buffers."""
        model = copy.deepcopy(self._template)
        trainable = (p for p in model.parameters() if p.requires_grad)
        with torch.no_grad():
            for p, w in zip(trainable, self.w0 if weights is None else weights):
                p.copy_(w)
        return model

    def forward(self, weights: Sequence[Tensor], x: Inputs) -> Tensor:
        """The model's output with ``weights`` substituted for its parameters (``model(*x)`` for a tuple)."""
        params = dict(zip(self.spec.param_names, weights))
        params.update(self.buffers)
        return functional_call(self._module(), params, x if isinstance(x, tuple) else (x,))

    def loss(self, weights: Sequence[Tensor], x: Inputs, y: Tensor) -> Tensor:
        return self.loss_fn(self.forward(weights, x), y)

    def initial_state(self) -> Tree:
        """:math:`h_0 = (w_0, 0)`."""
        return tuple(w.clone() for w in self.w0) + tuple(torch.zeros_like(w) for w in self.w0)

    # ------------------------------------------------------------------ the map F
    def step(self, state: Tree, hparams: Tree, x: Inputs, y: Tensor) -> Tree:
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
            grads = grads_or_zeros(loss, w_in, create_graph=build_graph)
        lrs, moms = (as_dtypes(h, w) for h in self.spec.per_tensor(hparams))
        if build_graph:
            w_new, v_new = sgd_momentum_step(w, v, grads, lrs, moms)
            return w_new + v_new
        w_new, v_new = [t.clone() for t in w], [t.clone() for t in v]
        sgd_momentum_step_(w_new, v_new, grads, lrs, moms)
        return tuple(w_new) + tuple(v_new)

    def functional_step(self, state: Tree, hparams: Tree, x: Inputs, y: Tensor) -> Tree:
        r""":meth:`step` with :math:`\nabla_w L` by ``torch.func.grad``: the same map, composable with
        ``torch.func.jvp``/``vmap`` (forward mode, :func:`hypergrad.forward_grad`) and with autograd."""
        n = self.num_tensors
        w, v = tuple(state[:n]), tuple(state[n:])
        grads = torch.func.grad(lambda ws: self.loss(ws, x, y))(w)
        lrs, moms = (as_dtypes(h, w) for h in self.spec.per_tensor(hparams))
        w_new, v_new = sgd_momentum_step(w, v, grads, lrs, moms)
        return w_new + v_new

    def step_batched(self, state: Tree, hparams: Tree, x: Inputs, y: Tensor) -> Tree:
        r""":meth:`step` for ``M`` minibatches at once: every tensor carries a leading ``M`` axis.

        ``state`` holds ``M`` copies of :math:`h` (shape ``(M, *shape)``), ``hparams`` ``M``
        copies of the hyperparameters, and ``x``/``y`` ``M`` stacked minibatches. The loss
        of copy ``m`` depends only on weights ``m``, so one backward pass through the summed
        (``torch.func.vmap``-ed) loss yields all ``M`` gradients. The Jacobian is block
        diagonal: RBP on this map solves the ``M`` systems together, with ``M`` times larger
        tensor operations instead of ``M`` Python loops, and differentiating with respect to
        the ``M`` copies of the hyperparameters gives the per-minibatch hypergradients.

        Models ``vmap`` cannot batch (``nn.GRU``, ``nn.LSTM``, ...) are detected on the first
        call and looped over instead, with the same result (:attr:`batching`). Dropout
        draws different masks for the ``M`` copies. Stack the batches with
        :func:`stack_batches`.
        """
        n = self.num_tensors
        w, v = state[:n], state[n:]
        build_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            w_in = tuple(t if (build_graph and t.requires_grad) else t.detach().requires_grad_(True) for t in w)
            losses = self._batched_losses(w_in, x, y)
            grads = grads_or_zeros(losses.sum(), w_in, create_graph=build_graph)
        lrs, moms = (as_dtypes(h, w) for h in self.spec.per_tensor(hparams))

        def expand(h: Tensor, like: Tensor) -> Tensor:  # (M,) or (M, *shape) -> broadcastable to (M, *shape)
            return h.reshape(h.shape + (1,) * (like.dim() - h.dim()))

        w_new, v_new = sgd_momentum_step(
            w, v, grads, [expand(a, wi) for a, wi in zip(lrs, w)], [expand(b, vi) for b, vi in zip(moms, v)]
        )
        return w_new + v_new

    def _batched_losses(self, weights: tuple[Tensor, ...], x: Inputs, y: Tensor) -> Tensor:
        """The ``M`` losses of :meth:`step_batched`: one ``vmap``-ed call, or a loop where vmap fails."""
        names = self.spec.param_names
        module = self._module()

        def one_loss(ws: tuple[Tensor, ...], xb: Inputs, yb: Tensor) -> Tensor:
            params = dict(zip(names, ws))
            params.update(self.buffers)
            return self.loss_fn(functional_call(module, params, xb if isinstance(xb, tuple) else (xb,)), yb)

        if self.batching != "loop":
            try:
                losses = vmap(one_loss, randomness="different")(weights, x, y)
            except (RuntimeError, NotImplementedError) as exc:
                if self.batching == "vmap":  # vmap has worked on this model: a genuine error
                    raise
                self.batching = "loop"
                self.batching_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                logger.info("torch.func.vmap cannot batch this model (%s); step_batched loops over the "
                            "%d hyper-batches", self.batching_reason, len(y))
            else:
                self.batching = "vmap"
                return losses
        return torch.stack([
            one_loss(tuple(t[i] for t in weights), tuple(t[i] for t in x) if isinstance(x, tuple) else x[i], y[i])
            for i in range(len(y))
        ])

    def train(
        self,
        hparams: Tree,
        batches: Iterable[Any],
        *,
        state: Tree | None = None,
        on_step: Callable[[int, Tree], None] | None = None,
    ) -> Tree:
        """Run the inner loop over ``batches`` without a graph; returns :math:`h_T`.

        ``batches``: :meth:`schedule`'s sequence (or any iterable of ``(x, y)`` batches), or,
        for in-memory data, rows of training indices (a :class:`BatchSchedule` or a
        ``(T, B)`` tensor). The hot path, as lean as ``torch.optim``: a private deep copy
        of the model is trained in place (its parameters bound once, no ``functional_call``
        per step), with :func:`sgd_momentum_step_`'s arithmetic on two flat buffers
        (:class:`~hypergrad._flat.FlatMomentum`, where the tensors share a dtype) and the
        learning rates and momenta fixed for the run. The copy makes concurrent calls safe
        (Optuna's ``n_jobs`` threads) and starts every run from the model's initial buffers.
        Under ``parallel``, each rank computes the gradient on its shard of every batch and
        the gradients are averaged over ranks.
        """
        par = self.parallel
        n = self.num_tensors
        h = self.initial_state() if state is None else tuple(t.detach() for t in state)
        model = self.fresh_model(h[:n])
        w = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():
            v = [t.clone() for t in h[n:]]
            lrs, moms = (as_dtypes(h, w) for h in self.spec.per_tensor([p.detach() for p in hparams]))
            if lrs[0].dim() == 0:
                lrs_s: list = [float(a) for a in lrs]
                moms_s: list = [float(b) for b in moms]
            else:
                lrs_s, moms_s = lrs, moms
            damping = [-(1.0 - b) for b in moms_s]
            flat = FlatMomentum(w, v, lrs_s, moms_s, damping) if FlatMomentum.applies(w) else None
            v = v if flat is None else flat.velocity  # views into the flat velocity
            for t, (x, y) in enumerate(self._training_batches(batches)):
                with torch.enable_grad():
                    grads = grads_or_zeros(self.loss_fn(call_model(model, x), y), w)
                if par is not None:
                    par.all_reduce_mean_(grads)
                if flat is not None:
                    flat.step(grads)
                else:
                    sgd_momentum_step_(w, v, grads, lrs_s, moms_s, damping=damping)
                if on_step is not None:
                    on_step(t, tuple(w) + tuple(v))
            return tuple(t.detach().clone() for t in w) + tuple(t.clone() if flat is not None else t for t in v)

    # ------------------------------------------------------------------ losses
    def eval_loss(self, weights: Sequence[Tensor], split: str = "val", chunk: int = 1024) -> Tensor:
        """Mean loss over a whole split (``"val"`` or ``"train"``), differentiable in ``weights``.

        In-memory data are read in chunks of ``chunk`` examples; a loader batch by batch.
        """
        total, count = None, 0
        for x, y in self._source(split).chunks(chunk):
            k = batch_len((x, y))
            part = self.loss(weights, x, y) * k
            total, count = (part if total is None else total + part), count + k
        if total is None:
            raise ValueError(f"the {split} data yielded no examples")
        return total / count

    def eval_loss_and_grad(
        self, weights: Sequence[Tensor], split: str = "val", chunk: int = 1024
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """:meth:`eval_loss` and its gradient in ``weights``, one chunk of examples at a time.

        The same value and gradient as ``autograd.grad(eval_loss(w), w)`` (up to the order
        of the sums), but only one chunk's graph is ever alive, so the memory does not grow
        with the size of the split (the RBP methods' meta-loss gradient).
        """
        leaves = tuple(w.detach().requires_grad_(True) for w in weights)
        total = torch.zeros((), dtype=leaves[0].dtype if leaves else torch.float32, device=self.device)
        grads = [torch.zeros_like(w) for w in leaves]
        count = 0
        with torch.enable_grad():
            for x, y in self._source(split).chunks(chunk):  # the value is summed exactly as eval_loss sums it
                k = batch_len((x, y))
                part = self.loss(leaves, x, y) * k
                for acc, g in zip(grads, torch.autograd.grad(part, leaves, allow_unused=True)):
                    if g is not None:
                        acc.add_(g)
                total = total + part.detach()
                count += k
        if count == 0:
            raise ValueError(f"the {split} data yielded no examples")
        return total / count, tuple(g.div_(count) for g in grads)

    def evaluate(self, weights: Sequence[Tensor], data: Any = "val", *, chunk: int = 1024) -> dict[str, float]:
        """The loss and the metric of ``weights`` on a split (``"val"``, ``"train"``) or on any data.

        ``data``: a split name, or anything :func:`~hypergrad.data.source.as_source` accepts
        (e.g. the test set). Returns ``{"loss": ..., name: ...}``: ``name`` is the metric's
        ``__name__`` (``"metric"`` for a lambda), ``"accuracy"`` for the default metric on
        class targets, and is left out when the default metric does not apply (regression).
        Means over examples, batch by batch (chunks of ``chunk`` for in-memory data).
        Non-finite values are reported as they are, never raised.
        """
        source = self._source(data) if isinstance(data, str) else as_source(data, "data").to(self.device)
        metric = self.metric if self.metric is not None else default_metric
        name = getattr(self.metric, "__name__", "metric") if self.metric is not None else "accuracy"
        if name == "<lambda>":
            name = "metric"
        loss_sum, metric_sum, count, has_metric = 0.0, 0.0, 0, True
        with torch.no_grad():
            for x, y in source.chunks(chunk):
                k = batch_len((x, y))
                out = self.forward(weights, x)
                loss_sum += float(self.loss_fn(out, y)) * k
                value = metric(out, y) if has_metric else None
                if value is None:
                    has_metric = False
                else:
                    metric_sum += float(value) * k
                count += k
        if count == 0:
            raise ValueError("the data yielded no examples")
        result = {"loss": loss_sum / count}
        if has_metric:
            result[name] = metric_sum / count
        return result

    def accuracy(self, weights: Sequence[Tensor], x: Inputs, y: Tensor) -> float:
        with torch.no_grad():
            pred = self.forward(weights, x).argmax(dim=-1)
        return float((pred == y).float().mean())
