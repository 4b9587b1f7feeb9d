"""Exact resume: what a resumed run rebuilds (cached sentence vectors, batches, metric history) is what an
uninterrupted run had."""

from __future__ import annotations

import torch

from dfgan.experiment import build_dataset, resolve_spec
from dfgan.nn.text_encoders import DAMSMTextEncoder
from dfgan.text.encoders import TextConditioner
from dfgan.train.batches import BatchPlan, collate
from tests.conftest import tiny_overrides


def _batch(ds, keys):
    return collate([ds[k] for k in keys])


def test_sentence_vectors_do_not_depend_on_the_batch(tmp_path):
    """A caption's cached vector is the same whichever batch first drew it, and lazily or all at once."""
    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path))
    ds = build_dataset(spec, "train")
    torch.manual_seed(0)
    enc = DAMSMTextEncoder(len(ds.vocab)).eval().requires_grad_(False)
    plan = BatchPlan(len(ds), ds.captions_per_image, 8, seed=3)
    first, later = _batch(ds, plan.keys(0)), _batch(ds, plan.keys(0)[2:5] + plan.keys(1)[:5])
    a = TextConditioner(enc, "cpu", need_words=False).bind(ds)
    a(first)  # caches these captions from their own batch
    b = TextConditioner(enc, "cpu", need_words=False).bind(ds)  # a resumed run: empty cache
    c = TextConditioner(enc, "cpu", need_words=False).bind(ds)
    c.fill()
    sa, sb, sc = a(later)[0], b(later)[0], c(later)[0]
    assert torch.equal(sa, sb) and torch.equal(sa, sc)
    # and the vectors are the encoder's (not a stale or zero cache)
    plain = TextConditioner(enc, "cpu", need_words=False, cache=False)(later)[0]
    torch.testing.assert_close(sa, plain, rtol=1e-4, atol=1e-5)
