"""The physical limit every figure is read against: this machine's matmul rate in fp32 and bf16."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import sync


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_matmul_peak(benchmark, record, peaks, device, precision):
    p = peaks[precision]
    n = p["n"]
    dt = torch.float32 if precision == "fp32" else torch.bfloat16
    a, b = torch.randn(n, n, device=device).to(dt), torch.randn(n, n, device=device).to(dt)

    def mm():
        torch.mm(a, b)
        sync(device)

    benchmark.pedantic(mm, rounds=5, warmup_rounds=1)
    median = benchmark.stats.stats.median
    record(kind="matmul_peak", precision=precision, dtype=str(dt).replace("torch.", ""), n=n,
           peak_gflop_per_s=p["flops_per_s"] / 1e9, median_gflop_per_s=2 * n**3 / median / 1e9,
           device=str(device), threads=torch.get_num_threads(), torch=torch.__version__)
