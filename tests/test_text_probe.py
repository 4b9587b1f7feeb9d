"""The linear attribute probe of a text encoder (dfgan.text.probe) and its record in pretraining."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfgan.data import builtin as B
from dfgan.spec import DataSpec
from dfgan.text.probe import attribute_probe, has_attributes


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    spec = DataSpec(root=str(tmp_path_factory.mktemp("builtin")), seed=0, imsize=32, n_train=120, n_test=40)
    return B.BuiltinDataset(spec, "train"), B.BuiltinDataset(spec, "test")


class BagOfWords(nn.Module):
    """Sentence = word counts: every attribute word is linearly readable from it."""

    def __init__(self, n_words):
        super().__init__()
        self.n_words = n_words

    def forward(self, captions, lengths):
        sent = torch.zeros(len(captions), self.n_words)
        sent.scatter_add_(1, captions, torch.ones_like(captions, dtype=torch.float))
        sent[:, 0] = 0  # padding
        return None, sent


class Blind(nn.Module):
    """The same vector for every caption: nothing is readable."""

    def forward(self, captions, lengths):
        return None, torch.ones(len(captions), 8)


def test_probe_reads_what_the_encoder_encodes_and_nothing_more(splits):
    train, test = splits
    assert has_attributes(train) and not has_attributes(object())
    seeing = attribute_probe(BagOfWords(len(train.vocab)), train, test)
    blind = attribute_probe(Blind(), train, test)
    assert set(seeing["accuracy"]) == set(B.ATTRIBUTE_NAMES)
    for a in B.ATTRIBUTE_NAMES:
        assert seeing["accuracy"][a] >= 0.9, a  # 120 training images: a rare synonym can be missed
        assert seeing["chance"][a] == pytest.approx(1 / len(B.ATTRIBUTES[a]))
    # the blind encoder can only guess one class per attribute: at most the commonest class's share
    assert blind["accuracy"]["colour"] < 0.5 and blind["accuracy"]["shape"] < 0.6
    # without a test split it holds out the last images of the training split
    held = attribute_probe(BagOfWords(len(train.vocab)), train, None, n_train=80, n_test=40)
    assert (held["n_train_images"], held["n_test_images"]) == (80, 40) and held["accuracy"]["colour"] >= 0.95
    with pytest.raises(ValueError, match="ground-truth attributes"):
        attribute_probe(Blind(), object())


def test_pretraining_records_the_probe(tmp_path, splits):
    from dfgan.spec import TextEncoderSpec
    from dfgan.text.encoders import get_text_encoder

    train, _ = splits
    te = TextEncoderSpec(embedding_dim=32, pretrain_steps=2, pretrain_batch_size=8)
    _, info = get_text_encoder(te, train, device="cpu", cache_dir=tmp_path, progress=False)
    assert set(info["attribute_probe"]) == set(B.ATTRIBUTE_NAMES)
    assert all(0.0 <= v <= 1.0 for v in info["attribute_probe"].values())
    _, cached = get_text_encoder(te, train, device="cpu", cache_dir=tmp_path, progress=False)
    assert cached["source"] == "cache" and cached["attribute_probe"] == info["attribute_probe"]
