"""What the benchmark suites share: speed configurations, workloads built from specs, timing, FLOPs, memory.

Workloads are built from the same specs and the same code paths as training (``dfgan.experiment.build_gan``,
``dfgan.train.step.apply_speed_options``, ``Stepper``), on a fixed random batch: images in [-1, 1], random
sentence (and word) vectors of the DAMSM size. No dataset and no text encoder are needed.

Speed configurations (``SPEEDS``): each is a set of ``train.*`` overrides.

* ``reference``: fp32, nothing fused, NCHW; training uses ``benchmarks.reference_step.ReferenceStep``
  (official order of operations) instead of our ``Stepper``;
* ``fp32``: our ``Stepper`` in fp32 with the fp32-safe options (channels_last, fused affine);
* ``fast``: ``fp32`` plus bf16 autocast (the MA-GP norm and power, the losses and the optimiser stay fp32).

Timing: on a shared CPU, absolute times are noise; ``Interleaved`` runs the sides of a comparison in turn
(A B C A B C ...) inside one pytest-benchmark ``pedantic`` call (the other sides run, timed by us, in its
untimed ``setup``), and ratios are taken between medians. Every round records wall time and this process's
CPU time (``time.process_time``), which neighbours' load disturbs far less.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfgan.experiment import build_gan, build_regulariser, needs_words, resolve_spec
from dfgan.spec import Spec, SpecError
from dfgan.train.step import Stepper, apply_speed_options
from dfgan.variants import load_spec

ROOT_DIR = Path(__file__).resolve().parents[1]  # the repository root
COND_DIM = 256  # DAMSM sentence/word vector size (official code/models/DAMSM.py:RNN_ENCODER)
N_WORDS = 18  # DF-GAN pads captions to 18 tokens (official code/lib/datasets.py)

SPEEDS: dict[str, dict[str, Any]] = {
    "reference": {"train.precision": "fp32", "train.channels_last": False, "train.fused_affine": False},
    "fp32": {"train.precision": "fp32", "train.channels_last": True, "train.fused_affine": True},
    "fast": {"train.precision": "bf16", "train.channels_last": True, "train.fused_affine": True},
}


def bench_spec(variant: str = "full", *, imsize: int, nf: int = 32, batch: int = 8, speed: str = "fast",
               overrides: list[str] | None = None, device: str = "cpu", check: bool = True) -> Spec:
    """A variant at the given size, batch and speed configuration (``SPEEDS``), no tracking."""
    over = [f"data.imsize={imsize}", f"model.nf={nf}", f"train.batch_size={batch}", f"train.device={device}",
            "tracking.enabled=false"]
    over += [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SPEEDS[speed].items()]
    return (resolve_spec if check else load_spec)(variant, overrides=over + list(overrides or []))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Batch:
    images: torch.Tensor
    sentence: torch.Tensor
    words: torch.Tensor | None
    mask: torch.Tensor | None
    noise: torch.Tensor

    @classmethod
    def random(cls, spec: Spec, device, seed: int = 0, words: bool | None = None) -> Batch:
        g = torch.Generator().manual_seed(seed)
        b, s = spec.train.batch_size, spec.data.imsize
        with_words = needs_words(spec) if words is None else words
        return cls(
            images=(torch.rand(b, 3, s, s, generator=g) * 2 - 1).to(device),
            sentence=torch.randn(b, COND_DIM, generator=g).to(device),
            words=torch.randn(b, COND_DIM, N_WORDS, generator=g).to(device) if with_words else None,
            mask=torch.zeros(b, N_WORDS, dtype=torch.bool, device=device) if with_words else None,
            noise=torch.randn(b, spec.model.z_dim, generator=g).to(device),
        )


def build_models(spec: Spec, device, seed: int = 0):
    """(gan, regulariser) for ``spec``, weights seeded; the DBlock ``gamma`` scalars set to 0.5 so that the
    residual paths (zero at DF-GAN's init) take part in the measured work as they do after a few steps."""
    torch.manual_seed(seed)
    gan = build_gan(spec, cond_dim=COND_DIM, word_dim=COND_DIM)
    with torch.no_grad():
        for name, p in gan.named_parameters():
            if name.endswith(".gamma") and p.numel() == 1:
                p.fill_(0.5)
    return gan.to(device), build_regulariser(spec)


def optimizers(gan, t) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    betas = (float(t.betas[0]), float(t.betas[1]))
    return (torch.optim.Adam(gan.generator.parameters(), lr=t.lr_g, betas=betas),
            torch.optim.Adam(list(gan.d_parameters()), lr=t.lr_d, betas=betas))


class TrainWorkload:
    """One training step (D step + G step) of ``spec`` on a fixed batch; ``reference=True`` for the yardstick."""

    def __init__(self, spec: Spec, device, *, reference: bool = False, gan=None, seed: int = 0):
        self.spec, self.device, self.reference = spec, torch.device(device), reference
        if gan is None:
            gan, reg = build_models(spec, self.device, seed)
        else:
            gan, reg = copy.deepcopy(gan).to(self.device), build_regulariser(spec)
        self.options = {} if reference else apply_speed_options(gan, spec.train)
        self.gan = gan
        self.opt_g, self.opt_d = optimizers(gan, spec.train)
        self.batch = Batch.random(spec, self.device)
        self.images_per_call = spec.train.batch_size
        if reference:
            from benchmarks.reference_step import ReferenceStep

            r = spec.model.regulariser
            if r.name not in ("ma_gp", "none") or (r.name == "ma_gp" and (r.target, r.norm) != ("real_match",
                                                                                                  "concat")):
                raise ValueError(f"the reference step implements DF-GAN's MA-GP or none, not {r}")
            self._ref = ReferenceStep.for_gan(gan, self.opt_g, self.opt_d, magp=r.name == "ma_gp", k=r.k, p=r.p)
        else:
            self._stepper = Stepper(gan, reg, self.opt_g, self.opt_d, precision=spec.train.precision,
                                    device=self.device, channels_last=spec.train.channels_last)
        self._step = 0

    def __call__(self) -> dict[str, float]:
        b = self.batch
        if self.reference:
            out = self._ref(b.images, b.sentence, b.noise)
        else:
            out = self._stepper(self._step, b.images, b.sentence, b.words, b.mask, b.noise)
        self._step += 1
        sync(self.device)
        return out


class SampleWorkload:
    """Generator sampling (inference, no grad) of ``spec`` on a fixed batch of noise and sentences."""

    def __init__(self, spec: Spec, device, *, gan=None, seed: int = 0):
        self.spec, self.device = spec, torch.device(device)
        gan = build_models(spec, self.device, seed)[0] if gan is None else copy.deepcopy(gan).to(self.device)
        self.options = apply_speed_options(gan, spec.train)
        self.G = gan.generator.eval()
        self.batch = Batch.random(spec, self.device)
        self.images_per_call = spec.train.batch_size
        self.bf16 = spec.train.precision == "bf16"

    def __call__(self):
        b = self.batch
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else _null()
        with torch.no_grad(), ctx:  # (inference_mode hides conv/linear from the FLOP counter)
            out = self.G(b.noise, b.sentence, b.words, b.mask)
        sync(self.device)
        return out


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


# ---- timing -----------------------------------------------------------------------------------------------------
@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, fn: Callable[[], Any]) -> Any:
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        self.cpu.append(time.process_time() - c)
        self.wall.append(time.perf_counter() - w)
        return out

    def median(self, kind: str = "wall") -> float:
        return statistics.median(getattr(self, kind))

    def summary(self) -> dict[str, Any]:
        return {"wall_median_s": self.median("wall"), "cpu_median_s": self.median("cpu"),
                "wall_s": [round(x, 5) for x in self.wall], "cpu_s": [round(x, 5) for x in self.cpu]}


