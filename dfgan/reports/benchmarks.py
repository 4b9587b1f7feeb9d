"""Sampling throughput for Table 1, read from the benchmark records when there are any.

Accepted: pytest-benchmark JSON (``{"benchmarks": [{"name", "group", "extra_info": {...}}]}``), a list of
records, or ``{"records": [...]}``. A record counts as a sampling throughput when its kind/group/name mentions
sampling and it carries ``images_per_s`` (or ``images_per_sec``) and a generator (``backbone`` and ``fusion``,
as the benchmarks in ``benchmarks/`` write them, or a ``variant`` name), top level or in ``extra_info``.
Sampling cost depends on the generator only, so a row is matched by its backbone and fusion, at the study's
``imsize``, ``nf`` and dtype; ``device``, ``dtype``, ``batch`` are shown with the number.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_FILES = ("reports/benchmarks.json",)
SPEED_KEYS = ("images_per_sec", "images_per_s", "img_per_s")
RECORD_FIELDS = ("variant", "backbone", "fusion", "imsize", "nf", "device", "dtype", "batch", "threads", "speed")


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
                if "sampl" in kind and speed is not None and (info.get("variant") or info.get("backbone")):
                    out.append({"images_per_sec": float(speed), **{k: info.get(k) for k in RECORD_FIELDS}})
            return out, str(p)
    return [], None


def _matches(record: dict, key: str, want) -> bool:
    return want is None or record.get(key) is None or str(record[key]) == str(want)


def throughput_for_rows(records: list[dict], rows: dict[str, dict], imsize: int | None, nf: int | None,
                        dtype: str = "float32") -> dict[str, dict]:
    """Per report row, the fastest sampling record of the same generator (backbone and fusion, or the same
    variant name when a record has no backbone) at the study's imsize, nf and dtype; never another size."""
    out: dict[str, dict] = {}
    for row, gen in rows.items():
        for r in records:
            same_gen = (_matches(r, "backbone", gen.get("backbone")) and _matches(r, "fusion", gen.get("fusion"))
                        if r.get("backbone") else r.get("variant") == row)
            if not (same_gen and _matches(r, "imsize", imsize) and _matches(r, "nf", nf)
                    and _matches(r, "dtype", dtype)):
                continue
            if row not in out or r["images_per_sec"] > out[row]["images_per_sec"]:
                out[row] = r
    return out
