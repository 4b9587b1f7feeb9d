"""One full training step (D step + G step) of every named variant (ablations/variants/*.yaml), in our fp32
path and the fast configuration: steps/s, images/s, FLOPs, fraction of peak, peak memory."""

from __future__ import annotations

import pytest

from benchmarks.harness import (
    TrainWorkload,
    config_record,
    count_flops,
    peak_memory,
    rates,
    variant_workload,
)


@pytest.mark.parametrize("speed", ["fp32", "fast"])
def test_train_step(benchmark, record, peaks, device, profile, variant, speed):
    imsize, batch, rounds = profile.variant_train
    spec, work = variant_workload(TrainWorkload, variant, imsize=imsize, batch=batch, nf=profile.nf, speed=speed,
                                  device=device)
    flops = count_flops(work)
    memory = peak_memory(work, device) if profile.memory else {}
    benchmark.pedantic(work, rounds=rounds, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    record(kind="train_step", **config_record(spec, speed, device),
           **rates(flops, seconds, batch, speed, peaks),
           steps_per_s=1.0 / seconds, peak_memory_bytes=memory.get("peak_bytes"),
           memory_method=memory.get("method"), options_applied=work.options,
           description=spec.description)
