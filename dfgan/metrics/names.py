"""Which logged metrics measure quality, which way is better, and which one a table or an objective uses.

The metric definitions (``dfgan.metrics.registry``) name each metric by its protocol (``attr_acc``, ``fd_attr``,
``fid30k_test_clean``, ``kid_test_clean``, ``rprec_damsm``, ...). Tables pick their columns from whatever
the runs logged: quality metrics when there are any, else the final training losses, and say so.
"""

from __future__ import annotations

import re

from dfgan.metrics.registry import metric
from dfgan.registry import RegistryError

# (pattern, higher is better, what it is); the first match wins. Order = preference for the primary metric.
QUALITY_METRICS: list[tuple[str, bool, str]] = [
    (r"^attr_acc", True, "attribute accuracy of generated images vs their captions (built-in data)"),
    (r"^fd_", False, "Frechet distance in a non-Inception feature space (not FID)"),
    (r"^fid", False, "FID (Inception); comparable only under the same protocol"),
    (r"^kid", False, "KID (Inception)"),
    (r"^rprec", True, "R-precision (text-image retrieval)"),
    (r"^is(\d|_|$)", True, "Inception Score"),
]
FALLBACK_METRICS = ("loss_g", "loss_d")  # always logged by the training loop; they do not measure quality
SUBMETRIC_SEPARATORS = ("/", ".")  # e.g. attr_acc/colour: per-attribute details, not main columns


def quality_info(name: str) -> tuple[bool, str] | None:
    for pattern, higher, what in QUALITY_METRICS:
        if re.search(pattern, name):
            return higher, what
    return None


def is_quality(name: str) -> bool:
    return quality_info(name) is not None


def is_memorisation(name: str) -> bool:
    """A memorisation check (``dfgan.metrics.memorisation``): reported in its own table, never a quality column."""
    return name.startswith("memorisation_") and is_main(name)


def is_main(name: str) -> bool:
    return not any(s in name for s in SUBMETRIC_SEPARATORS)


def higher_is_better(name: str) -> bool | None:
    """From the metric's definition when ``name`` is a registered metric, else from its name's pattern."""
    try:
        return metric(name).higher_is_better
    except RegistryError:
        info = quality_info(name)
        return None if info is None else info[0]


def split_of(name: str) -> str | None:
    """The split a logged metric was evaluated on (registered names; None for others, e.g. losses)."""
    try:
        return metric(name).split
    except RegistryError:
        return None


def quality_columns(available: list[str] | set[str], main_only: bool = True) -> list[str]:
    """The quality metrics among ``available``, in preference order, then by name: those of the test split
    (what tables report) when there are any, else all (e.g. a search's trials, evaluated on val only)."""
    names = [n for n in available if is_quality(n) and (is_main(n) or not main_only)]
    names = [n for n in names if split_of(n) in ("test", None)] or names
    order = {p: i for i, (p, _, _) in enumerate(QUALITY_METRICS)}

    def key(n: str):
        rank = min(order[p] for p, _, _ in QUALITY_METRICS if re.search(p, n))
        return rank, n

    return sorted(names, key=key)


def choose_metric(available: list[str] | set[str], preferred: str | None = None) -> tuple[str | None, str]:
    """(metric, why): ``preferred`` if logged, else the first quality metric, else ``loss_g``."""
    available = set(available)
    if preferred and preferred in available:
        return preferred, "chosen by the study definition or the command line"
    q = quality_columns(available)
    note = f" ('{preferred}' was not logged)" if preferred else ""
    if q:
        return q[0], "the first quality metric the runs logged" + note
    for m in FALLBACK_METRICS:
        if m in available:
            return m, ("no quality metric was logged: the final generator loss is shown; it does NOT measure "
                       "image quality or text match" + note)
    return None, "no usable metric was logged" + note


def arrow(name: str) -> str:
    h = higher_is_better(name)
    return "" if h is None else (" ↑" if h else " ↓")
