"""The GPU check's device peak: datasheet rates by device name, and measured matmul and 3x3-convolution rates."""

from __future__ import annotations

import re
from typing import Any

import torch

from benchmarks.gpu_parts import Ctx, PartLog, backend_flags, free
from benchmarks.harness import conv3x3_rate, matmul_peak

# Dense (no structured sparsity) peak TFLOP/s from the vendors' datasheets, SXM parts at boost clock unless the
# name says otherwise: bf16 and tf32 on tensor cores, fp32 without them. Keys match torch.cuda.get_device_name()
# as whole words, longest key first ("H100 PCIe" before "H100"; "L4" does not match "L40S").
DATASHEET_TFLOPS: dict[str, dict[str, float | None]] = {
    "H200 NVL": {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0},
    "H200": {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "H100 NVL": {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A40": {"bf16": 149.7, "tf32": 74.8, "fp32": 37.4},
    "A10": {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "L40S": {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "L40": {"bf16": 181.0, "tf32": 90.5, "fp32": 90.5},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "RTX 4090": {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
    "V100": {"bf16": None, "tf32": None, "fp32": 15.7},
    "T4": {"bf16": None, "tf32": None, "fp32": 8.1},
}


def datasheet_peak(device_name: str) -> dict[str, Any] | None:
    """The datasheet row for a device name (``{"key", "bf16", "tf32", "fp32"}`` in TFLOP/s), or None."""
    for key in sorted(DATASHEET_TFLOPS, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", device_name, flags=re.IGNORECASE):
            return {"key": key, **DATASHEET_TFLOPS[key]}
    return None


def part_peak(ctx: Ctx, log: PartLog) -> None:
    """Measured large-matmul rates (bf16, fp32, tf32) and 3x3-convolution rates (bf16, fp32), in TFLOP/s."""
    n = ctx.sizes.matmul_n
    for prec, dtype, flags in (("bf16", torch.bfloat16, {}), ("fp32", torch.float32, {}),
                               ("tf32", torch.float32, {"tf32_matmul": True})):
        with backend_flags(**flags):
            r = matmul_peak(dtype, ctx.device, n=n, reps=10)
        log.row(kind="matmul", precision=prec, n=n, tflop_s=r["flops_per_s"] / 1e12, status="ok")
        free(ctx.device)
    c, side, b = ctx.sizes.conv
    for prec, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with backend_flags(cudnn_benchmark=True):
            r = conv3x3_rate(dtype, ctx.device, channels=c, side=side, batch=b, reps=10)
        log.row(kind="conv3x3", precision=prec, channels=c, side=side, batch=b, tflop_s=r["flops_per_s"] / 1e12,
                status="ok")
        free(ctx.device)
