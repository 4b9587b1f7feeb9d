"""Sampling throughput for Table 1, read from the benchmark records when there are any.

Accepted: pytest-benchmark JSON (``{"benchmarks": [{"name", "group", "extra_info": {...}}]}``), a list of
records, or ``{"records": [...]}``. A record counts as a sampling throughput when its kind/group/name mentions
sampling and it carries ``images_per_s`` (or ``images_per_sec``) and a generator (``backbone`` and ``fusion``,
as the benchmarks in ``benchmarks/`` write them, or a ``variant`` name), top level or in ``extra_info``.
Sampling cost depends on the generator only, so a row is matched by its backbone and fusion, at the study's
``imsize``, ``nf`` and dtype; ``device``, ``dtype``, ``batch`` are shown with the number.

The file read, unless one is named: ``reports/<study>/benchmarks.json`` (the benchmarks run on the study's own
commit, kept beside its report), else that of a study sharing its cells (same ``cell_pool``, so the same commit:
the benchmarks measure every named variant, so one record serves the whole pool), else ``reports/benchmarks.json``.
Where the record came from (its commit and machine, from pytest-benchmark's ``commit_info`` and ``machine_info``)
is said beside every number taken from it, with a warning when that commit is not the one the runs imported:
throughput then describes other code.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_FILES = ("reports/benchmarks.json",)
SPEED_KEYS = ("images_per_sec", "images_per_s", "img_per_s")
RECORD_FIELDS = ("variant", "backbone", "fusion", "imsize", "nf", "device", "dtype", "batch", "threads", "speed")


def choose_bench_file(path: str | Path | None, study_folder: str | Path | None = None,
                      pool_folders: list[Path] | tuple = ()) -> Path | None:
    """The benchmark record to read: ``path`` when given, else the study's own, else the first of the studies
    sharing its cells (``pool_folders``, their report folders), else the project's; None if none."""
    if path:
        return Path(path)
    own = [Path(study_folder) / "benchmarks.json"] if study_folder else []
    pool = [Path(f) / "benchmarks.json" for f in pool_folders]
    return next((p for p in own + pool + [Path(f) for f in DEFAULT_FILES] if p.is_file()), None)


def record_origin(path: str | Path | None) -> dict | None:
    """Where a pytest-benchmark record was measured: file, commit (and whether its tree was dirty), time, machine."""
    if not path or not Path(path).is_file():
        return None
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        return {"file": str(path), "commit": None}
    commit, machine = data.get("commit_info") or {}, data.get("machine_info") or {}
    first = next((b.get("extra_info", {}).get("machine", {}) for b in data.get("benchmarks", [])
                  if isinstance(b.get("extra_info", {}).get("machine"), dict)), {})
    cpu = (machine.get("cpu") or {}).get("brand_raw") or first.get("device_name")
    return {"file": str(path), "commit": commit.get("id"), "dirty": bool(commit.get("dirty")),
            "datetime": data.get("datetime"), "cpu": cpu, "cpu_capability": first.get("cpu_capability"),
            "threads": first.get("threads"), "host": machine.get("node")}


def origin_note(origin: dict | None, run_commits: list[str]) -> str:
    """One sentence: the record's commit and machine, and whether that is the code the runs imported."""
    if origin is None:
        return ""
    where = ", ".join(str(x) for x in (origin.get("cpu"), origin.get("cpu_capability"),
                                       origin.get("threads") and f"{origin['threads']} threads",
                                       origin.get("datetime") and str(origin["datetime"])[:10]) if x)
    commit = origin.get("commit")
    runs = sorted(set(run_commits))  # "<sha>-dirty" when a run imported uncommitted changes: never the same code
    head = f"Benchmark record {origin['file']}: " + (f"commit {commit[:12]}" if commit else "no commit recorded")
    head += (" (uncommitted changes)" if origin.get("dirty") else "") + (f", {where}" if where else "")
    if commit and runs == [commit] and not origin.get("dirty"):
        return head + "; the same commit the runs imported."
    shown = ", ".join(r[:12] + ("-dirty" if r.endswith("-dirty") else "") for r in runs) or "unknown"
    return (head + f"; NOT the code the runs imported ({shown}): these "
            "throughputs describe other code. Re-measure on the runs' commit: `scripts/study_workers.sh <study> "
            "--commit <sha> --benchmarks` (into reports/<study>/benchmarks.json), or `nox -s benchmark` from a "
            "checkout of it).")


