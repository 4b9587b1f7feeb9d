"""Our training step (``Stepper``) against the reference formulation (``benchmarks/reference_step.py``).

Same networks, same optimisers, same batches and noise: the losses of every step and the weights after a
few steps must agree within floating-point tolerance, for the fp32 paths (plain and with the fp32-safe speed
options). The benchmarks time the two against each other; this says they compute the same thing.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import Batch, TrainWorkload, bench_spec, build_models
from benchmarks.reference_step import ReferenceStep

STEPS = 3


def _spec(variant: str, speed: str):
    return bench_spec(variant, imsize=32, nf=4, batch=4, speed=speed)


def _run(workload: TrainWorkload, batches: list[Batch]) -> list[dict[str, float]]:
    out = []
    for b in batches:
        workload.batch = b
        out.append(workload())
    return out


@pytest.mark.parametrize("variant", ["full", "no_magp"])
@pytest.mark.parametrize("speed", ["reference", "fp32"])  # our Stepper plain, and with channels_last + fused
def test_stepper_matches_reference_formulation(variant, speed):
    ref_spec, our_spec = _spec(variant, "reference"), _spec(variant, speed)
    gan, _ = build_models(ref_spec, "cpu", seed=3)
    with torch.no_grad():  # DF-GAN initialises the affine second layers to identity maps: make them matter
        for name, p in gan.generator.named_parameters():
            if "linear2.weight" in name:
                p.normal_(0.0, 0.05)
    ref = TrainWorkload(ref_spec, "cpu", reference=True, gan=gan)
    ours = TrainWorkload(our_spec, "cpu", gan=gan)
    batches = [Batch.random(ref_spec, "cpu", seed=10 + i) for i in range(STEPS)]
    ref_losses, our_losses = _run(ref, batches), _run(ours, batches)

    for step, (r, o) in enumerate(zip(ref_losses, our_losses, strict=True)):
        for key in ("loss_d", "loss_g", "d_real", "d_mis", "d_fake") + (("d_gp",) if variant == "full" else ()):
            assert o[key] == pytest.approx(r[key], rel=1e-4, abs=1e-5), (step, key, r[key], o[key])
    assert ("d_gp" in our_losses[0]) == (variant == "full")
    if variant == "full":
        assert ref_losses[-1]["d_gp"] > 0
    # the weights moved, and moved the same way (Adam with beta1 = 0 turns a last-bit difference of a near-zero
    # gradient into an update difference of up to ~lr: hence the absolute tolerance of about one update)
    ref_state, our_state = ref.gan.state_dict(), ours.gan.state_dict()
    assert ref_state.keys() == our_state.keys()
    moved = 0
    for k, v in ref_state.items():
        torch.testing.assert_close(our_state[k], v, rtol=1e-3, atol=5e-4, msg=lambda m, k=k: f"{k}: {m}")
        moved += int(not torch.equal(v, gan.state_dict()[k]))
    assert moved > len(ref_state) // 2


def test_reference_step_follows_the_formulas():
    """One reference D step by hand: hinge terms and MA-GP from their definitions (official code/lib/modules.py,
    the D step)."""
    spec = _spec("full", "reference")
    gan, _ = build_models(spec, "cpu", seed=1)
    b = Batch.random(spec, "cpu", seed=2)
    G, D, C = gan.generator, gan.discriminators[0], gan.heads[0]
    x = b.images.clone().requires_grad_(True)
    e = b.sentence.clone().requires_grad_(True)
    out = C(D(x), e).flatten()
    real = torch.clamp(1 - out, min=0).mean()
    mis = torch.clamp(1 + C(D(x).roll(-1, 0), e).flatten(), min=0).mean()
    fake = torch.clamp(1 + C(D(G(b.noise, e).detach()), e).flatten(), min=0).mean()
    gx, ge = torch.autograd.grad(out.sum(), (x, e))
    norms = torch.cat((gx.flatten(1), ge), 1).norm(dim=1)
    gp = 2.0 * (norms**6).mean()

    opt = torch.optim.SGD(gan.parameters(), lr=0.0)
    got = ReferenceStep.for_gan(gan, opt, opt)(b.images, b.sentence, b.noise)
    assert got["d_real"] == pytest.approx(real.item(), rel=1e-5)
    assert got["d_mis"] == pytest.approx(mis.item(), rel=1e-5)
    assert got["d_fake"] == pytest.approx(fake.item(), rel=1e-5)
    assert got["d_gp"] == pytest.approx(gp.item(), rel=1e-4)
    assert got["loss_d"] == pytest.approx((real + (fake + mis) / 2 + gp).item(), rel=1e-4)


def test_benchmark_comparison_suite_runs_and_reports(tmp_path):
    """The interleaved comparison against the reference (benchmarks/test_targets.py, smoke sizes) runs and the
    report shows its ratios: the suite that measures the reference formulation does not rot unnoticed."""
    import json
    import os
    import subprocess
    import sys

    from benchmarks.harness import ROOT_DIR
    from benchmarks.report import write

    out = tmp_path / "b.json"
    # an xdist worker's variables make pytest-benchmark disable itself in the child: drop them
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env.update({"OMP_NUM_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/test_machine.py", "benchmarks/test_targets.py",
                           "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "--bench-profile", "smoke",
                           f"--benchmark-json={out}"], cwd=ROOT_DIR, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = json.loads(out.read_text())["benchmarks"]
    kinds = {r["extra_info"]["kind"] for r in recs}
    assert {"matmul_peak", "target_sampling", "target_train_step"} <= kinds
    for r in recs:
        e = r["extra_info"]
        assert {"device", "threads", "torch", "allocator", "allocator_env"} <= e["machine"].keys()
        if e["kind"].startswith("target_"):
            assert set(e["sides"]) == {"reference", "fp32", "fast"}
            assert all(s["gflop_per_call"] > 0 and s["seconds"] > 0 for s in e["sides"].values())
            assert e["ratios"]["speedup_wall"]["reference"] == pytest.approx(1.0)
    text = write(out, tmp_path / "benchmarks.md")
    assert "| sampling | 32 | 2 |" in text and "| train step | 32 | 2 |" in text
