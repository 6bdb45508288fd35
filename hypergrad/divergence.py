"""The divergence guards of a meta step, as pure functions (no tensors, no state).

A meta step can go wrong in five ways, detected by :func:`detect` in this order
(the first three exclude each other):

* ``nonfinite_loss``: a meta, validation or training loss is NaN or infinite;
* ``loss_blowup``: the validation loss exceeds ``blowup_ratio`` times the first meta step's;
* ``nonfinite_hypergrad``: the hypergradient's norm is NaN or infinite;
* ``exploding_hypergrad``: its norm exceeds ``explode_threshold``;
* ``solver_diverged``: a fixed-point solve diverged (:attr:`hypergrad.SolveInfo.diverged`;
  a Neumann series stopped on growth is the safeguard, not a divergence).

The policy (``on_divergence``) then decides, in :func:`decide`, what the step does:

========== ===========================================================================
policy     action
========== ===========================================================================
backoff    restore the best hyperparameters so far and halve the meta lr (``backoff``)
skip       take no meta step (``skipped``)
clip       rescale an exploding hypergradient to ``clip`` (or ``explode_threshold``) and
           step (``clipped``); skip on any other event
fallback   RBP only: recompute with Neumann-RBP and step if that one is sound
           (``fallback``, event ``fallback_neumann``); else skip
stop       record the step and raise :class:`DivergenceError` (``stop``)
========== ===========================================================================

Without an event the step is an ``update``, or ``clipped`` when ``clip`` is set and the
norm exceeds it. The policies' names are :data:`hypergrad.config.DIVERGENCE_POLICIES`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hypergrad.config import DIVERGENCE_POLICIES

__all__ = [
    "ACTIONS",
    "DIVERGENCE_POLICIES",
    "EVENTS",
    "FALLBACK_METHODS",
    "Decision",
    "DivergenceError",
    "decide",
    "detect",
    "fallback_event",
    "fallback_method",
    "fallback_sound",
]

EVENTS = ("nonfinite_loss", "loss_blowup", "nonfinite_hypergrad", "exploding_hypergrad", "solver_diverged")
ACTIONS = ("update", "clipped", "skipped", "backoff", "fallback", "stop")
# The method a diverging solve is retried with under on_divergence="fallback".
FALLBACK_METHODS = {"rbp": "neumann"}
# What a sound fallback hypergradient replaces: the events of the first hypergradient.
_FALLBACK_HANDLES = frozenset({"solver_diverged", "exploding_hypergrad", "nonfinite_hypergrad"})
BACKOFF_FACTOR = 0.5


class DivergenceError(RuntimeError):
    """Raised when ``on_divergence="stop"`` and a meta step diverged."""


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def detect(
    *,
    meta_loss: float,
    val_loss: float,
    train_loss: float,
    hypergrad_norm: float,
    solver_diverged: bool,
    first_val_loss: float | None,
    blowup_ratio: float | None,
    explode_threshold: float,
) -> list[str]:
    """The divergence events of one meta step, in the order of the module docstring.

    Args:
        meta_loss, val_loss, train_loss: the step's losses (non-finite allowed).
        hypergrad_norm: the hypergradient's norm.
        solver_diverged: a fixed-point solve of the hypergradient diverged.
        first_val_loss: the first meta step's validation loss (``None`` at the first step,
            or when it was not finite).
        blowup_ratio: ``val_loss > blowup_ratio * first_val_loss`` is a blow-up (``None``: off).
        explode_threshold: a larger hypergradient norm is exploding.
    """
    events: list[str] = []
    if not (_finite(val_loss) and _finite(train_loss) and _finite(meta_loss)):
        events.append("nonfinite_loss")
    elif blowup_ratio is not None and first_val_loss is not None and val_loss > blowup_ratio * first_val_loss:
        events.append("loss_blowup")
    elif not _finite(hypergrad_norm):
        events.append("nonfinite_hypergrad")
    elif hypergrad_norm > explode_threshold:
        events.append("exploding_hypergrad")
    if solver_diverged:
        events.append("solver_diverged")
    return events


def fallback_method(events: Sequence[str], policy: str, method: str, *, loss_ok: bool) -> str | None:
    """The method to recompute the hypergradient with, or ``None`` (no fallback applies).

    Only ``on_divergence="fallback"`` falls back, only from a method in :data:`FALLBACK_METHODS`,
    only after an event, and only when the losses were finite (the inner run itself is sound).
    """
    if events and policy == "fallback" and loss_ok:
        return FALLBACK_METHODS.get(method)
    return None


def fallback_event(method: str) -> str:
    """The event recorded when the hypergradient was recomputed with ``method``."""
    return f"fallback_{method}"


def fallback_sound(hypergrad_norm: float, *, diverged: bool, explode_threshold: float) -> bool:
    """Whether a fallback hypergradient may be used: finite, not exploding, its solve not diverged."""
    return _finite(hypergrad_norm) and hypergrad_norm <= explode_threshold and not diverged


@dataclass(frozen=True)
class Decision:
    """What a meta step does after its checks.

    Attributes:
        action: one of :data:`ACTIONS`.
        apply: take the meta optimiser's step.
        scale: multiply the hypergradient by this before the step (``None``: as it is).
        restore_best: set the hyperparameters back to the best so far.
        lr_factor: multiply the meta learning rate's scale by this (backoff: 0.5).
        unhandled: the events the policy acted on (named in :class:`DivergenceError`).
    """

    action: str
    apply: bool
    scale: float | None = None
    restore_best: bool = False
    lr_factor: float = 1.0
    unhandled: tuple[str, ...] = ()

    @property
    def stop(self) -> bool:
        return self.action == "stop"


def decide(
    events: Sequence[str],
    policy: str,
    *,
    hypergrad_norm: float,
    clip: float | None,
    explode_threshold: float,
    fallback_ok: bool = False,
) -> Decision:
    """The action of a meta step from its events and the ``on_divergence`` policy.

    Args:
        events: from :func:`detect`, plus :func:`fallback_event` when a fallback was computed.
        policy: one of :data:`DIVERGENCE_POLICIES`.
        hypergrad_norm: the norm of the hypergradient that would be applied (the fallback's, if any).
        clip: the config's maximum hypergradient norm (``None``: off).
        explode_threshold: the config's exploding-norm threshold (the clip policy's default target).
        fallback_ok: a fallback was computed and :func:`fallback_sound`.
    """
    if policy not in DIVERGENCE_POLICIES:
        raise ValueError(f"on_divergence={policy!r} is not allowed; expected one of {', '.join(DIVERGENCE_POLICIES)}")
    handled = _FALLBACK_HANDLES if fallback_ok else frozenset()
    unhandled = tuple(e for e in events if e not in handled and not e.startswith("fallback_"))
    if unhandled:
        if policy == "stop":
            return Decision("stop", apply=False, unhandled=unhandled)
        if policy == "clip" and unhandled == ("exploding_hypergrad",):
            target = clip if clip is not None else explode_threshold
            return Decision("clipped", apply=True, scale=min(1.0, target / hypergrad_norm), unhandled=unhandled)
        if policy == "backoff":
            return Decision("backoff", apply=False, restore_best=True, lr_factor=BACKOFF_FACTOR, unhandled=unhandled)
        return Decision("skipped", apply=False, unhandled=unhandled)
    if fallback_ok:
        return Decision("fallback", apply=True)
    if clip is not None and hypergrad_norm > clip:
        return Decision("clipped", apply=True, scale=clip / hypergrad_norm)
    return Decision("update", apply=True)