def interleaved(benchmark, sides: dict[str, Callable[[], Any]], main: str, *, rounds: int, warmup: int = 1,
                ) -> dict[str, Timings]:
    """Time ``sides`` in turn, ``rounds`` times (after ``warmup`` untimed rounds of each).

    pytest-benchmark times ``sides[main]``; the others run first in each round, in its untimed ``setup``,
    timed here. Returns the per-side timings (warm-up rounds excluded), ``main`` included.
    """
    times = {k: Timings() for k in sides}
    n_setup = [0]
    others = [k for k in sides if k != main]

    def setup():
        n_setup[0] += 1
        for k in others:
            if n_setup[0] <= warmup:
                sides[k]()
            else:
                times[k].add(sides[k])

    def target():
        if n_setup[0] <= warmup:
            return sides[main]()
        return times[main].add(sides[main])

    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)
    return times


def ratio_report(times: dict[str, Timings], baseline: str) -> dict[str, Any]:
    """Median times and speed-ups of every side against ``baseline`` (wall and CPU time)."""
    out: dict[str, Any] = {"sides": {k: t.summary() for k, t in times.items()}, "baseline": baseline,
                           "speedup_wall": {}, "speedup_cpu": {}}
    for k, t in times.items():
        for kind in ("wall", "cpu"):
            base = times[baseline].median(kind)
            out[f"speedup_{kind}"][k] = base / t.median(kind) if t.median(kind) > 0 else float("nan")
    return out


