"""Training one GNN (or the logistic-regression baseline) with one gradient method.

The gradient of the training loss w.r.t. the GRU weights comes from :func:`hypergrad.gradient`
by any method of :data:`hypergrad.METHODS`:

* ``bptt`` / ``tbptt``: back-propagation through all ``T`` steps / the last ``truncate``;
* ``rbp`` / ``cg`` / ``neumann`` (and ``gmres``): ``T`` steps without a graph, then ``dL/dh_T``
  from the output layer and the loss, then Eq. (8)-(9) at ``h_T`` with ``max_iter=truncate``
  (Algorithm 1, CG on the normal equations, Algorithm 2). Only the one-step graph at ``h_T``
  is built.

The output layer's gradient is ordinary back-propagation in every case. The map is the
same function (:func:`~recipes.gnn_citation.model.make_step`) for all methods.

The seeds of a table train as one batched program (:func:`train_seeds`): weights stacked
along a leading axis of seeds, the training loss the sum of the seeds' losses (so each seed's
gradient is its own), the implicit solves block by block (``blocks=True``), RBP's random start
drawn from each seed's own generator, and SGD acting entry by entry. Each seed's numbers are
those of its one-seed run up to round-off, with one exception: a Neumann series that becomes
non-finite in one seed stops for every seed of the batch (``linalg.neumann(blocks=True)``), which
did not happen in the recorded runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

import hypergrad
from hypergrad.methods import get_method, method_names
from recipes._common import PAPER_METHODS, solves_blocks
from recipes._common import label as _label
from recipes.gnn_citation.model import GNNParams, Step, readout, stack_params

__all__ = ["DEFAULT_METHODS", "GNN_METHODS", "METHODS", "RunResult", "TrainConfig", "batches_of", "gnn_gradients",
           "label", "train_run", "train_seeds"]

#: The gradient methods the GNN trains with: every method of the library but forward mode (its traced step is not pure).
GNN_METHODS = method_names("unrolled") + method_names("implicit")
#: ... and the logistic-regression baseline on the node features (no propagation).
METHODS = ("baseline", *GNN_METHODS)
#: What the recipe runs by default: the paper's Table 1 (the baseline and its five methods).
DEFAULT_METHODS = ("baseline", *PAPER_METHODS)
_EXTRA_LABELS = {"baseline": "Baseline"}


def label(method: str) -> str:
    """The display name of ``method``: the library's label, or "Baseline"."""
    return _label(method, _EXTRA_LABELS)


@dataclass(frozen=True)
class TrainConfig:
    """One run's settings; the defaults are the paper's (§5.2 and its cora.yaml)."""

    num_steps: int = 100
    truncate: int = 5
    epochs: int = 2000
    patience: int | None = None  # stop after this many epochs without a better validation accuracy
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 1 <= self.truncate <= self.num_steps:
            raise ValueError(f"truncate must be in 1..num_steps ({self.num_steps}), got {self.truncate}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be None or >= 1, got {self.patience}")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise ValueError(
                f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0; got {self.lr}, {self.momentum}, "
                f"{self.weight_decay}"
            )


