r"""The ``"auto"`` strategy, the default: the choice the measurements of ``docs/results/strategies.md`` support.

``auto`` is the ``"sign"`` strategy (:mod:`hypergrad.strategies.sign`): sign steps with
per-hyperparameter step sizes on the hypergradient chosen by memory (BPTT when its graph fits
``max_memory``, RBP otherwise), then the selection on unseen batch orders.
"""

from __future__ import annotations

from hypergrad.strategies.sign import SignStrategy

__all__ = ["AutoStrategy"]


class AutoStrategy(SignStrategy):
    """The default strategy (module docstring)."""

    name = "auto"
