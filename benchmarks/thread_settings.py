"""Thread settings of the default training step: torch threads and the OpenMP wait policy, alternated.

The wait policy is read once, when libgomp starts, so each setting runs ``benchmarks.step_levers`` (side
``base``) in its own process; the settings take turns (A B C A B C ...) ``--repeats`` times so that a shared
machine's changing load falls on all of them alike. Settings (``--settings``, comma list):

* ``t2``: 2 torch threads, libgomp's default wait (threads spin before they sleep);
* ``t2_passive``: 2 threads, ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once);
* ``t2_spin10k``: 2 threads, ``GOMP_SPINCOUNT=10000``;
* ``t1``: 1 thread.

    PYTHONPATH=. python -m benchmarks.thread_settings --repeats 3 --rounds 20 --out thread_settings.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}  # dfgan.runtime
SETTINGS = {
    "t2": (2, {}),
    "t2_passive": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "t2_spin10k": (2, {"GOMP_SPINCOUNT": "10000"}),
    "t1": (1, {}),
}


def run_one(name: str, rounds: int, extra: list[str], folder: Path, rep: int) -> dict:
    threads, env_extra = SETTINGS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(MALLOC_ENV, **env_extra, PYTHONPATH=str(ROOT))
    out = folder / f"{name}-{rep}.json"
    cmd = [sys.executable, "-m", "benchmarks.step_levers", "--sides", "base", "--threads", str(threads),
           "--rounds", str(rounds), "--warmup", "2", "--out", str(out), *extra]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = json.loads(out.read_text())["sides"]["base"]
    return {"setting": name, "repeat": rep, "threads": threads, "env": env_extra, "load_average": os.getloadavg(),
            "wall_median_ms": base["wall_median_ms"], "cpu_median_ms": base["cpu_median_ms"], "time": time.time()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="t2,t2_passive,t2_spin10k,t1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("extra", nargs="*", help="more step_levers arguments (after --), e.g. --precision fp32")
    a = ap.parse_args(argv)
    names = a.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            for name in names:
                runs.append(run_one(name, a.rounds, a.extra, Path(tmp), rep))
                print(f"{name} #{rep}: {runs[-1]['wall_median_ms']:.0f} ms per step (wall median), load "
                      f"{runs[-1]['load_average'][0]:.1f}", file=sys.stderr)
    summary = {n: {"wall_median_ms_of_repeats": statistics.median(r["wall_median_ms"] for r in runs
                                                                  if r["setting"] == n),
                   "cpu_median_ms_of_repeats": statistics.median(r["cpu_median_ms"] for r in runs
                                                                 if r["setting"] == n)} for n in names}
    out = {"summary": summary, "runs": runs, "cpu_count": os.cpu_count()}
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
