r"""The ``"auto"`` strategy, the default: the choice the measurements of ``docs/results/strategies.md`` support.

``auto`` is the ``"sign"`` strategy (:mod:`hypergrad.strategies.sign`): sign steps with
per-hyperparameter step sizes on the hypergradient chosen by memory (BPTT when its graph fits
``max_memory``, RBP otherwise), then the selection on unseen batch orders by the mean of each
candidate's selection runs. The robust selection options of :class:`SignStrategy` (a *backoff*
candidate with every learning rate times 0.8, the *worst* selection order as the statistic)
measured neutral (``docs/results/robust_selection.md``: within 0.001 on seeds 100-105, and on
seeds 0-2), so the default keeps the simpler rule; pass them to opt in.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypergrad.baselines import SearchSpace
from hypergrad.strategies.sign import SELECTION_SALTS, SignRule, SignStrategy

__all__ = ["AUTO_BACKOFF", "AUTO_STATISTIC", "AutoStrategy"]

#: The selection of ``auto``: no backoff candidate, the mean over the selection orders (measured neutral).
AUTO_BACKOFF: float | None = None
AUTO_STATISTIC = "mean"


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
