"""Facts about the machine and process a run or a benchmark ran in, recorded with every result.

A timing means little without the device, the thread count, the torch build and the memory allocator
in force: glibc's default ``malloc`` trims and ``mmap``s the large blocks of a PyTorch CPU step on every
step, which made DF-GAN's 256 px step about twice as slow and far noisier on the 2-core machines here
(measured with ``benchmarks/``). ``dfgan`` re-execs itself with ``MALLOC_ENV`` (``dfgan.cli.main``), nox sets
it for its sessions; this module reports what is actually in force, including a preloaded
jemalloc/tcmalloc/mimalloc, chooses the device a run uses, and says how the process takes a stop signal.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from typing import Any

ALLOCATOR_ENV_PREFIXES = ("MALLOC_", "JE_MALLOC", "TCMALLOC_", "MIMALLOC_")
ALLOCATOR_LIBS = ("jemalloc", "tcmalloc", "mimalloc")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")
# glibc malloc thresholds raised: PyTorch CPU steps run up to 2x faster and far less noisy with these
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def allocator_info() -> dict[str, Any]:
    """The C allocator in force: a preloaded library (from this process's memory map) or glibc, and its env."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ALLOCATOR_ENV_PREFIXES)}
    loaded = []
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
        loaded = sorted({lib for lib in ALLOCATOR_LIBS if f"lib{lib}" in maps})
    except OSError:
        pass
    name = loaded[0] if loaded else ("glibc" if platform.system() == "Linux" else platform.system().lower())
    tuned = name == "glibc" and all(env.get(k) == v for k, v in MALLOC_ENV.items())
    return {"allocator": name, "allocator_env": env, "ld_preload": os.environ.get("LD_PRELOAD", ""),
            "glibc_thresholds_raised": tuned}


def runtime_info(device: Any = "cpu") -> dict[str, Any]:
    """Device, dtype support, threads, torch version and allocator: the context of every measurement."""
    import torch

    dev = torch.device(device)
    flags = _cpu_flags()
    info: dict[str, Any] = {
        "device": str(dev),
        "device_name": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": [f for f in BF16_CPU_FLAGS if f in flags],
        **allocator_info(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update({"device_name": props.name, "cuda": torch.version.cuda,
                     "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")})
    return info


def bf16_is_fast(device: Any = "cpu") -> bool:
    """Whether bf16 matmuls run natively here: a CUDA device that supports bf16, or a CPU with AVX512-BF16 or
    AMX (elsewhere the CPU emulates them, and bf16 autocast is slower than fp32)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def resolve_precision(precision: str, device: Any = "cpu") -> str:
    """``train.precision`` as a run uses it: "auto" is bf16 where bf16 matmuls are native (``bf16_is_fast``)
    and fp32 elsewhere; "fp32" and "bf16" are kept as they are."""
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision


def pick_device(name: Any = "auto"):
    """The torch device for ``train.device`` (or any device given): "auto" (or None) is CUDA when available,
    else CPU; "cuda" without a CUDA device is an error that says what to set instead."""
    import torch

    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name) == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available (use train.device=auto or cpu)")
    return torch.device(name)


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (``kill``, a scheduler's stop, ``docker stop``) end the process the way Ctrl-C does: a
    ``KeyboardInterrupt`` in the main thread, so that runs are marked KILLED and temporaries removed on the way
    out. Only from the main thread (elsewhere it does nothing)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, _raise)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while the block runs; one that arrives meanwhile is delivered (to the handler
    that was in place) when the block ends, a second one interrupts at once. For writes that must not stop
    half-way: a ``KeyboardInterrupt`` raised inside an SQLAlchemy transaction on an SQLite tracking store
    leaves the file locked for the rest of the process, so the run could no longer be marked KILLED and each
    later write waited out SQLite's lock timeout. Only from the main thread (elsewhere it holds nothing)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def _hold(signum, frame):
        if caught:  # a second one: the user means it
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
        caught.append(signum)

    held = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, _hold) for s in held}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])
