"""Speed levers of the default training step, side by side in one process (issue 15, item 2).

Every side is the same step of ``full`` (default: 32 px, batch 16, nf 32, the machine's ``train.precision=auto``)
on its own copy of the same initial networks and the same batch, with its own optimisers; the sides run in turn
(A B C A B C ...) so that a shared CPU's load falls on all of them alike, and each is summarised by the median
of its wall and CPU (``time.process_time``) times per step. The first ``--warmup`` steps of each side are not
timed (torch.compile compiles there: its time is reported apart). Sides (``--sides``, comma list):

* ``base``: the Stepper as a run builds it (channels_last, fused affine);
* ``nchw``: base without channels_last;
* ``compile_g``: base with ``train.compile`` (torch.compile of the generator);
* ``threads1``: base run with ``torch.set_num_threads(1)`` (and back for the others).

(Compiling the discriminator's first-order passes too, the fakes in the D and the G step, with the real pass
that MA-GP differentiates twice kept eager, was measured with commit "benchmarks/step_levers.py: ...
train.compile_d" and removed: 0.994x alone, 1.009x with the generator compiled, on an AVX2 CPU in fp32.)

    PYTHONPATH=. MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        python -m benchmarks.step_levers --threads 1 --rounds 200 --sides base,nchw,compile_g --out levers.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

from benchmarks.harness import Batch, Timings, bench_spec, build_models, optimizers
from dfgan.experiment import build_regulariser
from dfgan.runtime import resolve_precision
from dfgan.train.step import Stepper, apply_speed_options

SIDES = ("base", "nchw", "compile_g", "threads1")


def make_side(name: str, spec, gan0, device, batch: Batch):
    """A callable that runs one training step of side ``name`` (see the module docstring)."""
    if name not in SIDES:
        raise ValueError(f"unknown side {name!r}; sides: {', '.join(SIDES)}")
    over = {"nchw": ["train.channels_last=false"], "compile_g": ["train.compile=true"]}
    s = bench_spec("full", imsize=spec.data.imsize, nf=spec.model.nf, batch=spec.train.batch_size,
                   speed="fp32", overrides=[f"train.precision={spec.train.precision}", *over.get(name, [])])
    gan = copy.deepcopy(gan0).to(device)
    apply_speed_options(gan, s.train)
    opt_g, opt_d = optimizers(gan, s.train)
    precision = resolve_precision(s.train.precision, device)
    stepper = Stepper(gan, build_regulariser(s), opt_g, opt_d, precision=precision, device=device,
                      channels_last=s.train.channels_last)
    if s.train.compile:
        gan.generator.compile()
    n = [0]
    threads = 1 if name == "threads1" else None

    def step():
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            out = stepper(n[0], batch.images, batch.sentence, batch.words, batch.mask, batch.noise)
        finally:
            if threads:
                torch.set_num_threads(before)
        n[0] += 1
        return out

    return step, {"precision": precision, "channels_last": s.train.channels_last, "compile": s.train.compile,
                  "threads": threads or torch.get_num_threads()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sides", default="base,nchw,compile_g")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--imsize", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--nf", type=int, default=32)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    spec = bench_spec("full", imsize=a.imsize, nf=a.nf, batch=a.batch, speed="fp32",
                      overrides=[f"train.precision={a.precision}"])
    gan0, _ = build_models(spec, "cpu")
    batch = Batch.random(spec, device)
    sides, info, warm = {}, {}, {}
    for name in a.sides.split(","):
        sides[name], info[name] = make_side(name, spec, gan0, device, batch)
        t = time.perf_counter()
        for _ in range(a.warmup):
            sides[name]()
        warm[name] = round(time.perf_counter() - t, 2)
        print(f"{name}: {a.warmup} warm-up steps (compilation included) in {warm[name]} s", file=sys.stderr)
    times = {k: Timings() for k in sides}
    for r in range(a.rounds):
        for k, fn in sides.items():
            times[k].add(fn)
        if (r + 1) % 50 == 0:
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {times[k].median() * 1e3:.1f} ms" for k in sides),
                  file=sys.stderr)
    base = next(iter(sides))
    out = {"config": {"imsize": a.imsize, "batch": a.batch, "nf": a.nf, "precision": a.precision,
                      "threads": torch.get_num_threads(), "rounds": a.rounds, "warmup": a.warmup,
                      "load_average": os.getloadavg(), "torch": torch.__version__,
                      "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_",
                                                                    "MALLOC_TRIM_THRESHOLD_")}},
           "baseline": base, "sides": {}}
    for k, t in times.items():
        out["sides"][k] = {**info[k], "warmup_s": warm[k], "wall_median_ms": round(t.median("wall") * 1e3, 2),
                           "cpu_median_ms": round(t.median("cpu") * 1e3, 2),
                           "wall_p10_ms": round(statistics.quantiles(t.wall, n=10)[0] * 1e3, 2),
                           "speedup_wall": round(times[base].median("wall") / t.median("wall"), 3),
                           "speedup_cpu": round(times[base].median("cpu") / t.median("cpu"), 3)}
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return out


if __name__ == "__main__":
    main()
