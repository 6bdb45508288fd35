"""Check the model/loss/data contract once, with one dry step, before any tuning work.

:func:`check_problem` builds the :class:`~hypergrad.inner.InnerProblem` of a user's model,
loss and data and runs the model, the loss and its gradient on one batch of each data set.
Every misuse is raised there, as a ``TypeError`` or ``ValueError`` in hypergrad's words that
names the argument (``model``, ``loss_fn``, ``train_data``, ``val_data``, ``test_data``,
``metric``) and says what was expected, instead of a raw torch error from deep inside a
meta step (or, worse, a silent run that tunes nothing):

* data that is not an ``(x, y)`` pair, a ``Dataset``, a ``DataLoader`` or a re-iterable of
  batches; empty data; inputs and targets of different lengths; NaN or infinity in them;
* inputs the model cannot take (a wrong width, a dtype other than the model's);
* a loss that fails on the model's outputs, is not a scalar (``reduction='none'``), is not
  finite at the initial weights, or does not depend on the trainable parameters;
* a ``metric`` that fails or does not return a number.

It also probes :meth:`~InnerProblem.step_batched` once, so a model ``torch.func.vmap``
cannot batch (``nn.GRU``) is looped over from the start; :class:`ProblemReport` says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hypergrad._models import default_metric
from hypergrad.data.source import (
    Batch,
    IndexedSource,
    Inputs,
    LoaderSource,
    TensorSource,
    as_source,
    batch_len,
    stack_batches,
)
from hypergrad.distributed import DataParallel
from hypergrad.inner import InnerProblem

__all__ = ["ProblemReport", "check_problem", "second_order_hint", "validate_problem"]

logger = logging.getLogger("hypergrad")


class ProblemReport(NamedTuple):
    """What the dry step found.

    Attributes:
        num_train, num_val: examples in each set (``None``: a loader of unknown length).
        metric: the name of what is reported beside the loss (``None``: the loss only,
            e.g. a regression without ``metric=``).
        batching: ``"vmap"`` or ``"loop"``: how ``step_batched`` batches the hyper-batches.
        batching_reason: why vmap was not used (empty with vmap).
        reproducible: whether the training batch order is a function of the seed (a
            shuffling ``DataLoader`` without a ``generator=`` is not).
        warnings: anything suspicious that is not an error.
    """

    num_train: int | None
    num_val: int | None
    metric: str | None
    batching: str
    batching_reason: str
    reproducible: bool
    warnings: tuple[str, ...]


def _describe(x: Inputs) -> str:
    def one(t: Tensor) -> str:
        return f"shape {tuple(t.shape)}, dtype {t.dtype}"

    if isinstance(x, tuple):
        return "; ".join(f"input {i}: {one(t)}" for i, t in enumerate(x))
    return one(x)


def _first_batch(source: Any, name: str, size: int) -> Batch:
    if isinstance(source, IndexedSource):
        return source.gather(torch.arange(min(size, source.num_examples)))
    batch = next(iter(source.chunks(size)), None)
    if batch is None:
        raise ValueError(f"{name} is empty: it yielded no batches")
    return batch


def _check_values(source: Any, batch: Batch, name: str) -> None:
    """Inputs and targets must be numeric tensors without NaN or infinity (in-memory data: all of them)."""
    x, y = (source.x, source.y) if isinstance(source, TensorSource) else batch
    where = "" if isinstance(source, TensorSource) else " (first batch)"
    leaves = x if isinstance(x, tuple) else (x,)
    for i, t in enumerate((*leaves, y)):
        what = "targets" if i == len(leaves) else ("inputs" if len(leaves) == 1 else f"input {i}")
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: the {what} must be tensors, got {type(t).__name__}")
        if t.is_floating_point() or t.is_complex():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                kind = "NaN" if bool(torch.isnan(t).any()) else "infinite values"
                raise ValueError(f"{name}: the {what}{where} contain {kind} ({bad} of {t.numel()} entries); "
                                 "clean or impute the data first")


def _first_layer(model: nn.Module) -> tuple[nn.Module, int, int] | None:
    """The first layer with a declared input width: (layer, width, axis of the inputs that must match it)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return m, m.in_features, -1
        if isinstance(m, nn.modules.conv._ConvNd):
            return m, m.in_channels, -(len(m.kernel_size) + 1)
        if isinstance(m, nn.RNNBase):
            return m, m.input_size, -1
        if isinstance(m, nn.Embedding):
            return None
    return None


