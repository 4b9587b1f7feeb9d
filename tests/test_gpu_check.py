"""The GPU check (``nox -s gpu``, ``benchmarks/gpu_check.py``) in its CPU dry run: every part runs, and the report
has every section with finite numbers; a part that runs past its cap is cut and keeps what it wrote; the
datasheet peaks are found by device name; the Fréchet distance without clean-fid equals clean-fid's."""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest

from benchmarks import gpu_check
from benchmarks.gpu_fid import frechet_eigh
from benchmarks.gpu_peaks import datasheet_peak
from dfgan.metrics import fid as fidlib

SECTIONS = ["# GPU check", "## Parts", "## Device peak", "## Throughput of `full` at 32 px, batch 2",
            "## 64 px against 32 px", "## FID of 16 generated images, end to end", "## Tests on the device"]


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


def _positive(row: dict, *keys: str) -> None:
    for k in keys:
        v = row.get(k)
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (k, row)


@pytest.mark.slow
def test_dry_run_runs_every_part_and_reports_finite_numbers(tmp_path):
    """One dry run (about 10 s on an idle CPU): every part ok, every section there, every number finite."""
    out = tmp_path / "benchmarks_gpu.md"
    rc = gpu_check.main(["--dry-run", "--out", str(out)])
    md, res = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert rc == 0
    for s in SECTIONS:
        assert s in md, s
    assert set(res["parts"]) == set(gpu_check.PARTS)
    assert {p: r["status"] for p, r in res["parts"].items()} == {p: "ok" for p in gpu_check.PARTS}
    m = res["meta"]
    assert m["dry_run"] and m["device"] == "cpu" and m["torch"] and m["date_utc"] and "--dry-run" in m["command"]
    assert all(math.isfinite(x) for x in _numbers(res)), "a NaN or infinity in the results"
    _check_parts(md, res)


def _check_parts(md: str, res: dict) -> None:
    rows = {p: r["rows"] for p, r in res["parts"].items()}
    peaks = {(r["kind"], r["precision"]) for r in rows["peak"]}
    assert {("matmul", "bf16"), ("matmul", "fp32"), ("matmul", "tf32"), ("conv3x3", "bf16")} <= peaks
    for r in rows["peak"]:
        _positive(r, "tflop_s")
    ok = [r for r in rows["throughput"] if r["status"] == "ok"]
    assert {(r["kind"], r["config"]) for r in ok} >= {("train", "fp32"), ("train", "bf16"), ("sample", "fp32"),
                                                      ("sample", "bf16")}
    for r in ok:
        _positive(r, "ms_per_call", "images_per_s", "gflop_per_image", "achieved_tflop_s")
    assert any(r.get("mib_per_image", 0) > 0 for r in ok)  # memory measured (once per part in the dry run)
    graphs = [r for r in rows["throughput"] if "CUDA graph" in r["config"]]
    assert graphs and all(r["status"].startswith("skipped") for r in graphs)  # no CUDA here, and it says so
    hires = [r for r in rows["hires"] if r["status"] == "ok"]
    assert {r["imsize"] for r in hires} == {64} and len(hires) == 4
    for r in hires:  # 4x the pixels: more FLOPs per image than at 32 px
        low = next(x for x in ok if (x["kind"], x["config"]) == (r["kind"], r["config"]))
        assert r["gflop_per_image"] > 2 * low["gflop_per_image"]
    comp = [r for r in rows["compile"] if r["status"] == "ok"]
    assert comp and all(r["compile_s"] > 0 for r in comp)
    (fid,) = rows["fid"]
    _positive(fid, "generate_s", "features_s", "frechet_s", "total_s", "images_per_s")
    assert fid["status"] == "ok" and math.isfinite(fid["fid"]) and fid["n_images"] == 16
    tests = res["parts"]["tests"]["info"]
    assert tests["counts"] == {"passed": 1} and tests["exit_status"] == 0
    assert "Results: 1 passed" in md


def test_a_part_past_its_cap_is_cut_and_keeps_what_it_wrote(tmp_path):
    out = tmp_path / "part.json"
    child = ("import json, sys, time; open(sys.argv[1], 'w').write(json.dumps({'rows': [{'x': 1.5}]})); "
             "time.sleep(60)")
    t = time.monotonic()
    res = gpu_check.run_isolated([sys.executable, "-c", child, str(out)], 2.0, out)
    assert time.monotonic() - t < 15
    assert res["status"].startswith("cut") and res["rows"] == [{"x": 1.5}]
    failed = gpu_check.run_isolated([sys.executable, "-c", "raise SystemExit(3)"], 10.0, tmp_path / "f.json")
    assert failed["status"] == "error: exit status 3" and failed["rows"] == []


@pytest.mark.parametrize("name, key, bf16", [
    ("NVIDIA H200", "H200", 989.0), ("NVIDIA H100 80GB HBM3", "H100", 989.0), ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0), ("NVIDIA L4", "L4", 121.0), ("NVIDIA L40S", "L40S", 362.0),
    ("NVIDIA A10", "A10", 125.0), ("Tesla V100-SXM2-16GB", "V100", None),
])
def test_datasheet_peak_by_device_name(name, key, bf16):
    row = datasheet_peak(name)
    assert row is not None and row["key"] == key and row["bf16"] == bf16


def test_unknown_devices_have_no_datasheet_row():
    assert datasheet_peak("NVIDIA A10G") is None and datasheet_peak("AMD EPYC 7B13") is None


def test_frechet_fallback_equals_cleanfid():
    pytest.importorskip("cleanfid")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 6)), rng.normal(0.3, 1.5, size=(150, 6)) @ rng.normal(size=(6, 6))
    sa, sb = fidlib.feature_stats(a), fidlib.feature_stats(b)
    theirs = fidlib.frechet_distance(*sa, *sb)
    assert theirs > 1 and frechet_eigh(*sa, *sb) == pytest.approx(theirs, rel=1e-7)
