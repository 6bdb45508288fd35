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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

import hypergrad
from hypergrad.methods import method_names
from recipes._common import PAPER_METHODS
from recipes._common import label as _label
from recipes.gnn_citation.model import GNNParams, Step, init_params, readout

__all__ = ["DEFAULT_METHODS", "GNN_METHODS", "METHODS", "RunResult", "TrainConfig", "gnn_gradients", "label",
           "train_run"]

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

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _traced(step: Step, sink: list[Tensor]) -> Step:
    """``step`` that also records ``||h_{t+1} - h_t||`` (Fig. 3 c, f) without entering the graph."""

    def traced(state: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        new = step(state, params)
        with torch.no_grad():
            sink.append(torch.linalg.vector_norm(new[0] - state[0]))
        return new

    return traced


def _cross_entropy(logits: Tensor, labels: Tensor, idx: Tensor) -> Tensor:
    return F.cross_entropy(logits[idx], labels[idx])


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
    generator: torch.Generator | None = None,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor, Tensor, hypergrad.SolveInfo | None]:
    """Gradients of the training loss by ``method``.

    Returns ``(grads_gru, grads_out, loss, logits, info)``: the GRU and output-layer
    gradients, the (detached) loss and logits of all nodes at ``h_T``, and the solver's
    :class:`~hypergrad.SolveInfo` for the RBP methods (``None`` otherwise).
    """
    if method not in GNN_METHODS:
        raise ValueError(f"unknown GNN method {method!r}; expected one of {', '.join(GNN_METHODS)}")
    forward_step = _traced(step, diff_sink) if diff_sink is not None else step
    out = tuple(p.detach().requires_grad_(True) for p in params.out)
    gru = tuple(p.detach() for p in params.gru)

    def loss_fn(state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[tuple[Tensor, ...], Tensor]]:
        logits = readout(state[0], out)
        loss = _cross_entropy(logits, labels, train_idx)
        g_out = torch.autograd.grad(loss, out, retain_graph=True)  # ordinary backprop
        return loss, (g_out, logits.detach())

    # The forward run is traced (difference norms); the implicit family linearises the plain map.
    res = hypergrad.gradient(forward_step, (h0,), gru, loss_fn, method=method, num_steps=num_steps,
                             truncate=truncate, fixed_point_step=step, has_aux=True, init="uniform",
                             generator=generator)
    g_out, logits = res.aux
    return tuple(res.grads), tuple(g_out), res.loss, logits, res.info


def _accuracy(logits: Tensor, labels: Tensor, idx: Tensor) -> float:
    return 100.0 * float((logits[idx].argmax(1) == labels[idx]).float().mean())


def train_run(
    method: str,
    step: Step,
    features: Tensor,
    labels: Tensor,
    split: tuple[Tensor, Tensor, Tensor],
    num_classes: int,
    *,
    seed: int,
    config: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> RunResult:
    """Train with SGD (momentum, weight decay) and keep the best-validation model's test accuracy.

    Every epoch computes ``h_T`` for the current weights once; the logits at ``h_T`` give the
    training loss, the validation accuracy and the test accuracy of that model, so
    evaluation costs no extra propagation. ``on_epoch(epoch, loss, val_acc)`` is called
    after each epoch (e.g. to advance a progress bar).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    train_idx, val_idx, test_idx = split
    gen = torch.Generator().manual_seed(seed)
    hidden = features.shape[1]
    params = init_params(hidden, num_classes, generator=gen)  # on the CPU: same draw on any device
    if features.device.type != "cpu":
        params = params.to(features.device)
    leaves = params.out if method == "baseline" else params.all()
    opt = torch.optim.SGD(leaves, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    result = RunResult(method=method, seed=seed)
    since_best = 0
    t0 = time.perf_counter()
    for epoch in range(config.epochs):
        sink: list[Tensor] | None = None if method == "baseline" else []
        if method == "baseline":  # logistic regression on the node features
            out = tuple(p.detach().requires_grad_(True) for p in params.out)
            with torch.enable_grad():
                logits = readout(features, out)
                loss = _cross_entropy(logits, labels, train_idx)
                g_out = torch.autograd.grad(loss, out)
            grads, loss, logits = g_out, loss.detach(), logits.detach()
        else:
            g_gru, g_out, loss, logits, info = gnn_gradients(
                method, step, features, params, labels, train_idx,
                num_steps=config.num_steps, truncate=config.truncate, diff_sink=sink, generator=gen,
            )
            grads = (*g_gru, *g_out)
            if info is not None:
                result.solver_residual_last = float(info.residual)
        if not bool(torch.isfinite(loss)):
            result.diverged = True  # this epoch's model is not finite: keep the best one so far
            break
        val = _accuracy(logits, labels, val_idx)
        result.train_loss.append(float(loss))
        result.val_acc.append(val)
        diffs = torch.stack(sink).tolist() if sink else []
        if sink is not None:
            if epoch == 0:
                result.diff_norm_first = diffs
            result.diff_norm_last = diffs
        if result.best_val_acc is None or val > result.best_val_acc:
            result.best_val_acc, result.best_epoch = val, epoch
            result.test_acc = _accuracy(logits, labels, test_idx)
            if sink is not None:
                result.diff_norm_best = diffs
            since_best = 0
        else:
            since_best += 1
        result.epochs_run = epoch + 1
        if on_epoch is not None:
            on_epoch(epoch, float(loss), val)
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            result.diverged = True  # e.g. RBP's iteration (Alg. 1) blew up; do not apply the update
            break
        if config.patience is not None and since_best >= config.patience:
            break
        for p, g in zip(leaves, grads):
            p.grad = g
        opt.step()
    result.seconds = time.perf_counter() - t0
    return result
