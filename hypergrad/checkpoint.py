"""Atomic, safe checkpoints of a tuning run.

A checkpoint is written after every meta step: to a temporary file in the same
folder, fsynced, then renamed over ``checkpoint.pt`` (and the folder fsynced),
so a kill at any moment leaves either the previous or the new checkpoint, never
a torn one. Checkpoints are read with ``torch.load(weights_only=True)``: they
hold only tensors, numbers, strings, lists and dicts, and a file crafted to
run code on load is refused.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_NAME", "FORMAT_VERSION", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or unsafe. The message names the file."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``folder/checkpoint.pt``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CHECKPOINT_NAME
    payload = {"format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return target


def load_checkpoint(folder_or_file: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); clear errors name the file."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"checkpoint {str(path)!r} is unsafe or corrupt and was refused: {first}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt: {first}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a hypergrad checkpoint (format {FORMAT_VERSION})")
    return state
