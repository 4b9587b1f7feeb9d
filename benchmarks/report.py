"""Write ``reports/benchmarks.md`` (and ``reports/figures/fusion_cost.png``) from a pytest-benchmark JSON.

    python -m benchmarks.report reports/benchmarks.json [--out reports/benchmarks.md]

Every table is read from the records' ``extra_info`` (written by the suites under ``benchmarks/``). A section
that ``benchmarks/parity_study.py`` appended (after the ``PARITY_MARKER`` line) is kept when the file is
rewritten.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARITY_MARKER = "<!-- parity-study: everything below is written by benchmarks/parity_study.py -->"
FIGURE = Path("figures") / "fusion_cost.png"


def cell(v: Any) -> str:
    """A table cell: floats to 3 significant digits (thousands separated), None empty, NaN 'n/a'."""
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def mb(b) -> float | None:
    return None if b is None else b / 2**20


def pct(x) -> str:
    return "" if x is None or x != x else f"{100 * x:.0f}%"


def best_peaks(k: dict[str, list[dict]]) -> dict[str, float]:
    """The best matmul rate (GFLOP/s) per precision seen in the run (measured at its start and its end)."""
    out: dict[str, float] = {}
    for e in k.get("matmul_peak", []):
        out[e["precision"]] = max(out.get(e["precision"], 0.0), e["peak_gflop_per_s"])
    return out


def frac(e: dict, peaks: dict[str, float]) -> float | None:
    """Achieved FLOP/s of a record (or side) as a fraction of the best matmul peak of its precision."""
    p = peaks.get(e.get("peak_precision", ""))
    return e["achieved_gflop_per_s"] / p if p else e.get("fraction_of_peak")


def by_kind(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["extra_info"].get("kind", "other"), []).append(r["extra_info"])
    return out


def busy_note(records: list[dict]) -> str:
    """A warning when the run shared its CPUs: multi-threaded timings then collapse on the 2-vCPU machines."""
    e = next((r["extra_info"] for r in records if "machine" in r["extra_info"]), {})
    m = e.get("machine", {})
    loads = [r["extra_info"].get("load_avg_1m") for r in records if r["extra_info"].get("load_avg_1m") is not None]
    if not loads or m.get("device", "cpu") != "cpu":
        return ""
    load, threads = statistics.median(loads), m.get("threads") or 1
    if load <= threads + 0.5:  # this run itself accounts for about `threads` of the load
        return ""
    return (f"**The machine was busy during this run** (median 1-min load {load:.1f} with {threads} thread(s) of "
            "ours): absolute times are inflated and noisy. With 1 thread the interleaved ratios held up; with 2 "
            "threads on a busy 2-vCPU machine, small steps ran up to 30x slower than with 1 thread, erratically "
            "enough to spoil even interleaved ratios. Re-run on a quiet machine or with `--bench-threads 1`.")


def machine_section(records: list[dict], data: dict) -> str:
    e = next((r["extra_info"] for r in records if "machine" in r["extra_info"]), {})
    m = e.get("machine", {})
    loads = [r["extra_info"].get("load_avg_1m") for r in records if r["extra_info"].get("load_avg_1m") is not None]
    rows = [["device", f"{m.get('device')} ({m.get('device_name')})"],
            ["torch / python", f"{m.get('torch')} / {m.get('python')}"],
            ["threads (intra-op) / CPUs usable", f"{m.get('threads')} / {m.get('cpu_affinity')}"],
            ["CPU ISA", f"{m.get('cpu_capability')}; bf16 flags: {', '.join(m.get('cpu_bf16_flags') or []) or 'none'}"],
            ["allocator", f"{m.get('allocator')} {m.get('allocator_env') or ''}"],
            ["profile", e.get("profile")],
            ["load average (1 min) during the run",
             f"min {min(loads):.1f}, median {statistics.median(loads):.1f}, max {max(loads):.1f}" if loads else ""],
            ["started", data.get("datetime", "")]]
    if m.get("cuda"):
        rows.insert(1, ["CUDA / memory", f"{m.get('cuda')} / {m.get('gpu_memory_gib')} GiB; "
                                          f"TF32 {'on' if m.get('allow_tf32') else 'off'}"])
    return md_table(["", ""], rows)


def peaks_section(k: dict[str, list[dict]]) -> str:
    rows = []
    for e in sorted(k.get("matmul_peak", []), key=lambda e: (e["precision"], e["when"])):
        rows.append([f"matmul {e['precision']}", e["when"], f"{e['n']}^3", e["peak_gflop_per_s"]])
    for e in sorted(k.get("conv3x3_rate", []), key=lambda e: (e["precision"], e["when"])):
        rows.append([f"3x3 conv {e['precision']} (effective)", e["when"],
                     f"{e['batch']}x{e['channels']}x{e['side']}^2", e["gflop_per_s"]])
    return (md_table(["what", "when", "size", "GFLOP/s (best of 3 x 3)"], rows) + "\n\nFractions of peak below use the "
            "best matmul rate of the run for the configuration's precision. A 3x3 convolution can run above it: "
            "oneDNN computes it with fewer multiplications than the direct-convolution FLOPs counted here "
            "(Winograd-type algorithms), so fractions above 100% are possible for convolution-bound work.")


def targets_section(k: dict[str, list[dict]]) -> tuple[str, list[str]]:
    rows, verdicts, peaks = [], [], best_peaks(k)
    for kind, label in (("target_sampling", "sampling"), ("target_train_step", "train step")):
        for e in sorted(k.get(kind, []), key=lambda e: e["imsize"]):
            s, r = e["sides"], e["ratios"]
            fp32_x, fast_x = r["speedup_wall"]["fp32"], r["speedup_wall"]["fast"]
            target = e.get("fast_target")
            ok_fast = None if target is None else fast_x >= target
            ok_fp32 = fp32_x >= e.get("fp32_target", 1.0)
            rows.append([label, e["imsize"], e["batch"], s["reference"]["seconds"] * 1e3, s["fp32"]["seconds"] * 1e3,
                         s["fast"]["seconds"] * 1e3,
                         f"{fp32_x:.2f}x (cpu {r['speedup_cpu']['fp32']:.2f}x) {'ok' if ok_fp32 else 'MISSED'}",
                         f"{fast_x:.2f}x (cpu {r['speedup_cpu']['fast']:.2f}x)"
                         + ("" if target is None else f" vs {target}x {'ok' if ok_fast else 'MISSED'}"),
                         " / ".join(cell(s[x]["images_per_s"]) for x in ("reference", "fp32", "fast")),
                         s["reference"]["gflop_per_image"],
                         " / ".join(pct(frac(s[x], peaks)) for x in ("reference", "fp32", "fast")),
                         " / ".join(cell(mb(s[x]["peak_memory_bytes"])) or "?" for x in ("reference", "fp32", "fast"))])
            if target is not None:
                verdicts.append(f"- {label} at {e['imsize']} px: fast path {fast_x:.2f}x the reference "
                                f"(target {target}x: {'met' if ok_fast else 'MISSED'}); fp32 path {fp32_x:.2f}x "
                                f"({'not slower: met' if ok_fp32 else 'slower: MISSED'}).")
    table = md_table(["what", "px", "batch", "reference ms", "fp32 ms", "fast ms", "fp32 vs reference",
                      "fast vs reference", "images/s ref / fp32 / fast", "GFLOP/image (ref)",
                      "fraction of peak ref / fp32 / fast", "peak MiB ref / fp32 / fast"], rows)
    return table, verdicts


def sampling_section(k: dict[str, list[dict]]) -> str:
    rows, peaks = [], best_peaks(k)
    for e in sorted(k.get("sampling", []), key=lambda e: (e["backbone"], e["fusion"], e["imsize"], e["speed"])):
        rows.append([e["backbone"], e["fusion"], e["imsize"], e["batch"], e["speed"], e["images_per_s"],
                     e["gflop_per_image"], e["achieved_gflop_per_s"], pct(frac(e, peaks)),
                     mb(e.get("peak_memory_bytes"))])
    return md_table(["backbone", "fusion", "px", "batch", "config", "images/s", "GFLOP/image", "GFLOP/s",
                     "of peak", "peak MiB"], rows)


def sampling_variants_section(k: dict[str, list[dict]]) -> str:
    rows, peaks = [], best_peaks(k)
    for e in sorted(k.get("sampling_variant", []), key=lambda e: (e["variant"], e["speed"])):
        rows.append([e["variant"], e["backbone"], e["fusion"], e["imsize"], e["batch"], e["speed"],
                     e["images_per_s"], e["gflop_per_image"], pct(frac(e, peaks))])
    return md_table(["variant", "backbone", "fusion", "px", "batch", "config", "images/s", "GFLOP/image",
                     "of peak"], rows)


def variants_section(k: dict[str, list[dict]]) -> str:
    rows, peaks = [], best_peaks(k)
    for e in sorted(k.get("train_step", []), key=lambda e: (e["variant"], e["speed"])):
        rows.append([e["variant"], e["speed"], e["imsize"], e["batch"], e["steps_per_s"], e["images_per_s"],
                     e["gflop_per_call"], pct(frac(e, peaks)), mb(e.get("peak_memory_bytes"))])
    return md_table(["variant", "config", "px", "batch", "steps/s", "images/s", "GFLOP/step", "of peak",
                     "peak MiB"], rows)


def magp_section(k: dict[str, list[dict]]) -> str:
    rows = [[e["imsize"], e["batch"], e["speed"], e["ratios"]["sides"]["no_magp"]["wall_median_s"] * 1e3,
             e["ratios"]["sides"]["full"]["wall_median_s"] * 1e3, pct(e["overhead_wall"]), pct(e["overhead_cpu"])]
            for e in sorted(k.get("magp_overhead", []), key=lambda e: (e["imsize"], e["speed"]))]
    return md_table(["px", "batch", "config", "step without MA-GP ms", "with MA-GP ms", "overhead (wall)",
                     "overhead (cpu)"], rows)


def fusion_section(k: dict[str, list[dict]], out_dir: Path) -> str:
    recs = k.get("fusion_cost", [])
    if not recs:
        return "(no fusion records)"
    fusions = sorted({e["fusion"] for e in recs})
    sides = sorted({e["side"] for e in recs})
    idx = {(e["fusion"], e["side"]): e for e in recs}
    rows = []
    for f in fusions:
        rows.append([f] + [(f"{idx[(f, s)]['ms_per_image']:.3g} ms, {idx[(f, s)]['gflop_per_image']:.3g} GF"
                            if (f, s) in idx else "") for s in sides])
    table = md_table(["fusion"] + [f"{s}x{s} ({s * s} regions)" for s in sides], rows)
    try:
        _fusion_figure(recs, out_dir / FIGURE)
        table += f"\n\n![fusion cost]({FIGURE.as_posix()})"
    except Exception as err:  # the tables are the record; a missing plotting backend must not lose them
        table += f"\n\n(figure not drawn: {err})"
    return table


def _fusion_figure(recs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame([{"fusion": e["fusion"], "regions": e["regions"], "ms per image (fwd+bwd)": e["ms_per_image"],
                        "GFLOP per image": e["gflop_per_image"]} for e in recs])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, y in zip(axes, ("ms per image (fwd+bwd)", "GFLOP per image"), strict=True):
        sns.lineplot(df, x="regions", y=y, hue="fusion", style="fusion", markers=True, dashes=False, ax=ax)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    e = recs[0]
    fig.suptitle(f"Fusion block alone vs image regions ({e['channels']} channels, batch {e['batch']}, "
                 f"{e['words']} words, {e['device']}, {e['threads']} threads)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def components_section(k: dict[str, list[dict]]) -> str:
    parts = []
    rows = [[e["text_encoder"], e["batch"], e["parameters"], e["seconds"] * 1e3, e["captions_per_s"],
             e["cached_seconds"] * 1e3, f"{e['cache_speedup']:.0f}x"] for e in k.get("text_encoder", [])]
    parts.append("**Text encoders** (frozen; one batch of captions, and the same batch from the per-caption "
                 "sentence cache of `dfgan.text.encoders.TextConditioner`):\n\n"
                 + md_table(["encoder", "batch", "parameters", "encode ms", "captions/s", "cached ms",
                             "cache speed-up"], rows))
    rows = [[e["imsize"], e["dtype"], e["n_mlps"], e["ratios"]["sides"]["per_affine"]["wall_median_s"] * 1e3,
             e["ratios"]["sides"]["fused"]["wall_median_s"] * 1e3, f"{e['ratios']['speedup_wall']['fused']:.2f}x"]
            for e in k.get("fused_affine", [])]
    parts.append("**Fused affine modulation alone** (all DFBlock (gamma, beta) of the generator, forward + "
                 "backward, batch 8):\n\n" + md_table(["px", "dtype", "MLPs", "per-affine ms", "fused ms", "speed-up"],
                                                      rows))
    rows = [[e["option"], e["workload"], e["dtype"], e["imsize"], e["batch"],
             e["ratios"]["sides"]["off"]["wall_median_s"] * 1e3, e["ratios"]["sides"]["on"]["wall_median_s"] * 1e3,
             f"{e['ratios']['speedup_wall']['on']:.2f}x", f"{e['ratios']['speedup_cpu']['on']:.2f}x"]
            for e in sorted(k.get("option_gain", []), key=lambda e: (e["option"], e["workload"], e["dtype"]))]
    parts.append("**Each speed option on vs off** (`full`, the other options on, interleaved; > 1 means the "
                 "option makes it faster):\n\n" + md_table(["option", "workload", "dtype", "px", "batch", "off ms",
                                                            "on ms", "speed-up (wall)", "speed-up (cpu)"], rows))
    rows = [[e["imsize"], e["batch"], e["speed"], e["compile_seconds"],
             e["ratios"]["sides"]["eager"]["wall_median_s"] * 1e3,
             e["ratios"]["sides"]["compiled"]["wall_median_s"] * 1e3,
             f"{e['ratios']['speedup_wall']['compiled']:.2f}x", e["break_even_calls"]]
            for e in k.get("compile", [])]
    parts.append("**torch.compile of the generator, sampling** (compile time paid once per process):\n\n"
                 + md_table(["px", "batch", "config", "compile s", "eager ms", "compiled ms", "speed-up",
                             "calls to break even"], rows))
    return "\n\n".join(parts)


METHOD = """\
## How these numbers are made

