"""Parameter counts (``dfgan.metrics.nop``) against the parameter counts of the official modules
(``code/models/GAN.py``: NetG, NetD, NetC, instantiated and counted).

No forward passes: building the nets is all these tests do.
"""

from __future__ import annotations

import pytest
import torch

from dfgan.experiment import GAN
from dfgan.metrics.nop import (
    PAPER_RULE,
    TRAINABLE_RULE,
    count_parameters,
    format_nop_report,
    nop_report,
    unused_official_conv_s,
)
from dfgan.nn.discriminators import DFGANDiscriminator
from dfgan.nn.generators import OneStageGenerator
from dfgan.nn.heads import OneWayHead
from dfgan.nn.text_encoders import DAMSMTextEncoder

BIRDS_VOCAB, COCO_VOCAB = 5_450, 27_297


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dfgan(nf: int, imsize: int) -> GAN:
    return GAN(OneStageGenerator(nf, 100, 256, imsize), [DFGANDiscriminator(nf, imsize)], [OneWayHead(nf, 256)])


def frozen_damsm(n_words: int) -> DAMSMTextEncoder:
    return DAMSMTextEncoder(n_words).requires_grad_(False)


# Official counts (official code/models/GAN.py, instantiated): NetG, NetD as instantiated (with unused conv_s), NetC.
OFFICIAL = {
    (32, 64): (4_868_867, 3_210_820, 295_936),
    (32, 128): (7_306_499, 4_915_013, 295_936),
    (32, 256): (9_744_131, 6_619_206, 295_936),
    (64, 256): (31_819_267, 26_472_582, 886_784),
}


@pytest.mark.parametrize("nf, imsize", list(OFFICIAL))
def test_counts_match_official_modules(nf, imsize):
    g, d_official, c = OFFICIAL[nf, imsize]
    r = nop_report(dfgan(nf, imsize))["modules"]
    assert r["generator"]["total"] == g
    assert r["heads.0"]["total"] == c
    d = r["discriminators.0"]
    assert d["official_instantiation"] == d_official
    assert d["total"] == d_official - d["unused_official"]
    # the unused shortcut convs: one 8nf x 8nf 1x1 conv (+ bias) per block whose channels stay at 8nf
    n_same = {64: 1, 128: 2, 256: 3}[imsize]
    assert d["unused_official"] == unused_official_conv_s(nf, imsize) == n_same * (64 * nf * nf + 8 * nf)
    assert all(c["frozen"] == 0 for c in r.values())


def test_nf32_256_details_and_totals():
    birds = frozen_damsm(BIRDS_VOCAB)
    r = nop_report(dfgan(32, 256), birds)
    m, t = r["modules"], r["totals"]
    assert m["discriminators.0"]["total"] == 6_421_830 and m["discriminators.0"]["unused_official"] == 197_376
    assert m["generator"]["fusion"] == 5_164_800  # DFBlocks: 53% of NetG
    assert m["text_encoder"] == {"trainable": 0, "frozen": 2_075_320, "total": 2_075_320}
    assert t["trainable"]["official_instantiation"] == 16_659_273  # official G + D + C
    assert t["trainable"]["count"] == 16_659_273 - 197_376
    assert t["paper"]["official_instantiation"] == 16_659_273 + 2_075_320 == 18_734_593  # the README's "18M"?
    assert t["paper"]["count"] == 18_734_593 - 197_376
    assert t["paper"]["rule"] == PAPER_RULE and t["trainable"]["rule"] == TRAINABLE_RULE
    assert "text encoder" in PAPER_RULE and "Inferred" in PAPER_RULE and "excluded" in TRAINABLE_RULE
    text = format_nop_report(r)
    assert "18.73M" in text and "text_encoder" in text and "rule: paper" in text


@pytest.mark.parametrize("vocab, expected", [(BIRDS_VOCAB, 2_075_320), (COCO_VOCAB, 8_629_420)])
def test_damsm_text_encoder(vocab, expected):
    enc = frozen_damsm(vocab)
    assert count_parameters(enc) == expected
    assert count_parameters(enc, trainable_only=True) == 0


def test_trainable_only_and_missing_text_encoder():
    gan = dfgan(4, 64)
    gan.generator.fc.requires_grad_(False)
    r = nop_report(gan)
    fc = 8 * 4 * 16 * 100 + 8 * 4 * 16
    assert r["modules"]["generator"]["frozen"] == fc
    assert count_parameters(gan.generator, trainable_only=True) == count_parameters(gan.generator) - fc
    assert "text_encoder" not in r["modules"]
    assert r["totals"]["paper"]["count"] == r["totals"]["trainable"]["count"]
    assert "no text encoder was given" in r["totals"]["paper"]["rule"]


def test_build_gan_container():
    from dfgan.experiment import build_gan
    from dfgan.spec import DataSpec, Spec

    gan = build_gan(Spec(data=DataSpec(imsize=64)), cond_dim=256, word_dim=256)
    m = nop_report(gan)["modules"]
    assert (m["generator"]["total"], m["discriminators.0"]["official_instantiation"], m["heads.0"]["total"]) == (
        OFFICIAL[32, 64]
    )