def _raw_records(path: Path) -> list[dict]:
    """Every record of a benchmark file, each with its ``extra_info`` merged in."""
    data = json.loads(path.read_text())
    recs = data.get("benchmarks", data.get("records", [])) if isinstance(data, dict) else data
    return [{**r, **(r.get("extra_info") or {})} for r in recs]


def _speed_of(info: dict):
    """A record's images per second, under whichever of the accepted keys it uses; None without one."""
    return next((info[k] for k in SPEED_KEYS if info.get(k) is not None), None)


def load_records(path: str | Path | None) -> tuple[list[dict], str | None]:
    """(sampling records, the file read) - ([], None) when there is no file."""
    p = choose_bench_file(path)
    if p is None or not p.is_file():
        return [], None
    out = []
    for info in _raw_records(p):
        kind = " ".join(str(info.get(k, "")) for k in ("kind", "group", "name", "suite")).lower()
        speed = _speed_of(info)
        if "sampl" in kind and speed is not None and (info.get("variant") or info.get("backbone")):
            out.append({"images_per_sec": float(speed), **{k: info.get(k) for k in RECORD_FIELDS}})
    return out, str(p)


def variant_records(path: str | Path | None, kinds) -> dict[tuple[str, str], list[dict]]:
    """(kind, variant) -> the records of named variants of the given kinds (e.g. ``train_step``)."""
    if not path or not Path(path).is_file():
        return {}
    out: dict[tuple[str, str], list[dict]] = {}
    for info in _raw_records(Path(path)):
        speed = _speed_of(info)
        if info.get("kind") in kinds and info.get("variant") and speed is not None:
            out.setdefault((info["kind"], info["variant"]), []).append({**info, "images_per_s": float(speed)})
    return out


def fastest_of_variant(records: dict, kind: str, variant: str, dtype: str) -> dict | None:
    """The fastest record of one variant and kind, in ``dtype`` when there is one."""
    recs = records.get((kind, variant), [])
    same = [r for r in recs if r.get("dtype") == dtype] or recs
    return max(same, key=lambda r: r["images_per_s"]) if same else None


def round_spread(record: dict) -> tuple[float, int] | None:
    """(slowest round / fastest round - 1, rounds) of a pytest-benchmark record; None without its stats."""
    st = record.get("stats") or {}
    lo, hi, n = st.get("min"), st.get("max"), st.get("rounds")
    return (hi / lo - 1, int(n)) if lo and hi and n else None


def same_generator(a: dict, b: dict) -> bool:
    """Two sampling records of one and the same generator: backbone, fusion, size and FLOP count all equal."""
    keys = ("backbone", "fusion", "imsize", "nf", "batch", "dtype", "gflop_per_image")
    return all(a.get(k) is not None and a.get(k) == b.get(k) for k in keys)


def _matches(record: dict, key: str, want) -> bool:
    return want is None or record.get(key) is None or str(record[key]) == str(want)


def throughput_for_rows(records: list[dict], rows: dict[str, dict], imsize: int | None, nf: int | None,
                        dtype: str = "float32") -> dict[str, dict]:
    """Per report row, the fastest sampling record of the same generator (backbone and fusion, or the same
    variant name when a record has no backbone) at the study's imsize and nf, never another size; in ``dtype``
    where there is such a record, else in any (the record says which)."""
    out: dict[str, dict] = {}
    for row, gen in rows.items():
        same = [r for r in records
                if (_matches(r, "backbone", gen.get("backbone")) and _matches(r, "fusion", gen.get("fusion"))
                    if r.get("backbone") else r.get("variant") == row)
                and _matches(r, "imsize", imsize) and _matches(r, "nf", nf)]
        same = [r for r in same if _matches(r, "dtype", dtype)] or same
        if same:
            out[row] = max(same, key=lambda r: r["images_per_sec"])
    return out