- **Configurations.** `reference`: `benchmarks/reference_step.py`, the official DF-GAN step order in fp32,
  nothing fused, NCHW (for sampling: our generator with the per-affine path, NCHW, fp32). `fp32`: our
  `dfgan.train.step.Stepper` with `train.channels_last=true train.fused_affine=true` (no D weight gradients in
  the G step, D backward only into D's weights). `fast`: `fp32` plus `train.precision=bf16` (autocast for the
  networks' forward and backward; MA-GP's norm and power, the losses and the optimiser stay fp32).
- **Defaults.** Since the parity study below, `train.precision=auto` (bf16 where bf16 matmuls are native:
  CUDA with bf16, CPUs with AVX512-BF16/AMX; fp32 elsewhere, where bf16 would be emulated and slower),
  `train.channels_last=true` and `train.fused_affine=true` are the spec's defaults; every run records what it
  used (`speed_*` tags). `train.compile` stays off (see below).
- **Ratios** come from one process: the sides of a comparison run in turn (A B C A B C ...), one warm-up
  round each, and the ratio is between medians. Wall time is the headline; `cpu` is this process's CPU time
  (`time.process_time`), which other processes' load disturbs far less. Absolute times depend on the machine's
  load (the load average is recorded with every record): compare ratios, not times across runs.
