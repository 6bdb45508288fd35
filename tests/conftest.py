"""Test configuration: make the repository root importable (for ``recipes``) and point the data root.

``HYPERGRAD_DATA`` is set to ``../shared/datasets`` next to the checkout when it is unset, before
any test module is imported (several read ``default_data_root`` at import time); subprocesses
inherit it. Tests that need MNIST or Planetoid files skip when they are not there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if not os.environ.get("HYPERGRAD_DATA"):
    os.environ["HYPERGRAD_DATA"] = str(ROOT.parent / "shared" / "datasets")

torch.set_num_threads(1)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
