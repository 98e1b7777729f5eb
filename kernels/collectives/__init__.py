"""Collectives between chips: what a tensor-parallel decode step pays on every layer."""
from . import ops  # noqa: F401  (registers allreduce)
