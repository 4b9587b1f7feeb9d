"""The ablation components: stacked backbone, two-way head, MA-GP targets/norms and R1, and every
combination of backbone x head x fusion x regulariser training.

Reference values are computed independently of the implementation where it matters: MA-GP and R1 per sample
(one forward per image, so the batched ``out.sum()`` trick is not assumed), two-way losses from the head's
raw convolutions (word-region attention: tests/test_fusions.py).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import dfgan.experiment  # noqa: F401  (registers every component)
from dfgan.experiment import build_gan, build_regulariser, resolve_spec
from dfgan.nn.discriminators import DFGANDiscriminator
from dfgan.nn.fusion import (
    CBNBlock,
    ConcatFusion,
    CrossAttentionFusion,
    WordRegionAttention,
)
from dfgan.nn.generators import StackedGenerator, stacked_stage_sizes
from dfgan.nn.heads import OneWayHead, TwoWayHead
from dfgan.nn.penalties import MAGP, ImageGP
from dfgan.registry import ALL, REGULARISERS
from dfgan.spec import RegulariserSpec
from dfgan.train.step import Stepper
from tests.component_inputs import COND, NF, TINY, WORD, T, Z, padding_mask


def _inputs(b=4, imsize=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand(b, 3, imsize, imsize, generator=g) * 2 - 1,
        "sentence": torch.randn(b, COND, generator=g),
        "words": torch.randn(b, WORD, T, generator=g),
        "mask": padding_mask([5, 18, 3, 9][:b]),
        "noise": torch.randn(b, Z, generator=g),
    }


def _stepper(gan, reg):
    opt_g = torch.optim.Adam(gan.generator.parameters(), 1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(list(gan.d_parameters()), 4e-4, betas=(0.0, 0.9))
    return Stepper(gan, reg, opt_g, opt_d)


# ---- every component says what it is and where it comes from ---------------------------------------------------
NEW = {"backbone": ["stacked"], "head": ["two_way"], "regulariser": ["r1"],
       "fusion": ["affine1", "dfblock_deep", "cbn", "concat", "cross_attention"],
       "text_encoder": ["sentence_transformer"]}


@pytest.mark.parametrize("axis,name", [(a, n) for a, ns in NEW.items() for n in ns])
def test_component_is_registered_with_a_docstring(axis, name):
    entry = ALL[axis].entry(name)
    doc = entry.factory.__doc__ or ""
    assert len(doc.split()) >= 8, f"{axis} '{name}' needs a docstring saying what it is and where it comes from"
    # where it comes from: a paper/model name or a section
    assert any(s in doc for s in ("DF-GAN", "AttnGAN", "StackGAN", "Sec.", "et al", "MiniLM", "R1")), doc


@pytest.mark.parametrize("cls", [StackedGenerator, TwoWayHead, MAGP, ImageGP, CBNBlock, ConcatFusion,
                                 CrossAttentionFusion, WordRegionAttention])
def test_component_classes_have_docstrings(cls):
    assert cls.__doc__ and len(cls.__doc__.split()) >= 20


# ---- stacked backbone -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("imsize,sizes", [(32, [8, 16, 32]), (64, [16, 32, 64]), (256, [64, 128, 256]),
                                          (512, [128, 256, 512])])
def test_stacked_stage_sizes_are_quarter_half_full(imsize, sizes):
    assert stacked_stage_sizes(imsize) == sizes


def test_stacked_generator_emits_one_image_per_stage_from_shared_features():
    spec = resolve_spec("stacked", overrides=TINY)
    torch.manual_seed(0)
    g = build_gan(spec, cond_dim=COND, word_dim=WORD).generator
    x = _inputs()
    imgs = g(x["noise"], x["sentence"])
    assert [i.shape[-1] for i in imgs] == [8, 16, 32] and all(i.shape[:2] == (4, 3) for i in imgs)
    assert all(float(i.detach().abs().max()) <= 1.0 for i in imgs)  # tanh outputs
    # stage 1: 1 up-sampling block; later stages: 2 residual (same-resolution) blocks + 1 up-sampling block
    assert [b.upsample for b in g.GBlocks] == [True, False, False, True, False, False, True]
    assert g.stage_ends == [0, 3, 6]
    # later stages refine the previous stage's hidden features: changing a stage-3 weight leaves stages 1-2 alone
    with torch.no_grad():
        g.GBlocks[6].c2.weight.add_(0.5)
    imgs2 = g(x["noise"], x["sentence"])
    assert torch.equal(imgs[0], imgs2[0]) and torch.equal(imgs[1], imgs2[1])
    assert not torch.allclose(imgs[2], imgs2[2])


def test_stacked_rejects_sizes_below_three_stages():
    spec = resolve_spec("stacked", overrides=TINY)
    with pytest.raises(ValueError, match="data.imsize=16"):
        StackedGenerator(NF, Z, COND, 16, spec.model.fusion, WORD)


def test_stacked_fused_affine_path_equals_per_affine_path():
    enable_fused_affine = pytest.importorskip("dfgan.nn.fused").enable_fused_affine  # the fast path's module

    for variant in ("stacked", "cbn"):
        spec = resolve_spec(variant, overrides=TINY + ["model.backbone=stacked"])
        torch.manual_seed(1)
        g = build_gan(spec, cond_dim=COND, word_dim=WORD).generator
        for m in g.modules():  # move the affines off their identity initialisation
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.1)
        x = _inputs()
        ref = g(x["noise"], x["sentence"])
        assert enable_fused_affine(g)
        out = g(x["noise"], x["sentence"])
        for a, b in zip(ref, out, strict=True):
            assert torch.allclose(a, b, atol=1e-5), variant


@pytest.mark.parametrize("imsize", [8, 16])
def test_discriminator_reaches_8nf_at_small_stage_sizes(imsize):
    D = DFGANDiscriminator(NF, imsize)
    assert D(torch.randn(2, 3, imsize, imsize)).shape == (2, 8 * NF, 4, 4)


def test_discriminator_unchanged_from_32px():
    from dfgan.nn.channels import discriminator_pairs

    for imsize in (32, 64, 256):
        D = DFGANDiscriminator(NF, imsize)
        got = [(b.conv_r[0].in_channels, b.conv_r[0].out_channels) for b in D.DBlocks]
        assert got == discriminator_pairs(NF, imsize)


@pytest.mark.parametrize("variant", ["full", "stacked", "baseline", "cbn", "concat"])
def test_512px_builds_and_has_the_right_shapes(variant):
    """Build-and-count at 512 px: networks on the meta device, so the forward checks shapes without compute."""
    spec = resolve_spec(variant, overrides=["model.nf=4", "data.imsize=512"])
    with torch.device("meta"):
        gan = build_gan(spec, cond_dim=COND, word_dim=WORD)
        x = {k: v.to("meta") for k, v in _inputs(b=2, imsize=4).items()}
        noise = torch.randn(2, 100)
        out = gan.generator(noise, x["sentence"], x["words"], x["mask"])
        out = out if isinstance(out, list) else [out]
        assert [o.shape[-1] for o in out] == gan.stage_sizes
        for D, head, o in zip(gan.discriminators, gan.heads, out, strict=True):
            assert D(o).shape == (2, 8 * 4, 4, 4)
            assert head.cond_score(D(o), x["sentence"]).shape == (2,)
    n = sum(p.numel() for p in gan.parameters())
    assert gan.stage_sizes == ([128, 256, 512] if spec.model.backbone == "stacked" else [512])
    assert n > 100_000


# ---- two-way head ---------------------------------------------------------------------------------------------
def test_two_way_losses_are_attngans_combination_with_hinge_terms():
    torch.manual_seed(0)
    head = TwoWayHead(NF, COND)
    f_real, f_fake, s = torch.randn(5, 8 * NF, 4, 4), torch.randn(5, 8 * NF, 4, 4), torch.randn(5, COND)

    def cond(f, e):  # the joint conv applied by hand
        y = e[:, :, None, None].expand(-1, -1, 4, 4)
        h = F.leaky_relu(F.conv2d(torch.cat((f, y), 1), head.joint_conv[0].weight, padding=1), 0.2)
        return F.conv2d(h, head.joint_conv[2].weight).reshape(-1)

    def uncond(f):
        return F.conv2d(f, head.uncond_conv.weight).reshape(-1)

    f_mis = torch.cat((f_real[1:], f_real[:1]))
    expect = ((F.relu(1 - uncond(f_real)).mean() + F.relu(1 - cond(f_real, s)).mean()) / 2
              + (F.relu(1 + uncond(f_fake)).mean() + F.relu(1 + cond(f_fake, s)).mean()
                 + F.relu(1 + cond(f_mis, s)).mean()) / 3)
    d = head.d_loss(f_real, f_fake, s)
    assert torch.allclose(d["total"], expect, atol=1e-6)
    assert torch.allclose(head.g_loss(f_fake, s), -cond(f_fake, s).mean() - uncond(f_fake).mean(), atol=1e-6)
    assert torch.allclose(head.cond_score(f_real, s), cond(f_real, s), atol=1e-6)
    assert torch.allclose(head.realness_score(f_real, s), uncond(f_real), atol=1e-6)
    # the unconditional logit ignores the text
    assert torch.equal(head.realness_score(f_real, s), head.realness_score(f_real, torch.randn(5, COND)))


def test_two_way_conditional_branch_is_the_one_way_head():
    torch.manual_seed(0)
    one, two = OneWayHead(NF, COND), TwoWayHead(NF, COND)
    two.load_state_dict({**one.state_dict(), "uncond_conv.weight": two.uncond_conv.weight}, strict=True)
    f, s = torch.randn(3, 8 * NF, 4, 4), torch.randn(3, COND)
    assert torch.equal(one.cond_score(f, s), two.cond_score(f, s))
    assert sum(p.numel() for p in two.parameters()) - sum(p.numel() for p in one.parameters()) == 8 * NF * 16


# ---- regularisers against per-sample autograd ----------------------------------------------------------------
def _d_and_heads():
    torch.manual_seed(0)
    D = DFGANDiscriminator(NF, 16)
    for b in D.DBlocks:  # gamma starts at 0; make the residual path matter
        torch.nn.init.constant_(b.gamma, 0.5)
    return D, {"one_way": OneWayHead(NF, COND), "two_way": TwoWayHead(NF, COND)}


def _per_sample_magp(D, head, images, sents, k, p, norm):
    vals = []
    for x, e in zip(images, sents, strict=True):
        x, e = x[None].clone().requires_grad_(True), e[None].clone().requires_grad_(True)
        gx, ge = torch.autograd.grad(head.cond_score(D(x), e).sum(), (x, e))
        gx, ge = gx.flatten(), ge.flatten()
        n = torch.cat((gx, ge)).norm() if norm == "concat" else gx.norm() + ge.norm()
        vals.append(n**p)
    return k * torch.stack(vals).mean()


@pytest.mark.parametrize("target,norm", list(itertools.product(
    ["real_match", "real_mismatch", "fake_match", "fake_mismatch"], ["concat", "sum"])))
@pytest.mark.parametrize("head_name", ["one_way", "two_way"])
def test_magp_every_target_and_norm_matches_per_sample_autograd(target, norm, head_name):
    D, heads = _d_and_heads()
    head = heads[head_name]
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(3, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g)
    s = torch.randn(3, COND, generator=g)
    reg = REGULARISERS.build("ma_gp", spec=RegulariserSpec(k=1.5, p=3.0, target=target, norm=norm))
    got = reg(D=D, head=head, real=real, fake=fake, sentence=s)
    images = real if target.startswith("real") else fake
    sents = torch.cat((s[1:], s[:1])) if target.endswith("mismatch") else s  # image i with sentence i+1
    expect = _per_sample_magp(D, head, images, sents, 1.5, 3.0, norm)
    assert expect.item() > 0
    assert torch.allclose(got, expect, rtol=1e-4), (got, expect)
    assert reg.reuses_real_output == (target == "real_match")
    # the penalty trains the discriminator: it has a gradient w.r.t. D's weights
    (gw,) = torch.autograd.grad(got, [D.conv_img.weight])
    assert gw.abs().sum() > 0


@pytest.mark.parametrize("head_name", ["one_way", "two_way"])
def test_r1_is_text_blind_gradient_penalty_on_real_images(head_name):
    D, heads = _d_and_heads()
    head = heads[head_name]
    g = torch.Generator().manual_seed(2)
    real, fake, s = torch.randn(3, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g), \
        torch.randn(3, COND, generator=g)
    reg = REGULARISERS.build("r1", spec=RegulariserSpec(name="r1", k=2.0, p=2.0))
    got = reg(D=D, head=head, real=real, fake=fake, sentence=s)
    vals = []
    for x, e in zip(real, s, strict=True):
        x = x[None].clone().requires_grad_(True)
        score = head.uncond_score(D(x)) if head_name == "two_way" else head.cond_score(D(x), e[None])
        (gx,) = torch.autograd.grad(score.sum(), (x,))
        vals.append(gx.flatten().norm() ** 2)
    expect = 2.0 * torch.stack(vals).mean()
    assert expect.item() > 0 and torch.allclose(got, expect, rtol=1e-4)
    # no dependence on fakes; on the two-way head none on the text either
    assert torch.allclose(reg(D=D, head=head, real=real, fake=fake * 3, sentence=s), got)
    if head_name == "two_way":
        assert torch.allclose(reg(D=D, head=head, real=real, fake=fake, sentence=-s), got)


def test_r1_rejects_magp_only_settings():
    with pytest.raises(ValueError, match="model.regulariser.target"):
        REGULARISERS.build("r1", spec=RegulariserSpec(name="r1", target="fake_match"))


# ---- any combination trains -----------------------------------------------------------------------------------
COMBOS = list(itertools.product(["one_stage", "stacked"], ["one_way", "two_way"],
                                ["dfblock", "affine1", "dfblock_deep", "cbn", "concat", "cross_attention"],
                                ["ma_gp", "r1", "none"]))


@pytest.mark.parametrize("backbone,head", [("one_stage", "one_way"), ("one_stage", "two_way"),
                                           ("stacked", "one_way"), ("stacked", "two_way")])
def test_every_combination_of_backbone_head_fusion_regulariser_takes_a_step(backbone, head):
    """All 72 combinations: one D + G step each, finite losses, the weights move (18 per test)."""
    x = _inputs()
    for b, h, fusion, reg_name in (c for c in COMBOS if c[:2] == (backbone, head)):
        spec = resolve_spec("full", overrides=TINY + [f"model.backbone={b}", f"model.head={h}",
                                                  f"model.fusion.name={fusion}", f"model.regulariser.name={reg_name}",
                                                  "model.fusion.attention_resolutions=[16]"])
        torch.manual_seed(0)
        gan = build_gan(spec, cond_dim=COND, word_dim=WORD)
        before = [p.detach().clone() for p in gan.parameters()]
        losses = _stepper(gan, build_regulariser(spec))(0, x["images"], x["sentence"], x["words"], x["mask"],
                                                        x["noise"])
        assert all(math.isfinite(v) for v in losses.values()), (b, h, fusion, reg_name, losses)
        assert ("d_gp" in losses or "d_gp_s0" in losses) == (reg_name != "none")
        moved = sum(not torch.equal(a, p) for a, p in zip(before, gan.parameters(), strict=True))
        assert moved > len(before) // 2, (b, h, fusion, reg_name)


@pytest.mark.parametrize("variant", ["magp_fake_match", "magp_fake_mismatch", "magp_real_mismatch", "r1",
                                     "baseline", "cbn", "concat"])
def test_bf16_step_with_every_penalty_target_and_new_fusion(variant):
    """``train.precision=bf16``: fakes come out of the generator in bf16; penalties that re-run D on them
    (fake targets) and the new fusions must still run and give finite losses."""
    spec = resolve_spec(variant, overrides=TINY)
    torch.manual_seed(0)
    gan = build_gan(spec, cond_dim=COND, word_dim=WORD)
    opt_g = torch.optim.Adam(gan.generator.parameters(), 1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(list(gan.d_parameters()), 4e-4, betas=(0.0, 0.9))
    x = _inputs()
    losses = Stepper(gan, build_regulariser(spec), opt_g, opt_d, precision="bf16")(
        0, x["images"], x["sentence"], x["words"], x["mask"], x["noise"])
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert any(k.startswith("d_gp") for k in losses) == (spec.model.regulariser.name != "none")
