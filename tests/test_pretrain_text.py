"""DAMSM pretraining: losses, the training loop, and checkpoint / cache handling (tiny, CPU-fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dfgan.text.encoders
from dfgan.nn.text_encoders import DAMSMTextEncoder
from dfgan.spec import TextEncoderSpec
from dfgan.text.damsm_losses import sentence_loss, word_loss, word_similarity
from dfgan.text.encoders import cache_key, get_text_encoder
from dfgan.text.image_encoders import IMAGE_ENCODERS, efficientnet_lite0_weights_path
from dfgan.text.pretrain import pretrain_text_encoder

MAX_WORDS = 18
COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "white": (1.0, 1.0, 1.0)}
POSITIONS = ("left", "right")


class _Vocab:
    def __init__(self, words):
        self.ixtoword = dict(enumerate(["<end>", *words]))
        self.wordtoix = {w: i for i, w in self.ixtoword.items()}

    def __len__(self):
        return len(self.ixtoword)


class TinyShapes:
    """Follows the dataset contract (``ds[(i, j, seed)]``): a coloured square on the left or right of a grey
    16 px image; K captions name the colour and position in varying word orders."""

    captions_per_image = 3
    split = "train"
    imsize = 16

    def __init__(self, n: int = 16, content_hash: str = "tiny-v1"):
        self.n, self.content_hash = n, content_hash
        self.vocab = _Vocab([*COLOURS, *POSITIONS, "a", "square", "on", "the", "side"])
        self.attrs = [(list(COLOURS)[i % 4], POSITIONS[(i // 4) % 2]) for i in range(n)]

    def __len__(self):
        return self.n

    def _ids(self, i, j):
        colour, pos = self.attrs[i]
        words = [["a", colour, "square", "on", "the", pos], [colour, "square", pos, "side"], [pos, colour]][j]
        return [self.vocab.wordtoix[w] for w in words]

    def __getitem__(self, key):
        i, j, seed = key
        img = torch.zeros(3, 16, 16)
        x0 = 1 if self.attrs[i][1] == "left" else 9
        img[:, 4:10, x0 : x0 + 6] = torch.tensor(COLOURS[self.attrs[i][0]])[:, None, None]
        img += 0.05 * torch.from_numpy(np.random.default_rng(seed).standard_normal((3, 16, 16), dtype=np.float32))
        ids = self._ids(i, j)
        cap = torch.zeros(MAX_WORDS, dtype=torch.long)
        cap[: len(ids)] = torch.tensor(ids)
        return {"image": img, "caption": cap, "length": len(ids), "index": i, "caption_index": j}


def _spec(**kw):
    base = dict(embedding_dim=32, pretrain_steps=4, pretrain_batch_size=8, pretrain_lr=2e-3)
    return TextEncoderSpec(**{**base, **kw})


# ---- losses -------------------------------------------------------------------------------------------------------


def test_sentence_loss_lower_for_matched_pairs():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(8, 16, generator=g)
    matched = img + 0.1 * torch.randn(8, 16, generator=g)
    shuffled = matched[torch.roll(torch.arange(8), 1)]
    lm, ls = sentence_loss(img, matched), sentence_loss(img, shuffled)
    assert math.isfinite(lm.item()) and math.isfinite(ls.item())
    assert lm < 0.1 < 5 < ls
    # two captions of one image: masking removes the other copy from the softmax, so it cannot hurt
    ids = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])
    dup = matched.clone()
    dup[1] = dup[0]
    img_dup = img.clone()
    img_dup[1] = img_dup[0]
    assert sentence_loss(img_dup, dup, ids) < 0.05 < 0.3 < sentence_loss(img_dup, dup)  # 2 ln2 / 8 * 2


def _word_similarity_loop(regions, words, lengths, g1=4.0, g2=5.0):
    """Direct transcription of AttnGAN Eq. 7-9, one caption and one image at a time."""
    bi, d = regions.shape[:2]
    out = torch.zeros(words.shape[0], bi, dtype=regions.dtype)
    for c in range(words.shape[0]):
        e = words[c, :, : int(lengths[c])]  # (D, n)
        for i in range(bi):
            v = regions[i].reshape(d, -1)  # (D, R)
            s = e.t() @ v  # (n words, R regions)
            s_bar = torch.exp(s) / torch.exp(s).sum(dim=0, keepdim=True)  # normalise over words
            alpha = torch.exp(g1 * s_bar) / torch.exp(g1 * s_bar).sum(dim=1, keepdim=True)  # over regions
            ctx = alpha @ v.t()  # (n, D)
            total = 0.0
            for w in range(e.shape[1]):
                cos = torch.dot(ctx[w], e[:, w]) / (ctx[w].norm() * e[:, w].norm())
                total = total + torch.exp(g2 * cos)
            out[c, i] = torch.log(total)
    return out


def test_word_loss_vectorised_matches_loop():
    g = torch.Generator().manual_seed(1)
    regions = torch.randn(5, 6, 3, 2, generator=g, dtype=torch.float64)
    words = torch.randn(5, 6, 7, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 1, 5, 2])
    words = words.masked_fill((torch.arange(7)[None, :] >= lengths[:, None])[:, None, :], 0.0)  # LSTM padding
    fast = word_similarity(regions, words, lengths)
    slow = _word_similarity_loop(regions, words, lengths)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)
    loss = word_loss(regions, words, lengths)
    labels = torch.arange(5)
    ref = F.cross_entropy(10 * slow.t(), labels) + F.cross_entropy(10 * slow, labels)
    torch.testing.assert_close(loss, ref)
    assert math.isfinite(word_loss(regions.float(), words.float(), lengths, torch.tensor([0, 0, 1, 2, 3])).item())


def test_word_loss_gradients_finite():
    regions = torch.randn(4, 8, 2, 2, requires_grad=True)
    words = torch.randn(4, 8, 5, requires_grad=True)
    word_loss(regions, words, torch.tensor([5, 1, 3, 2])).backward()
    assert torch.isfinite(regions.grad).all() and torch.isfinite(words.grad).all()


# ---- pretraining ------------------------------------------------------------------------------------------------


def test_image_encoder_registry_and_missing_weights(tmp_path):
    assert {"small_cnn", "efficientnet_lite0"} <= set(IMAGE_ENCODERS.names())
    enc = IMAGE_ENCODERS.build("small_cnn", out_dim=16)
    regions, glob = enc(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert regions.shape == (2, 16, 8, 8) and glob.shape == (2, 16)
    missing = tmp_path / "nope" / "efficientnet-lite0.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        IMAGE_ENCODERS.build("efficientnet_lite0", weights=missing)


def test_pretraining_decreases_loss_and_returns_frozen_encoder():
    logs = []
    enc, info = pretrain_text_encoder(
        TinyShapes(),
        _spec(),
        device="cpu",
        steps=30,
        progress=False,
        word_loss=True,
        log_fn=lambda step, d: logs.append((step, d)),
    )
    assert [s for s, _ in logs] == [10, 20, 30]
    assert set(logs[0][1]) == {"loss", "s_loss", "w_loss"}
    assert logs[-1][1]["loss"] < logs[0][1]["loss"]
    assert logs[-1][1]["w_loss"] > 0 and math.isclose(
        logs[-1][1]["loss"], logs[-1][1]["s_loss"] + logs[-1][1]["w_loss"], rel_tol=1e-5
    )
    assert isinstance(enc, DAMSMTextEncoder) and not enc.training
    assert not any(p.requires_grad for p in enc.parameters())
    assert info["steps"] == 30 and info["seconds"] > 0 and 0 <= info["retrieval_top1"] <= 1
    assert info["retrieval_n"] == 16 and info["retrieval_split"] == "train"


def test_pretraining_is_deterministic_and_leaves_caller_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, ia = pretrain_text_encoder(TinyShapes(), _spec(), device="cpu", steps=3, progress=False, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b, ib = pretrain_text_encoder(TinyShapes(), _spec(), device="cpu", steps=3, progress=False, seed=7)
    c, _ = pretrain_text_encoder(TinyShapes(), _spec(), device="cpu", steps=3, progress=False, seed=8)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert ia["loss"] == ib["loss"]
    assert not torch.equal(a.state_dict()["encoder.weight"], c.state_dict()["encoder.weight"])


# ---- checkpoint / cache ---------------------------------------------------------------------------------------


def test_get_text_encoder_caches(tmp_path, monkeypatch):
    ds = TinyShapes()
    enc, info = get_text_encoder(_spec(), ds, device="cpu", cache_dir=tmp_path, progress=False)
    assert info["source"] == "pretrained"
    path = tmp_path / "text_encoders" / f"damsm-{cache_key(_spec(), ds)}.pth"
    assert info["path"] == str(path) and path.is_file() and path.with_suffix(".json").is_file()
    state = torch.load(path, weights_only=True)
    assert "encoder.weight" in state and any(k.startswith("rnn.") for k in state)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    def boom(*a, **k):
        raise AssertionError("pretrained again instead of loading the cache")

    monkeypatch.setattr(dfgan.text.encoders, "pretrain_text_encoder", boom)
    enc2, info2 = get_text_encoder(_spec(), ds, device="cpu", cache_dir=tmp_path, progress=False)
    assert info2["source"] == "cache" and info2["path"] == str(path) and "retrieval_top1" in info2
    for k, v in enc.state_dict().items():
        assert torch.equal(v, enc2.state_dict()[k])
    assert not enc2.training and not any(p.requires_grad for p in enc2.parameters())
    # other data or other pretraining fields -> another cache entry
    assert cache_key(_spec(), TinyShapes(content_hash="other")) != cache_key(_spec(), ds)
    assert cache_key(_spec(pretrain_lr=1e-3), ds) != cache_key(_spec(), ds)
    assert cache_key(_spec(model_path="x"), ds) == cache_key(_spec(), ds)


def test_checkpoint_with_module_prefix_loads(tmp_path):
    ds = TinyShapes()
    src = DAMSMTextEncoder(len(ds.vocab), nhidden=32)
    ckpt = tmp_path / "text_encoder100.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, ckpt)
    with pytest.warns(UserWarning, match="only its vocabulary size could be checked"):  # no sidecar: official
        enc, info = get_text_encoder(_spec(checkpoint=str(ckpt)), ds, device="cpu", cache_dir=tmp_path)
    assert {k: info[k] for k in ("source", "path", "vocab_check")} == {"source": "checkpoint", "path": str(ckpt),
                                                                       "vocab_check": "size"}
    for k, v in src.state_dict().items():
        assert torch.equal(v, enc.state_dict()[k])
    assert not (tmp_path / "text_encoders").exists()


def test_checkpoint_vocab_mismatch_names_both_sizes(tmp_path):
    ds = TinyShapes()
    ckpt = tmp_path / "other.pth"
    torch.save(DAMSMTextEncoder(len(ds.vocab) + 5, nhidden=32).state_dict(), ckpt)
    with pytest.raises(ValueError) as err:
        get_text_encoder(_spec(checkpoint=str(ckpt)), ds, device="cpu", cache_dir=tmp_path)
    msg = str(err.value)
    assert str(ckpt) in msg and str(len(ds.vocab) + 5) in msg and str(len(ds.vocab)) in msg


def test_missing_checkpoint_and_other_encoders(tmp_path):
    missing = tmp_path / "missing" / "text_encoder.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        get_text_encoder(_spec(checkpoint=str(missing)), TinyShapes(), device="cpu", cache_dir=tmp_path)
    with pytest.raises(NotImplementedError, match="sentence_transformer"):
        get_text_encoder(_spec(name="sentence_transformer"), TinyShapes(), device="cpu", cache_dir=tmp_path)


def test_efficientnet_lite0_from_local_weights():
    try:
        path = efficientnet_lite0_weights_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    if not path.is_file():
        pytest.skip(f"no EfficientNet-Lite0 weights at {path}")
    enc = IMAGE_ENCODERS.build("efficientnet_lite0", out_dim=16, input_size=64).train()
    regions, glob = enc(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert regions.shape == (2, 16, 4, 4) and glob.shape == (2, 16)
    trainable = {n.split(".")[0] for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"emb_regions", "emb_global"} and not enc._bn0.training
