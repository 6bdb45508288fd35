r"""Observers of a tuning run: the :class:`Callback` base class, TensorBoard logging, a progress bar, a logger.

The tuner reports to callbacks; it never prints. A callback subclasses :class:`Callback`
and overrides the hooks it needs (the others do nothing).

:class:`TensorBoardLogger` writes (through ``torch.utils.tensorboard``) scalars whose tag
groups sort in the order a user reads them, so the first screen of TensorBoard's Time
Series and Scalars dashboards shows the meta loss and the hyperparameter trajectories:

* ``meta/val_loss``, ``meta/train_loss``: the losses of the hyperparameters each meta step evaluated;
* ``sgd_lr/<tensor>``, ``sgd_momentum/<tensor>``: the hyperparameters as ``torch.optim.SGD`` reads
  them, ``lr`` :math:`= \alpha(1-\beta)` and ``momentum`` :math:`= \beta` (the numbers the CLI
  prints and ``results.json`` holds; per-element runs log the means);
  a schedule (``segments > 1``) logs ``sgd_lr/<tensor>/segment_<s>`` per segment, and at the end
  ``schedule/sgd_lr/<tensor>``, ``schedule/sgd_momentum/<tensor>``: the best schedule against the inner step;
* ``solver/residual``, ``solver/iterations``, ``solver/spectral_radius`` (RBP methods);
* ``summary/<metric>``: the final evaluation of the best hyperparameters (one point, at the end);
  an ``"online"`` run (one training, never restarted) logs every scalar against its inner step
  (:attr:`~hypergrad.records.MetaStepRecord.inner_step`) instead of the meta step;
* ``tuner/alpha/<tensor>`` (the step size :math:`\alpha` of the paper's update
  :math:`w' = w + \alpha v'`), ``tuner/hypergrad_norm``, ``tuner/hypergrad_spread``,
  ``tuner/meta_lr``, ``tuner/seconds_per_meta_step``.

The run's settings go to the HParams dashboard (not to scalar cards): the data set (``"user
model"`` unless given), an architecture summary, the number of hyperparameters, method,
strategy, ``T``, ``K``, ``M``, the budget and the other settings; booleans are booleans and a
setting that is ``None`` is left empty. Its metrics are ``meta/val_loss`` and the ``summary/*``
scalars.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from hypergrad._imports import optional_import
from hypergrad.config import TuneConfig
from hypergrad.hyperparams import segment_bounds
from hypergrad.records import MetaStepRecord, TuneResult

__all__ = ["Callback", "LoggingCallback", "ProgressBar", "TensorBoardLogger", "TuningRun", "architecture_summary",
           "hparams_summaries"]

logger = logging.getLogger("hypergrad")

HParamValue = str | int | float | bool | None


class TuningRun(Protocol):
    """What a callback reads of the run it observes (a :class:`hypergrad.Tuner` is one)."""

    @property
    def config(self) -> TuneConfig: ...

    @property
    def step_count(self) -> int: ...

    @property
    def best_loss(self) -> float: ...

    @property
    def history(self) -> Sequence[MetaStepRecord]: ...


class Callback:
    """Observer of a tuning run; every hook does nothing unless overridden."""

    def on_start(self, tuner: TuningRun) -> None:
        """Before the first step of :meth:`hypergrad.Tuner.run` (also of a resumed run)."""

    def on_meta_step(self, tuner: TuningRun, record: MetaStepRecord) -> None:
        """After each completed step (a step that raised :class:`hypergrad.divergence.DivergenceError` is not)."""

    def on_end(self, tuner: TuningRun, result: TuneResult) -> None:
        """After the final evaluation, with the result."""


def _tag(name: str) -> str:
    return name.replace("/", "_")


def architecture_summary(model: nn.Module) -> str:
    """A one-line summary: ``"MLP 64-50-10 (Tanh)"`` for a stack of linear layers, else the class and size."""
    n_weights = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if isinstance(model, nn.Sequential):
        linears = [m for m in model if isinstance(m, nn.Linear)]
        others = [m for m in model if not isinstance(m, nn.Linear)]
        if linears and all(not any(True for _ in m.parameters()) for m in others):
            sizes = [linears[0].in_features, *(m.out_features for m in linears)]
            acts = sorted({type(m).__name__ for m in others})
            return f"MLP {'-'.join(map(str, sizes))}" + (f" ({', '.join(acts)})" if acts else "")
    return f"{type(model).__name__} ({n_weights:,} weights)"


def hparams_summaries(hparams: Mapping[str, HParamValue], metrics: Sequence[str]) -> tuple[Any, Any]:
    """The HParams plugin's experiment and session-start summaries (protocol buffers).

    Unlike ``SummaryWriter.add_hparams`` this keeps booleans as booleans (``add_hparams``
    declares them as numbers, shown as ``1.0000``), declares a ``None`` value but leaves it
    unset (an empty cell, not the string ``"None"``), and writes no scalars: the metrics are
    existing scalar tags, read by the dashboard from the run itself.
    """
    api = optional_import("tensorboard.plugins.hparams.api_pb2", "tensorboard", purpose="TensorBoardLogger")
    pdata = optional_import("tensorboard.plugins.hparams.plugin_data_pb2", "tensorboard", purpose="TensorBoardLogger")
    meta = optional_import("tensorboard.plugins.hparams.metadata", "tensorboard", purpose="TensorBoardLogger")
    summary_pb2 = optional_import("tensorboard.compat.proto.summary_pb2", "tensorboard", purpose="TensorBoardLogger")

    infos = []
    start = pdata.SessionStartInfo()
    for name, value in hparams.items():
        if isinstance(value, bool):
            kind = "DATA_TYPE_BOOL"
            start.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            kind = "DATA_TYPE_FLOAT64"
            start.hparams[name].number_value = float(value)
        elif isinstance(value, str):
            kind = "DATA_TYPE_STRING"
            start.hparams[name].string_value = value
        elif value is None:
            kind = "DATA_TYPE_UNSET"
        else:
            raise TypeError(f"hparams[{name!r}] must be a str, number, bool or None, got {type(value).__name__}")
        infos.append(api.HParamInfo(name=name, type=api.DataType.Value(kind)))
    experiment = api.Experiment(hparam_infos=infos,
                                metric_infos=[api.MetricInfo(name=api.MetricName(tag=m)) for m in metrics])

    def summary(tag: str, content: Any) -> Any:
        plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name=meta.PLUGIN_NAME,
                                                        content=content.SerializeToString())
        return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, metadata=summary_pb2.SummaryMetadata(plugin_data=plugin))])

    version = meta.PLUGIN_DATA_VERSION
    return (summary(meta.EXPERIMENT_TAG, pdata.HParamsPluginData(experiment=experiment, version=version)),
            summary(meta.SESSION_START_INFO_TAG, pdata.HParamsPluginData(session_start_info=start, version=version)))


def _session_end(status: str = "STATUS_SUCCESS") -> Any:
    api = optional_import("tensorboard.plugins.hparams.api_pb2", "tensorboard", purpose="TensorBoardLogger")
    pdata = optional_import("tensorboard.plugins.hparams.plugin_data_pb2", "tensorboard", purpose="TensorBoardLogger")
    meta = optional_import("tensorboard.plugins.hparams.metadata", "tensorboard", purpose="TensorBoardLogger")
    summary_pb2 = optional_import("tensorboard.compat.proto.summary_pb2", "tensorboard", purpose="TensorBoardLogger")
    content = pdata.HParamsPluginData(session_end_info=pdata.SessionEndInfo(status=api.Status.Value(status)),
                                      version=meta.PLUGIN_DATA_VERSION)
    plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name=meta.PLUGIN_NAME, content=content.SerializeToString())
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=meta.SESSION_END_INFO_TAG, metadata=summary_pb2.SummaryMetadata(plugin_data=plugin))])


#: The settings shown first in the HParams table, by their short names (the config field in brackets).
_HEADLINE = (("T", "inner_steps"), ("K", "truncate"), ("M", "hyper_batches"), ("budget", "meta_steps"))
#: Metrics of the HParams table: the last validation loss and the final evaluation of the best.
_SUMMARY_METRICS = ("val_loss", "train_loss", "test_loss", "test_accuracy", "val_accuracy")


def run_hparams(
    tuner: TuningRun, *, dataset: str | None = None, architecture: str | None = None
) -> dict[str, HParamValue]:
    """What the HParams dashboard shows of a run: data set, model, size, method, strategy, T, K, M, budget, the rest."""
    cfg = tuner.config.to_dict()
    problem = getattr(tuner, "problem", None)
    model = getattr(problem, "model", None)
    spec = getattr(tuner, "spec", None)
    configured = cfg.pop("strategy", None)  # "auto" resolves to the strategy that runs: show that one
    strategy = getattr(getattr(tuner, "strategy", None), "name", None) or configured
    out: dict[str, HParamValue] = {
        "dataset": dataset if dataset is not None else "user model",
        "model": architecture if architecture is not None else (
            architecture_summary(model) if isinstance(model, nn.Module) else None),
        "hyperparameters": spec.num_hyperparameters if spec is not None else None,
        "method": cfg.pop("method", None),
        "strategy": strategy,
    }
    budget = cfg.pop("budget", None)  # None: the strategy's default, meta_steps inner trainings
    for short, key in _HEADLINE:
        out[short] = cfg.pop(key, None)
    if budget is not None:
        out["meta_steps"], out["budget"] = out["budget"], budget
    for key, value in cfg.items():
        out[key] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
    return out


class TensorBoardLogger(Callback):
    """Write a run's scalars and settings to ``logdir`` (tags in the module docstring).

    Args:
        logdir: the run's directory (several runs under one parent overlay in TensorBoard).
        global_step_offset: first step number (a resumed run continues its curve).
        dataset: the data set's name for the HParams table (default ``"user model"``).
        architecture: the model's summary (default :func:`architecture_summary` of the problem's model).
    """

    def __init__(self, logdir: str | Path, *, global_step_offset: int = 0, dataset: str | None = None,
                 architecture: str | None = None) -> None:
        tensorboard = optional_import("torch.utils.tensorboard", "tensorboard", purpose="TensorBoardLogger")

        self.logdir = Path(logdir)
        self.dataset, self.architecture = dataset, architecture
        self.writer = tensorboard.SummaryWriter(log_dir=str(self.logdir), purge_step=global_step_offset or None)

    def on_start(self, tuner: TuningRun) -> None:
        self.writer.add_text("config", str(tuner.config.to_dict()), tuner.step_count)
        hparams = run_hparams(tuner, dataset=self.dataset, architecture=self.architecture)
        metrics = ["meta/val_loss", *(f"summary/best_{m}" for m in _SUMMARY_METRICS)]
        file_writer = self.writer._get_file_writer()
        for s in hparams_summaries(hparams, metrics):
            file_writer.add_summary(s, tuner.step_count)
        self.writer.flush()

    def on_meta_step(self, tuner: TuningRun, record: MetaStepRecord) -> None:
        # an online run (one training, never restarted) is plotted against its inner steps
        step = record.step if record.inner_step is None else record.inner_step
        w = self.writer

        def scalar(tag: str, value: Any) -> None:
            if isinstance(value, (int, float)) and math.isfinite(value):
                w.add_scalar(tag, float(value), step)

        scalar("meta/val_loss", record.val_loss)
        scalar("meta/train_loss", record.train_loss)
        for name, hp in record.hyperparameters.items():
            for tag, key in (("sgd_lr", "lr"), ("sgd_momentum", "momentum"), ("tuner/alpha", "alpha")):
                value = hp.get(key, hp.get(f"{key}_mean"))
                if isinstance(value, list):  # a schedule: one curve per segment
                    for s, v in enumerate(value):
                        scalar(f"{tag}/{_tag(name)}/segment_{s}", v)
                else:
                    scalar(f"{tag}/{_tag(name)}", value)
        solver = record.solver
        if solver is not None and solver.skipped is None:
            scalar("solver/residual", solver.residual)
            scalar("solver/iterations", solver.iterations)
            scalar("solver/spectral_radius", solver.spectral_radius)
        scalar("tuner/hypergrad_norm", record.hypergrad_norm)
        scalar("tuner/hypergrad_spread", record.hypergrad_spread)
        scalar("tuner/meta_lr", record.meta_lr)
        scalar("tuner/seconds_per_meta_step", record.seconds)
        w.flush()

    def on_end(self, tuner: TuningRun, result: TuneResult) -> None:
        last = result.history[-1] if result.history else None
        step = last.inner_step if last is not None and last.inner_step is not None else max(tuner.step_count - 1, 0)
        if result.spec.segments > 1:
            self._schedule(result)
        for metric in _SUMMARY_METRICS:
            value = result.evaluation.get("best", {}).get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"summary/best_{metric}", float(value), step)
        self.writer._get_file_writer().add_summary(_session_end(), step)
        self.writer.flush()
        self.writer.close()


    def _schedule(self, result: TuneResult) -> None:
        """The best schedule against the inner step: ``schedule/sgd_lr/<tensor>``, ``schedule/sgd_momentum/<tensor>``.

        Each segment's value at its first and its last inner step, so the curve is the step function SGD follows.
        """
        bounds = segment_bounds(result.config.inner_steps, result.spec.segments)
        for name, hp in result.hyperparameters.items():
            for tag, key in (("schedule/sgd_lr", "lr"), ("schedule/sgd_momentum", "momentum")):
                values = hp.get(key, hp.get(f"{key}_mean"))
                for (a, b), v in zip(bounds, values if isinstance(values, list) else []):
                    if math.isfinite(v):
                        for t in sorted({a, b - 1}):
                            self.writer.add_scalar(f"{tag}/{_tag(name)}", float(v), t)


class ProgressBar(Callback):
    """A tqdm bar over meta steps showing the current and best validation loss.

    At the end the bar shows the result's best validation loss, that of the final evaluation
    (:func:`hypergrad.strategies.final_evaluation`: the initial, best and final hyperparameters
    on one identical inner run), so the bar's last ``best`` is the number the summary prints.
    """

    def __init__(self, *, disable: bool | None = None, desc: str = "meta steps", total: int | None = None) -> None:
        self.disable = disable
        self.desc = desc
        self.total = total  # default: config.budget, else meta_steps (a warm-started run counts from its first step)
        self.bar: Any = None

    def on_start(self, tuner: TuningRun) -> None:
        from tqdm.auto import tqdm

        cfg = tuner.config
        default = cfg.budget if cfg.budget is not None else cfg.meta_steps  # the strategies' budget
        self.bar = tqdm(
            total=self.total if self.total is not None else default, initial=tuner.step_count,
            desc=self.desc, disable=self.disable,
            dynamic_ncols=True,
        )

    def on_meta_step(self, tuner: TuningRun, record: MetaStepRecord) -> None:
        if self.bar is None:
            return
        val = record.val_loss
        self.bar.set_postfix(
            val_loss=f"{val:.4f}" if val is not None else "nan",
            best=f"{tuner.best_loss:.4f}",
            refresh=False,
        )
        self.bar.update(1)

    def on_end(self, tuner: TuningRun, result: TuneResult) -> None:
        if self.bar is None:
            return
        best = result.evaluation.get("best", {}).get("val_loss")
        if best is not None:
            self.bar.set_description(f"{self.desc} + final evaluation", refresh=False)
            self.bar.set_postfix(best=f"{best:.4f}" if math.isfinite(best) else "nan", refresh=False)
            self.bar.refresh()
        self.bar.close()
        self.bar = None


class LoggingCallback(Callback):
    r"""Log divergence events and actions through the ``hypergrad`` logger.

    Also warns, once per run, when every Neumann series of a meta step stopped before its
    first term (``stop_on_growth`` met a growing term at once, e.g. once the inner network
    over-fits and the spectral radius of the step's Jacobian exceeds 1): the hypergradient
    is then only the direct term :math:`g^\top \partial F / \partial w`.
    """

    def __init__(self) -> None:
        self._warned_zero_terms = False

    def on_meta_step(self, tuner: TuningRun, record: MetaStepRecord) -> None:
        if record.events == ("backtrack",):  # the sign rule's own step back from a blow-up: expected, not a fault
            logger.info("meta step %d: the loss blew up; back to the last accepted point with halved steps",
                        record.step)
        elif record.events:
            logger.warning("meta step %d: %s -> %s", record.step, ", ".join(record.events), record.action)
        solver = record.solver
        if (
            not self._warned_zero_terms
            and solver is not None
            and solver.skipped is None
            and solver.method == "neumann"
            and "growth" in solver.stop_reasons
            and solver.iterations == 0
        ):
            self._warned_zero_terms = True
            logger.warning(
                "meta step %d: every Neumann series stopped before its first term (a growing term; spectral "
                "radius estimate %.4g), so the hypergradient is the direct term only. Smaller learning rates, "
                "fewer inner steps, stop_on_growth=false or method='cg' avoid this (logged once per run)",
                record.step, solver.spectral_radius,
            )
