"""The procedural built-in dataset: contract, determinism, cache, captions vs. ground truth, images."""

from __future__ import annotations

import itertools
import json
import pickle

import numpy as np
import pytest
import torch

from dfgan.data import builtin as B
from dfgan.data import builtin_render as R
from dfgan.data.vocab import MAX_WORDS, tokenize
from dfgan.registry import DATASETS
from dfgan.spec import DataSpec

SMALL = dict(imsize=32, n_train=40, n_test=16, n_val=12, captions_per_image=10)


def spec(root, seed=0, **kw) -> DataSpec:
    return DataSpec(root=str(root), seed=seed, **{**SMALL, **kw})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("builtin")


@pytest.fixture(scope="module")
def train(root):
    return B.BuiltinDataset(spec(root), "train")


@pytest.fixture(scope="module")
def test_split(root):
    return B.BuiltinDataset(spec(root), "test")


def _classes_named(tokens: set[str], attr: str) -> set[int]:
    return {c for c, kw in enumerate(B.KEYWORDS[attr]) if kw & tokens}


def test_item_contract(train, test_split):
    assert (len(train), len(test_split)) == (40, 16)
    assert train.name == "builtin" and train.split == "train" and test_split.split == "test"
    assert train.imsize == 32 and train.captions_per_image == 10
    assert train.content_hash == test_split.content_hash and len(train.content_hash) == 16
    assert train.vocab.ixtoword[0] == "<end>" and train.vocab.wordtoix == test_split.vocab.wordtoix
    item = train[(3, 7, 123)]
    img, cap = item["image"], item["caption"]
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32)
    assert -1.0 <= img.min() < -0.5 and 0.5 < img.max() <= 1.0  # uses the range (dark and bright pixels)
    assert cap.dtype == torch.int64 and cap.shape == (MAX_WORDS,)
    ids = train.caption_ids(3, 7)
    assert 1 <= item["length"] == len(ids) and cap[: len(ids)].tolist() == ids and not cap[len(ids) :].any()
    assert (item["index"], item["caption_index"]) == (3, 7)
    # load_image is exactly the stored bytes mapped to [-1, 1], with no random flip
    raw = torch.from_numpy(train.image_uint8(3).astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    for _ in range(3):
        assert torch.equal(train.load_image(3), raw)
    rand = train[5]
    assert rand["index"] == 5 and 0 <= rand["caption_index"] < 10
    # picklable for DataLoader workers without copying the images; reopens the file
    clone = pickle.loads(pickle.dumps(train))
    assert len(pickle.dumps(train)) < 200_000 and torch.equal(clone.load_image(3), raw)


def test_validation_split_is_its_own(tmp_path, root, train, test_split):
    """val: its own images, captions and attributes, none equal to a train or test image; adding it (or changing
    its size) leaves the train and test images as they were."""
    val = B.BuiltinDataset(spec(root), "val")
    assert len(val) == 12 and val.content_hash == train.content_hash and val.vocab.ixtoword == train.vocab.ixtoword
    flat = lambda ds: np.asarray(ds._images).reshape(len(ds), -1)  # noqa: E731
    v, others = flat(val), np.concatenate([flat(train), flat(test_split)])
    assert not (v[:, None, :] == others[None, :, :]).all(-1).any()  # no val image is a train or test image
    assert any(val.attributes(i) != test_split.attributes(i) for i in range(12))  # its own draw, not test's
    other = B.BuiltinDataset(spec(tmp_path, n_val=8), "train")
    assert other.content_hash != train.content_hash  # n_val is a generation parameter
    assert np.array_equal(np.asarray(other._images), np.asarray(train._images))
    assert np.array_equal(np.asarray(B.BuiltinDataset(spec(tmp_path, n_val=8), "test")._images),
                          np.asarray(test_split._images))


def test_ground_truth_accessors(train):
    arr = train.attribute_array()
    assert set(arr) == set(B.ATTRIBUTES)
    for name, values in arr.items():
        assert values.shape == (40,) and values.dtype == np.int64
        assert values.min() >= 0 and values.max() < len(B.ATTRIBUTES[name])
        assert len(np.unique(values)) > 1  # not constant
    assert train.attributes(11) == {k: int(v[11]) for k, v in arr.items()}
    m = train.mentions(4, 2)
    assert set(m) == set(B.ATTRIBUTES) and all(isinstance(v, bool) for v in m.values())


def _dump(ds):
    return (np.asarray(ds._images).copy(), ds._texts, ds._ids, ds.attribute_array(), ds._mentions.copy())


def test_same_seed_same_bytes_different_seed_differs(tmp_path, train, test_split):
    a_tr = B.BuiltinDataset(spec(tmp_path / "a"), "train")
    a_te = B.BuiltinDataset(spec(tmp_path / "a"), "test")
    for x, y in [(a_tr, train), (a_te, test_split)]:
        dx, dy = _dump(x), _dump(y)
        assert np.array_equal(dx[0], dy[0])
        assert dx[1] == dy[1] and dx[2] == dy[2]
        assert all(np.array_equal(dx[3][k], dy[3][k]) for k in dx[3])
        assert np.array_equal(dx[4], dy[4])
    assert a_tr.content_hash == train.content_hash
    assert (tmp_path / "a" / f"builtin-{train.content_hash}" / "vocab.json").read_bytes() == (
        train.root / "vocab.json"
    ).read_bytes()
    # train and test are different images
    assert not np.array_equal(np.asarray(train._images)[:16], np.asarray(test_split._images))

    b = B.BuiltinDataset(spec(tmp_path / "b", seed=1), "train")
    assert b.content_hash != train.content_hash
    assert not np.array_equal(np.asarray(b._images), np.asarray(train._images))
    assert b._texts != train._texts


def test_hash_covers_every_parameter():
    base = B.generation_params(DataSpec(**SMALL))
    hashes = {B.content_hash_of(base)}
    for key, value in [
        ("seed", 5),
        ("n_train", 41),
        ("n_test", 17),
        ("n_val", 13),
        ("imsize", 64),
        ("captions_per_image", 5),
        ("generator_version", B.GENERATOR_VERSION + 1),
    ]:
        hashes.add(B.content_hash_of({**base, key: value}))
    assert len(hashes) == 8


def test_cache_hit_does_not_regenerate(tmp_path, monkeypatch):
    B.BuiltinDataset(spec(tmp_path, n_train=8, n_test=8), "train")

    def boom(*a, **k):
        raise AssertionError("render_image called on a cache hit")

    monkeypatch.setattr(B, "render_image", boom)
    again = B.BuiltinDataset(spec(tmp_path, n_train=8, n_test=8), "test")
    assert len(again) == 8
    with pytest.raises(AssertionError, match="cache hit"):  # the patch is live: new parameters render
        B.BuiltinDataset(spec(tmp_path, seed=9, n_train=8, n_test=8), "train")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # failed write left no temp folder
    assert [p.name for p in tmp_path.iterdir()] == [f"builtin-{again.content_hash}"]


def test_concurrent_writer_is_tolerated_and_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DFGAN_CACHE", str(tmp_path))
    ds = B.BuiltinDataset(DataSpec(seed=0, **{**SMALL, "n_train": 8, "n_test": 8}), "train")
    assert ds.root.parent == tmp_path
    before = (ds.root / "train_images.npy").read_bytes()
    B._write_cache(ds.root, B.generation_params(DataSpec(seed=0, **{**SMALL, "n_train": 8, "n_test": 8})))
    assert (ds.root / "train_images.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [ds.root.name]


def test_captions_match_stored_attributes(train, test_split):
    counts = {k: 0 for k in B.ATTRIBUTES}
    total = 0
    for ds in (train, test_split):
        for i in range(len(ds)):
            attrs = ds.attributes(i)
            for j in range(ds.captions_per_image):
                toks = set(tokenize(ds.caption_text(i, j)))
                m = ds.mentions(i, j)
                assert m["colour"] and m["shape"] and m["count"]
                for attr in ("colour", "shape", "size", "position", "background"):
                    want = {attrs[attr]} if m[attr] else set()
                    assert _classes_named(toks, attr) == want, (ds.caption_text(i, j), attr, attrs)
                named = _classes_named(toks, "count")
                assert named == ({attrs["count"]} if attrs["count"] else set()), (ds.caption_text(i, j), attrs)
                total += 1
                for k, v in m.items():
                    counts[k] += v
    for k in ("size", "position", "background"):  # mentioned in most captions, omitted in some
        assert 0.55 < counts[k] / total < 0.95, (k, counts[k] / total)


def test_keywords_are_unambiguous():
    seen: dict[str, tuple[str, int]] = {}
    for attr, per_class in B.KEYWORDS.items():
        assert len(per_class) == len(B.ATTRIBUTES[attr])
        for c, words in enumerate(per_class):
            for w in words:
                assert w not in seen, (w, seen.get(w), (attr, c))
                seen[w] = (attr, c)


def test_captions_short_and_in_vocabulary(train, test_split):
    for ds in (train, test_split):
        for i, j in itertools.product(range(len(ds)), range(ds.captions_per_image)):
            text = ds.caption_text(i, j)
            ids, unknown = ds.vocab.encode(text)
            assert not unknown and 1 <= len(ids) <= MAX_WORDS
            assert ds.caption_ids(i, j) == ids
            assert ds.vocab.decode(ids) == " ".join(tokenize(text))
    # captions written for arbitrary attributes are short and known too (the metric writes such captions)
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(300):
        attrs = {k: int(rng.integers(len(v))) for k, v in B.ATTRIBUTES.items()}
        text = B.caption_for_attributes(attrs, rng)
        lengths.append(len(tokenize(text)))
        assert not train.vocab.encode(text)[1]
        assert _classes_named(set(tokenize(text)), "colour") == {attrs["colour"]}
    assert max(lengths) <= MAX_WORDS and len(set(lengths)) > 3
    canon = B.caption_for_attributes({"colour": 0, "shape": 1, "size": 0, "position": 0, "count": 1, "background": 0})
    assert canon == "two small red squares on the left on a dark background"
    with pytest.raises(ValueError, match="colour"):
        B.caption_for_attributes({**dict.fromkeys(B.ATTRIBUTES, 0), "colour": 6})


def test_demo_captions_fixed_and_varied(train):
    demo = B.BuiltinDataset.demo_captions(8)
    assert demo == B.demo_captions(8) and len(set(demo)) == 8
    toks = [set(tokenize(c)) for c in demo]
    assert set().union(*(_classes_named(t, "colour") for t in toks)) == set(range(6))
    assert set().union(*(_classes_named(t, "shape") for t in toks)) == set(range(4))
    assert all(not train.vocab.encode(c)[1] for c in demo)


def test_backgrounds_differ_in_pixels(train, test_split):
    imgs = np.concatenate([np.asarray(train._images), np.asarray(test_split._images)]).astype(np.float32)
    bg = np.concatenate([train.attribute_array()["background"], test_split.attribute_array()["background"]])
    assert set(bg.tolist()) == set(range(5))
    med = np.median(imgs.reshape(len(imgs), -1, 3), axis=1)  # objects cover well under half the image
    centroids = np.stack([med[bg == b].mean(0) for b in range(5)])
    dist = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    assert dist[~np.eye(5, dtype=bool)].min() > 30, dist
    pred = np.linalg.norm(med[:, None] - centroids[None], axis=-1).argmin(1)
    assert (pred == bg).mean() > 0.95
    # dark to light
    lum = centroids.mean(1)
    assert lum.min() < 70 and lum.max() > 200
    # textured + noisy, never flat
    assert (imgs.std(axis=(1, 2)).min(axis=1) > 5).all()
    # object colours are far from every background colour
    assert np.linalg.norm(R._OBJECT_RGB[:, None] - centroids[None], axis=-1).min() > 60


def _object_mask(img: np.ndarray, colour: int, tol: float = 55) -> np.ndarray:
    return np.linalg.norm(img.astype(np.float32) - R._OBJECT_RGB[colour], axis=-1) < tol


def _components(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected components of a boolean mask."""
    seen = np.zeros_like(mask)
    sizes = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, n = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            n += 1
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1] and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        sizes.append(n)
    return sizes


@pytest.mark.parametrize("imsize", [32, 64])
def test_render_position_size_and_count(imsize):
    rng = np.random.default_rng(1)
    ratios = []
    # shape 0 at count 1 and 2 only: stacked three high, thin objects leave gaps a colour threshold can close
    for colour, shape, bg, count in [(0, 0, 0, 0), (2, 0, 1, 1), (5, 3, 2, 2), (1, 2, 4, 0), (3, 1, 3, 2)]:
        areas = {}
        for size, pos in itertools.product(range(2), range(3)):
            attrs = dict(colour=colour, shape=shape, size=size, position=pos, count=count, background=bg)
            img = B.render_image(attrs, imsize, rng)
            assert img.dtype == np.uint8 and img.shape == (imsize, imsize, 3)
            mask = _object_mask(img, colour)
            ys, xs = np.nonzero(mask)
            assert len(xs) > 0.012 * imsize**2, attrs
            cx = xs.mean() / imsize
            assert pos / 3 < cx < (pos + 1) / 3, (attrs, cx)
            blobs = _components(mask)  # separate objects; anti-aliased corners can leave small bits
            assert sum(b >= 0.4 * max(blobs) for b in blobs) == count + 1, (attrs, blobs)
            areas[size, pos] = int(mask.sum())
        for pos in range(3):
            assert areas[1, pos] > 1.25 * areas[0, pos], (count, areas)
        ratios.append(sum(areas[1, p] for p in range(3)) / sum(areas[0, p] for p in range(3)))
    assert np.mean(ratios) > 1.6, ratios


def test_registry_and_bad_split(root, train):
    ds = DATASETS.build("builtin", spec(root), "train")
    assert isinstance(ds, B.BuiltinDataset) and ds.content_hash == train.content_hash
    assert "builtin" in DATASETS
    with pytest.raises(ValueError, match="train, test, val"):
        DATASETS.build("builtin", spec(root), "dev")


def test_cache_layout(train):
    names = sorted(p.name for p in train.root.iterdir())
    assert names == sorted(
        ["meta.json", "vocab.json"]
        + [f"{s}_{k}" for s in ("train", "test", "val") for k in ("images.npy", "captions.json", "labels.npz")]
    )
    meta = json.loads((train.root / "meta.json").read_text())
    assert meta["generator_version"] == B.GENERATOR_VERSION and meta["seed"] == 0
    assert np.load(train.root / "test_images.npy").shape == (16, 32, 32, 3)
    assert np.load(train.root / "val_images.npy").shape == (12, 32, 32, 3) and meta["n_val"] == 12
