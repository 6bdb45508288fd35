"""Atomic, safe, checksummed checkpoints of a tuning run.

A checkpoint is written after every meta step: to a temporary file in the same
folder, fsynced, then renamed over ``checkpoint.pt`` (and the folder fsynced),
so a kill at any moment leaves either the previous or the new checkpoint, never
a torn one.

The file is an ordinary ``torch.save`` archive holding an envelope
``{"format_version", "sha256", "payload"}``: ``payload`` is the state itself,
serialised by ``torch.save`` into a ``uint8`` tensor, and ``sha256`` its digest.
A zip archive checks neither its pickle nor its tensor bytes, so without the
digest a flipped byte could load silently as a wrong learning rate; with it,
any corruption of the state is refused with :class:`CheckpointError`.

Both levels are read with ``torch.load(weights_only=True)``: they hold only
tensors, numbers, strings, lists and dicts, and a file crafted to run code on
load is refused before anything runs.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_NAME", "FORMAT_VERSION", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2


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


def _encode(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    raw = buffer.getvalue()
    return {
        "format_version": FORMAT_VERSION,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "payload": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
    }


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``folder/checkpoint.pt`` (tmp file, fsync, rename, fsync folder).

    One run writes one folder: leftover ``.checkpoint-*.tmp`` files (from a run killed mid-write)
    are removed after the new checkpoint is in place.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CHECKPOINT_NAME
    envelope = _encode(state)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(envelope, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    # A run killed while writing leaves its temporary file behind; the next good write removes it.
    for stale in folder.glob(".checkpoint-*.tmp"):
        stale.unlink(missing_ok=True)
    return target


def _unpickler_detail(exc: Exception) -> str:
    """The informative line of torch's weights-only refusal (e.g. ``Trying to load unsupported GLOBAL ...``)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.startswith(boilerplate):
            return line
    return ""


def _safe_load(source: Path | io.BytesIO, name: str) -> Any:
    try:
        with warnings.catch_warnings():
            # torch warns about legacy pickle protocols before refusing them; the refusal is what counts.
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        detail = f" ({detail})" if detail else ""
        raise CheckpointError(
            f"checkpoint {name!r} was refused: it holds objects other than tensors and plain data, "
            f"so it is unsafe or corrupt{detail}"
        ) from None
    except Exception as exc:  # a damaged archive fails in many ways (RuntimeError, KeyError, EOFError, ...)
        first = str(exc).splitlines()[0] if str(exc) else ""
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise CheckpointError(f"checkpoint {name!r} is truncated or corrupt ({first})") from None


def load_checkpoint(folder_or_file: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``, sha256-verified); clear errors name the file."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    name = str(path)
    envelope = _safe_load(path, name)
    if not isinstance(envelope, dict) or envelope.get("format_version") != FORMAT_VERSION:
        found = envelope.get("format_version") if isinstance(envelope, dict) else None
        raise CheckpointError(
            f"checkpoint {name!r} is not a hypergrad checkpoint of format {FORMAT_VERSION} (found {found!r})"
        )
    payload, digest = envelope.get("payload"), envelope.get("sha256")
    if not (isinstance(payload, torch.Tensor) and payload.dtype == torch.uint8 and payload.dim() == 1) or not (
        isinstance(digest, str)
    ):
        raise CheckpointError(f"checkpoint {name!r} is corrupt (malformed envelope)")
    raw = payload.numpy().tobytes()
    if hashlib.sha256(raw).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {name!r} is corrupt: its sha256 does not match the stored digest")
    state = _safe_load(io.BytesIO(raw), name)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {name!r} is corrupt (its state is not a dict)")
    return state
