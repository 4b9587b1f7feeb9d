"""Quality parity of the speed options: each against plain fp32, paired by seed, by an equivalence test (TOST).

The same variant is trained with each speed configuration, and each is tested against the plain fp32 options
within margins stated before the runs.

    python -m benchmarks.parity_study --variant full --seeds 6 --steps 1000 [key.path=value ...]

Arms (``benchmarks.harness.SPEEDS``): ``reference``: fp32, nothing fused, NCHW (our ``Stepper``: the official
code's formulation); ``fp32``: the spec's fp32 defaults (channels_last, fused affine); ``fast``: ``fp32`` plus
bf16 autocast. ``fast`` is left out by default where bf16 is emulated (``dfgan.runtime.bf16_is_fast``: there
``train.precision=auto`` never picks it, and it is slower than fp32); ``--arms`` names them explicitly.

Each (arm, seed) is one ordinary training run (``dfgan.train.loop.train``) with ``train.seed`` set and the arm's
``train.*`` options; every run is evaluated the same way, in fp32, by ``dfgan.trained.evaluate_run`` (default
``attr_acc`` and ``fd_attr``, built-in data). Each arm is compared with ``reference`` on the seeds both have by
``dfgan.reports.equivalence``: the 90% t interval of the paired difference (a ratio margin: of log(arm /
reference)) inside the margin is *equivalent*, wholly outside it *not equivalent*, else *inconclusive at this
power*, with the pairs an 80%-power rerun would need. Default margins (``--margin``): attr_acc +-0.02 (under half
the 0.05 seed-to-seed spread of the default run, 0.94 / 0.89 at seeds 100 / 101) and fd_attr within x1.10.

Results go to ``reports/parity.json`` and replace the parity section at the end of ``reports/benchmarks.md``
(after ``benchmarks.report.PARITY_MARKER``). Runs are resumable: a finished (arm, seed) run is not retrained.
A timing column (steps/s) is recorded too: meaningful on a quiet machine only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import SPEEDS  # noqa: E402
from benchmarks.report import PARITY_MARKER, md_table  # noqa: E402
from dfgan.fingerprint import CODE  # noqa: E402
from dfgan.reports.equivalence import Margin, equivalence  # noqa: E402

BASE_ARM = "reference"
TIMING_FILE = "parity_timing.json"  # in each run folder: training time of the invocation that trained it
DEFAULT_MARGINS = {"attr_acc": "0.02", "fd_attr": "x1.10"}  # stated before any run (see the module docstring)


def default_arms() -> list[str]:
    """reference and fp32; fast too where bf16 matmuls are native."""
    from dfgan.runtime import bf16_is_fast

    return [BASE_ARM, "fp32", *(["fast"] if bf16_is_fast("cpu") else [])]


def arm_overrides(arm: str) -> list[str]:
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SPEEDS[arm].items()]


def run_one(variant: str, arm: str, seed: int, steps: int, overrides: list[str], out_dir: Path,
            metrics: list[str], n_images: int | None, progress: bool) -> dict[str, Any]:
    """Train (or resume) one (arm, seed) run and evaluate it; returns its record."""
    from dfgan.experiment import resolve_spec
    from dfgan.metrics.evaluate import EvalOptions
    from dfgan.run_identity import run_folder, run_hash
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


def summarise(runs: list[dict], arms: list[str], margins: dict[str, Margin]) -> dict[str, Any]:
    """metric -> arm -> the TOST of the arm against ``reference`` on their common seeds, with both arms' values."""
    out: dict[str, Any] = {}
    for m, margin in margins.items():
        value = {(r["arm"], r["seed"]): r["metrics"][m] for r in runs if m in r["metrics"]}
        for arm in arms:
            if arm == BASE_ARM:
                continue
            seeds = sorted(s for a, s in value if a == arm and (BASE_ARM, s) in value)
            ref = [value[BASE_ARM, s] for s in seeds]
            got = [value[arm, s] for s in seeds]
            eq = equivalence(ref, got, margin)
            out.setdefault(m, {})[arm] = {
                "seeds": seeds, "reference": ref, "arm": got, "margin": str(margin), "kind": margin.kind,
                "n": eq.n, "estimate": eq.shown(eq.diff), "ci90": [eq.shown(eq.lo90), eq.shown(eq.hi90)],
                "ci95": [eq.shown(eq.lo95), eq.shown(eq.hi95)], "p_tost": eq.p_tost, "verdict": eq.verdict,
                "pairs_needed": eq.pairs_needed, "sd_of_differences": eq.sd,
                "reference_mean": statistics.fmean(ref) if ref else None,
                "arm_mean": statistics.fmean(got) if got else None}
    return out


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def write_report(result: dict[str, Any], md_path: Path) -> None:
    rows = []
    for m, per_arm in result["summary"].items():
        for arm, v in per_arm.items():
            what = "ratio" if v["kind"] == "ratio" else "difference"
            rows.append([m, arm, v["n"], _num(v["reference_mean"]), _num(v["arm_mean"]),
                         f"{what} {_num(v['estimate'], 3)}", f"[{_num(v['ci90'][0], 3)}, {_num(v['ci90'][1], 3)}]",
                         v["margin"], _num(v["p_tost"], 2), v["verdict"], _num(v["pairs_needed"])])
    timed = [r for r in result["runs"] if r.get("train_seconds")]
    speed = {arm: statistics.fmean(r["steps"] / r["train_seconds"] for r in timed if r["arm"] == arm)
             for arm in result["arms"] if any(r["arm"] == arm for r in timed)}
    per_run = [[r["arm"], r["seed"], r["steps"], *(r["metrics"].get(m) for m in result["metrics"]),
                r["steps"] / r["train_seconds"] if r.get("train_seconds") else "not recorded", r.get("load_avg_at_end")]
               for r in sorted(result["runs"], key=lambda r: (r["arm"], r["seed"]))]
    arms_text = "; ".join(f"`{a}` = `{' '.join(arm_overrides(a))}`" for a in result["arms"])
    section = "\n\n".join([
        PARITY_MARKER,
        "## Quality parity of the speed options",
        f"`python -m benchmarks.parity_study {shlex.join(result['argv'])}` ({result['date']}, commit "
        f"{result.get('commit') or 'unknown'}): variant `{result['variant']}`, {result['steps']} steps, seeds "
        f"{result['seeds']}; {arms_text}; every run evaluated the same way in fp32 (`dfgan.trained.evaluate_run`). "
        "Each arm against `reference`, paired by seed: equivalence test (TOST, `dfgan.reports.equivalence`), "
        "*equivalent* when the 90% t interval of the paired difference (for a ratio margin: of arm / reference, "
        "tested on the log scale) lies inside the margin, *not equivalent* when it lies wholly outside, else "
        "*inconclusive at this power*; 'pairs needed': pairs for 80% power at the observed SD of the differences "
        "when the arms are truly equal. Margins were fixed before the runs."
        + (f" {result['skipped']}" if result.get("skipped") else ""),
        md_table(["metric", "arm", "pairs", "reference mean", "arm mean", "arm vs reference", "90% interval",
                  "margin", "TOST p", "verdict", "pairs needed"], rows),
        md_table(["arm", "seed", "steps", *result["metrics"], "steps/s (whole run)", "load avg (1 min, at end)"],
                 per_run),
        "Training speed over the whole runs with a recorded time (incl. data, logging, sampling; other work on "
        "the machine moves it): " + ", ".join(f"{a} {v:.2f} steps/s" for a, v in speed.items()) + "."
        + (f" {result['note']}" if result.get("note") else ""),
    ]) + "\n"
    text = md_path.read_text() if md_path.exists() else "# Throughput benchmarks\n\n"
    if PARITY_MARKER in text:
        text = text[:text.index(PARITY_MARKER)]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text.rstrip("\n") + "\n\n" + section)


