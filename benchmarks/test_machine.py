"""The physical limits every figure is read against, measured in this run at its start and again at its end
(the report uses the best): the matmul rate in fp32 and bf16, and the effective rate of a DF-GAN-like 3x3
convolution (which can exceed the matmul rate: see ``benchmarks.harness.conv3x3_rate``)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import conv3x3_rate, matmul_peak

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("when", ["start", "end"])  # "end" items are moved to the end of the run (conftest)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_matmul_peak(benchmark, record, peaks, device, profile, precision, when):
    n = peaks[precision]["n"]
    result = {}
    benchmark.pedantic(lambda: result.update(matmul_peak(DTYPES[precision], device, n=n, reps=3)), rounds=3)
    rate = max(result["flops_per_s"], peaks[precision]["flops_per_s"] if when == "start" else 0.0)
    record(kind="matmul_peak", precision=precision, when=when, dtype=str(DTYPES[precision]).replace("torch.", ""),
           n=n, peak_gflop_per_s=rate / 1e9, device=str(device), threads=torch.get_num_threads(),
           torch=torch.__version__)


@pytest.mark.parametrize("when", ["start", "end"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_conv3x3_rate(benchmark, record, device, profile, precision, when):
    small = profile.name == "smoke"
    kw = {"channels": 32, "side": 16, "batch": 2} if small else {}
    result = {}
    benchmark.pedantic(lambda: result.update(conv3x3_rate(DTYPES[precision], device, reps=3, **kw)), rounds=3)
    record(kind="conv3x3_rate", precision=precision, when=when, dtype=str(DTYPES[precision]).replace("torch.", ""),
           **{k: v for k, v in result.items() if k != "flops_per_s"}, gflop_per_s=result["flops_per_s"] / 1e9,
           device=str(device), threads=torch.get_num_threads(), torch=torch.__version__)
