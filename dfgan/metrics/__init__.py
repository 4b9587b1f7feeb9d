"""Measurements of trained models and of the networks themselves (parameter counts, image metrics).

Modules: ``registry`` (metric names and what each computes), ``evaluate`` (the generation and feature passes,
``metrics.jsonl`` and MLflow), ``fid`` (FID/KID/IS maths and clean-fid's Inception from local files),
``features`` (extractors and cached reference statistics), ``attributes`` (built-in attribute accuracy and
``fd_attr``), ``consistency`` (DAMSM R-precision), ``proxy`` (``fd_effnet_lite0``), ``nop`` (parameter
counts), ``names`` (which logged metrics measure quality and which way is better).
"""

_LAZY = {
    "evaluate_during_training": "dfgan.metrics.evaluate",
    "EvalOptions": "dfgan.metrics.evaluate",
    "METRICS": "dfgan.metrics.registry",
    "metric": "dfgan.metrics.registry",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):  # imported on first use: ``import dfgan.metrics.nop`` stays light
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dfgan.metrics' has no attribute {name!r}")
