"""Where cached artifacts (built-in data, pretrained text encoders, reference statistics) live."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$DFGAN_CACHE`` if set, else ``~/.cache/dfgan``."""
    return Path(os.environ.get("DFGAN_CACHE") or Path.home() / ".cache" / "dfgan")
