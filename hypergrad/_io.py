"""Small I/O helpers: strict JSON and atomic writes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "write_json"]


def json_safe(x: Any) -> Any:
    """Non-finite floats become ``None`` (JSON has no NaN or Infinity); keys become strings."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> None:
    """Write strict JSON atomically: a temporary file, fsync, then rename (``indent=None``: one compact line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
