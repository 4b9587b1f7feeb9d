"""Cost of single components: MA-GP's overhead on the step, the text encoders (and the per-caption cache),
the fused affine modulation alone, and what ``torch.compile`` gains against what it costs to compile."""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.harness import (
    COND_DIM,
    N_WORDS,
    SampleWorkload,
    Timings,
    TrainWorkload,
    bench_spec,
    build_models,
    config_record,
    interleaved,
    ratio_report,
    sync,
)


@pytest.mark.parametrize("speed", ["fp32", "fast"])
def test_magp_overhead(benchmark, record, device, profile, magp_cfg, speed):
    """The full step with and without MA-GP (its gradient w.r.t. the inputs and the double backward)."""
    imsize, batch, rounds = magp_cfg
    specs = {v: bench_spec(v, imsize=imsize, nf=profile.nf, batch=batch, speed=speed, device=device.type)
             for v in ("no_magp", "full")}
    gan, _ = build_models(specs["full"], device)
    sides = {v: TrainWorkload(s, device, gan=gan) for v, s in specs.items()}
    times = interleaved(benchmark, sides, main="full", rounds=rounds, warmup=1)
    rep = ratio_report(times, "no_magp")
    record(kind="magp_overhead", **config_record(specs["full"], speed, device), ratios=rep,
           overhead_wall=times["full"].median("wall") / times["no_magp"].median("wall") - 1,
           overhead_cpu=times["full"].median("cpu") / times["no_magp"].median("cpu") - 1)


def _vocab():
    from dfgan.data.builtin import ATTRIBUTES
    from dfgan.data.vocab import Vocab

    words = [w for values in ATTRIBUTES.values() for w in values]
    words += "a an the of on in with and is are there image picture background object objects".split()
    return Vocab.build([words])


def test_text_encoder(benchmark, record, device, profile, text_encoder):
    """Encoding one batch of captions with a frozen encoder, and the same batch from the per-caption cache
    (``dfgan.text.encoders.TextConditioner``: sentence vectors are computed once per caption)."""
    from dfgan.registry import TEXT_ENCODERS
    from dfgan.spec import TextEncoderSpec
    from dfgan.text.encoders import TextConditioner

    vocab = _vocab()
    try:
        enc = TEXT_ENCODERS.build(text_encoder, spec=TextEncoderSpec(name=text_encoder), n_words=len(vocab),
                                  vocab=vocab)
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"text encoder {text_encoder} not available here: {e}")
    enc = enc.to(device).eval().requires_grad_(False)
    b = profile.text_batch
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(6, N_WORDS, (b,), generator=g)
    caps = torch.randint(1, len(vocab), (b, N_WORDS), generator=g)
    caps[torch.arange(N_WORDS)[None] >= lengths[:, None]] = 0
    batch = {"caption": caps, "length": lengths, "index": torch.arange(b), "caption_index": torch.zeros(b).long()}
    cond = TextConditioner(enc, device, need_words=False)
    cond(batch)  # fills the cache

    def encode():
        with torch.no_grad():
            enc(caps.to(device), lengths)
        sync(device)

    cached = Timings()
    for _ in range(5):
        cached.add(lambda: cond(batch))
    benchmark.pedantic(encode, rounds=5, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    record(kind="text_encoder", text_encoder=text_encoder, batch=b, device=str(device),
           threads=torch.get_num_threads(), torch=torch.__version__, dtype="float32",
           parameters=sum(p.numel() for p in enc.parameters()), seconds=seconds, captions_per_s=b / seconds,
           cached_seconds=cached.median(), cache_speedup=seconds / max(cached.median(), 1e-9))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_affine_alone(benchmark, record, device, profile, precision):
    """Every DFBlock modulation of the 256 px generator: per-affine MLPs vs ``FusedModulator``, fwd + bwd."""
    from dfgan.nn.fused import FusedModulator

    imsize = 256 if profile.name != "smoke" else 32
    spec = bench_spec("full", imsize=imsize, nf=profile.nf, batch=8, speed="fp32", device=device.type)
    gan, _ = build_models(spec, device)
    G = gan.generator
    mod = FusedModulator(G)
    cond = torch.randn(8, G.z_dim + COND_DIM, device=device)

    def ctx():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def per_affine():
        with ctx():
            out = [a.modulation(cond) for a in mod.affines]
        sum(g.float().sum() + b.float().sum() for g, b in out).backward()
        sync(device)

    def fused():
        with ctx():
            out = mod(cond)
        sum(g.float().sum() + b.float().sum() for pair in out for m in pair if m for g, b in m).backward()
        sync(device)

    times = interleaved(benchmark, {"per_affine": per_affine, "fused": fused}, main="fused", rounds=20, warmup=2)
    rec = {**config_record(spec, "fp32", device), "dtype": "bfloat16" if precision == "bf16" else "float32",
           "speed": "fast" if precision == "bf16" else "fp32"}
    record(kind="fused_affine", **rec, n_mlps=mod.n_mlps,
           ratios=ratio_report(times, "per_affine"))


@pytest.mark.parametrize("speed", ["fp32", "fast"])
def test_compile_sampling(benchmark, record, device, profile, speed):
    """``torch.compile`` of the generator for sampling: speed-up against eager and the compile time it costs.
    (Training: the generator only, never MA-GP's double backward; measured once on the 2-core CPUs at 64 px,
    fast: 46 s to compile and 0.95x, i.e. slower; see reports/benchmarks.md.)"""
    if profile.compile_sample is None:
        pytest.skip("this profile does not measure torch.compile")
    imsize, batch, rounds = profile.compile_sample
    spec = bench_spec("full", imsize=imsize, nf=profile.nf, batch=batch, speed=speed, device=device.type)
    gan, _ = build_models(spec, device)
    eager, compiled = SampleWorkload(spec, device, gan=gan), SampleWorkload(spec, device, gan=gan)
    compiled.G.compile()
    t = time.perf_counter()
    compiled()
    compile_s = time.perf_counter() - t
    times = interleaved(benchmark, {"eager": eager, "compiled": compiled}, main="compiled", rounds=rounds)
    rep = ratio_report(times, "eager")
    record(kind="compile", **config_record(spec, speed, device), compile_seconds=compile_s, ratios=rep,
           break_even_calls=compile_s / max(times["eager"].median() - times["compiled"].median(), 1e-9))


OPTIONS = ("channels_last", "fused_affine")


@pytest.mark.parametrize("workload", ["train_step", "sampling"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("option", OPTIONS)
def test_option_gain(benchmark, record, device, profile, option, precision, workload):
    """One speed option on vs off, everything else as in the fast configuration of that precision
    (``full``, interleaved): the evidence for each option's default."""
    imsize, batch, rounds = profile.option_train if workload == "train_step" else profile.option_sample
    base = [f"train.precision={precision}"] + [f"train.{o}=true" for o in OPTIONS if o != option]
    specs = {state: bench_spec("full", imsize=imsize, nf=profile.nf, batch=batch, speed="fast", device=device.type,
                               overrides=base + [f"train.{option}={state}"]) for state in ("false", "true")}
    gan, _ = build_models(specs["false"], device)
    make = (lambda s: TrainWorkload(s, device, gan=gan)) if workload == "train_step" else \
        (lambda s: SampleWorkload(s, device, gan=gan))
    sides = {"off": make(specs["false"]), "on": make(specs["true"])}
    times = interleaved(benchmark, sides, main="on", rounds=rounds, warmup=1)
    record(kind="option_gain", option=option, workload=workload, **config_record(specs["true"], "option", device),
           ratios=ratio_report(times, "off"))
