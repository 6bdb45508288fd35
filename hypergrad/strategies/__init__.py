r"""Strategies: meta loops over a :class:`~hypergrad.objective.MetaObjective`.

A strategy is a small value, like an Optuna sampler or an optax transformation: the meta
objective, the config and a budget of inner trainings go in, a
:class:`~hypergrad.records.TuneResult` with one typed record per step comes out, and its
mutable state is a :class:`SearchState` the :class:`~hypergrad.tuner.Tuner` checkpoints and
resumes. The protocol is in :mod:`~hypergrad.strategies.base`; a new meta loop is a
:class:`Strategy` subclass registered in :data:`STRATEGIES`. The built-in ones:

* ``"gradient"`` (:class:`GradientStrategy`, the paper's method, §5.3): every meta step trains
  from :math:`w_0`, takes the hypergradient of ``config.method``, applies the divergence guards
  of :mod:`hypergrad.divergence` and an Adam step on :math:`(\log\alpha, \operatorname{logit}\beta)`;
* ``"sign"`` (:class:`SignStrategy`): sign steps with per-hyperparameter step sizes on BPTT's
  hypergradient (RBP's when BPTT's graph does not fit ``max_memory``,
  :mod:`~hypergrad.strategies.estimator`), then a selection on batch orders no hypergradient saw;
* ``"hybrid"`` (:class:`HybridStrategy`): TPE over the ``hypergrad compare`` search space, then the
  sign rule from its best trials, then the same selection;
* ``"online"`` (:class:`OnlineStrategy`): ONE training of ``inner_steps`` steps, never
  restarted, with a hypergradient at the current state and an Adam step every
  ``online_period`` steps (:mod:`~hypergrad.strategies.online`);
* ``"auto"`` (:class:`AutoStrategy`): the measured default (:mod:`~hypergrad.strategies.auto`).

Budgets count inner trainings of ``T`` steps: for ``sign``, ``hybrid`` and ``auto`` every step
(a search step with its hypergradient, a TPE trial, a selection run) is one, and a run of
budget ``N`` takes exactly ``N`` steps; for ``gradient`` one meta step is one, and the final
evaluation (three runs on salt -1) is not counted, as before; ``online`` takes no budget: it is
one training of ``inner_steps`` steps plus a hypergradient every ``online_period`` steps.
"""

from __future__ import annotations

import logging

from hypergrad.config import STRATEGY_NAMES, TuneConfig
from hypergrad.strategies.auto import AutoStrategy
from hypergrad.strategies.base import SearchState, Strategy, final_evaluation
from hypergrad.strategies.estimator import Estimator, choose_estimator
from hypergrad.strategies.gradient import GradientState, GradientStrategy
from hypergrad.strategies.hybrid import HybridState, HybridStrategy
from hypergrad.strategies.online import OnlineState, OnlineStrategy
from hypergrad.strategies.sign import SELECTION_SALTS, SignRule, SignState, SignStrategy

__all__ = [
    "SELECTION_SALTS",
    "STRATEGIES",
    "STRATEGY_NAMES",
    "AutoStrategy",
    "Estimator",
    "GradientState",
    "GradientStrategy",
    "HybridState",
    "HybridStrategy",
    "OnlineState",
    "OnlineStrategy",
    "SearchState",
    "SignRule",
    "SignState",
    "SignStrategy",
    "Strategy",
    "choose_estimator",
    "final_evaluation",
    "get_strategy",
]

logger = logging.getLogger("hypergrad")

#: Name -> strategy class (``Tuner(..., strategy=name)``); its keys are ``hypergrad.config.STRATEGY_NAMES``.
STRATEGIES: dict[str, type[Strategy]] = {
    "auto": AutoStrategy,
    "gradient": GradientStrategy,
    "sign": SignStrategy,
    "hybrid": HybridStrategy,
    "online": OnlineStrategy,
}


def get_strategy(strategy: str | Strategy, config: TuneConfig | None = None) -> Strategy:
    """A :class:`Strategy` instance from a name in :data:`STRATEGIES` (or the instance itself).

    ``"auto"`` resolves with ``config``: the sign strategy (:class:`AutoStrategy`) when the run's
    budget (``config.budget``, else ``config.meta_steps``) holds its search steps and selection
    runs, else the gradient strategy, the only one that fits a budget that small.
    """
    if isinstance(strategy, Strategy):
        return strategy
    if strategy == "auto" and config is not None:
        auto = AutoStrategy()
        budget = config.budget if config.budget is not None else config.meta_steps
        if budget < auto.min_budget():
            logger.info("strategy auto: a budget of %d inner trainings is below the %d that sign steps and "
                        "their selection need; running the gradient strategy", budget, auto.min_budget())
            return GradientStrategy()
        return auto
    if isinstance(strategy, str) and strategy in STRATEGIES:
        return STRATEGIES[strategy]()
    raise ValueError(
        f"strategy={strategy!r} is not allowed; expected one of {', '.join(STRATEGIES)} or a Strategy instance"
    )
