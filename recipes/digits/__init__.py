"""Tuning recipes on the embedded digits data (and MNIST for the stability check)."""
