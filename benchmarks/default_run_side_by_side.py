"""The README's main job (``dfgan ablate --variant full``, what ``nox -s ablation -- --variant full`` runs) for two
commits on one machine, side by side, each from a clean export of its commit with an empty ``$DFGAN_CACHE``:
wall time, attr_acc / fd_attr and the per-phase profile of each, in one JSON (issue 15: the default run's time
against a2d17fd's).

    python benchmarks/default_run_side_by_side.py --old a2d17fd --new HEAD --out reports/default_run_side_by_side.json

Each commit is exported with ``git archive`` into ``--work`` (a clean tree of the commit, like a fresh clone,
registering no worktree) and its job runs there: ``<python> -m dfgan ablate --variant full [overrides]`` with
``PYTHONPATH=<export>`` (so the export's package is the one imported, whatever the venv has installed), the
malloc settings nox sets (``dfgan.runtime.MALLOC_ENV``), ``DFGAN_CACHE=<export>/.cache`` (empty) and no
``MLFLOW_TRACKING_URI``. ``--python`` defaults to this interpreter: a warm venv with the README's set-up.

``--mode parallel`` (default) starts both jobs at once, so that a shared machine's load falls on both alike;
on a 2-core CPU give each one thread (``--threads 1``, the default in this mode: two jobs of two threads on two
cores ran up to 30x slower). ``--mode alternate`` runs them one after the other, ``--repeats`` times each in
ABBA order (old new new old ...), with the machine's default threads unless ``--threads`` says otherwise.

Per job the JSON has: the command, wall seconds, exit code, attr_acc / fd_attr (and their parts) from the run's
``metrics.jsonl``, the run's ``profile.json`` when the commit writes one (commits since issue 15), else what the
run's own records say about its phases (DAMSM pretraining seconds from the checkpoint, evaluation seconds from
``metrics.jsonl``, ``train_seconds`` and steps/s from its MLflow database); logs are kept beside the export.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}  # dfgan.runtime


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def export(commit: str, dest: Path) -> str:
    """A clean tree of ``commit`` at ``dest`` (``git archive``); returns the full hash."""
    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    dest.mkdir(parents=True, exist_ok=False)
    archive = subprocess.Popen(["git", "archive", "--format=tar", sha], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {sha} failed")
    return sha


class Job:
    """One run of the main job in an export."""

    def __init__(self, label: str, root: Path, python: str, variant: str, overrides: list[str], tag: str):
        self.label, self.root, self.tag = label, root, tag
        self.cmd = [python, "-m", "dfgan", "ablate", "--variant", variant, *overrides]
        self.cache = root / f".cache-{tag}"
        self.out_dir = root / f"runs-{tag}"
        self.cmd.append(f"train.out_dir={self.out_dir}")
        self.log = root.parent / f"{label}-{tag}.log"
        self.proc: subprocess.Popen | None = None
        self.t0 = self.wall = 0.0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
        env.update(MALLOC_ENV, PYTHONPATH=str(self.root), DFGAN_CACHE=str(self.cache))
        self.cache.mkdir(parents=True, exist_ok=False)  # empty: data, DAMSM and classifier made by the job
        self._log = open(self.log, "w")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self) -> int:
        rc = self.proc.wait()
        self.wall = time.perf_counter() - self.t0
        self._log.close()
        return rc

    def result(self) -> dict:
        run_dirs = sorted(p.parent for p in self.out_dir.rglob("metrics.jsonl"))
        run = run_dirs[-1] if run_dirs else None
        out = {"label": self.label, "tag": self.tag, "command": self.cmd, "cwd": str(self.root),
               "wall_seconds": round(self.wall, 1), "returncode": self.proc.returncode, "log": str(self.log),
               "run_dir": str(run) if run else None}
        if run is None:
            return out
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        for r in records:
            out[r["metric"]] = r["value"]
            out[f"{r['metric']}_details"] = r.get("details")
        prof = run / "profile.json"
        out["profile"] = json.loads(prof.read_text()) if prof.is_file() else coarse_profile(run, records,
                                                                                            self.out_dir)
        return out


def coarse_profile(run: Path, records: list[dict], out_dir: Path) -> dict:
    """What a run of a commit without ``profile.json`` says about its phases."""
    out: dict = {"source": "the run's own records (this commit writes no profile.json)"}
    out["evaluation"] = {r["metric"]: {"setup_seconds": r.get("setup_seconds"), "pass_seconds": r.get("pass_seconds"),
                                       "seconds": r.get("seconds")} for r in records}
    try:
        import torch

        ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
        out["text_encoder"] = ckpt.get("text_encoder")
    except Exception as e:  # noqa: BLE001 - a record of what could not be read, not a failure
        out["text_encoder"] = f"unreadable: {type(e).__name__}: {e}"
    db = out_dir / "mlflow.db"
    if db.is_file():
        with sqlite3.connect(db) as c:
            for key in ("train_seconds", "steps_per_sec"):
                vals = [v for (v,) in c.execute("SELECT value FROM metrics WHERE key = ?", (key,))]
                if vals:
                    out[key] = vals[-1] if key == "train_seconds" else {"median": statistics.median(vals),
                                                                        "n": len(vals)}
    return out


def phases(job: dict) -> dict:
    """Seconds of one job's phases from what it recorded: whole job (wall), DAMSM pretraining, one training step
    and how many, evaluation (attribute classifier set-up included); None where the commit recorded nothing."""
    prof = job.get("profile") or {}
    out = {"wall": job.get("wall_seconds"), "text_encoder": None, "step": None, "steps": None, "evaluation": None}
    if "sections" in prof:  # profile.json (commits since issue 15)
        sec = prof["sections"]
        out["text_encoder"] = sec.get("text_encoder", {}).get("seconds")
        step = sec.get("train.step", {})
        if step.get("calls"):
            out["step"], out["steps"] = step["seconds"] / step["calls"], step["calls"]
        out["evaluation"] = sec.get("evaluation", {}).get("seconds")
        return out
    te = prof.get("text_encoder")
    out["text_encoder"] = float(te["seconds"]) if isinstance(te, dict) and te.get("seconds") else None
    rate = (prof.get("steps_per_sec") or {}).get("median")
    out["step"] = 1.0 / rate if rate else None
    steps = [o.split("=", 1)[1] for o in job.get("command", []) if o.startswith("train.steps=")]
    out["steps"] = int(steps[-1]) if steps else None
    ev = [v for v in (prof.get("evaluation") or {}).values() if isinstance(v, dict)]
    if ev:  # the metrics share one classifier set-up; each "seconds" is that metric's own pass
        out["evaluation"] = max(v.get("setup_seconds") or 0.0 for v in ev) + sum(v.get("seconds") or 0.0 for v in ev)
    return out


def section(result: dict, full_steps: int) -> str:
    """Markdown: the jobs' phases side by side, the ratio, and (for a shortened run) the ratio extrapolated to
    ``full_steps`` (the per-step cost times the missing steps added to each job's wall time)."""
    label = {j["label"]: j for j in result["jobs"]}
    if not {"old", "new"} <= set(label):
        return ""
    ph = {k: phases(label[k]) for k in ("old", "new")}
    commit = {k: result["summary"][k]["commit"][:7] for k in ("old", "new")}

    def cell(x, unit="s"):
        return "n/a" if x is None else (f"{x:,.3f} {unit}" if x < 10 else f"{x:,.1f} {unit}")

    def ratio(a, b):
        return "n/a" if a is None or b is None or a == 0 else f"{b / a:.3f}"

    rows = [("whole job (wall)", "wall"), ("DAMSM pretraining", "text_encoder"), ("one training step", "step"),
            ("evaluation (classifier set-up included)", "evaluation")]
    lines = [f"| phase | {commit['old']} | {commit['new']} | new / old |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {cell(ph['old'][k])} | {cell(ph['new'][k])} | {ratio(ph['old'][k], ph['new'][k])} |"
              for name, k in rows]
    steps = ph["new"]["steps"] or ph["old"]["steps"]
    cmd = ["python benchmarks/default_run_side_by_side.py", "--old", commit["old"], "--new", commit["new"],
           "--mode", result["mode"], *(["--threads", str(result["threads"])] if result.get("threads") else []),
           *(o for o in result["overrides"] if not o.startswith("train.threads="))]
    text = (f"`{' '.join(cmd)}`"
            + f" ({result['mode']}: {'both jobs at once' if result['mode'] == 'parallel' else 'ABBA, one at a time'};"
            f" load average {result['machine']['load_average_before'][0]:.1f} before, "
            f"{result['machine']['load_average_after'][0]:.1f} after, on {result['machine']['cpu_count']} CPUs)\n\n"
            + "\n".join(lines))
    if steps and steps < full_steps and all(ph[k]["step"] and ph[k]["wall"] for k in ph):
        full = {k: ph[k]["wall"] + (full_steps - steps) * ph[k]["step"] for k in ph}
        text += (f"\n\nExtrapolated to {full_steps:,} steps: {full['old']:,.0f} s and {full['new']:,.0f} s, "
                 f"new / old = {full['new'] / full['old']:.3f}.")
    return text


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", default="a2d17fd")
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--variant", default="full")
    ap.add_argument("--mode", choices=("parallel", "alternate"), default="parallel")
    ap.add_argument("--repeats", type=int, default=1, help="alternate mode: runs of each commit (ABBA order)")
    ap.add_argument("--threads", type=int, default=None,
                    help="train.threads for both jobs (parallel mode default: 1; alternate: the torch default)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--work", default=None, help="folder for the exports and logs (default: a new one in /tmp)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "default_run_side_by_side.json"))
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for both jobs (e.g. train.steps=200 "
                                                 "for a dry run of this script)")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(f"/tmp/dfgan-side-by-side-{int(time.time())}")
    threads = a.threads if a.threads is not None else (1 if a.mode == "parallel" else None)
    overrides = list(a.overrides) + ([f"train.threads={threads}"] if threads else [])
    roots, shas = {}, {}
    for label, commit in (("old", a.old), ("new", a.new)):
        roots[label] = work / label / "repo"
        shas[label] = export(commit, roots[label])
    order = ["old", "new"] if a.mode == "parallel" else (["old", "new", "new", "old"] * a.repeats)[: 2 * a.repeats]
    jobs = [Job(label, roots[label], a.python, a.variant, overrides, f"{i}") for i, label in enumerate(order)]
    load_before = os.getloadavg()
    if a.mode == "parallel":
        for j in jobs:
            j.start()
        for j in jobs:
            j.wait()
    else:
        for j in jobs:
            j.start()
            j.wait()
    results = [j.result() for j in jobs]
    summary = {}
    for label in ("old", "new"):
        mine = [r for r in results if r["label"] == label]
        summary[label] = {"commit": shas[label], "wall_seconds": [r["wall_seconds"] for r in mine],
                          "attr_acc": [r.get("attr_acc") for r in mine], "fd_attr": [r.get("fd_attr") for r in mine]}
    ratio = (statistics.median(summary["new"]["wall_seconds"]) / statistics.median(summary["old"]["wall_seconds"]))
    out = {"variant": a.variant, "mode": a.mode, "threads": threads, "overrides": overrides, "python": a.python,
           "machine": {"cpu_count": os.cpu_count(), "load_average_before": load_before,
                       "load_average_after": os.getloadavg()},
           "summary": summary, "wall_ratio_new_over_old": round(ratio, 3), "jobs": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"summary": summary, "wall_ratio_new_over_old": out["wall_ratio_new_over_old"]}, indent=2))
    if any(r["returncode"] for r in results):
        sys.exit("a job failed: see its log (" + ", ".join(r["log"] for r in results if r["returncode"]) + ")")
    return out


if __name__ == "__main__":
    main()
