"""Measurement helpers shared by the benchmarks and recipes (Linux ``/proc`` based).

Peak resident memory: call :func:`reset_peak` after set-up (writes ``5`` to
``/proc/self/clear_refs``), run the work, then read ``status_kib("VmHWM")``. Run under
``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`` so that the resident size follows
live tensors, and measure each method in a fresh process.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

__all__ = ["library_version", "reset_peak", "status_kib"]


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB, e.g. ``"VmRSS"`` or ``"VmHWM"``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def library_version() -> dict[str, str]:
    """The git head and a hash of the hypergrad sources this process imported."""
    root = Path(__file__).parent
    h = hashlib.sha1()
    for f in sorted(root.rglob("*.py")):
        h.update(f.read_bytes())
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
    except OSError:
        head = ""
    return {"git_head": head, "hypergrad_sources_sha1": h.hexdigest()[:12]}
