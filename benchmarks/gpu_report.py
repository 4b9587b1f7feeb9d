"""``reports/benchmarks_gpu.md`` from the GPU check's results (``benchmarks/gpu_check.py``); the JSON beside it
holds the same results in full."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from benchmarks.report import cell, md_table, pct

PART_TITLES = {
    "peak": "device peak (matmul, 3x3 convolution)",
    "throughput": "training and sampling throughput",
    "hires": "larger images: cost and memory per image",
    "fid": "FID end to end",
    "tests": "test suite on the device",
    "compile": "torch.compile and CUDA graphs",
}


def _rows(results: dict, part: str) -> list[dict]:
    return results["parts"].get(part, {}).get("rows", [])


def _info(results: dict, part: str) -> dict:
    return results["parts"].get(part, {}).get("info", {})


def measured_peaks(results: dict) -> dict[str, float]:
    """Measured large-matmul TFLOP/s per precision (the peak part)."""
    return {r["precision"]: r["tflop_s"] for r in _rows(results, "peak") if r.get("kind") == "matmul"
            and r.get("status") == "ok"}


def _fractions(r: dict, results: dict) -> tuple[float | None, float | None]:
    t, p = r.get("achieved_tflop_s"), r.get("peak_precision")
    sheet = (results["meta"].get("datasheet") or {}).get(p)
    meas = measured_peaks(results).get(p)
    return (t / sheet if t and sheet else None), (t / meas if t and meas else None)


def _status_cell(r: dict) -> str:
    return "" if r.get("status") == "ok" else str(r.get("status", ""))


def throughput_table(results: dict, rows: list[dict]) -> str:
    fp32 = {(r["kind"], r["imsize"]): r["ms_per_call"] for r in rows
            if r.get("config") == "fp32" and r.get("status") == "ok"}
    out = []
    for r in rows:
        ok = r.get("status") == "ok"
        sheet, meas = _fractions(r, results) if ok else (None, None)
        base = fp32.get((r["kind"], r["imsize"]))
        speedup = f"{base / r['ms_per_call']:.2f}x" if ok and base else ""
        out.append([r["kind"], r["config"], r["imsize"], r["batch"], r.get("ms_per_call"), r.get("images_per_s"),
                    speedup, r.get("gflop_per_image"), r.get("achieved_tflop_s"), pct(sheet), pct(meas),
                    r.get("max_allocated_mib"), r.get("mib_per_image"), r.get("compile_s"), _status_cell(r)])
    return md_table(["step", "configuration", "px", "batch", "ms/call", "images/s", "vs fp32", "GFLOP/image",
                     "TFLOP/s", "of datasheet peak", "of measured matmul peak", "peak MiB (all)",
                     "MiB/image (above weights)", "compile s", "status"], out)


def hires_table(results: dict) -> str:
    low = {(r["kind"], r["config"]): r for r in _rows(results, "throughput") if r.get("status") == "ok"}
    out = []
    for r in _rows(results, "hires"):
        ok, lo = r.get("status") == "ok", low.get((r["kind"], r["config"]))
        per = lambda x: x["ms_per_call"] / x["batch"]  # noqa: E731
        cost = per(r) / per(lo) if ok and lo else None
        mem = r["mib_per_image"] / lo["mib_per_image"] if ok and lo and lo.get("mib_per_image") else None
        out.append([r["kind"], r["config"], r["batch"], per(r) if ok else None, per(lo) if lo else None,
                    cost, r.get("gflop_per_image"), lo.get("gflop_per_image") if lo else None,
                    r.get("mib_per_image"), lo.get("mib_per_image") if lo else None, mem,
                    r.get("max_allocated_mib"), _status_cell(r)])
    hi, lo_px = results["meta"]["sizes"]["hires"], results["meta"]["sizes"]["imsize"]
    return md_table(["step", "configuration", "batch", f"ms/image {hi}", f"ms/image {lo_px}", "cost ratio",
                     f"GFLOP/image {hi}", f"GFLOP/image {lo_px}", f"MiB/image {hi}", f"MiB/image {lo_px}",
                     "memory ratio", f"peak MiB (all) {hi}", "status"], out)


def peak_section(results: dict) -> str:
    sheet = results["meta"].get("datasheet")
    meas = {(r["kind"], r["precision"]): r["tflop_s"] for r in _rows(results, "peak") if r.get("status") == "ok"}
    rows = [[p, (sheet or {}).get(p), meas.get(("matmul", p)), meas.get(("conv3x3", p))]
            for p in ("bf16", "tf32", "fp32")]
    head = (f"Datasheet row: **{sheet['key']}** (dense, no sparsity)." if sheet else
            f"Device {results['meta'].get('device_name')!r} is not in the datasheet table "
            "(`benchmarks/gpu_peaks.py:DATASHEET_TFLOPS`): fractions are against the measured peak only.")
    n = next((r["n"] for r in _rows(results, "peak") if r.get("kind") == "matmul"), None)
    conv = next((r for r in _rows(results, "peak") if r.get("kind") == "conv3x3"), {})
    return (head + f" Measured: best of 10 {n}x{n}x{n} matmuls; 3x3 convolution {conv.get('channels')} channels, "
            f"{conv.get('side')} px, batch {conv.get('batch')}, channels_last, cuDNN autotuned (direct-convolution "
            "FLOPs).\n\n" + md_table(["precision", "datasheet TFLOP/s", "measured matmul TFLOP/s",
                                       "measured 3x3 conv TFLOP/s"], rows))


def tests_section(results: dict) -> str:
    part = results["parts"].get("tests", {})
    i = part.get("info", {})
    if not i:
        return f"No test results ({part.get('status', 'not run')})."
    counts = ", ".join(f"{v} {k}" for k, v in sorted(i.get("counts", {}).items())) or "none"
    lines = [f"`{' '.join(part.get('command', []))}`", "",
             f"Results: {counts}; {len(i.get('collection_errors', []))} modules failed to import; "
             f"{i.get('cuda_tests', 0)} of {i.get('tests', 0)} tests allocated CUDA memory; "
             f"{cell(i.get('seconds'))} s; part status: {part.get('status')}."]
    if i.get("collection_errors"):
        lines += ["", md_table(["module that failed to import", "error"],
                               [[e["module"], e["message"]] for e in i["collection_errors"]])]
    if i.get("failures"):
        lines += ["", md_table(["failed test", "phase", "error"],
                               [[e["test"], e["when"], e["message"]] for e in i["failures"]])]
    return "\n".join(lines)


def fid_section(results: dict) -> str:
    i, rows = _info(results, "fid"), _rows(results, "fid")
    if not rows:
        return f"No FID result ({results['parts'].get('fid', {}).get('status', 'not run')})."
    r = rows[0]
    src = (i.get("extractor") or {}).get("source")
    table = md_table(["images", "generate s", "resize + Inception s", "mean/cov s", "Fréchet s", "total s",
                      "images/s", "FID", "status"],
                     [[r.get("n_images"), r.get("generate_s"), r.get("features_s"), r.get("stats_s"),
                       r.get("frechet_s"), r.get("total_s"), r.get("images_per_s"),
                       r.get("fid") if r.get("fid") is not None else i.get("value_note"), _status_cell(r)]])
    checked = i.get("real_inception_checked")
    if i.get("extractor_error"):
        table += f"\n\nThe Inception weights found did not load or run: {i['extractor_error']}."
    return (f"Extractor: {src}; value: {i.get('value_note')}. Generation of `full` at {i.get('imsize')} px, bf16, "
            f"batch {i.get('batch')}; {i.get('n_reference')} reference images drawn and featured first "
            f"(untimed: {cell(i.get('reference_s'))} s). Fréchet distance: {r.get('frechet_method')}.\n\n" + table
            + (f"\n\nReal Inception loaded and checked: {checked}." if checked else ""))


def _safe(section, results: dict) -> str:
    """A section, or why it could not be written (the report is written whatever a part left behind)."""
    try:
        return section(results)
    except Exception as e:  # noqa: BLE001
        return f"(this section could not be written: {type(e).__name__}: {e}; the JSON beside it has the data)"


def render(results: dict) -> str:
    m = results["meta"]
    parts = [[p, PART_TITLES.get(p, p), v.get("status"), cell(v.get("seconds")), cell(v.get("cap_s"))]
             for p, v in results["parts"].items()]
    tp = _rows(results, "throughput") + _rows(results, "compile")
    s = m["sizes"]
    doc = [
        "# GPU check" + (" (DRY RUN on CPU: tiny sizes, the numbers say nothing about speed)" if m["dry_run"] else ""),
        "",
        f"- command: `{m['command']}`",
        f"- date: {m['date_utc']}; commit {m.get('git_commit')}",
        f"- device: {m.get('device_name')} ({m['device']})" + (
            f", {m['gpu_memory_gib']} GiB, compute capability {m['capability']}, {m['sm_count']} SMs"
            if m["device"].startswith("cuda") else "") + f"; {m.get('cpu_count')} CPUs",
        f"- torch {m['torch']}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}, Python {m['python']} "
        f"({m['python_executable']})",
        f"- budget {m['budget_s']:.0f} s, total {cell(m.get('total_s'))} s; every part has its own cap, and a part "
        "that runs past it is cut (what it measured by then is kept)",
        "",
        "## Parts",
        "",
        md_table(["part", "what", "status", "seconds", "cap s"], parts),
        "",
        "## Device peak",
        "",
        _safe(peak_section, results),
        "",
        f"## Throughput of `full` at {s['imsize']} px, batch {s['batch']}",
        "",
        "Our training step (`dfgan.train.step.Stepper`: D step with MA-GP, then G step) and generator sampling, "
        "built by `benchmarks/harness.py` on a fixed random batch. FLOPs: torch's formulas "
        "(`harness.count_flops`: matmuls and convolutions, forward, backward and MA-GP's double backward). "
        "`fp32` has TF32 off; `fp32 torch defaults` is what a plain run gets (cuDNN convolutions in TF32, "
        "matmuls fp32); `bf16` is autocast with the fp32 MA-GP norm, losses and optimiser (the `fast` "
        "configuration). Memory: `torch.cuda.max_memory_allocated` of one call (all) and its rise above what "
        "was allocated before it, per image. Training is not captured as a CUDA graph: the Stepper checks the "
        "losses on the host every step (a sync that capture cannot hold).",
        "",
        _safe(lambda r: throughput_table(r, tp), results) if tp else "No throughput results.",
        "",
        f"## {s['hires']} px against {s['imsize']} px",
        "",
        "Per image, the same configuration at both sizes (cost ratio 4 = linear in pixels).",
        "",
        _safe(hires_table, results) if _rows(results, "hires") else "No results at the larger size.",
        "",
        f"## FID of {s['fid_images']:,} generated images, end to end",
        "",
        _safe(fid_section, results),
        "",
        "## Tests on the device",
        "",
        _safe(tests_section, results),
        "",
    ]
    return "\n".join(doc)


def write(results: dict, out: Path) -> None:
    """The Markdown report at ``out`` and the JSON at ``out`` with suffix ``.json``, each written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out.with_suffix(".json"), json.dumps(results, indent=1, default=str)),
                       (out, render(results))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).with_suffix(".json").read_text())
