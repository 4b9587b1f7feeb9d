"""The memorisation check: the DCR share on features with known answers, and through the evaluation on the
built-in data with stand-in generators that copy training images or draw unseen real ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dfgan.experiment import resolve_spec
from dfgan.metrics import memorisation as M
from dfgan.metrics.evaluate import EvalOptions, evaluate
from dfgan.nn.text_encoders import DAMSMTextEncoder
from dfgan.registry import DATASETS
from dfgan.text.encoders import TextConditioner
from tests.conftest import tiny_overrides


def test_nearest_distances_match_brute_force_and_exclude():
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    full = np.linalg.norm(q[:, None] - r[None], axis=-1)
    assert np.allclose(M.nearest_distances(q, r, chunk=3), full.min(1))
    ex = np.array([0, -1, 3, 3, 10, -1, 2])
    masked = full.copy()
    masked[np.arange(7)[ex >= 0], ex[ex >= 0]] = np.inf
    assert np.allclose(M.nearest_distances(q, r, exclude=ex, chunk=2), masked.min(1))


def test_memorisation_excess_known_answers():
    """Fresh draws from the data distribution: ~0, not flagged; copies of training points: 1, flagged; an image
    near the split image whose caption made it is not counted against the training set (that image is left
    out of its neighbours)."""
    rng = np.random.default_rng(1)
    train, split = rng.normal(size=(3000, 8)), rng.normal(size=(1000, 8))
    fresh = M.memorisation_excess(rng.normal(size=(1000, 8)), train, split)
    assert fresh.details["expected"] == pytest.approx(0.75)
    assert abs(fresh.details["share"] - 0.75) < 0.04 and abs(fresh.value) < 0.15 and fresh.details["flagged"] == 0
    se = np.sqrt(0.75 * 0.25 / 1000)
    assert fresh.details["threshold"] == pytest.approx(2.326 * se / 0.25, abs=1e-3)
    copies = M.memorisation_excess(train[:500] + 1e-6 * rng.normal(size=(500, 8)), train, split)
    assert copies.value == 1.0 and copies.details["flagged"] == 1.0 and copies.details["median_ratio"] < 1e-3
    near_source = split + 0.05 * rng.normal(size=split.shape)  # what a caption-faithful generator resembles
    src = np.arange(1000)
    assert M.memorisation_excess(near_source, train, split).value < -2  # the source not left out: biased
    left_out = M.memorisation_excess(near_source, train, split, source_index=src)
    assert left_out.details["expected"] == pytest.approx(3000 / 3999) and abs(left_out.value) < 0.15


class _Replay(nn.Module):
    """A stand-in generator that returns stored real images in order (whatever the noise and caption)."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images, self.pos = images, 0

    def forward(self, z, sent, words, mask):
        out = self.images[self.pos:self.pos + len(z)]
        self.pos += len(z)
        return out


def test_memorisation_attr_flags_a_copying_generator(tmp_path):
    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path, **{"data.n_train": 96, "data.n_test": 48,
                                                                      "data.n_val": 48}))
    train = DATASETS.build("builtin", spec.data, "train")
    val = DATASETS.build("builtin", spec.data, "val")
    torch.manual_seed(0)
    enc = DAMSMTextEncoder(len(train.vocab), nhidden=spec.model.text_encoder.embedding_dim).eval()
    cond = TextConditioner(enc, torch.device("cpu"), need_words=False, cache=False)

    def share(images):
        gan = nn.Module()
        gan.generator = _Replay(images)
        (rec,) = evaluate(spec, gan, cond, "cpu", ["memorisation_attr"], step=0, run_hash="h", train_dataset=train,
                          options=EvalOptions(n=48, batch_size=16, draws=1))
        return rec

    copy = share(torch.stack([train.load_image(i) for i in range(48)]))
    unseen = share(torch.stack([val.load_image(i) for i in range(48)]))  # real images the generator never saw
    assert copy["value"] == 1.0 and copy["details"]["flagged"] == 1.0
    assert abs(unseen["value"]) < copy["details"]["threshold"] and unseen["details"]["flagged"] == 0.0
    assert copy["details"]["expected"] == pytest.approx(96 / (96 + 47))
    proto = copy["protocol"]
    assert proto["extractor"] == "attr_classifier" and "DCR share" in proto["statistic"]
    assert proto["train_reference"]["n"] == 96 and proto["reference"]["n"] == 48 and proto["split"] == "test"
