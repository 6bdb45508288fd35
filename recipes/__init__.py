"""Thin recipes on hypergrad's public API. Run them as ``python -m recipes.<name>.run``."""
