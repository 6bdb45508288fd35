"""Screenshot of TensorBoard's first screen for a tuning run, with headless Chromium.

Starts a real ``tensorboard`` server on 127.0.0.1 for ``--logdir`` (or first runs
``hypergrad tune --dataset digits`` into a temporary folder), opens its Time Series
dashboard in headless Chromium (``?forceSVG=true``: the WebGL charts do not render without
a GPU) and saves the visible window as a PNG::

    python -m benchmarks.tensorboard_screenshot --out docs/figures/tensorboard_first_screen.png

Chromium comes from the system's packages (Debian/Ubuntu: ``apt-get install chromium``);
:func:`find_chromium` says whether one is installed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["find_chromium", "screenshot"]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of an installed Chromium (or Chrome), or ``None``."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_scalars(base: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tensorboard exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"{base}/data/plugin/scalars/tags", timeout=5) as r:
                if any(json.loads(r.read()).values()):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"tensorboard served no scalars within {timeout:.0f} s")


def screenshot(
    logdir: str | Path,
    out: str | Path,
    *,
    chromium: str | None = None,
    width: int = 1400,
    height: int = 1000,
    dashboard: str = "timeseries",
    timeout: float = 120.0,
) -> Path:
    """Serve ``logdir`` with a real TensorBoard on loopback and save Chromium's view of ``dashboard`` as ``out``.

    Raises:
        FileNotFoundError: no Chromium is installed (and none was given).
        RuntimeError, TimeoutError: the server or the browser failed.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)}); "
                                "install it, e.g. apt-get install chromium")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _wait_for_scalars(base, server, timeout)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                 "--virtual-time-budget=20000", f"--screenshot={out}", f"{base}/?forceSVG=true#{dashboard}"],
                check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--logdir", default=None, help="a tune run's logdir (default: tune digits into a temp dir)")
    parser.add_argument("--out", default="docs/figures/tensorboard_first_screen.png")
    parser.add_argument("--meta-steps", default="50", help="meta steps of the digits run made without --logdir")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--dashboard", default="timeseries", choices=("timeseries", "scalars", "hparams"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.logdir
        if logdir is None:
            logdir = str(Path(tmp) / "digits")
            subprocess.run([sys.executable, "-m", "hypergrad", "tune", "--dataset", "digits", "--meta-steps",
                            args.meta_steps, "--logdir", logdir, "--no-progress"], check=True)
        path = screenshot(logdir, args.out, width=args.width, height=args.height, dashboard=args.dashboard)
    print(f"screenshot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