- **FLOPs** are counted with torch's FLOP formulas (`torch.utils.flop_counter.flop_registry`: convolutions,
  matmuls, attention, forward and backward incl. MA-GP's double backward); elementwise work is not counted.
  *Fraction of peak* = counted FLOPs / median time / the matmul peak measured in the same run (fp32 for the
  fp32 sides, bf16 for the fast side).
- **Peak memory.** GPU: `torch.cuda.max_memory_allocated` above what was allocated before the call. CPU: the
  highest running sum of tensor allocations and frees during one call, from the PyTorch profiler's memory
  events (tracemalloc does not see torch's allocator, and the RSS hides memory the allocator reuses).
- **Allocator.** glibc malloc with `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` = 4294967296
  (`nox -s benchmark` and the `dfgan` CLI set them; the default thresholds made the 256 px step about twice
  as slow and far noisier on the 2-core CPUs). The setting in force is in every record.
- **torch.compile** times depend on inductor's on-disk cache: a first compile of the 64 px generator took
  about 27 s on the 2-core CPUs (fast config), a cached one a few seconds.
- **Threads.** `--bench-threads` (default: every usable core). On the shared 2-vCPU machines, 2 threads were
  no faster than 1 for large matmuls and collapsed (up to 30x slower) whenever another process ran.
- **Not done:** CUDA graphs (no GPU to measure them on when this was written; `torch.compile(mode=
  "reduce-overhead")` is the way to try them); `torch.compile` of the training step on CPU (measured once at
  64 px, fast config: 46 s to compile and 0.95x, slower: off by default; it never covers MA-GP's double
  backward); one concatenated real+fake D pass (with MA-GP the penalty's gradient would have to run through
  the whole concatenated batch, twice the work of the real half alone).
"""


def default_run_section(reports: Path) -> str:
    """The README's main job side by side with an older commit's, from every
    ``reports/default_run_side_by_side*.json`` (``benchmarks/default_run_side_by_side.py``)."""
    from benchmarks.default_run_side_by_side import section
    from dfgan.experiment import resolve_spec

    parts = []
    for path in sorted(reports.glob("default_run_side_by_side*.json")):
        result = json.loads(path.read_text())
        full_steps = resolve_spec(result.get("variant", "full")).train.steps
        parts.append(f"From `{path.name}`: " + section(result, full_steps))
    return ("## The default run against an older commit\n\nThe README's main job for two commits on one machine, "
            "each from a clean export with an empty cache. Where its time goes and which levers were tried: "
            "[issue15_cpu_measurements.md](issue15_cpu_measurements.md).\n\n"
            + ("\n\n".join(parts) if parts else "Not measured yet: run `python benchmarks/"
               "default_run_side_by_side.py`."))


def write(json_path: Path, out: Path) -> str:
    data = json.loads(json_path.read_text())
    records = data.get("benchmarks", [])
    k = by_kind(records)
    targets, verdicts = targets_section(k)
    parts = [
        "# Throughput benchmarks",
        f"Written by `python -m benchmarks.report {json_path.name}` on "
        f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} from `nox -s benchmark` (pytest-benchmark suites in "
        "`benchmarks/`). Re-run on a quiet machine before quoting absolute numbers.",
        "## Machine\n\n" + machine_section(records, data) + ("\n\n" + busy_note(records) if busy_note(records) else ""),
        "## Targets: our step and the fast path against the reference formulation (`full`, nf="
        f"{next((e['nf'] for e in k.get('target_sampling', [])), '?')})\n\n" + "\n".join(verdicts) + "\n\n" + targets,
        "## Matmul peak measured in this run\n\n" + peaks_section(k),
        "## Generator sampling per backbone x fusion\n\n" + sampling_section(k),
        "## Generator sampling per named variant\n\nEach variant as defined (its fusion settings included, e.g. "
        "the baselines' attention resolutions), at the size of the CPU studies; `dfgan report` quotes these.\n\n"
        + sampling_variants_section(k),
        "## Training step (D step + G step) per variant\n\n" + variants_section(k),
        "## MA-GP overhead\n\n" + magp_section(k),
        "## Fusion blocks alone as the number of image regions grows\n\n"
        "Forward + backward of one block at a fixed channel width, per image; `cross_attention` is AttnGAN's "
        "word-region attention plus its joint conv.\n\n" + fusion_section(k, out.parent),
        "## Components\n\n" + components_section(k),
        default_run_section(out.parent),
        METHOD,
    ]
    text = "\n\n".join(parts) + "\n"
    if out.exists():
        old = out.read_text()
        if PARITY_MARKER in old:
            text += "\n" + old[old.index(PARITY_MARKER):]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks.md")
    args = ap.parse_args(argv)
    write(args.json, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