def _model_failure(problem: InnerProblem, x: Inputs, name: str, exc: Exception) -> ValueError:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    hints = []
    param_dtypes = sorted({str(w.dtype) for w in problem.w0 if w.is_floating_point()})
    leaves = x if isinstance(x, tuple) else (x,)
    in_dtypes = sorted({str(t.dtype) for t in leaves if t.is_floating_point()})
    if in_dtypes and not set(in_dtypes) & set(param_dtypes):
        hints.append(f"dtype mismatch: the inputs are {', '.join(in_dtypes)} but the model's parameters are "
                     f"{', '.join(param_dtypes)}; convert the data (x.to({param_dtypes[0]})) or the model")
    layer = _first_layer(problem.model)
    if layer is not None and not isinstance(x, tuple) and x.dim() >= 1:
        module, width, axis = layer
        if x.dim() >= -axis and x.shape[axis] != width:
            hints.append(f"wrong input width: the first {type(module).__name__} expects {width} input features "
                         f"(axis {axis}), the inputs have shape {tuple(x.shape)}")
    hint = ("; " + "; ".join(hints)) if hints else ""
    return ValueError(f"{name}: the model failed on a batch of {name} ({_describe(x)}){hint} "
                      f"[{type(exc).__name__}: {msg}]")


def _dry_loss(problem: InnerProblem, batch: Batch, name: str, leaves: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    x, y = batch
    try:
        out = problem.forward(leaves, x)
    except Exception as exc:  # any failure here breaks the user's contract: report it with context
        raise _model_failure(problem, x, name, exc) from exc
    try:
        loss = problem.loss_fn(out, y)
    except Exception as exc:
        shown = f"shape {tuple(out.shape)}, dtype {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"loss_fn(outputs, targets) failed on a batch of {name}: outputs {shown}, targets "
                         f"shape {tuple(y.shape)}, dtype {y.dtype} [{type(exc).__name__}: {exc}]") from exc
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a tensor (it is differentiated), got {type(loss).__name__}")
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, the mean loss over the batch; it returned shape "
                         f"{tuple(loss.shape)} on a batch of {name} (reduction='none'? use reduction='mean')")
    if not bool(torch.isfinite(loss)):
        raise ValueError(f"loss_fn returned {float(loss.detach())} at the initial weights on a batch of {name}; "
                         "check the data, the targets and the model's initialisation")
    return out, loss


def _dry_metric(metric: Callable[..., Any], out: Tensor, y: Tensor) -> None:
    try:
        value = metric(out.detach(), y)
    except Exception as exc:
        raise ValueError(
            f"metric(outputs, targets) failed on a batch of val_data [{type(exc).__name__}: {exc}]"
        ) from exc
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric must return a scalar (a mean over the batch), got shape {tuple(value.shape)}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric must return a number or a scalar tensor, got {type(value).__name__}")


def _hypergradient(step: Callable[[tuple, tuple], tuple], state: tuple, hp: tuple) -> None:
    """One step with its graph and one vector-Jacobian product through it (second derivatives)."""
    state = tuple(t.detach().requires_grad_(True) for t in state)
    hp = tuple(h.detach().requires_grad_(True) for h in hp)
    with torch.enable_grad():
        out = step(state, hp)
        torch.autograd.grad(sum(o.sum() for o in out), state + hp, allow_unused=True)


def second_order_hint(model: nn.Module, device: torch.device) -> str:
    """What to do when the double backward fails: cuDNN's RNN kernels have none (``nn.GRU``/``LSTM`` on CUDA)."""
    if device.type == "cuda" and any(isinstance(m, nn.RNNBase) for m in model.modules()):
        return ("; cuDNN's RNN kernels (nn.GRU, nn.LSTM, nn.RNN on CUDA) have no double backward: tune on the "
                "CPU (device='cpu'), or call hypergrad inside `with torch.backends.cudnn.flags(enabled=False):` "
                "so that torch uses its native RNN kernels")
    return ""


def _second_order(problem: InnerProblem, batch: Batch, probe_batching: bool) -> None:
    """Every hypergradient differentiates through the gradient: check that the model supports it.

    With ``probe_batching``, also through :meth:`~InnerProblem.step_batched` on two stacked
    copies of the batch, switching it to its loop where vmap fails (forward or backward).
    """
    hp = problem.spec.init(0.1, 0.5, problem.w0[0].dtype, problem.device)
    x, y = batch
    try:
        _hypergradient(lambda s, p: problem.step(s, p, x, y), problem.initial_state(), hp)
    except (RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"model: the hypergradient needs second derivatives of loss_fn through the model "
                         f"(a step with create_graph=True and its backward), which failed "
                         f"[{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}]"
                         f"{second_order_hint(problem.model, problem.device)}") from exc
    if not probe_batching or problem.batching == "loop":
        return
    xs, ys = stack_batches([(x, y), (x, y)])

    def stack(tree: tuple) -> tuple:
        return tuple(t.unsqueeze(0).expand(2, *t.shape).clone() for t in tree)

    try:
        _hypergradient(lambda s, p: problem.step_batched(s, p, xs, ys), stack(problem.initial_state()), stack(hp))
    except (RuntimeError, NotImplementedError) as exc:  # vmap ran forward but not backward: loop
        problem.batching = "loop"
        problem.batching_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        _hypergradient(lambda s, p: problem.step_batched(s, p, xs, ys), stack(problem.initial_state()), stack(hp))


