"""Datasets; importing this package registers them all."""

from dfgan.data import builtin  # noqa: F401
