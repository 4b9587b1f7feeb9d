"""MA-GP against a direct autograd computation of the DF-GAN formula (official code/lib/modules.py, the MA-GP
of the D step; paper Sec. 3.3)."""

import torch

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
