"""Associative memory with a continuous Hopfield network (paper §5.1)."""
