"""Evaluation noise: each final evaluation is repeated over independent noise draws (``spec.eval.noise_draws``),
so that the noise of the evaluation itself can be told apart from seed noise (``dfgan.metrics.evaluate``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

NOISE_DRAWS_RULE = ("mean over the noise draws; details: draw<k> = draw k's value, noise_sd = their SD (ddof 1), "
                    "other details = their mean over the draws")


def combine_draws(results: list[tuple[float, dict, dict]]) -> tuple[float, dict]:
    """(value, details) of one metric over its noise draws (``NOISE_DRAWS_RULE``); one draw is kept as it is."""
    values = np.array([float(v) for v, _, _ in results])
    if len(results) == 1:
        return float(values[0]), dict(results[0][1])
    details: dict[str, Any] = {}
    for key in results[0][1]:
        parts = [r[1].get(key) for r in results]
        if all(isinstance(x, (int, float)) for x in parts):
            finite = [float(x) for x in parts if math.isfinite(x)]
            details[key] = float(np.mean(finite)) if finite else float("nan")
        else:
            details[key] = parts[0]
    details.update({f"draw{k}": float(v) for k, v in enumerate(values)})
    details["noise_sd"] = float(values.std(ddof=1))
    return float(values.mean()), details


def draw_seeds(seed: int, draws: int) -> list[int]:
    """The torch seeds of ``draws`` noise draws: ``seed``, ``seed + 1``, ..."""
    return [int(seed) + k for k in range(int(draws))]
