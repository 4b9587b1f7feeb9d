"""The parts of the GPU check (``benchmarks/gpu_check.py``): throughput, 512 px, torch.compile (the peak part is
in ``gpu_peaks``, FID in ``gpu_fid``).

Each part is a function ``part(ctx, log)``: it measures what it can before ``ctx.deadline`` and writes every
result to ``log`` as soon as it has it (the runner may kill a part that runs past its cap: what the log holds
then is kept). Workloads come from ``benchmarks.harness`` (the same specs and code paths as training); FLOPs
are counted as the CPU benchmarks count them (``harness.count_flops``: torch's FLOP formulas).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.harness import (
    SampleWorkload,
    TrainWorkload,
    bench_spec,
    build_models,
    count_flops,
    peak_memory,
    variant_workload,
)


@dataclass(frozen=True)
class Sizes:
    """What every part measures: the GPU sizes, or tiny ones for the CPU dry run (``DRY``)."""

    imsize: int = 256
    batch: int = 32
    nf: int = 32  # DF-GAN's width
    hires: int = 512
    hires_batches: tuple[int, ...] = (32, 16, 8)  # tried in turn if memory runs out
    warmup: int = 3
    calls: int = 10
    measure_s: float = 4.0  # at most this long per measured configuration (after warm-up)
    matmul_n: int = 8192
    conv: tuple[int, int, int] = (256, 64, 32)  # channels, side, batch of the 3x3 convolution rate
    fid_images: int = 10_000
    fid_ref_images: int = 2_500  # stand-in for cached reference statistics (untimed; also the warm-up)
    fid_batch: int = 250
    compile_backend: str = "inductor"
    compile_kinds: tuple[str, ...] = ("sample", "train")
    compile_d: bool = True  # also try D compiled (MA-GP's double backward through it)
    memory_rows: int | None = None  # measure memory in this many rows per part (None: all)
    configs: tuple[str, ...] | None = None  # the CONFIGS rows to run (None: all)
    extra: dict = field(default_factory=dict)


GPU = Sizes()
# the dry run: every part, tiny; memory (the CPU profiler is slow) and compile (tracing is) only once
DRY = Sizes(imsize=32, batch=2, nf=4, hires=64, hires_batches=(2,), warmup=1, calls=1, measure_s=0.5,
            matmul_n=256, conv=(16, 16, 2), fid_images=16, fid_ref_images=16, fid_batch=8, compile_backend="eager",
            compile_kinds=("sample",), compile_d=False, memory_rows=1, configs=("fp32", "bf16"))


@dataclass
class Ctx:
    device: torch.device
    sizes: Sizes
    deadline: float  # time.monotonic() by which the part must be done
    dry_run: bool
    root: Path
    memory_rows_done: int = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()


class PartLog:
    """A part's results: ``info`` (key -> value) and ``rows`` (one dict per measured configuration), written to
    ``path`` (atomically) after every change, so a part cut at its cap still leaves what it measured."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.data: dict[str, Any] = {"info": {}, "rows": []}

    def info(self, **kv) -> None:
        self.data["info"].update(kv)
        self.flush()

    def row(self, **r) -> dict:
        self.data["rows"].append(r)
        self.flush()
        return r

    def flush(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, default=str))
        os.replace(tmp, self.path)


def short_error(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


@contextlib.contextmanager
def backend_flags(*, tf32_matmul: bool = False, tf32_cudnn: bool = False, cudnn_benchmark: bool = False):
    """TF32 and cuDNN autotuning for one measurement (restored after). Off = fp32 means fp32."""
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    old = (m.allow_tf32, c.allow_tf32, c.benchmark)
    m.allow_tf32, c.allow_tf32, c.benchmark = tf32_matmul, tf32_cudnn, cudnn_benchmark
    try:
        yield
    finally:
        m.allow_tf32, c.allow_tf32, c.benchmark = old


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def time_calls(fn: Callable[[], Any], ctx: Ctx) -> dict[str, Any]:
    """Median wall time of ``fn`` (which synchronises itself) after ``sizes.warmup`` calls: ``sizes.calls`` calls,
    fewer if ``sizes.measure_s`` or the part's deadline runs out first (at least one)."""
    s = ctx.sizes
    for _ in range(s.warmup):
        fn()
    stop = min(time.monotonic() + s.measure_s, ctx.deadline - 1.0)
    times: list[float] = []
    while not times or (len(times) < s.calls and time.monotonic() < stop):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"ms_per_call": 1e3 * statistics.median(times), "ms_min": 1e3 * min(times), "calls": len(times)}


