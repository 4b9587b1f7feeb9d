"""Generator sampling (no grad), images/s, for every backbone x fusion in the registries at every size of the
profile, and for every named variant as defined (its fusion settings included, e.g. the baselines' attention
resolutions) at the studies' size, in fp32 (our fp32 path) and the fast configuration; FLOPs per image,
fraction of peak, memory."""

from __future__ import annotations

import pytest

from benchmarks.harness import (
    SampleWorkload,
    bench_spec,
    config_record,
    count_flops,
    peak_memory,
    rates,
    variant_workload,
)
from dfgan.spec import SpecError


@pytest.mark.parametrize("speed", ["fp32", "fast"])
def test_sampling(benchmark, record, peaks, device, profile, sample_cfg, backbone, fusion, speed):
    imsize, batch, rounds = sample_cfg
    if speed == "fp32" and profile.sample_fp32_max and imsize > profile.sample_fp32_max:
        pytest.skip(f"profile {profile.name}: fp32 sampling only up to {profile.sample_fp32_max} px (time budget)")
    try:
        spec = bench_spec("full", imsize=imsize, nf=profile.nf, batch=batch, speed=speed, device=device.type,
                          overrides=[f"model.backbone={backbone}", f"model.fusion.name={fusion}"])
        work = SampleWorkload(spec, device)
    except (SpecError, ValueError) as e:  # e.g. a fusion whose settings do not fit this size
        pytest.skip(f"{backbone} x {fusion} at {imsize} px: {e}")
    flops = count_flops(work)
    memory = peak_memory(work, device) if profile.memory else {}
    benchmark.pedantic(work, rounds=rounds, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    record(kind="sampling", **config_record(spec, speed, device),
           **rates(flops, seconds, batch, speed, peaks),
           peak_memory_bytes=memory.get("peak_bytes"), memory_method=memory.get("method"),
           options_applied=work.options)


@pytest.mark.parametrize("speed", ["fp32", "fast"])
def test_sampling_variant(benchmark, record, peaks, device, profile, variant, speed):
    imsize, batch, rounds = profile.variant_sample
    spec, work = variant_workload(SampleWorkload, variant, imsize=imsize, batch=batch, nf=profile.nf, speed=speed,
                                  device=device)
    flops = count_flops(work)
    benchmark.pedantic(work, rounds=rounds, warmup_rounds=1)
    record(kind="sampling_variant", **config_record(spec, speed, device),
           **rates(flops, benchmark.stats.stats.median, batch, speed, peaks),
           options_applied=work.options, description=spec.description)
