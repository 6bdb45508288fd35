r"""The ``"auto"`` strategy, the default: the choice the measurements of ``docs/results/strategies.md`` support.

``auto`` is the ``"sign"`` strategy (:mod:`hypergrad.strategies.sign`): sign steps with
per-hyperparameter step sizes on the hypergradient chosen by memory (BPTT when its graph fits
``max_memory``, RBP otherwise), then the selection on unseen batch orders, with the robust
selection of ``docs/results/robust_selection.md`` (chosen on seeds 100-105): a *backoff*
candidate (the best search candidate with every learning rate times 0.8, away from the edge of
stability) and each candidate scored by its *worst* selection order (``statistic="max"``).
The backoff costs two inner trainings of the budget (the search has two steps fewer).
"""

from __future__ import annotations

from collections.abc import Sequence

from hypergrad.baselines import SearchSpace
from hypergrad.strategies.sign import SELECTION_SALTS, SignRule, SignStrategy

__all__ = ["AUTO_BACKOFF", "AUTO_STATISTIC", "AutoStrategy"]

#: The robust selection of ``auto``: the backoff factor on the learning rates, the statistic.
AUTO_BACKOFF = 0.8
AUTO_STATISTIC = "max"


class AutoStrategy(SignStrategy):
    """The default strategy (module docstring); the arguments are :class:`SignStrategy`'s, other defaults."""

    name = "auto"

    def __init__(
        self, *, rule: SignRule | None = None, top: int = 2, salts: Sequence[int] = SELECTION_SALTS,
        space: SearchSpace | None = None, statistic: str = AUTO_STATISTIC, backoff: float | None = AUTO_BACKOFF,
        average: int = 0,
    ) -> None:
        super().__init__(rule=rule, top=top, salts=salts, space=space, statistic=statistic, backoff=backoff,
                         average=average)
