"""Datasets: the built-in generated data and the loaders of real data layouts, each registering itself in
``dfgan.registry.DATASETS`` (``dfgan.experiment`` imports them all)."""
