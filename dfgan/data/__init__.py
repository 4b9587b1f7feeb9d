"""Datasets; importing this package registers them all."""

from dfgan.data import builtin, coco_json, dfgan_layout, folder  # noqa: F401  (dfgan_layout: birds, coco)
