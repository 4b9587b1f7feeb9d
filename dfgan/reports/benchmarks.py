"""Sampling throughput for Table 1, read from the benchmark records when there are any.

Accepted: pytest-benchmark JSON (``{"benchmarks": [{"name", "group", "extra_info": {...}}]}``), a list of
records, or ``{"records": [...]}``. A record counts as a sampling throughput when its kind/group/name mentions
sampling and it carries ``variant`` and ``images_per_sec`` (top level or in ``extra_info``); ``imsize``,
``nf``, ``device``, ``dtype``, ``batch`` are used to match the study's size and are shown with the number.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_FILES = ("reports/benchmarks.json",)
SPEED_KEYS = ("images_per_sec", "images_per_s", "img_per_s")


def load_records(path: str | Path | None) -> tuple[list[dict], str | None]:
    """(sampling records, the file read) - ([], None) when there is no file."""
    candidates = [Path(path)] if path else [Path(p) for p in DEFAULT_FILES]
    for p in candidates:
        if p.is_file():
            data = json.loads(p.read_text())
            recs = data.get("benchmarks", data.get("records", [])) if isinstance(data, dict) else data
            out = []
            for r in recs:
                info = {**r, **(r.get("extra_info") or {})}
                kind = " ".join(str(info.get(k, "")) for k in ("kind", "group", "name", "suite")).lower()
                speed = next((info[k] for k in SPEED_KEYS if info.get(k) is not None), None)
                if "sampl" in kind and info.get("variant") and speed is not None:
                    out.append({"variant": info["variant"], "images_per_sec": float(speed),
                                **{k: info.get(k) for k in ("imsize", "nf", "device", "dtype", "batch", "threads")}})
            return out, str(p)
    return [], None


def throughput_by_variant(records: list[dict], imsize: int | None, nf: int | None) -> dict[str, dict]:
    """Per variant, the record at the study's imsize and nf if there is one, else none (never another size)."""
    out: dict[str, dict] = {}
    for r in records:
        if imsize is not None and r.get("imsize") is not None and int(r["imsize"]) != imsize:
            continue
        if nf is not None and r.get("nf") is not None and int(r["nf"]) != nf:
            continue
        best = out.get(r["variant"])
        if best is None or r["images_per_sec"] > best["images_per_sec"]:
            out[r["variant"]] = r
    return out