@dataclass
class RunResult:
    """What one (method, seed) run produced. Accuracies in percent; epoch ``e`` is the model
    before the ``e``-th update (so epoch 0 is the initial model)."""

    method: str
    seed: int
    train_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    best_epoch: int | None = None  # None: no epoch finished (the first one diverged)
    best_val_acc: float | None = None
    test_acc: float = float("nan")
    diff_norm_first: list[float] = field(default_factory=list)
    diff_norm_best: list[float] = field(default_factory=list)
    diff_norm_last: list[float] = field(default_factory=list)
    epochs_run: int = 0
    diverged: bool = False  # the loss or a gradient became NaN/Inf; training stopped there
    seconds: float = 0.0
    solver_residual_last: float = float("nan")
    out_of_time: bool = False  # the batch's time limit ended the run (still improving or not)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _traced(step: Step, sink: list[Tensor]) -> Step:
    """``step`` that also records ``||h_{t+1} - h_t||`` (Fig. 3 c, f) without entering the graph."""

    def traced(state: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        new = step(state, params)
        with torch.no_grad():  # one norm per seed of a stack: over the last two axes
            sink.append(torch.linalg.vector_norm(new[0] - state[0], dim=(-2, -1)))
        return new

    return traced


def _cross_entropy(logits: Tensor, labels: Tensor, idx: Tensor) -> Tensor:
    """Mean cross-entropy on the nodes ``idx``: a scalar, or one per seed for stacked
    ``logits`` ``(S, N, C)`` and ``idx`` ``(S, n)`` (seed ``s`` on its nodes ``idx[s]``)."""
    if logits.dim() == 2:
        return F.cross_entropy(logits[idx], labels[idx])
    picked = torch.gather(logits, 1, idx.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    per_node = F.cross_entropy(picked.flatten(0, 1), labels[idx].flatten(), reduction="none")
    return per_node.view(idx.shape).mean(1)


def gnn_gradients(
    method: str,
    step: Step,
    h0: Tensor,
    params: GNNParams,
    labels: Tensor,
    train_idx: Tensor,
    *,
    num_steps: int,
    truncate: int,
    diff_sink: list[Tensor] | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor, Tensor, hypergrad.SolveInfo | None]:
    """Gradients of the training loss by ``method``.

    One network: ``h0`` ``(N, H)``, ``train_idx`` ``(n,)``, ``generator`` one generator (RBP's
    start). A stack of ``S`` seeds (:func:`~recipes.gnn_citation.model.stack_params`): ``h0``
    ``(N, H)`` shared or ``(S, N, H)``, ``train_idx`` ``(S, n)``, ``generator`` a list of ``S``
    (seed ``s`` draws RBP's start from its own, as its one-seed run does).

    Returns ``(grads_gru, grads_out, loss, logits, info)``: the GRU and output-layer
    gradients, the (detached) loss (one per seed for a stack) and logits of all nodes at
    ``h_T``, and the solver's :class:`~hypergrad.SolveInfo` for the RBP methods (``None``
    otherwise; for a stack it aggregates the seeds, e.g. the largest residual).
    """
    if method not in GNN_METHODS:
        raise ValueError(f"unknown GNN method {method!r}; expected one of {', '.join(GNN_METHODS)}")
    stacked = params.gru[0].dim() == 3
    if stacked and h0.dim() == 2:
        h0 = h0.expand(params.gru[0].shape[0], *h0.shape)
    forward_step = _traced(step, diff_sink) if diff_sink is not None else step
    out = tuple(p.detach().requires_grad_(True) for p in params.out)
    gru = tuple(p.detach() for p in params.gru)

    def loss_fn(state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[tuple[Tensor, ...], Tensor, Tensor]]:
        logits = readout(state[0], out)
        per_seed = _cross_entropy(logits, labels, train_idx)
        loss = per_seed.sum()  # a stack: each seed's gradient is that of its own loss
        g_out = torch.autograd.grad(loss, out, retain_graph=True)  # ordinary backprop
        return loss, (g_out, logits.detach(), per_seed.detach())

    init: tuple[Tensor, ...] | str = "uniform"
    gen = generator
    if stacked and method == "rbp":  # U[0, 1] starts (Algorithm 1), seed by seed
        gens = generator if isinstance(generator, list) else [generator] * h0.shape[0]
        init = (torch.stack([torch.rand(h0.shape[1:], dtype=h0.dtype, generator=g) for g in gens]).to(h0.device),)
        gen = None
    elif isinstance(generator, list):
        gen = None
    # The forward run is traced (difference norms); the implicit family linearises the plain map.
    res = hypergrad.gradient(forward_step, (h0,), gru, loss_fn, method=method, num_steps=num_steps,
                             truncate=truncate, fixed_point_step=step, has_aux=True, init=init,
                             generator=gen, blocks=solves_blocks(method, stacked))
    g_out, logits, per_seed = res.aux
    return tuple(res.grads), tuple(g_out), per_seed, logits, res.info


def _accuracy(logits: Tensor, labels: Tensor, idx: Tensor) -> Tensor:
    """Percent of the nodes ``idx`` classified right: one value per seed of ``(S, N, C)`` logits."""
    picked = torch.gather(logits, 1, idx.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    return 100.0 * (picked.argmax(-1) == labels[idx]).float().mean(-1)


def batches_of(method: str, seeds: list[int], size: int | None = None) -> list[list[int]]:
    """How :func:`train_seeds` is called for ``seeds``: batches of ``size`` (default: all),
    and one seed at a time for an implicit method without block solves (GMRES-RBP)."""
    m = get_method(method) if method != "baseline" else None
    if m is not None and m.family == "implicit" and not m.stackable:
        size = 1
    size = len(seeds) if size is None else size
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def train_run(method: str, step: Step, features: Tensor, labels: Tensor, split: tuple[Tensor, Tensor, Tensor],
              num_classes: int, *, seed: int, config: TrainConfig,
              on_epoch: Callable[[int, float, float], None] | None = None) -> RunResult:
    """One seed: :func:`train_seeds` with a stack of one (``on_epoch(epoch, loss, val_acc)``)."""
    cb = None if on_epoch is None else (lambda e, loss, val: on_epoch(e, float(loss[0]), float(val[0])))
    return train_seeds(method, step, features, labels, [split], num_classes, seeds=[seed], config=config,
                       on_epoch=cb)[0]


def train_seeds(
    method: str,
    step: Step,
    features: Tensor,
    labels: Tensor,
    splits: list[tuple[Tensor, Tensor, Tensor]],
    num_classes: int,
    *,
    seeds: list[int],
    config: TrainConfig,
    on_epoch: Callable[[int, Tensor, Tensor], None] | None = None,
    time_limit: float | None = None,
) -> list[RunResult]:
    """Train one network per seed, all as one batched program, with SGD (momentum, weight decay),
    and keep each seed's best-validation model's test accuracy.

    Seed ``seeds[i]`` draws its weights (and RBP's starts) from ``torch.Generator().manual_seed(seeds[i])``
    and trains on ``splits[i]`` (all splits of the same sizes). Every epoch computes ``h_T`` for
    the current weights once; the logits at ``h_T`` give the training loss, the validation and
    the test accuracy of that model, so evaluation costs no extra propagation. A seed stops
    (its record frozen, its updates zero) when its validation accuracy has not improved for
    ``config.patience`` epochs or its loss or gradient becomes non-finite; the batch runs until
    every seed has stopped. A seed's ``seconds`` is its share of the batch's time (time / S);
    its ``solver_residual_last`` is the batch's largest. ``on_epoch(epoch, losses, val_accs)``
    is called after each epoch (per-seed tensors). ``time_limit``: seconds after which the batch
    starts no further epoch (the seeds still running are marked ``out_of_time``); the same
    results come from ``config.epochs`` set to the epochs that ran.
    """
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be None or > 0 seconds, got {time_limit}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if len(splits) != len(seeds) or not seeds:
        raise ValueError(f"need one split per seed, got {len(splits)} splits for {len(seeds)} seeds")
    sizes = {tuple(len(t) for t in sp) for sp in splits}
    if len(sizes) != 1:
        raise ValueError(f"the seeds' splits must have the same sizes to be stacked, got {sorted(sizes)}")
    train_idx, val_idx, test_idx = (torch.stack(ts) for ts in zip(*splits))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    params = stack_params(features.shape[1], num_classes, gens)  # on the CPU: same draw on any device
    if features.device.type != "cpu":
        params = params.to(features.device)
    leaves = params.out if method == "baseline" else params.all()
    opt = torch.optim.SGD(leaves, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    results = [RunResult(method=method, seed=s) for s in seeds]
    active = [True] * len(seeds)
    since_best = [0] * len(seeds)
    t0 = time.perf_counter()
    for epoch in range(config.epochs):
        sink: list[Tensor] | None = None if method == "baseline" else []
        if method == "baseline":  # logistic regression on the node features
            out = tuple(p.detach().requires_grad_(True) for p in params.out)
            with torch.enable_grad():
                logits = readout(features, out)
                loss = _cross_entropy(logits, labels, train_idx)
                g_out = torch.autograd.grad(loss.sum(), out)
            grads, loss, logits = g_out, loss.detach(), logits.detach()
            residual = float("nan")
        else:
            g_gru, g_out, loss, logits, info = gnn_gradients(
                method, step, features, params, labels, train_idx,
                num_steps=config.num_steps, truncate=config.truncate, diff_sink=sink, generator=gens,
            )
            grads = (*g_gru, *g_out)
            residual = float("nan") if info is None else float(info.residual)
        val = _accuracy(logits, labels, val_idx)
        test = _accuracy(logits, labels, test_idx)
        diffs = torch.stack(sink).T.tolist() if sink else None  # (S, T)
        finite_grads = torch.stack([torch.isfinite(g).flatten(1).all(1) for g in grads]).all(0).tolist()
        loss_l, val_l, test_l = loss.tolist(), val.tolist(), test.tolist()
        for i, r in enumerate(results):
            if not active[i]:
                continue
            if not math.isfinite(loss_l[i]):
                r.diverged, active[i] = True, False  # this epoch's model is not finite: keep the best one
                continue
            r.train_loss.append(loss_l[i])
            r.val_acc.append(val_l[i])
            if not math.isnan(residual):
                r.solver_residual_last = residual
            if diffs is not None:
                if epoch == 0:
                    r.diff_norm_first = diffs[i]
                r.diff_norm_last = diffs[i]
            if r.best_val_acc is None or val_l[i] > r.best_val_acc:
                r.best_val_acc, r.best_epoch, r.test_acc = val_l[i], epoch, test_l[i]
                if diffs is not None:
                    r.diff_norm_best = diffs[i]
                since_best[i] = 0
            else:
                since_best[i] += 1
            r.epochs_run = epoch + 1
            if not finite_grads[i]:
                r.diverged, active[i] = True, False  # e.g. RBP's iteration (Alg. 1) blew up: no update
            elif config.patience is not None and since_best[i] >= config.patience:
                active[i] = False
        if on_epoch is not None:
            on_epoch(epoch, loss, val)
        if not any(active):
            break
        if time_limit is not None and time.perf_counter() - t0 > time_limit and epoch + 1 < config.epochs:
            for i, r in enumerate(results):
                r.out_of_time = active[i]
            break
        keep = torch.tensor(active, device=loss.device)
        for p, g in zip(leaves, grads):  # a stopped seed's update is zero (its record is frozen)
            p.grad = torch.where(keep.view(-1, *([1] * (g.dim() - 1))), g, torch.zeros_like(g))
        opt.step()
    seconds = (time.perf_counter() - t0) / len(seeds)
    for r in results:
        r.seconds = seconds
    return results
