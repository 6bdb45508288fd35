"""The ``--methods`` list of ``hypergrad compare``: gradient methods, Optuna samplers, hybrids and strategies."""

from __future__ import annotations

from typing import Literal

from hypergrad.baselines import SAMPLERS
from hypergrad.config import STRATEGY_NAMES, TUNER_METHODS

__all__ = ["DEFAULT_METHODS", "HYBRID_PREFIX", "STRATEGY_METHODS", "method_kind", "parse_methods"]

DEFAULT_METHODS = "neumann,tbptt,bptt,tpe,random,cmaes,tpe+neumann"
HYBRID_PREFIX = "tpe+"
#: The strategies compare runs as methods (``gradient`` is its methods ``bptt, neumann, ...``; ``online``
#: is one training, not a budget of them: ``python -m benchmarks.strategies --methods online`` scores it).
STRATEGY_METHODS = tuple(s for s in STRATEGY_NAMES if s not in ("gradient", "online"))


def parse_methods(text: str) -> list[str]:
    """Split ``--methods`` and validate each: a gradient method, a sampler, ``tpe+<gradient method>`` or a strategy."""
    gradient = TUNER_METHODS
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods is empty")
    for m in methods:
        if m in gradient or m in SAMPLERS or m in STRATEGY_METHODS:
            continue
        if m.startswith(HYBRID_PREFIX) and m[len(HYBRID_PREFIX):] in gradient:
            continue
        raise ValueError(
            f"unknown method {m!r} in --methods; expected gradient methods ({', '.join(gradient)}), "
            f"samplers ({', '.join(SAMPLERS)}), a hybrid tpe+<gradient method> or strategies "
            f"({', '.join(STRATEGY_METHODS)})"
        )
    dupes = sorted({m for m in methods if methods.count(m) > 1})
    if dupes:
        raise ValueError(f"method(s) listed twice in --methods: {', '.join(dupes)}")
    return methods


def method_kind(method: str) -> Literal["gradient", "optuna", "hybrid", "strategy"]:
    """``"gradient"`` (a hypergradient method), ``"optuna"`` (a sampler), ``"hybrid"`` (``tpe+<method>``)
    or ``"strategy"`` (``sign``, ``hybrid``, ``auto``: :data:`hypergrad.strategies.STRATEGIES`)."""
    if method in STRATEGY_METHODS:
        return "strategy"
    if method in TUNER_METHODS:
        return "gradient"
    if method in SAMPLERS:
        return "optuna"
    return "hybrid"
