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

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hypergrad.callbacks import Callback
from hypergrad.config import DIVERGENCE_POLICIES, TuneConfig, tune_config
from hypergrad.divergence import DivergenceError
from hypergrad.hyperparams import HyperSpec
from hypergrad.inner import InnerProblem
from hypergrad.methods import method_names
from hypergrad.objective import MetaObjective
from hypergrad.records import MetaStepRecord, TuneResult
from hypergrad.strategies import SearchState, Strategy, get_strategy

__all__ = [
    "DIVERGENCE_POLICIES",
    "TUNE_METHODS",
    "Callback",
    "DivergenceError",
    "TuneConfig",
    "TuneResult",
    "Tuner",
    "tune",
]

#: The hypergradient methods' names (:func:`hypergrad.methods.method_names`), kept for callers of the tuner.
TUNE_METHODS = method_names()


class Tuner:
    """Stateful meta-optimisation of one :class:`InnerProblem` by one :class:`~hypergrad.strategies.Strategy`.

    Use :func:`tune` for the one-call API. The run's whole state is :attr:`state` (for the
    ``"gradient"`` strategy: hyperparameters, Adam state, history, best so far, meta-lr scale)
    plus the torch RNG state, all in :meth:`state_dict`, which is what checkpoints hold.

    Args:
        problem: the inner problem.
        config: the run's settings.
        callbacks: observers (:class:`~hypergrad.callbacks.Callback` subclasses).
        x_test, y_test: optional test set reported in the result's evaluation.
        strategy: a name in :data:`hypergrad.strategies.STRATEGIES` or a
            :class:`~hypergrad.strategies.Strategy` instance.
    """

    def __init__(
        self,
        problem: InnerProblem,
        config: TuneConfig,
        *,
        callbacks: Sequence[Callback] = (),
        x_test: Tensor | None = None,
        y_test: Tensor | None = None,
        strategy: str | Strategy = "gradient",
    ) -> None:
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks[{i}] is a {type(cb).__name__}, not a hypergrad.callbacks.Callback; "
                                "subclass Callback and override the hooks you need")
        self.objective = MetaObjective(problem, config, x_test=x_test, y_test=y_test)
        self.problem = problem
        self.config = config
        self.callbacks = list(callbacks)
        self.strategy = get_strategy(strategy)
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


def tune(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    train_data: tuple[Tensor, Tensor],
    val_data: tuple[Tensor, Tensor],
    *,
    test_data: tuple[Tensor, Tensor] | None = None,
    callbacks: Sequence[Callback] = (),
    **config: Any,
) -> TuneResult:
    """Tune per-tensor learning rates and momenta of ``model`` for SGD with momentum.

    Args:
        model: the user's module; its current weights are the inner runs' start.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        train_data: ``(x, y)`` for the inner training.
        val_data: ``(x, y)`` for the validation meta loss and best tracking.
        test_data: optional ``(x, y)`` reported in ``result.evaluation``.
        callbacks: observers (e.g. :class:`hypergrad.callbacks.TensorBoardLogger`).
        **config: fields of :class:`TuneConfig` (``strategy``, ``budget``, ``method``, ``inner_steps``, ...):
            ``strategy`` names the meta loop (:data:`hypergrad.strategies.STRATEGIES`) and
            ``budget`` the inner trainings of ``T`` steps the whole run spends (default ``meta_steps``).

    Returns:
        A :class:`TuneResult`; ``torch.optim.SGD(result.param_groups(model))``
        trains with the tuned hyperparameters.

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
    problem = InnerProblem(
        model, loss_fn, train_data[0], train_data[1], val_data[0], val_data[1],
        batch_size=cfg.batch_size, per=cfg.per,
    )
    x_test, y_test = test_data if test_data is not None else (None, None)
    tuner = Tuner(problem, cfg, callbacks=callbacks, x_test=x_test, y_test=y_test, strategy=cfg.strategy)
    return tuner.run()