# ---- FLOPs, peaks and memory -------------------------------------------------------------------------------------
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn``: torch's FLOP formulas (``torch.utils.flop_counter.flop_registry``:
    matmuls, convolutions, attention; forward and backward, double backward included; elementwise work is
    not counted). ``FlopCounterMode`` itself cannot be used here: its module tracker hooks break
    ``autograd.grad`` on leaf inputs, which MA-GP needs; this mode applies the same formulas without it."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class _Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                _Count.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with _Count():
        fn()
    return _Count.total


def _best_rate(fn: Callable[[], Any], flops: int, device, reps: int) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return flops / best


def matmul_peak(dtype: torch.dtype, device, n: int = 2048, reps: int = 5) -> dict[str, float]:
    """Achievable matmul rate (FLOP/s): the best of ``reps`` n x n x n products after a warm-up."""
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    return {"flops_per_s": _best_rate(lambda: torch.mm(a, b), 2 * n**3, dev, reps), "n": n, "reps": reps}


def conv3x3_rate(dtype: torch.dtype, device, channels: int = 256, side: int = 64, batch: int = 8,
                 reps: int = 5) -> dict[str, float]:
    """Effective rate of a 3x3 convolution like DF-GAN's (channels_last), counted as direct-convolution FLOPs.

    It can exceed the matmul peak: oneDNN may run 3x3 convolutions with fewer multiplications than the direct
    formula counts (Winograd-type algorithms). DF-GAN's work is mostly such convolutions, so this is the
    practical ceiling of its counted FLOP/s."""
    dev = torch.device(device)
    x = torch.randn(batch, channels, side, side, device=dev).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, device=dev).to(dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * batch * channels * channels * 9 * side * side
    rate = _best_rate(lambda: torch.nn.functional.conv2d(x, w, padding=1), flops, dev, reps)
    return {"flops_per_s": rate, "channels": channels, "side": side, "batch": batch, "reps": reps}


def peak_memory(fn: Callable[[], Any], device) -> dict[str, Any]:
    """Peak memory of one call of ``fn`` above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` (reset first). CPU: tracemalloc does not see torch's
    allocations and the RSS is blind to memory that the allocator reuses (with the raised glibc trim
    threshold freed blocks stay in the process), so the peak comes from the profiler's memory events: the
    highest running sum of every allocation and free of tensor memory during the call.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        fn()
        sync(dev)
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(dev) - before),
                "method": "torch.cuda.max_memory_allocated - memory_allocated before"}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events())
    run = peak = 0
    for _, delta in events:
        run += delta
        peak = max(peak, run)
    return {"peak_bytes": int(peak), "method": "torch.profiler memory events (running sum of allocations)"}


def precision_of(speed: str) -> str:
    """The matmul peak that bounds a configuration: bf16 for the ``fast`` one (and bf16), else fp32."""
    return "bf16" if speed in ("fast", "bf16") else "fp32"


def rates(flops: int, seconds: float, images: int, speed: str, peaks: dict[str, dict]) -> dict[str, Any]:
    """Images/s, calls/s, achieved FLOP/s and its fraction of the matmul peak of the configuration's precision
    measured at the start of the run (the report recomputes it against the best peak seen in the whole run)."""
    prec = precision_of(speed)
    peak = peaks[prec]["flops_per_s"]
    return {"seconds": seconds, "calls_per_s": 1.0 / seconds, "images_per_s": images / seconds,
            "gflop_per_call": flops / 1e9, "gflop_per_image": flops / images / 1e9,
            "achieved_gflop_per_s": flops / seconds / 1e9, "peak_precision": prec,
            "fraction_of_peak": flops / seconds / peak if peak else float("nan")}


def variant_workload(make: Callable, variant: str, *, imsize: int, batch: int, nf: int, speed: str, device):
    """``(spec, make(spec, device))`` for a named variant at this size, or a pytest skip naming why it cannot
    run there (e.g. attention resolutions that no generator block has)."""
    import pytest

    try:
        spec = bench_spec(variant, imsize=imsize, nf=nf, batch=batch, speed=speed, device=device.type)
        return spec, make(spec, device)
    except (SpecError, ValueError) as e:
        pytest.skip(f"{variant} at {imsize} px: {e}")


def config_record(spec: Spec, speed: str, device) -> dict[str, Any]:
    """The configuration fields every benchmark record carries."""
    t = spec.train
    return {"variant": spec.name, "backbone": spec.model.backbone, "fusion": spec.model.fusion.name,
            "regulariser": spec.model.regulariser.name, "head": spec.model.head, "nf": spec.model.nf,
            "imsize": spec.data.imsize, "batch": t.batch_size, "speed": speed,
            "dtype": "bfloat16" if t.precision == "bf16" else "float32", "channels_last": t.channels_last,
            "fused_affine": t.fused_affine, "device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
