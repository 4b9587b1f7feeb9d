"""The attention generator receives the sentence as AttnGAN's does: ``fc(cat(c, z))`` with ``c`` the sentence or
its conditioning-augmentation code (AttnGAN ``code/model.py``: ``G_NET``, ``INIT_STAGE_G``, ``CA_NET``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from dfgan.experiment import build_gan, build_regulariser, resolve_spec
from dfgan.nn.fusion import CA_DIM, ConditioningAugmentation, SentenceInput
from dfgan.run_identity import run_hash
from dfgan.train.step import Stepper
from tests.component_inputs import COND, TINY, WORD, T, Z, padding_mask


def _gan(backbone="one_stage", ca=False, variant="cross_attention"):
    # the variant attends everywhere up to 128 px: at TINY's 32 px every block attends, none carries the sentence
    spec = resolve_spec(variant, overrides=TINY + [f"model.backbone={backbone}",
                                                f"model.fusion.conditioning_augmentation={str(ca).lower()}"])
    torch.manual_seed(0)
    return spec, build_gan(spec, cond_dim=COND, word_dim=WORD)


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = padding_mask([5, 18, 3, 9][:b])
    return (torch.randn(b, Z, generator=g), torch.randn(b, COND, generator=g), torch.randn(b, WORD, T, generator=g),
            mask)


def _last(out):
    return out[-1] if isinstance(out, list) else out


@pytest.mark.parametrize("ca", [False, True])
@pytest.mark.parametrize("backbone", ["one_stage", "stacked"])
def test_attention_generator_output_depends_on_the_sentence(backbone, ca):
    spec, gan = _gan(backbone, ca)
    assert all(b.resolution in spec.model.fusion.attention_resolutions for b in gan.generator.GBlocks)
    G = gan.generator.eval()  # CA: its mean, so the comparison is not one of two random draws
    noise, sent, words, mask = _batch()
    with torch.no_grad():
        a = _last(G(noise, sent, words, mask))
        b = _last(G(noise, torch.randn_like(sent), words, mask))  # another sentence, same words and noise
        c = _last(G(noise, sent, words, mask))
    assert torch.equal(a, c)
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every image of the batch changes


@pytest.mark.parametrize("ca", [False, True])
def test_fc_takes_the_sentence_or_its_ca_code_with_the_noise(ca):
    _, gan = _gan(ca=ca)
    G = gan.generator
    assert G.fc.in_features == Z + (CA_DIM if ca else COND)
    assert isinstance(G.sentence_input, SentenceInput) and (G.sentence_input.ca is not None) == ca
    # other fusions: DF-GAN's fc of the noise alone, every block takes cat(noise, sentence)
    _, full = _gan(variant="full")
    assert full.generator.sentence_input is None and full.generator.fc.in_features == Z
    assert full.generator.take_kl_loss() is None


def test_conditioning_augmentation_is_attngans_ca_net():
    torch.manual_seed(0)
    ca = ConditioningAugmentation(COND)
    assert (ca.fc.in_features, ca.fc.out_features) == (COND, 4 * CA_DIM)
    s = torch.randn(6, COND)
    h = ca.fc(s)
    glu = h[:, : 2 * CA_DIM] * torch.sigmoid(h[:, 2 * CA_DIM:])
    mu, logvar = glu[:, :CA_DIM], glu[:, CA_DIM:]
    want_kl = kl_divergence(Normal(mu, (logvar / 2).exp()), Normal(0.0, 1.0)).mean()
    ca.eval()
    code, kl = ca(s)
    assert torch.allclose(code, mu, atol=1e-6) and torch.allclose(kl, want_kl, rtol=1e-5)
    ca.train()
    torch.manual_seed(1)
    c1, _ = ca(s)
    torch.manual_seed(1)
    eps = torch.randn_like(mu)
    assert torch.allclose(c1, mu + eps * (logvar / 2).exp(), atol=1e-6)  # a draw of N(mu, sigma)
    assert not torch.allclose(ca(s)[0], c1)


@pytest.mark.parametrize("ca", [False, True])
def test_training_step_adds_the_ca_kl_term_to_the_generator_loss(ca):
    spec, gan = _gan(ca=ca)
    opt_g = torch.optim.Adam(gan.generator.parameters(), 1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(list(gan.d_parameters()), 4e-4, betas=(0.0, 0.9))
    step = Stepper(gan, build_regulariser(spec), opt_g, opt_d)
    noise, sent, words, mask = _batch()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    ca_fc = gan.generator.sentence_input.ca.fc.weight.detach().clone() if ca else None
    losses = step(0, images, sent, words, mask, noise)
    assert all(math.isfinite(v) for v in losses.values())
    assert ("g_kl" in losses) == ca
    if ca:
        assert losses["g_kl"] > 0
        assert not torch.equal(gan.generator.sentence_input.ca.fc.weight, ca_fc)  # CA_NET trains with G
        assert gan.generator.take_kl_loss() is None  # handed over once, nothing left on the module


def test_conditioning_augmentation_is_hashed_only_for_cross_attention():
    full = resolve_spec("full")
    assert "conditioning_augmentation" not in full.experiment_dict()["model"]["fusion"]
    assert run_hash(resolve_spec("full", overrides=["model.fusion.conditioning_augmentation=true"])) == run_hash(full)
    off, on = resolve_spec("cross_attention"), resolve_spec("cross_attention",
                                                      overrides=["model.fusion.conditioning_augmentation=true"])
    assert off.experiment_dict()["model"]["fusion"]["conditioning_augmentation"] is False
    assert run_hash(off) != run_hash(on)