def _margins(items: list[str], metrics: list[str], ap: argparse.ArgumentParser) -> dict[str, Margin]:
    given = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            ap.error(f"--margin {item!r}: expected METRIC=MARGIN, e.g. attr_acc=0.02 or fd_attr=x1.10")
        try:
            given[name] = Margin.parse(text)
        except ValueError as e:
            ap.error(f"--margin {item!r}: {e}")
    unknown = sorted(set(given) - set(metrics))
    if unknown:
        ap.error(f"--margin for {', '.join(unknown)}: not among --metrics ({', '.join(metrics)})")
    out = {}
    for m in metrics:
        if m not in given and m not in DEFAULT_MARGINS:
            ap.error(f"metric {m!r} has no default margin: give one, --margin {m}=0.02 (a difference) or "
                     f"--margin {m}=x1.10 (a ratio)")
        out[m] = given.get(m) or Margin.parse(DEFAULT_MARGINS[m])
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="full")
    ap.add_argument("--seeds", type=int, default=6, help="number of seeds per arm (default 6)")
    ap.add_argument("--first-seed", type=int, default=100, help="seeds are first-seed, first-seed+1, ...")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--arms", help=f"comma-separated, from {', '.join(SPEEDS)}; {BASE_ARM} is always run (default: "
                    "reference,fp32 and fast where bf16 is native)")
    ap.add_argument("--metrics", nargs="+", default=list(DEFAULT_MARGINS))
    ap.add_argument("--margin", action="append", default=[], metavar="METRIC=MARGIN",
                    help="equivalence margin: a difference (attr_acc=0.02) or a ratio (fd_attr=x1.10); defaults "
                    + ", ".join(f"{k}={v}" for k, v in DEFAULT_MARGINS.items()))
    ap.add_argument("--n-images", type=int, default=None, help="images per evaluation (default: spec.eval)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "parity")
    ap.add_argument("--json", type=Path, default=ROOT / "reports" / "parity.json")
    ap.add_argument("--md", type=Path, default=ROOT / "reports" / "benchmarks.md")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--note", default="", help="a sentence for the report, e.g. what else ran on the machine")
    ap.add_argument("overrides", nargs="*", metavar="key.path=value", help="spec overrides for every arm")
    args = ap.parse_args(argv)
    compared = {k for arm in SPEEDS.values() for k in arm}
    for o in args.overrides:
        if o.split("=", 1)[0] in compared or o.startswith(("train.seed=", "train.steps=")):
            ap.error(f"override {o!r} would change what the study compares or its seeds; use the options")
    arms = default_arms() if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in SPEEDS]
    if bad:
        ap.error(f"--arms: unknown {', '.join(bad)}; allowed {', '.join(SPEEDS)}")
    arms = [BASE_ARM, *[a for a in dict.fromkeys(arms) if a != BASE_ARM]]
    if len(arms) < 2:
        ap.error(f"--arms: name at least one arm to compare with {BASE_ARM}")
    skipped = ("`fast` (bf16) was left out: bf16 matmuls are emulated on this CPU, where `train.precision=auto` "
               "is fp32." if args.arms is None and "fast" not in arms else "")
    margins = _margins(args.margin, args.metrics, ap)
    seeds = [args.first_seed + i for i in range(args.seeds)]
    runs = []
    for seed in seeds:  # seed-major: a partial study still has every arm for its first seeds
        for arm in arms:
            print(f"parity study: {args.variant} {arm} seed {seed}", flush=True)
            runs.append(run_one(args.variant, arm, seed, args.steps, args.overrides, args.out_dir, args.metrics,
                                args.n_images, not args.quiet))
    result = {"variant": args.variant, "steps": args.steps, "seeds": seeds, "arms": arms, "metrics": args.metrics,
              "margins": {m: str(v) for m, v in margins.items()}, "overrides": args.overrides, "argv": argv,
              "note": args.note, "skipped": skipped, "commit": CODE.label,
              "date": dt.datetime.now().isoformat(timespec="seconds"),
              "runs": runs, "summary": summarise(runs, arms, margins)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    write_report(result, args.md)
    for m, per_arm in result["summary"].items():
        for arm, v in per_arm.items():
            print(f"{m} {arm} vs {BASE_ARM}: {v['kind']} {_num(v['estimate'], 3)}, 90% [{_num(v['ci90'][0], 3)}, "
                  f"{_num(v['ci90'][1], 3)}], margin {v['margin']}, n={v['n']}: {v['verdict']} "
                  f"(pairs needed {_num(v['pairs_needed'])})")
    print(f"wrote {args.json} and the parity section of {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
