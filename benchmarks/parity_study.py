"""Quality parity of the fast path: the same variant trained in fp32 and in the fast configuration, N seeds each.

    python -m benchmarks.parity_study --variant full --seeds 3 --steps 2000 [key.path=value ...]

Each (arm, seed) is one ordinary training run (``dfgan.train.loop.train``) of the variant with ``train.seed``
set and the arm's ``train.*`` options (``fp32``: ``benchmarks.harness.SPEEDS['reference']``, fp32 with nothing
fused; ``fast``: ``SPEEDS['fast']``, bf16 autocast + channels_last + fused affine). Every run is then evaluated
the same way, in fp32, by ``dfgan.metrics.evaluate_run`` (default metrics: attribute accuracy ``attr_acc`` and
the Fréchet distance in the attribute classifier's feature space ``fd_attr``; built-in data). The fast path
is at parity on a metric when the difference of the arms' means is within the seed-to-seed spread: no more
than the larger of the two arms' standard deviations over seeds.

Results go to ``reports/parity.json`` and replace the parity section at the end of ``reports/benchmarks.md``
(after ``benchmarks.report.PARITY_MARKER``). Runs are resumable: a finished (arm, seed) run is not retrained.
Run it on a quiet machine: a timing column (steps/s) is recorded too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import SPEEDS  # noqa: E402
from benchmarks.report import PARITY_MARKER, md_table  # noqa: E402

ARMS = {"fp32": SPEEDS["reference"], "fast": SPEEDS["fast"]}
TIMING_FILE = "parity_timing.json"  # in each run folder: training time of the invocation that trained it
DEFAULT_METRICS = ("attr_acc", "fd_attr")


def arm_overrides(arm: str) -> list[str]:
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in ARMS[arm].items()]


def run_one(variant: str, arm: str, seed: int, steps: int, overrides: list[str], out_dir: Path,
            metrics: list[str], n_images: int | None, progress: bool) -> dict[str, Any]:
    """Train (or resume) one (arm, seed) run and evaluate it; returns its record."""
    from dfgan.experiment import resolve_spec, run_folder, run_hash
    from dfgan.metrics.evaluate import EvalOptions
    from dfgan.runs import FINAL_WEIGHTS
    from dfgan.tracking import Tracker
    from dfgan.train.loop import train
    from dfgan.trained import evaluate_run

    over = [f"train.steps={steps}", f"train.seed={seed}", f"train.out_dir={out_dir}", "tracking.enabled=false",
            *overrides, *arm_overrides(arm)]
    spec = resolve_spec(variant, overrides=over)
    finished_before = (run_folder(spec) / FINAL_WEIGHTS).is_file()
    res = train(spec, resume=True, progress=progress, tracker=Tracker.for_spec(spec, enabled=False))
    # a run finished by an earlier invocation keeps the training time measured then (its resume takes ~0 s);
    # one finished before timings were kept (or trained across invocations) has none
    timing_file = res.run_dir / TIMING_FILE
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else None
    if timing is None or timing.get("steps") != res.steps:
        timing = {"steps": res.steps, "train_seconds": None if finished_before else res.seconds,
                  "load_avg": None if finished_before else _load_avg()}
        timing_file.write_text(json.dumps(timing))
    ev = evaluate_run(res.run_dir, list(metrics), options=EvalOptions(n=n_images, progress=progress), track=False)
    values = {r["metric"]: r["value"] for r in ev["records"]}
    info = res.info or {}
    return {"arm": arm, "seed": seed, "steps": res.steps, "run_dir": str(res.run_dir), "metrics": values,
            "train_seconds": timing["train_seconds"], "load_avg_at_end": timing.get("load_avg"),
            "last_losses": res.last_losses, "speed": info.get("speed"),
            "runtime": {k: v for k, v in (info.get("runtime") or {}).items()
                        if k in ("device", "threads", "torch", "allocator", "allocator_env")},
            "spec_hash": run_hash(spec), "arm_overrides": arm_overrides(arm)}


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def summarise(runs: list[dict], metrics: list[str]) -> dict[str, Any]:
    """Per metric: mean and standard deviation over seeds per arm, the difference, and the parity verdict."""
    out: dict[str, Any] = {}
    for m in metrics:
        per = {arm: [r["metrics"][m] for r in runs if r["arm"] == arm and m in r["metrics"]] for arm in ARMS}
        if not all(per.values()):
            continue
        stats = {arm: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else float("nan"),
                       "values": v} for arm, v in per.items()}
        diff = stats["fast"]["mean"] - stats["fp32"]["mean"]
        spread = max(stats["fp32"]["sd"], stats["fast"]["sd"])
        out[m] = {**stats, "diff_fast_minus_fp32": diff, "spread": spread,
                  "within_spread": bool(abs(diff) <= spread) if spread == spread else None}
    return out


def write_report(result: dict[str, Any], md_path: Path) -> None:
    s = result["summary"]
    rows = []
    for m, v in s.items():
        verdict = {True: "yes", False: "NO", None: "n/a (one seed)"}[v["within_spread"]]
        rows.append([m, f"{v['fp32']['mean']:.4g} ± {v['fp32']['sd']:.2g}", f"{v['fast']['mean']:.4g} ± "
                     f"{v['fast']['sd']:.2g}", f"{v['diff_fast_minus_fp32']:+.3g}", f"{v['spread']:.3g}", verdict])
    timed = [r for r in result["runs"] if r.get("train_seconds")]
    speed = {arm: statistics.fmean(r["steps"] / r["train_seconds"] for r in timed if r["arm"] == arm)
             for arm in ARMS if any(r["arm"] == arm for r in timed)}
    per_run = [[r["arm"], r["seed"], r["steps"], *(r["metrics"].get(m) for m in result["metrics"]),
                r["steps"] / r["train_seconds"] if r.get("train_seconds") else "not recorded", r.get("load_avg_at_end")]
               for r in sorted(result["runs"], key=lambda r: (r["arm"], r["seed"]))]
    section = "\n\n".join([
        PARITY_MARKER,
        "## Quality parity of the fast path",
        f"`python -m benchmarks.parity_study {' '.join(result['argv'])}` ({result['date']}): variant "
        f"`{result['variant']}`, {result['steps']} steps, seeds {result['seeds']}; arm `fp32` = "
        f"`{' '.join(arm_overrides('fp32'))}`, arm `fast` = `{' '.join(arm_overrides('fast'))}`; every run "
        "evaluated the same way in fp32 (`dfgan.metrics.evaluate_run`). Parity on a metric: |mean(fast) - "
        "mean(fp32)| <= the larger seed-to-seed standard deviation of the two arms.",
        md_table(["metric", "fp32 mean ± sd", "fast mean ± sd", "fast - fp32", "seed spread", "within spread"], rows),
        md_table(["arm", "seed", "steps", *result["metrics"], "steps/s (whole run)", "load avg (1 min, at end)"],
                 per_run),
        "Training speed over the whole runs with a recorded time (incl. data, logging, sampling): "
        + ", ".join(f"{a} {v:.2f} steps/s" for a, v in speed.items())
        + (f" (fast/fp32 = {speed['fast'] / speed['fp32']:.2f}x)" if len(speed) == 2 else "") + "."
        + (f" {result['note']}" if result.get("note") else ""),
    ]) + "\n"
    text = md_path.read_text() if md_path.exists() else "# Throughput benchmarks\n\n"
    if PARITY_MARKER in text:
        text = text[:text.index(PARITY_MARKER)]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text.rstrip("\n") + "\n\n" + section)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="full")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds per arm")
    ap.add_argument("--first-seed", type=int, default=100, help="seeds are first-seed, first-seed+1, ...")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    ap.add_argument("--n-images", type=int, default=None, help="images per evaluation (default: spec.eval)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "parity")
    ap.add_argument("--json", type=Path, default=ROOT / "reports" / "parity.json")
    ap.add_argument("--md", type=Path, default=ROOT / "reports" / "benchmarks.md")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--note", default="", help="a sentence for the report, e.g. what else ran on the machine")
    ap.add_argument("overrides", nargs="*", metavar="key.path=value", help="spec overrides for both arms")
    args = ap.parse_args(argv)
    for o in args.overrides:
        if o.split("=", 1)[0] in ARMS["fast"] or o.startswith(("train.seed=", "train.steps=")):
            ap.error(f"override {o!r} would change what the study compares or its seeds; use the options")
    seeds = [args.first_seed + i for i in range(args.seeds)]
    runs = []
    for seed in seeds:  # seed-major: a partial study still has both arms for its first seeds
        for arm in ARMS:
            print(f"parity study: {args.variant} {arm} seed {seed}", flush=True)
            runs.append(run_one(args.variant, arm, seed, args.steps, args.overrides, args.out_dir, args.metrics,
                                args.n_images, not args.quiet))
    result = {"variant": args.variant, "steps": args.steps, "seeds": seeds, "metrics": args.metrics,
              "overrides": args.overrides, "argv": argv, "note": args.note,
              "date": dt.datetime.now().isoformat(timespec="seconds"),
              "runs": runs, "summary": summarise(runs, args.metrics)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    write_report(result, args.md)
    for m, v in result["summary"].items():
        print(f"{m}: fp32 {v['fp32']['mean']:.4g} ± {v['fp32']['sd']:.2g}, fast {v['fast']['mean']:.4g} ± "
              f"{v['fast']['sd']:.2g}, within spread: {v['within_spread']}")
    print(f"wrote {args.json} and the parity section of {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
