r"""The Tuner: runs a strategy on a meta objective, with callbacks and checkpoints (paper §5.3).

The Tuner is built from parts, each in its own module:

* :class:`~hypergrad.objective.MetaObjective`: the problem, its batch schedules (seeded by
  ``(seed, meta step)``, so a run is reproducible and resumable), the meta loss and the
  hypergradient of every method;
* :mod:`hypergrad.strategies`: the meta loop (``"gradient"``, the paper's: inner training
  -> hypergradient averaged over minibatches -> divergence guards -> Adam step);
* :mod:`hypergrad.divergence`: the ``on_divergence`` policies as pure functions;
* :mod:`hypergrad.records`: the typed hypergradient, per-meta-step record and result;
* :mod:`hypergrad.callbacks`: the observers (TensorBoard, progress bar, logging).

The Tuner holds the strategy's state (:attr:`Tuner.state`), calls the callbacks, and
writes and reads the state a checkpoint holds. The best hyperparameters by validation
loss are tracked; a tuned run therefore never reports worse hyperparameters than it
started with.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hypergrad.callbacks import Callback
from hypergrad.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from hypergrad.config import DIVERGENCE_POLICIES, TUNER_METHODS, TuneConfig, tune_config
from hypergrad.divergence import DivergenceError
from hypergrad.hyperparams import HyperSpec
from hypergrad.inner import InnerProblem
from hypergrad.objective import MetaObjective
from hypergrad.records import MetaStepRecord, TuneResult
from hypergrad.strategies import SearchState, Strategy, get_strategy
from hypergrad.validation import check_problem

__all__ = [
    "DIVERGENCE_POLICIES",
    "TUNE_METHODS",
    "Callback",
    "DivergenceError",
    "TuneConfig",
    "TuneError",
    "TuneResult",
    "Tuner",
    "tune",
]

class TuneError(RuntimeError):
    """A tuning run failed after its validation; what it finished is kept.

    The cause (the user's model, loss, metric or callback raising, or a divergence under
    ``on_divergence="stop"``) is ``__cause__``.

    Attributes:
        result: a :class:`TuneResult` of the finished meta steps (``history``, the best and
            the current hyperparameters; ``evaluation`` is empty: no final evaluation ran).
        step: the meta step that failed (``None``: the final evaluation failed).
        checkpoint: the checkpoint holding the finished steps (``None`` without ``checkpoint_dir``).
    """

    def __init__(self, message: str, *, result: TuneResult, step: int | None, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.result, self.step, self.checkpoint = result, step, checkpoint


#: The hypergradient methods the Tuner runs (:data:`hypergrad.config.TUNER_METHODS`), kept for callers of the tuner.
TUNE_METHODS = TUNER_METHODS


class Tuner:
    """Stateful meta-optimisation of one :class:`InnerProblem` by one :class:`~hypergrad.strategies.Strategy`.

    Use :func:`tune` for the one-call API. The run's whole state is :attr:`state` (for the
    ``"gradient"`` strategy: hyperparameters, Adam state, history, best so far, meta-lr scale)
    plus the torch RNG state, all in :meth:`state_dict`, which is what checkpoints hold.

    Args:
        problem: the inner problem.
        config: the run's settings.
        callbacks: observers (:class:`~hypergrad.callbacks.Callback` subclasses).
        test_data: optional test set reported in the result's evaluation (``x_test, y_test``:
            the old form).
        strategy: a name in :data:`hypergrad.strategies.STRATEGIES` or a
            :class:`~hypergrad.strategies.Strategy` instance.
    """

    def __init__(
        self,
        problem: InnerProblem,
        config: TuneConfig,
        *,
        callbacks: Sequence[Callback] = (),
        test_data: Any = None,
        x_test: Tensor | None = None,
        y_test: Tensor | None = None,
        strategy: str | Strategy = "gradient",
    ) -> None:
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks[{i}] is a {type(cb).__name__}, not a hypergrad.callbacks.Callback; "
                                "subclass Callback and override the hooks you need")
        self.objective = MetaObjective(problem, config, test_data=test_data, x_test=x_test, y_test=y_test)
        self.problem = problem
        self.config = config
        self.callbacks = list(callbacks)
        self.strategy = get_strategy(strategy, config)
        self.state: SearchState = self.strategy.init(self.objective, config)

    # ------------------------------------------------------------------ read-only views of the state
    @property
    def spec(self) -> HyperSpec:
        return self.objective.spec

    @property
    def hparams(self) -> tuple[Tensor, ...]:
        """The current unconstrained hyperparameters."""
        return self.state.hparams

    @property
    def best(self) -> tuple[Tensor, ...]:
        """The hyperparameters with the lowest validation loss so far."""
        return self.state.best

    @property
    def best_loss(self) -> float:
        return self.state.best_loss

    @property
    def best_step(self) -> int:
        return self.state.best_step

    @property
    def step_count(self) -> int:
        """The next meta step (its batch salt)."""
        return self.state.step_count

    @property
    def history(self) -> list[MetaStepRecord]:
        return self.state.history

    # ------------------------------------------------------------------ state
    def warm_start(self, hparams: Sequence[Tensor], *, best_loss: float, step: int) -> None:
        """Start from given hyperparameters instead of the configured ones (e.g. a black-box search's best).

        Args:
            hparams: unconstrained hyperparameters (the layout of :meth:`HyperSpec.init`); they become
                the current and the best ones.
            best_loss: their loss, the best so far (``math.inf``: none known).
            step: the next meta step, so that its batches (salt ``step``) continue a schedule
                already spent (``best_step`` is set to it too).

        Raises:
            ValueError: after the first meta step, or for hyperparameters of another layout.
        """
        self.state.warm_start(hparams, best_loss=best_loss, step=step)

    def state_dict(self) -> dict[str, Any]:
        return {**self.state.state_dict(), "torch_rng": torch.get_rng_state(), "config": self.config.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state)
        torch.set_rng_state(state["torch_rng"])

    # ------------------------------------------------------------------ the loop
    def _after_step(self, record: MetaStepRecord) -> None:
        for cb in self.callbacks:
            cb.on_meta_step(self, record)

    def meta_step(self) -> MetaStepRecord:
        """Run one step of the strategy and return its record (also appended to ``history``)."""
        record = self.strategy.step(self.objective, self.config, self.state)
        self._after_step(record)
        return record

    def partial_result(self) -> TuneResult:
        """The run so far, without a final evaluation: the history, the best and the current hyperparameters."""
        state = self.state
        return TuneResult(spec=self.spec, config=self.config, best=tuple(b.detach().clone() for b in state.best),
                          final=tuple(h.detach().clone() for h in state.hparams), history=list(state.history),
                          evaluation={}, best_step=state.best_step)

    def finish(self) -> TuneResult:
        """The strategy's final evaluation (initial, best and final hyperparameters on one identical run)."""
        result = self.strategy.finish(self.objective, self.config, self.state)
        for cb in self.callbacks:
            cb.on_end(self, result)
        return result

    def run(
        self, *, budget: float | None = None, on_checkpoint: Callable[[Tuner], None] | None = None
    ) -> TuneResult:
        """Run the strategy until its budget (default: ``config.meta_steps``) is spent, then :meth:`finish`.

        ``on_checkpoint(tuner)`` is called after every step (e.g. to save :meth:`state_dict`).
        """
        for cb in self.callbacks:
            cb.on_start(self)

        def after(record: MetaStepRecord) -> None:
            self._after_step(record)
            if on_checkpoint is not None:
                on_checkpoint(self)

        result = self.strategy.run(self.objective, self.config, budget, state=self.state, on_record=after)
        for cb in self.callbacks:
            cb.on_end(self, result)
        return result


def _checkpoint_state(tuner: Tuner) -> dict[str, Any]:
    return {"api": "tune", "tuner": tuner.state_dict()}


def _resume(tuner: Tuner, folder: Path, cfg: TuneConfig) -> None:
    """Load ``folder``'s checkpoint of an earlier :func:`tune` call with the same settings (``meta_steps`` aside)."""
    state = load_checkpoint(folder)
    if state.get("api") != "tune" or not isinstance(state.get("tuner"), dict):
        raise ValueError(f"checkpoint_dir {str(folder)!r} holds a checkpoint of another kind of run "
                         "(e.g. 'hypergrad tune'); pass another folder")
    saved = dict(state["tuner"].get("config", {}))
    mine = cfg.to_dict()
    changed = sorted(k for k in mine if k != "meta_steps" and saved.get(k, mine[k]) != mine[k])
    if changed:
        raise ValueError(f"checkpoint_dir {str(folder)!r} was written with other settings "
                         f"({', '.join(f'{k}={saved[k]!r}' for k in changed)}); pass the same ones to resume")
    tuner.load_state_dict(state["tuner"])


def tune(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    train_data: Any,
    val_data: Any,
    *,
    test_data: Any = None,
    metric: Callable[[Tensor, Tensor], Tensor | float] | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    **config: Any,
) -> TuneResult:
    """Tune per-tensor learning rates and momenta of ``model`` for SGD with momentum (paper §5.3).

    The model, the loss and the data are checked once, before any tuning work, with one dry
    step (:func:`hypergrad.validation.check_problem`): misuse raises a ``TypeError`` or
    ``ValueError`` that names the argument. After that, a failure of anything the user
    supplied (model, loss, metric, callback) raises :class:`TuneError` carrying the finished
    meta steps (``exc.result``); with ``checkpoint_dir`` they are also on disk.

    Args:
        model: the user's module, in the mode it should be trained in (train mode: BatchNorm
            normalises with batch statistics and Dropout draws masks; see ``docs/tuning.md``).
            Its current weights are the inner runs' start; it is never modified.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (the mean over the batch).
        train_data, val_data: ``(x, y)`` tensors or NumPy arrays (``x`` may be a tuple of
            tensors, passed as ``model(*x)``), a ``Dataset``, a ``DataLoader`` or any
            re-iterable of ``(x, y)`` batches. The inner runs train on ``train_data``; the
            meta loss (and the best tracking) is the loss on ``val_data``.
        test_data: optional, of the same forms; reported in ``result.evaluation``.
        metric: ``metric(outputs, targets) -> number`` reported beside the loss
            (``val_<name>``, ``test_<name>``). Default: accuracy for integer class targets
            with ``(N, C)`` outputs, nothing otherwise (a regression reports its loss only).
        callbacks: observers (e.g. :class:`hypergrad.callbacks.TensorBoardLogger`).
        checkpoint_dir: a folder for a checkpoint written after every meta step (the format
            of ``hypergrad tune``'s, :mod:`hypergrad.checkpoint`).
        resume: continue the run checkpointed in ``checkpoint_dir`` (same settings; a larger
            ``meta_steps`` extends it). Without it, a folder that holds a checkpoint is refused.
        device: where to tune (e.g. ``"cuda"``); default: the model's device. Another device
            tunes a copy of the model moved there. Hyperparameters, Adam's state, the batches
            and the RBP solves all live on it.
        **config: fields of :class:`TuneConfig` (``strategy``, ``budget``, ``method``, ``inner_steps``, ...):
            ``strategy`` names the meta loop (:data:`hypergrad.strategies.STRATEGIES`) and
            ``budget`` the inner trainings of ``T`` steps the whole run spends (default ``meta_steps``).

    Returns:
        A :class:`TuneResult`; ``torch.optim.SGD(result.param_groups(model))``
        trains with the tuned hyperparameters.

    Raises:
        TypeError, ValueError: invalid settings, model, loss or data (before any meta step).
        TuneError: a failure after the validation, with the finished steps.

    Example:
        >>> import torch, torch.nn.functional as F, hypergrad
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        >>> result = hypergrad.tune(model, F.cross_entropy, (x, y), (x, y), method="neumann",
        ...                         inner_steps=20, meta_steps=3, batch_size=32)
        >>> sorted(result.hyperparameters)[:1]
        ['0.bias']
    """
    cfg = tune_config(config)  # TypeError naming unknown keywords; ConfigError (a ValueError) for bad values
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir of the run to continue")
    if isinstance(model, nn.Module) and device is not None:
        device = torch.device(device)
        if any(p.device != device for p in model.parameters()):
            model = copy.deepcopy(model).to(device)
    problem, _ = check_problem(model, loss_fn, train_data, val_data, test_data=test_data,
                               batch_size=cfg.batch_size, per=cfg.per, metric=metric)
    tuner = Tuner(problem, cfg, callbacks=callbacks, test_data=test_data, strategy=cfg.strategy)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"checkpoint_dir {str(folder)!r} exists and is not a directory")
        if (folder / CHECKPOINT_NAME).exists():
            if not resume:
                raise ValueError(f"checkpoint_dir {str(folder)!r} already holds a checkpoint; pass resume=True "
                                 "to continue it, or another folder")
            _resume(tuner, folder, cfg)
        elif resume:
            raise ValueError(f"resume=True but checkpoint_dir {str(folder)!r} holds no checkpoint")

    def on_checkpoint(t: Tuner) -> None:
        if folder is not None:
            save_checkpoint(folder, _checkpoint_state(t))

    def stepping_now() -> bool:  # False once the strategy's budget is spent: the final evaluation runs
        return not tuner.strategy.done(cfg, tuner.state, tuner.strategy.default_budget(cfg))

    stepping = [stepping_now()]

    def after_steps(t: Tuner) -> None:
        on_checkpoint(t)
        stepping[0] = stepping_now()

    try:
        return tuner.run(on_checkpoint=after_steps)
    except Exception as exc:  # the user's model, loss, metric or a callback failed: keep what was finished
        partial = tuner.partial_result()
        done = len(partial.history)
        where = f"meta step {tuner.step_count}" if stepping[0] else "the final evaluation"
        best = "" if not math.isfinite(tuner.best_loss) else f"; best validation loss {tuner.best_loss:.6g}"
        saved = f", and in {str(folder / CHECKPOINT_NAME)!r}" if folder is not None and done else ""
        raise TuneError(
            f"tuning failed in {where} [{type(exc).__name__}: {exc}]; the {done} finished meta step(s) are "
            f"in the exception's .result{saved}{best}",
            result=partial, step=tuner.step_count if stepping[0] else None,
            checkpoint=folder / CHECKPOINT_NAME if folder is not None and done else None,
        ) from exc
