"""benchmarks/tensorboard_screenshot.py: headless Chromium photographs a real TensorBoard's first screen."""

from __future__ import annotations

import pytest

from benchmarks.tensorboard_screenshot import find_chromium, screenshot
from hypergrad.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed (Debian: apt-get install chromium)"),
]


def test_screenshot_of_the_time_series_dashboard(tmp_path):
    import matplotlib.image
    import numpy as np

    logdir = tmp_path / "run"
    assert main(["tune", "--inner-steps", "10", "--truncate", "4", "--meta-steps", "3", "--batch-size", "50",
                 "--hidden", "8", "--no-progress", "--logdir", str(logdir)]) == 0
    out = screenshot(logdir, tmp_path / "shot.png", width=900, height=700, timeout=90)
    image = matplotlib.image.imread(out)[..., :3]
    assert image.shape[:2] == (700, 900)
    # TensorBoard's orange header bar rendered (not a blank or an error page) ...
    header = image[5:40].reshape(-1, 3)
    orange = (header[:, 0] > 0.9) & (header[:, 1] > 0.35) & (header[:, 1] < 0.65) & (header[:, 2] < 0.2)
    assert orange.mean() > 0.5
    # ... and the charts below it: many distinct colours, not one flat page
    body = (image[200:] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(body, axis=0)) > 50
