"""The fusions: each keeps the feature shape and uses the text, their depths and sizes, CBN's normalisation,
concatenation's tiled code, and word-region attention checked against an explicit loop over regions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dfgan.experiment  # noqa: F401  (registers every component)
from dfgan.experiment import build_gan, resolve_spec
from dfgan.nn.fusion import ConcatFusion, CrossAttentionFusion, DFBlock, WordRegionAttention
from dfgan.registry import FUSIONS
from dfgan.spec import FusionSpec
from tests.component_inputs import COND, TINY, WORD, T, padding_mask


def _fusion(name, channels=6, resolution=16, **spec):
    return FUSIONS.build(name, cond_dim=COND, channels=channels, spec=FusionSpec(name=name, **spec),
                         word_dim=WORD, resolution=resolution)


@pytest.mark.parametrize("name", ["dfblock", "affine1", "dfblock_deep", "cbn", "concat", "cross_attention"])
def test_every_fusion_keeps_the_feature_shape_and_uses_the_text(name):
    torch.manual_seed(0)
    block = _fusion(name, attention_resolutions=[16])
    for m in block.modules():  # move identity-initialised affines away from identity
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.3)
    x, c, w = torch.randn(4, 6, 16, 16), torch.randn(4, COND), torch.randn(4, WORD, T)
    mask = padding_mask([5, 18, 3, 9])
    out = block(x, c, w, mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the text changes the output (sentence for most fusions, words for cross-attention)
    out2 = block(x, torch.randn(4, COND), w, mask) if name != "cross_attention" else block(x, c, -w, mask)
    assert not torch.allclose(out, out2)


def test_fusion_depths():
    assert _fusion("affine1").depth == 1
    assert _fusion("dfblock").depth == 2
    assert _fusion("dfblock_deep").depth == 4  # the default when depth is left at DF-GAN's 2
    assert _fusion("dfblock_deep", depth=6).depth == 6
    with pytest.raises(ValueError, match="model.fusion.depth=2"):
        _fusion("dfblock_deep", depth=2)
    assert _fusion("cbn", depth=3).depth == 3
    # parameter counts: each affine holds two Linear(cond, C) -> Linear(C, C) MLPs
    per_affine = 2 * (COND * 6 + 6 + 6 * 6 + 6)
    for name, depth in (("affine1", 1), ("dfblock", 2), ("dfblock_deep", 4), ("cbn", 2)):
        assert sum(p.numel() for p in _fusion(name).parameters()) == depth * per_affine


def test_cbn_normalises_before_modulating():
    torch.manual_seed(0)
    cbn, dfb = _fusion("cbn"), _fusion("dfblock")
    x, c = torch.randn(8, 6, 5, 5), torch.randn(8, COND)
    # batch normalisation: a per-channel affine change of the input does not change the output
    scale, shift = torch.rand(1, 6, 1, 1) + 0.5, torch.randn(1, 6, 1, 1)
    assert torch.allclose(cbn(x, c), cbn(x * scale + shift, c), atol=1e-4)
    assert not torch.allclose(dfb(x, c), dfb(x * scale + shift, c), atol=1e-2)
    # with precomputed modulation (the fused path) the result is the same
    mods = [aff.modulation(c) for aff in cbn.affines()]
    assert torch.allclose(cbn(x, c), cbn(x, c, modulation=mods), atol=1e-6)


def test_concat_tiles_a_128d_text_code_then_joint_conv():
    block = _fusion("concat", channels=6)
    assert block.joint_conv.in_channels == 6 + 128 and block.joint_conv.out_channels == 6
    x, c = torch.randn(2, 6, 5, 5), torch.randn(2, COND)
    code = block.proj(c)[:, :, None, None].expand(-1, -1, 5, 5)
    assert torch.allclose(block(x, c), F.leaky_relu(block.joint_conv(torch.cat((x, code), 1)), 0.2), atol=1e-6)


def test_word_region_attention_matches_a_loop_over_regions():
    torch.manual_seed(0)
    att = WordRegionAttention(WORD, 6)
    x, w = torch.randn(2, 6, 3, 4), torch.randn(2, WORD, T)
    mask = padding_mask([5, 2])
    ctx, attn = att(x, w, mask)
    keys = att.word_proj.weight[:, :, 0] @ w  # (B, C, T)
    for b in range(2):
        n = int((~mask[b]).sum())
        for r in range(12):
            region = x[b].flatten(1)[:, r]
            a = torch.softmax(region @ keys[b, :, :n], 0)
            assert torch.allclose(attn[b, r, :n], a, atol=1e-5)
            assert torch.all(attn[b, r, n:] == 0)  # padding words get no attention
            assert torch.allclose(ctx[b].flatten(1)[:, r], keys[b, :, :n] @ a, atol=1e-5)
    # changing a padding word changes nothing
    w2 = w.clone()
    w2[1, :, 3] += 5
    assert torch.allclose(att(x, w2, mask)[0], ctx)


def test_cross_attention_only_at_attention_resolutions_with_fallback_elsewhere():
    assert isinstance(_fusion("cross_attention", resolution=16, attention_resolutions=[16]), CrossAttentionFusion)
    assert isinstance(_fusion("cross_attention", resolution=32, attention_resolutions=[16]), ConcatFusion)
    assert type(_fusion("cross_attention", resolution=32, attention_resolutions=[16], fallback="dfblock")) is DFBlock
    with pytest.raises(ValueError, match="model.fusion.fallback"):
        _fusion("cross_attention", resolution=32, attention_resolutions=[16], fallback="cross_attention")
    with pytest.raises(ValueError, match="word embeddings"):
        _fusion("cross_attention", attention_resolutions=[16])(torch.randn(1, 6, 16, 16), torch.randn(1, COND))


def test_cross_attention_that_never_attends_is_an_error():
    spec = resolve_spec("cross_attention", overrides=TINY + ["model.fusion.attention_resolutions=[64,128]"])
    with pytest.raises(ValueError, match="model.fusion.attention_resolutions"):
        build_gan(spec, cond_dim=COND, word_dim=WORD)


def test_cross_attention_cost_grows_with_regions():
    """The attention map has one row per region: 4x the regions, 4x the attention entries."""
    att = WordRegionAttention(WORD, 6)
    w = torch.randn(1, WORD, T)
    sizes = [att(torch.randn(1, 6, s, s), w)[1].numel() for s in (8, 16, 32)]
    assert sizes == [64 * T, 256 * T, 1024 * T]
