"""The headline comparisons: our fp32 path and the fast path against the reference formulation, `full` at
nf=32, interleaved in one process (ratios of medians). Targets (issue 7): fp32 never slower than the
reference; fast >= 1.8x for sampling at 256 px, >= 1.5x for the training step at 256 px, >= 1.3x at 64 px."""

from __future__ import annotations

from benchmarks.harness import (
    SPEEDS,
    SampleWorkload,
    TrainWorkload,
    bench_spec,
    build_models,
    config_record,
    count_flops,
    interleaved,
    peak_memory,
    rates,
    ratio_report,
)

FAST_TARGETS = {("sampling", 256): 1.8, ("train_step", 256): 1.5, ("train_step", 64): 1.3}
FP32_TARGET = 1.0  # our fp32 path is never slower than the reference formulation


def _compare(kind, benchmark, record, peaks, device, profile, cfg, make):
    imsize, batch, rounds = cfg
    specs = {s: bench_spec("full", imsize=imsize, nf=profile.nf, batch=batch, speed=s, device=device.type)
             for s in SPEEDS}
    gan, _ = build_models(specs["reference"], device)
    sides = {s: make(specs[s], s, gan) for s in SPEEDS}
    flops = {"reference": count_flops(sides["reference"]), "fp32": count_flops(sides["fp32"])}
    flops["fast"] = flops["fp32"]  # the same operations, in bf16
    memory = {s: peak_memory(f, device) for s, f in sides.items()} if profile.memory else {}
    times = interleaved(benchmark, sides, main="fast", rounds=rounds, warmup=1)
    ratios = ratio_report(times, "reference")
    per_side = {}
    for s in SPEEDS:
        per_side[s] = {**config_record(specs[s], s, device),
                       **rates(flops[s], times[s].median("wall"), batch, s, peaks),
                       "cpu_seconds": times[s].median("cpu"),
                       "peak_memory_bytes": memory.get(s, {}).get("peak_bytes"),
                       "options_applied": getattr(sides[s], "options", {})}
    target = FAST_TARGETS.get((kind, imsize)) if profile.nf == 32 else None
    record(kind=f"target_{kind}", **config_record(specs["fast"], "fast", device), sides=per_side, ratios=ratios,
           fast_target=target, fp32_target=FP32_TARGET, memory_method=next(iter(memory.values()), {}).get("method"))


def test_sampling_vs_reference(benchmark, record, peaks, device, profile, target_sample_cfg):
    _compare("sampling", benchmark, record, peaks, device, profile, target_sample_cfg,
             lambda spec, speed, gan: SampleWorkload(spec, device, gan=gan))


def test_train_step_vs_reference(benchmark, record, peaks, device, profile, target_train_cfg):
    _compare("train_step", benchmark, record, peaks, device, profile, target_train_cfg,
             lambda spec, speed, gan: TrainWorkload(spec, device, gan=gan, reference=speed == "reference"))
