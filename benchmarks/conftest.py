"""Benchmark-suite settings: device, threads, size profile, the machine record and the matmul peaks.

Run: ``nox -s benchmark`` (or ``pytest benchmarks/ -p no:xdist --benchmark-json=reports/benchmarks.json``
then ``python -m benchmarks.report reports/benchmarks.json``). Options:

* ``--bench-profile``: ``cpu`` (default without a GPU; sized to finish in under 15 minutes on 2 cores),
  ``gpu`` (default with one: batch 32, 256 and 512 px) or ``smoke`` (tiny sizes, one round: checks that
  every suite runs, says nothing about speed);
* ``--bench-device`` (``auto``/``cpu``/``cuda``) and ``--bench-threads`` (default: every core this process
  may use).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import pytest
import torch

from benchmarks.harness import matmul_peak
from dfgan.runtime import runtime_info


@dataclass(frozen=True)
class Profile:
    """Sizes, batches and rounds of every suite. Each ``(imsize, batch, rounds)``."""

    name: str
    nf: int = 32  # DF-GAN's width; the targets are stated at nf=32
    # headline comparisons against the reference formulation (interleaved)
    target_sample: tuple[tuple[int, int, int], ...] = ((64, 8, 7), (128, 8, 5), (256, 4, 5))
    target_train: tuple[tuple[int, int, int], ...] = ((64, 8, 7), (128, 4, 4), (256, 4, 3))
    # generator sampling per backbone x fusion x size
    # 32 px: the size of the CPU studies, so their reports can quote sampling throughput (dfgan report)
    sample: tuple[tuple[int, int, int], ...] = ((32, 32, 3), (64, 8, 3), (128, 4, 3), (256, 2, 3), (512, 2, 2))
    sample_fp32_max: int | None = 256  # larger sizes sample in the fast configuration only (time budget)
    # training step per variant (every ablations/variants/*.yaml)
    variant_train: tuple[int, int, int] = (64, 8, 3)
    # generator sampling of every named variant as defined (its fusion settings included): the study size
    variant_sample: tuple[int, int, int] = (32, 32, 3)
    # MA-GP on vs off, interleaved
    magp: tuple[tuple[int, int, int], ...] = ((64, 8, 5), (128, 4, 3))
    # fusion blocks alone: feature-map sides (regions = side**2), channels, batch, rounds
    fusion_sides: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    fusion_channels: int = 64
    fusion_batch: int = 4
    fusion_rounds: int = 3
    text_batch: int = 32
    # each speed option on vs off, interleaved: (imsize, batch, rounds) for the train step and for sampling
    option_train: tuple[int, int, int] = (64, 8, 5)
    option_sample: tuple[int, int, int] = (256, 2, 5)
    compile_sample: tuple[int, int, int] | None = (64, 8, 5)  # torch.compile gain and compile time
    memory: bool = True  # measure peak memory of each configuration (one extra call)
    threads: int | None = None  # default for --bench-threads (None: every core this process may use)
    extra: dict = field(default_factory=dict)


PROFILES = {
    "cpu": Profile("cpu"),
    "gpu": Profile(
        "gpu",
        target_sample=((64, 32, 20), (128, 32, 20), (256, 32, 10)),
        target_train=((64, 32, 10), (128, 32, 10), (256, 32, 5)),
        sample=((64, 32, 10), (128, 32, 10), (256, 32, 5), (512, 16, 5)),
        variant_train=(128, 32, 5),
        variant_sample=(64, 32, 10),
        magp=((64, 32, 10), (256, 32, 5)),
        fusion_sides=(8, 16, 32, 64, 128, 256, 512),
        fusion_batch=16,
        fusion_rounds=10,
        compile_sample=(256, 32, 10),
        sample_fp32_max=None,
        option_train=(256, 32, 5),
        option_sample=(256, 32, 10),
    ),
    "smoke": Profile(
        "smoke", nf=4,
        target_sample=((32, 2, 1),), target_train=((32, 2, 1),), sample=((32, 2, 1), (64, 2, 1)),
        variant_train=(32, 2, 1), variant_sample=(32, 2, 1),
        magp=((32, 2, 1),), fusion_sides=(4, 8), fusion_batch=2, fusion_rounds=1,
        text_batch=4, compile_sample=None, memory=True, threads=1, option_train=(32, 2, 1), option_sample=(32, 2, 1),
    ),
}


def pytest_addoption(parser):
    g = parser.getgroup("dfgan benchmarks")
    g.addoption("--bench-profile", default=None, choices=sorted(PROFILES),
                help="sizes/rounds: cpu (default without GPU), gpu (default with one), smoke (does it run)")
    g.addoption("--bench-device", default="auto", choices=["auto", "cpu", "cuda"])
    g.addoption("--bench-threads", type=int, default=None,
                help="torch intra-op threads (default: every core this process may use)")


def _device(config) -> torch.device:
    d = config.getoption("--bench-device")
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(d)


def pytest_configure(config):
    threads = config.getoption("--bench-threads") or profile_of(config).threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    if _device(config).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the reference formulation's)
        torch.backends.cudnn.allow_tf32 = False


def profile_of(config) -> Profile:
    name = config.getoption("--bench-profile") or ("gpu" if _device(config).type == "cuda" else "cpu")
    return PROFILES[name]


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    return _device(pytestconfig)


@pytest.fixture(scope="session")
def profile(pytestconfig) -> Profile:
    return profile_of(pytestconfig)


@pytest.fixture(scope="session")
def machine(device) -> dict:
    info = runtime_info(device)
    if device.type == "cuda":
        info["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


@pytest.fixture(scope="session")
def peaks(device, profile) -> dict[str, dict]:
    """The machine's measured matmul rate in fp32 and bf16, measured once in this run (FLOP/s)."""
    n = 8192 if device.type == "cuda" else (512 if profile.name == "smoke" else 2048)
    return {name: matmul_peak(dt, device, n=n) for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


@pytest.fixture
def record(benchmark, machine, profile):
    """``record(kind=..., **fields)``: put the machine record and the configuration into ``extra_info``."""

    def put(**fields):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # how busy the machine was
        benchmark.extra_info.update({"machine": machine, "profile": profile.name, "load_avg_1m": load, **fields})

    return put


def pytest_collection_modifyitems(config, items):
    """Benchmarks run in file order: the machine peaks first (and again last), the headline comparisons next."""
    order = ["test_machine", "test_targets", "test_sampling", "test_train_variants", "test_components",
             "test_fusion_cost"]

    def key(it):
        if "-end]" in it.nodeid or it.nodeid.endswith("[end]"):  # the peaks measured again at the end
            return len(order) + 1
        return next((i for i, n in enumerate(order) if f"/{n}.py" in str(it.fspath)), len(order))

    items.sort(key=key)


BUSY_WARNING = (
    "WARNING: this machine is busy (1-min load {load:.1f} on {cpus} CPUs) and {threads} threads are used. On the "
    "shared 2-vCPU machines multi-threaded PyTorch steps ran up to 30x slower whenever another process was "
    "running (OpenMP threads waiting for a busy vCPU), erratically enough to spoil even interleaved ratios of "
    "small workloads. Re-run on a quiet machine, or with --bench-threads 1."
)


def pytest_report_header(config):
    p = profile_of(config)
    lines = [f"dfgan benchmarks: profile {p.name} {asdict(p)}", f"device {_device(config)}, "
             f"threads {torch.get_num_threads()}"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if torch.get_num_threads() > 1 and load > 0.5:
        lines.append(BUSY_WARNING.format(load=load, cpus=cpus, threads=torch.get_num_threads()))
    return lines


def _registry_names(axis: str) -> list[str]:
    import dfgan.experiment  # noqa: F401  (registers every component)
    from dfgan.registry import ALL

    return ALL[axis].names()


def _cfg_id(c) -> str:
    return f"{c[0]}px-b{c[1]}"


def pytest_generate_tests(metafunc):
    """Parameters that depend on the profile or on what the registries hold when the suite runs."""
    from dfgan.variants import variant_names

    p = profile_of(metafunc.config)
    table = {
        "target_sample_cfg": (list(p.target_sample), _cfg_id),
        "target_train_cfg": (list(p.target_train), _cfg_id),
        "sample_cfg": (list(p.sample), _cfg_id),
        "magp_cfg": (list(p.magp), _cfg_id),
        "fusion_side": (list(p.fusion_sides), lambda s: f"{s}x{s}"),
        "backbone": (_registry_names("backbone"), str),
        "fusion": (_registry_names("fusion"), str),
        "text_encoder": (_registry_names("text_encoder"), str),
        "variant": (variant_names(), str),
    }
    for name, (values, ids) in table.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values, ids=[ids(v) for v in values])