def validate_problem(problem: InnerProblem, *, test_data: Any = None, probe_batching: bool = True) -> ProblemReport:
    """Run the dry step on a built problem; raise on misuse, else describe what was found.

    One batch of each set goes through the model and the loss; the training batch also
    through the gradient and through one step of the inner map with its graph and a
    backward pass (the second derivatives every hypergradient needs), and
    (``probe_batching``) two stacked copies of it through :meth:`~InnerProblem.step_batched`,
    which fixes :attr:`~InnerProblem.batching`. torch's random generators are restored
    afterwards (the dry step may draw Dropout masks).
    """
    with problem.rng(0):
        return _validate(problem, test_data, probe_batching)


def _validate(problem: InnerProblem, test_data: Any, probe_batching: bool) -> ProblemReport:
    notes: list[str] = []
    size = max(problem.batch_size, 2)
    sets = [("train_data", problem.train_source), ("val_data", problem.val_source)]
    if test_data is not None:
        sets.append(("test_data", as_source(test_data, "test_data")))
    batches = {}
    for name, source in sets:
        batch = _first_batch(source, name, size)
        _check_values(source, batch, name)
        batches[name] = batch
    leaves = tuple(w.detach().clone().requires_grad_(True) for w in problem.w0)
    with torch.enable_grad():
        _, loss = _dry_loss(problem, batches["train_data"], "train_data", leaves)
        if not loss.requires_grad:
            raise ValueError("loss_fn's value does not depend on the model's trainable parameters "
                             "(is the output detached, or every parameter frozen?)")
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    unused = [n for n, g in zip(problem.spec.param_names, grads) if g is None]
    if len(unused) == len(grads):
        raise ValueError("no trainable parameter of the model gets a gradient from loss_fn")
    if unused:
        notes.append(f"parameters without a gradient (they stay at their initial values): {', '.join(unused)}")
    bad = [n for n, g in zip(problem.spec.param_names, grads) if g is not None and not bool(torch.isfinite(g).all())]
    if bad:
        raise ValueError(f"the gradient of loss_fn at the initial weights is not finite for {', '.join(bad)}")
    metric_name: str | None = None
    for name in [n for n, _ in sets if n != "train_data"]:
        with torch.no_grad():
            out, _ = _dry_loss(problem, batches[name], name, problem.w0)
        if name == "val_data":
            y = batches[name][1]
            if problem.metric is not None:
                _dry_metric(problem.metric, out, y)
                metric_name = getattr(problem.metric, "__name__", "metric")
                metric_name = "metric" if metric_name == "<lambda>" else metric_name
            elif isinstance(out, Tensor) and default_metric(out, y) is not None:
                metric_name = "accuracy"
    reproducible = not isinstance(problem.train_source, LoaderSource) or problem.train_source.reproducible
    if not reproducible:
        notes.append("train_data is a shuffling DataLoader without a generator: the batch order is not "
                     "reproducible; pass DataLoader(..., generator=torch.Generator())")
    _second_order(problem, batches["train_data"], probe_batching)
    if isinstance(problem.train_source, IndexedSource) and batch_len(batches["train_data"]) < 2:
        notes.append("train_data holds a single example")
    for note in notes:
        logger.warning(note)
    train_n = problem.train_source.num_examples
    val_n = problem.val_source.num_examples
    return ProblemReport(train_n, val_n, metric_name, problem.batching, problem.batching_reason,
                         reproducible, tuple(notes))


def check_problem(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    train_data: Any,
    val_data: Any,
    *,
    test_data: Any = None,
    batch_size: int = 100,
    per: str = "tensor",
    parallel: DataParallel | None = None,
    metric: Callable[[Tensor, Tensor], Tensor | float] | None = None,
) -> tuple[InnerProblem, ProblemReport]:
    """Build the :class:`~hypergrad.inner.InnerProblem` of a user's model and data, and validate it.

    Args:
        model: the user's ``nn.Module`` (its current weights are :math:`w_0`).
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
        train_data, val_data, test_data: ``(x, y)`` tensors or NumPy arrays (``x`` may be a
            tuple of tensors), a ``Dataset``, a ``DataLoader`` or a re-iterable of batches.
        batch_size, per, parallel, metric: as :class:`~hypergrad.inner.InnerProblem`.

    Returns:
        ``(problem, report)``. Raises ``TypeError``/``ValueError`` naming the argument at fault.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameters (every parameter has requires_grad=False)")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable loss_fn(outputs, targets), got {type(loss_fn).__name__}")
    if metric is not None and not callable(metric):
        raise TypeError(f"metric must be a callable metric(outputs, targets), got {type(metric).__name__}")
    for name, data in (("train_data", train_data), ("val_data", val_data)):
        if data is None:
            raise TypeError(f"{name} is required")
    problem = InnerProblem(model, loss_fn, train=train_data, val=val_data, batch_size=batch_size, per=per,
                           parallel=parallel, metric=metric)
    return problem, validate_problem(problem, test_data=test_data)
