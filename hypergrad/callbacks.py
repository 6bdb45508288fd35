"""Observers of a tuning run: the :class:`Callback` base class, TensorBoard logging, a progress bar, a logger.

The tuner reports to callbacks; it never prints. A callback subclasses :class:`Callback`
and overrides the hooks it needs (the others do nothing). Scalars written by
:class:`TensorBoardLogger` (through ``torch.utils.tensorboard``):

``meta/val_loss``, ``meta/train_loss``, ``meta/loss``, ``hyper/lr/<tensor>``,
``hyper/momentum/<tensor>``, ``hypergrad/norm``, ``hypergrad/spread``,
``solver/residual``, ``solver/iterations``, ``solver/spectral_radius``,
``time/seconds_per_meta_step``, ``meta/lr``; and ``add_hparams`` at the end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from hypergrad._imports import optional_import
from hypergrad.config import TuneConfig
from hypergrad.records import MetaStepRecord, TuneResult

__all__ = ["Callback", "LoggingCallback", "ProgressBar", "TensorBoardLogger", "TuningRun"]

logger = logging.getLogger("hypergrad")


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


class TensorBoardLogger(Callback):
    """Write a run's scalars to ``logdir`` (one event file per run).

    Args:
        logdir: the run's directory (several runs under one parent overlay in TensorBoard).
        global_step_offset: first step number (a resumed run continues its curve).
    """

    def __init__(self, logdir: str | Path, *, global_step_offset: int = 0) -> None:
        tensorboard = optional_import("torch.utils.tensorboard", "tensorboard", purpose="TensorBoardLogger")

        self.logdir = Path(logdir)
        self.writer = tensorboard.SummaryWriter(log_dir=str(self.logdir), purge_step=global_step_offset or None)

    def on_start(self, tuner: TuningRun) -> None:
        self.writer.add_text("config", str(tuner.config.to_dict()), tuner.step_count)

    def on_meta_step(self, tuner: TuningRun, record: MetaStepRecord) -> None:
        step = record.step
        w = self.writer

        def scalar(tag: str, value: Any) -> None:
            if isinstance(value, (int, float)) and math.isfinite(value):
                w.add_scalar(tag, float(value), step)

        scalar("meta/val_loss", record.val_loss)
        scalar("meta/train_loss", record.train_loss)
        scalar("meta/loss", record.meta_loss)
        scalar("meta/lr", record.meta_lr)
        scalar("hypergrad/norm", record.hypergrad_norm)
        scalar("hypergrad/spread", record.hypergrad_spread)
        solver = record.solver
        if solver is not None and solver.skipped is None:
            scalar("solver/residual", solver.residual)
            scalar("solver/iterations", solver.iterations)
            scalar("solver/spectral_radius", solver.spectral_radius)
        scalar("time/seconds_per_meta_step", record.seconds)
        for name, hp in record.hyperparameters.items():
            for key, value in hp.items():
                kind = "lr" if key.startswith("lr") else "momentum"
                scalar(f"hyper/{kind}/{_tag(name)}", value)
        w.flush()

    def on_end(self, tuner: TuningRun, result: TuneResult) -> None:
        cfg = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in result.config.to_dict().items()}
        metrics = {f"hparam/{split}_{k}": v for split, ev in result.evaluation.items() for k, v in ev.items()}
        self.writer.add_hparams(cfg, metrics, run_name=".")
        self.writer.flush()
        self.writer.close()


class ProgressBar(Callback):
    """A tqdm bar over meta steps showing the current and best validation loss.

    At the end the bar shows the result's best validation loss, that of the final evaluation
    (:func:`hypergrad.strategies.final_evaluation`: the initial, best and final hyperparameters
    on one identical inner run), so the bar's last ``best`` is the number the summary prints.
    """

    def __init__(self, *, disable: bool | None = None, desc: str = "meta steps") -> None:
        self.disable = disable
        self.desc = desc
        self.bar: Any = None

    def on_start(self, tuner: TuningRun) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=tuner.config.meta_steps, initial=tuner.step_count, desc=self.desc, disable=self.disable,
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
        if record.events:
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