def memory(fn: Callable[[], Any], ctx: Ctx, batch: int) -> dict[str, Any]:
    """Peak memory of one call: above what was allocated before it (harness.peak_memory), per image, and on
    CUDA the whole-process peak (``torch.cuda.max_memory_allocated``: weights and optimiser state included)."""
    m = peak_memory(fn, ctx.device)
    out = {"peak_mib": m["peak_bytes"] / 2**20, "mib_per_image": m["peak_bytes"] / 2**20 / batch}
    if ctx.device.type == "cuda":
        out["max_allocated_mib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
    return out


def _rate_row(flops: float | None, timing: dict, batch: int) -> dict[str, Any]:
    sec = timing["ms_per_call"] / 1e3
    out = {**timing, "images_per_s": batch / sec}
    if flops:
        out.update(gflop_per_call=flops / 1e9, gflop_per_image=flops / batch / 1e9,
                   achieved_tflop_s=flops / sec / 1e12)
    return out


def make_workload(kind: str, ctx: Ctx, *, imsize: int, batch: int, speed: str, gan=None):
    """(spec, workload) of variant ``full`` via ``harness.variant_workload``; raises ValueError for a skip."""
    make = TrainWorkload if kind == "train" else SampleWorkload
    try:
        return variant_workload(lambda spec, dev: make(spec, dev, gan=gan), "full", imsize=imsize, batch=batch,
                                nf=ctx.sizes.nf, speed=speed, device=ctx.device)
    except pytest.skip.Exception as e:  # variant_workload skips (as in a pytest suite) when the spec is invalid
        raise ValueError(str(e)) from None


def base_gan(ctx: Ctx, imsize: int, batch: int):
    spec = bench_spec("full", imsize=imsize, nf=ctx.sizes.nf, batch=batch, speed="fp32", device=ctx.device.type)
    return build_models(spec, ctx.device)[0]


# (name, harness speed, backend flags, peak precision): what each row of the throughput tables runs
CONFIGS: list[tuple[str, str, dict[str, bool], str]] = [
    ("fp32", "fp32", {}, "fp32"),  # TF32 off: fp32 means fp32
    ("fp32 torch defaults (cuDNN TF32)", "fp32", {"tf32_cudnn": True}, "tf32"),  # what a plain run gets
    ("bf16", "fast", {}, "bf16"),
    ("bf16 + cudnn.benchmark", "fast", {"cudnn_benchmark": True}, "bf16"),
]


def measure(kind: str, name: str, speed: str, flags: dict, prec: str, ctx: Ctx, log: PartLog, *, imsize: int,
            batch: int, gan, flops: dict, with_memory: bool = True) -> dict | None:
    """One row: build the workload, count its FLOPs once per (kind, size), time it, measure its memory."""
    base = {"kind": kind, "config": name, "imsize": imsize, "batch": batch, "peak_precision": prec}
    if ctx.left() < 3:
        return log.row(**base, status="skipped: the part's time cap was reached")
    try:
        with backend_flags(**flags):
            spec, wl = make_workload(kind, ctx, imsize=imsize, batch=batch, speed=speed, gan=gan)
            key = (kind, imsize, batch)
            if key not in flops:
                flops[key] = count_flops(wl)
            row = {**base, **_rate_row(flops[key], time_calls(wl, ctx), batch)}
            if with_memory and (ctx.sizes.memory_rows is None or ctx.memory_rows_done < ctx.sizes.memory_rows):
                row.update(memory(wl, ctx, batch))
                ctx.memory_rows_done += 1
        del wl
        return log.row(**row, status="ok")
    except torch.cuda.OutOfMemoryError as e:
        return log.row(**base, status=f"out of memory: {short_error(e)}")
    except Exception as e:  # noqa: BLE001 - every failure is a result of the check, reported as such
        return log.row(**base, status=f"failed: {short_error(e)}")
    finally:
        free(ctx.device)


def graph_sampler(wl: SampleWorkload, bf16: bool) -> Callable[[], torch.Tensor]:
    """The generator's forward on the workload's fixed batch captured as one CUDA graph; returns its replay.
    Autocast's weight cache is off during capture (its cast copies must live in the graph's memory pool)."""
    G, b = wl.G, wl.batch

    def fwd():
        ac = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if bf16 else contextlib.nullcontext()
        with torch.no_grad(), ac:
            return G(b.noise, b.sentence, b.words, b.mask)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fwd()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fwd()

    def replay():
        graph.replay()
        torch.cuda.synchronize()
        return out

    return replay


def measure_graph(name: str, speed: str, prec: str, ctx: Ctx, log: PartLog, *, imsize: int, batch: int, gan,
                  flops: dict, compile_first: bool = False) -> dict:
    """Sampling replayed from a CUDA graph (optionally of the torch.compile'd generator), checked against eager."""
    base = {"kind": "sample", "config": name, "imsize": imsize, "batch": batch, "peak_precision": prec}
    if ctx.device.type != "cuda":
        return log.row(**base, status="skipped: CUDA graphs need a CUDA device")
    if ctx.left() < 5:
        return log.row(**base, status="skipped: the part's time cap was reached")
    try:
        _, wl = make_workload("sample", ctx, imsize=imsize, batch=batch, speed=speed, gan=gan)
        key = ("sample", imsize, batch)
        if key not in flops:
            flops[key] = count_flops(wl)
        eager = wl().float().clone()
        if compile_first:  # compiled in the capture's warm-up (under the capture's autocast settings)
            wl.G.compile(backend=ctx.sizes.compile_backend)
        t = time.perf_counter()
        replay = graph_sampler(wl, speed == "fast")
        extra = {"compile_s" if compile_first else "capture_s": time.perf_counter() - t}
        diff = float((replay().float() - eager).abs().max())
        row = {**base, **_rate_row(flops[key], time_calls(replay, ctx), batch), **extra,
               "max_abs_diff_vs_eager": diff}
        return log.row(**row, status="ok")
    except Exception as e:  # noqa: BLE001
        return log.row(**base, status=f"failed: {short_error(e)}")
    finally:
        free(ctx.device)


# ---- the parts -----------------------------------------------------------------------------------------------------
def part_throughput(ctx: Ctx, log: PartLog) -> None:
    """Training step and sampling of ``full`` at 256 px batch 32: fp32, fp32 with cuDNN's TF32, bf16 (+ cuDNN
    autotuning); sampling also replayed from CUDA graphs (fp32, bf16)."""
    s = ctx.sizes
    gan = base_gan(ctx, s.imsize, s.batch)
    flops: dict = {}
    for kind in ("train", "sample"):
        for name, speed, flags, prec in CONFIGS:
            if s.configs is not None and name not in s.configs:
                continue
            measure(kind, name, speed, flags, prec, ctx, log, imsize=s.imsize, batch=s.batch, gan=gan, flops=flops)
    for name, speed, prec in (("fp32 + CUDA graph", "fp32", "fp32"), ("bf16 + CUDA graph", "fast", "bf16")):
        measure_graph(name, speed, prec, ctx, log, imsize=s.imsize, batch=s.batch, gan=gan, flops=flops)


def part_hires(ctx: Ctx, log: PartLog) -> None:
    """``full`` at 512 px: training and sampling in bf16 and fp32, cost and memory per image (the report sets them
    against the 256 px rows). The batch drops (32, 16, 8) while it does not fit."""
    s = ctx.sizes
    flops: dict = {}
    for batch in s.hires_batches:
        try:
            gan = base_gan(ctx, s.hires, batch)
        except torch.cuda.OutOfMemoryError:
            free(ctx.device)
            continue
        rows = [measure(kind, name, speed, flags, prec, ctx, log, imsize=s.hires, batch=batch, gan=gan, flops=flops)
                for kind in ("train", "sample") for name, speed, flags, prec in (CONFIGS[0], CONFIGS[2])]
        if not any(str(r.get("status", "")).startswith("out of memory") for r in rows):
            return
        log.info(note=f"batch {batch} ran out of memory at {s.hires} px; trying a smaller one")
        del gan
        free(ctx.device)


def part_compile(ctx: Ctx, log: PartLog) -> None:
    """torch.compile of the generator (as ``train.compile`` does it) for sampling and training, bf16, and CUDA
    graphs over the compiled generator; then, if time is left, D compiled too (MA-GP's double backward runs
    through D, which torch.compile did not support: tried, and reported either way)."""
    s = ctx.sizes
    gan = base_gan(ctx, s.imsize, s.batch)
    flops: dict = {}
    backend = s.compile_backend
    for kind in s.compile_kinds:
        base = {"kind": kind, "config": f"bf16 + torch.compile(G, backend={backend})", "imsize": s.imsize,
                "batch": s.batch, "peak_precision": "bf16"}
        if ctx.left() < 10:
            log.row(**base, status="skipped: the part's time cap was reached")
            continue
        try:
            _, wl = make_workload(kind, ctx, imsize=s.imsize, batch=s.batch, speed="fast", gan=gan)
            flops.setdefault((kind, s.imsize, s.batch), count_flops(wl))
            g = wl.G if kind == "sample" else wl.gan.generator
            t = time.perf_counter()
            g.compile(backend=backend)
            wl()
            compile_s = time.perf_counter() - t
            row = {**base, **_rate_row(flops[(kind, s.imsize, s.batch)], time_calls(wl, ctx), s.batch),
                   "compile_s": compile_s}
            log.row(**row, status="ok")
        except Exception as e:  # noqa: BLE001
            log.row(**base, status=f"failed: {short_error(e)}")
        finally:
            wl = None
            free(ctx.device)
    measure_graph(f"bf16 + torch.compile(G, backend={backend}) + CUDA graph", "fast", "bf16", ctx, log,
                  imsize=s.imsize, batch=s.batch, gan=gan, flops=flops, compile_first=True)
    _compile_d(ctx, log, gan, flops)


def _compile_d(ctx: Ctx, log: PartLog, gan, flops: dict) -> None:
    s, backend = ctx.sizes, ctx.sizes.compile_backend
    base = {"kind": "train", "config": f"bf16 + torch.compile(G and D, backend={backend})", "imsize": s.imsize,
            "batch": s.batch, "peak_precision": "bf16"}
    if not s.compile_d:
        log.row(**base, status="skipped: not in the dry run")
        return
    if ctx.left() < (60 if ctx.device.type == "cuda" else 5):
        log.row(**base, status="skipped: not enough time left in the part's cap")
        return
    try:
        _, wl = make_workload("train", ctx, imsize=s.imsize, batch=s.batch, speed="fast", gan=copy.deepcopy(gan))
        wl.gan.generator.compile(backend=backend)
        for d in wl.gan.discriminators:
            d.compile(backend=backend)
        t = time.perf_counter()
        wl()
        compile_s = time.perf_counter() - t
        row = {**base, **_rate_row(flops.get(("train", s.imsize, s.batch)), time_calls(wl, ctx), s.batch),
               "compile_s": compile_s}
        log.row(**row, status="ok")
    except Exception as e:  # noqa: BLE001
        log.row(**base, status=f"failed: {short_error(e)}")
    finally:
        free(ctx.device)
