"""Optional dependencies, imported when a command or callback needs them.

``import hypergrad`` loads neither Optuna, matplotlib nor TensorBoard; the code that needs one
calls :func:`optional_import`, which names the package to install when it is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependency", "optional_import"]


class MissingDependency(ImportError):
    """An optional package is not installed; the message says what to install."""


def optional_import(name: str, extra: str, *, purpose: str = "") -> ModuleType:
    """Import module ``name`` (e.g. ``"optuna"``, ``"matplotlib.pyplot"``) or say how to install it.

    Args:
        name: the module to import.
        extra: the pip requirement that provides it (``"optuna"``, ``"tensorboard"``).
        purpose: what needs it, for the message (``"hypergrad compare's Optuna samplers"``).

    Raises:
        MissingDependency: (an ``ImportError``) ``name`` or a module it needs is not installed; the
            message names the missing module and says ``pip install <extra>``.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        needed = f" for {purpose}" if purpose else ""
        raise MissingDependency(
            f"{name} is needed{needed} but cannot be imported (no module named {exc.name!r}); "
            f"install it with: pip install {extra}"
        ) from exc
