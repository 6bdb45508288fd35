"""``python -m hypergrad`` (also under ``torchrun``)."""

import sys

from hypergrad.cli import main

sys.exit(main())
