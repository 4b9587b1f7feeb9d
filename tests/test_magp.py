"""MA-GP against a direct autograd computation of the DF-GAN formula (official code/lib/modules.py, the MA-GP
of the D step; paper Sec. 3.3)."""

import warnings

import pytest
import torch

from benchmarks.harness import TrainWorkload, bench_spec, build_models
from dfgan.experiment import resolve_spec
from dfgan.nn.discriminators import DFGANDiscriminator
from dfgan.nn.heads import OneWayHead
from dfgan.nn.penalties import MAGP


def _nets():
    torch.manual_seed(0)
    D, C = DFGANDiscriminator(4, 32), OneWayHead(4, 16)
    for b in D.DBlocks:  # gamma starts at 0; make the residual path matter
        torch.nn.init.constant_(b.gamma, 0.5)
    return D, C


def _direct(D, C, x, e, k=2.0, p=6.0):
    x = x.clone().requires_grad_(True)
    e = e.clone().requires_grad_(True)
    out = C(D(x), e)
    gx, ge = torch.autograd.grad(out, (x, e), grad_outputs=torch.ones_like(out), create_graph=True)
    g = torch.cat((gx.reshape(len(x), -1), ge.reshape(len(x), -1)), 1)
    return k * (g.norm(2, dim=1) ** p).mean(), (x, e)


def test_value_and_gradients_match_direct():
    D, C = _nets()
    x, e = torch.randn(3, 3, 32, 32), torch.randn(3, 16)
    ref, _ = _direct(D, C, x, e)
    ref_grads = torch.autograd.grad(ref, list(D.parameters()) + list(C.parameters()))

    xr = x.clone().requires_grad_(True)
    er = e.clone().requires_grad_(True)
    out_real = C.cond_score(D(xr), er)
    ours = MAGP(2.0, 6.0)(D=D, head=C, real=xr, fake=None, sentence=er, out_real=out_real)
    grads = torch.autograd.grad(ours, list(D.parameters()) + list(C.parameters()))
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-8)
    assert ref.item() > 0
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-10)


def test_penalty_not_reusing_output_matches_reused():
    D, C = _nets()
    x, e = torch.randn(3, 3, 32, 32), torch.randn(3, 16)
    xr, er = x.clone().requires_grad_(True), e.clone().requires_grad_(True)
    reused = MAGP()(D=D, head=C, real=xr, fake=None, sentence=er, out_real=C.cond_score(D(xr), er))
    fresh = MAGP()(D=D, head=C, real=x, fake=None, sentence=e, out_real=None)
    assert torch.allclose(reused, fresh, rtol=1e-5)


def test_sum_norm_is_papers_formula():
    D, C = _nets()
    x, e = torch.randn(2, 3, 32, 32), torch.randn(2, 16)
    xr, er = x.clone().requires_grad_(True), e.clone().requires_grad_(True)
    out = C(D(xr), er)
    gx, ge = torch.autograd.grad(out.sum(), (xr, er))
    expect = 2.0 * ((gx.flatten(1).norm(dim=1) + ge.flatten(1).norm(dim=1)) ** 6).mean()
    got = MAGP(norm="sum")(D=D, head=C, real=x, fake=None, sentence=e)
    assert torch.allclose(got, expect, rtol=1e-5)


# ---- one precision and pass structure for every regulariser (dfgan.nn.penalties module docstring) -------------
BF16_PENALTY_VARIANTS = ["full", "magp_real_mismatch", "magp_fake_match", "magp_fake_mismatch", "r1"]


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_real_match_reused_and_own_pass_agree_in_bf16():
    D, C = _nets()
    x, e = torch.randn(3, 3, 32, 32), torch.randn(3, 16)
    xr, er = x.clone().requires_grad_(True), e.clone().requires_grad_(True)
    with _bf16():
        out_real = C.cond_score(D(xr), er)
    reused = MAGP()(D=D, head=C, real=xr, fake=None, sentence=er, out_real=out_real)
    own = MAGP()(D=D, head=C, real=x, fake=None, sentence=e, out_real=None, autocast=_bf16)
    fp32 = MAGP()(D=D, head=C, real=x, fake=None, sentence=e, out_real=None)
    assert reused.dtype == own.dtype == torch.float32
    assert torch.allclose(own, reused, rtol=1e-6, atol=0), (own.item(), reused.item())
    assert not torch.equal(own, fp32)  # bf16 is a different regime: the check above can tell them apart


def _bf16_workload(variant: str, gan=None):
    spec = bench_spec(variant, imsize=32, nf=4, batch=4, speed="fast")  # bf16 + channels_last + fused affine
    return TrainWorkload(spec, "cpu", gan=gan)


def test_real_match_penalty_is_the_same_through_the_step_reusing_or_not():
    """The training step under bf16: real_match through the reused adversarial pass, and through its own pass
    (the path every other target takes), gives the same penalty and the same D-step losses. (Not loss_g: it is
    computed after the D update, and Adam with beta1 = 0 turns a last-bit difference in a near-zero gradient,
    summed in another order through the shared graph, into an update of up to ~lr.)"""
    gan, _ = build_models(bench_spec("full", imsize=32, nf=4, batch=4, speed="fast"), "cpu", seed=4)
    reused, own = _bf16_workload("full", gan), _bf16_workload("full", gan)
    own._stepper.reg.reuses_real_output = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without native bf16: slow, not wrong
        a, b = reused(), own()
    assert a["d_gp"] > 0
    for key in ("d_gp", "d_real", "d_mis", "d_fake", "loss_d"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=0), (key, a[key], b[key])


@pytest.mark.parametrize("variant", BF16_PENALTY_VARIANTS)
def test_every_penalty_differentiates_a_pass_in_the_training_precision(variant):
    """Under bf16 every discriminator pass of the D step (the adversarial ones and a penalty's own) is a bf16
    pass: no regulariser runs in another precision than the others (its norm is fp32 for all: test above)."""
    w = _bf16_workload(variant)
    D = w.gan.discriminators[0]
    dtypes: list[torch.dtype] = []  # what the first convolution of every discriminator pass computed in
    D.conv_img.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = w()
    own_pass = variant != "full"
    assert len(dtypes) == 2 + own_pass + 1  # real, fake, [penalty's own], generator step's fake
    assert set(dtypes) == {torch.bfloat16}, dtypes
    assert losses["d_gp"] > 0 and losses["d_gp"] == losses["d_gp"]


def test_own_pass_penalties_and_only_they_carry_a_computation_version_in_the_hash():
    """The fix changed what the own-pass penalties compute under bf16/auto: their spec hash changes, no other."""
    for variant in ("magp_real_mismatch", "magp_fake_match", "magp_fake_mismatch", "r1"):
        assert resolve_spec(variant).experiment_dict()["model"]["regulariser"]["computation_version"] == 2
        fp32 = resolve_spec(variant, overrides=["train.precision=fp32"])  # nothing changed in fp32
        assert "computation_version" not in fp32.experiment_dict()["model"]["regulariser"]
    for variant in ("full", "magp_sum_norm", "no_magp"):
        assert "computation_version" not in resolve_spec(variant).experiment_dict()["model"]["regulariser"]
