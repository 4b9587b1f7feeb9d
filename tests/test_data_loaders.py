"""The file-backed datasets (birds, coco, coco_json, folder) on tiny datasets built on the fly, and GAN / DAMSM
runs on them."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import dfgan.experiment  # noqa: F401  (registers the datasets)
from dfgan.data.errors import DataError
from dfgan.data.images import bird_crop_box, load_size
from dfgan.data.vocab import MAX_WORDS, tokenize
from dfgan.images import MIN_CELL
from dfgan.registry import DATASETS
from dfgan.spec import DataSpec
from tests.data_fixtures import (
    BIRDS_K,
    COCO_K,
    caption_text,
    caption_tokens,
    make_birds,
    make_coco_json,
    make_coco_layout,
    make_folder,
    official_vocab,
)

IMSIZE = 32


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFGAN_CACHE", str(tmp_path / "cache"))


def open_ds(name, root, split="train", **kw):
    return DATASETS.build(name, DataSpec(name=name, root=str(root), imsize=IMSIZE, **kw), split)


def ids_of(vocab, tokens):
    return [vocab.wordtoix[t] for t in tokens]


def check_item(ds, i, j, seed=7):
    item = ds[(i, j, seed)]
    img, cap = item["image"], item["caption"]
    assert img.dtype == torch.float32 and img.shape == (3, IMSIZE, IMSIZE)
    assert -1.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert cap.dtype == torch.int64 and cap.shape == (MAX_WORDS,)
    ids = ds.caption_ids(i, j)
    assert item["length"] == len(ids) >= 1 and cap[: len(ids)].tolist() == ids and not cap[len(ids):].any()
    assert (item["index"], item["caption_index"]) == (i, j)
    return item


# ---- birds (DF-GAN layout) ----------------------------------------------------------------------------------------
def test_birds_contract_caption_indexing_and_cr_keys(tmp_path):
    fx = make_birds(tmp_path / "birds", n_train=5, n_test=3, cr_keys=True)
    train, test = (open_ds("birds", tmp_path / "birds", s) for s in ("train", "test"))
    assert (len(train), len(test)) == (5, 3) and train.captions_per_image == BIRDS_K
    assert train.vocab.ixtoword == fx["pickle"][2] and len(train.vocab) == len(fx["pickle"][2])
    assert train.content_hash == test.content_hash
    for split, ds, caps in (("train", train, fx["pickle"][0]), ("test", test, fx["pickle"][1])):
        for i in range(len(ds)):
            for j in range(BIRDS_K):
                assert ds.caption_ids(i, j) == caps[i * BIRDS_K + j]  # caption j of image i at i*K + j
                assert ds.caption_text(i, j) == " ".join(caption_tokens(i, j, split))
            # keys ended with '\r' in filenames.pickle: stripped, and the image is found
            assert ds.image_path(i).name == fx["keys"][split][i].split("/")[-1] + ".jpg" and ds.image_path(i).is_file()
    for i, j in ((0, 0), (4, 9), (2, 5)):
        check_item(train, i, j)
    check_item(test, 2, 3)
    # ds[i] draws one of the K captions at random
    drawn = {train[1]["caption_index"] for _ in range(60)}
    assert len(drawn) > 3 and drawn <= set(range(BIRDS_K))


def test_val_is_a_seeded_holdout_of_train_left_out_of_training(tmp_path):
    """Without data.val_fraction there is no val split (a clear error naming the field); with it, a seeded part
    of the train images is val, the rest is train (no image in both), and test is untouched."""
    make_birds(tmp_path / "birds", n_train=10, n_test=3)
    with pytest.raises(DataError, match="data.val_fraction"):
        open_ds("birds", tmp_path / "birds", "val")
    full = open_ds("birds", tmp_path / "birds", "train")
    train, val, test = (open_ds("birds", tmp_path / "birds", s, val_fraction=0.3) for s in ("train", "val", "test"))
    paths = lambda ds: [ds.image_path(i) for i in range(len(ds))]  # noqa: E731
    assert (len(train), len(val), len(test)) == (7, 3, 3)
    assert not set(paths(train)) & set(paths(val)) and set(paths(train)) | set(paths(val)) == set(paths(full))
    assert paths(test) == paths(open_ds("birds", tmp_path / "birds", "test"))
    assert train.content_hash != full.content_hash  # other training images: other caches
    by_path = {full.image_path(i): full.caption_ids(i, 0) for i in range(len(full))}
    assert all(val.caption_ids(i, 0) == by_path[val.image_path(i)] for i in range(len(val)))  # captions travel
    again = open_ds("birds", tmp_path / "birds", "val", val_fraction=0.3)
    other = open_ds("birds", tmp_path / "birds", "val", val_fraction=0.3, seed=1)
    assert paths(again) == paths(val) and paths(other) != paths(val)  # seeded by data.seed
    assert torch.equal(val[(0, 0, 1)]["image"], val[(0, 0, 2)]["image"])  # val is transformed as test (no crop)


def test_bird_crop_box_formula():
    # r = int(0.75 * max(w, h)) around the box centre, clipped to the image
    assert bird_crop_box((20, 16, 24, 20), 72, 60) == (32 - 18, 26 - 18, 32 + 18, 26 + 18)
    # r = 30, centre (22, 8): the square (-8, -22, 52, 38) clipped to the 50 x 30 image
    assert bird_crop_box((2.0, 3.0, 40.0, 10.0), 50, 30) == (0, 0, 50, 30)
    assert bird_crop_box((60, 40, 10, 10), 70, 50) == (65 - 7, 45 - 7, 70, 50)


def _colour_fractions(img: torch.Tensor) -> dict[str, float]:
    """Share of pixels nearest to each fixture colour (blue outside the crop, green crop, red box)."""
    x = img.permute(1, 2, 0).reshape(-1, 3)
    refs = torch.tensor([[-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, -1.0]])
    nearest = torch.cdist(x, refs).argmin(dim=1)
    return {c: float((nearest == k).float().mean()) for k, c in enumerate(("blue", "green", "red"))}


def test_birds_are_cropped_to_the_box(tmp_path):
    fx = make_birds(tmp_path / "birds", n_train=2, n_test=2, size=(96, 70), bbox=(30, 20, 24, 18))
    test = open_ds("birds", tmp_path / "birds", "test")
    w, h = fx["size"]
    x1, y1, x2, y2 = bird_crop_box(fx["bbox"], w, h)
    assert test.crop_box(0) == tuple(float(v) for v in fx["bbox"])
    raw = test.read_image(0)  # cropped, before the transform
    assert raw.size == (x2 - x1, y2 - y1)
    # test split: resize the square crop to load_size, centre crop: the red box (centred) keeps its area share
    side = x2 - x1
    scale = load_size(IMSIZE) / side
    expected_red = fx["bbox"][2] * fx["bbox"][3] * scale**2 / IMSIZE**2
    frac = _colour_fractions(test.load_image(0))
    assert frac["blue"] < 0.01  # nothing outside the crop box survives
    assert abs(frac["red"] - expected_red) < 0.05 and frac["green"] > 0.2
    # training items: random crops and flips of the same crop, still no blue and about the same red share
    train = open_ds("birds", tmp_path / "birds", "train")
    for seed in range(4):
        f = _colour_fractions(train[(0, 0, seed)]["image"])
        assert f["blue"] < 0.01 and abs(f["red"] - expected_red) < 0.1


def test_train_transform_is_seeded_and_test_transform_fixed(tmp_path):
    make_birds(tmp_path / "birds", n_train=2, n_test=2, size=(120, 90), bbox=(10, 10, 90, 70))
    train = open_ds("birds", tmp_path / "birds", "train")
    a, b = train[(1, 2, 11)]["image"], train[(1, 2, 11)]["image"]
    assert torch.equal(a, b)
    variants = {train[(1, 2, s)]["image"].sum().item() for s in range(8)}
    assert len(variants) > 1  # crops / flips differ between seeds
    test = open_ds("birds", tmp_path / "birds", "test")
    assert torch.equal(test[(0, 0, 1)]["image"], test[(0, 0, 2)]["image"])  # centre crop, no flip
    # random horizontal flips in training only: an image red on the left, green on the right
    arr = np.zeros((40, 40, 3), np.uint8)
    arr[:, :20, 0], arr[:, 20:, 1] = 255, 255
    for split in ("train", "test"):
        make_folder(tmp_path / "lr" / split, {"lr": 1})
        Image.fromarray(arr).save(tmp_path / "lr" / split / "lr.png")
    red_left = {split: [bool(open_ds("folder", tmp_path / "lr", split)[(0, 0, s)]["image"][0, :, :8].mean() > 0)
                        for s in range(12)] for split in ("train", "test")}
    assert 0 < sum(red_left["train"]) < 12 and all(red_left["test"])


def test_birds_pickle_built_from_text_like_the_official_code(tmp_path):
    fx = make_birds(tmp_path / "birds", n_train=4, n_test=2, pickle_file=False)
    ds = open_ds("birds", tmp_path / "birds")
    ixtoword, _ = official_vocab({"train": 4, "test": 2}, BIRDS_K)
    assert ds.vocab.ixtoword == ixtoword == fx["pickle"][2]  # same words, same ids as written by hand
    assert all(ds.caption_ids(i, j) == fx["pickle"][0][i * BIRDS_K + j] for i in range(4) for j in range(BIRDS_K))
    assert not (tmp_path / "birds" / "captions_DAMSM.pickle").exists()  # the dataset folder is not written
    cached = list((tmp_path / "cache" / "data").glob("captions_DAMSM-birds-*.pickle"))
    assert len(cached) == 1 and any(str(cached[0]) in n for n in ds.notes)
    with open(cached[0], "rb") as f:
        built = pickle.load(f)["pickle"]  # the official four-list layout
    assert built[0] == fx["pickle"][0] and built[1] == fx["pickle"][1] and built[2] == fx["pickle"][2]
    again = open_ds("birds", tmp_path / "birds", "test")
    assert again.content_hash == ds.content_hash and again.caption_ids(1, 3) == fx["pickle"][1][1 * BIRDS_K + 3]


def test_content_hash_tracks_files_not_location(tmp_path):
    make_birds(tmp_path / "a" / "birds", n_train=4, n_test=2)
    h = open_ds("birds", tmp_path / "a" / "birds").content_hash
    shutil.copytree(tmp_path / "a" / "birds", tmp_path / "b" / "birds")  # copy2 keeps mtimes
    assert open_ds("birds", tmp_path / "b" / "birds").content_hash == h
    assert open_ds("birds", tmp_path / "a" / "birds", max_images=2).content_hash != h
    img = tmp_path / "b" / "birds" / "CUB_200_2011" / "images" / "002.Other_Bird" / "Other_Bird_0001.jpg"
    Image.new("RGB", (72, 61), (9, 9, 9)).save(img)  # a test image changed: the (split-independent) hash too
    assert open_ds("birds", tmp_path / "b" / "birds").content_hash != h
    assert len(open_ds("birds", tmp_path / "a" / "birds", max_images=2)) == 2


# ---- coco (DF-GAN layout) -----------------------------------------------------------------------------------------
def test_coco_layout(tmp_path):
    fx = make_coco_layout(tmp_path / "coco", n_train=4, n_test=3)
    train, test = open_ds("coco", tmp_path / "coco"), open_ds("coco", tmp_path / "coco", "test")
    assert (len(train), len(test), train.captions_per_image) == (4, 3, COCO_K)
    assert test.image_path(2) == tmp_path / "coco" / "images" / "val2014" / f"{fx['keys']['test'][2]}.jpg"
    assert train.image_path(0).parent.name == "train2014" and train.crop_box(0) is None
    assert all(test.caption_ids(i, j) == fx["pickle"][1][i * COCO_K + j] for i in range(3) for j in range(COCO_K))
    check_item(train, 3, 4)
    # COCO images (64x48) are not cropped: the whole image is resized on its shorter side
    assert test.read_image(0).size == (64, 48)


# ---- coco_json (raw COCO) -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("year,nested", [("2014", False), ("2017", True)])
def test_coco_json(tmp_path, year, nested):
    ids = make_coco_json(tmp_path / "raw", year, n_train=5, n_test=3, nested=nested,
                         caption_counts={("train", 2): 3, ("train", 4): 0})
    with pytest.warns(UserWarning, match="fewer than K captions") as rec:
        train = open_ds("coco_json", tmp_path / "raw")
    assert any("without any caption" in str(w.message) for w in rec)
    test = open_ds("coco_json", tmp_path / "raw", "test")  # COCO's val2014/val2017 files: DF-GAN's test split
    assert train.captions_per_image == COCO_K and (len(train), len(test)) == (4, 3)  # the uncaptioned one skipped
    # ordered by image id, captions in annotation order; the first image had six: five kept
    names = [train.image_path(i).name for i in range(4)]
    want = [f"COCO_train{year}_{i:012d}.jpg" for i in ids["train"][:4]]
    assert names == want and train.image_path(0).parent.name == f"train{year}"
    assert [train.caption_text(0, j) for j in range(COCO_K)] == [" ".join(tokenize(caption_text(0, j, "train")))
                                                                  for j in range(COCO_K)]
    # image 2 had three captions: repeated to five
    assert [train.caption_ids(2, j) for j in range(COCO_K)] == [train.caption_ids(2, j % 3) for j in range(COCO_K)]
    # the vocabulary covers the val captions too (official rule): nothing is dropped from the test split
    assert test.caption_text(1, 4) == " ".join(tokenize(caption_text(1, 4, "test")))
    assert "val" not in train.vocab.wordtoix and "test" in train.vocab.wordtoix
    check_item(test, 2, 1)
    assert any("cached" in n for n in train.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = open_ds("coco_json", tmp_path / "raw")  # from the parse cache
    assert again.content_hash == train.content_hash and again.caption_ids(3, 2) == train.caption_ids(3, 2)


# ---- folder -------------------------------------------------------------------------------------------------------
def test_folder_any_size_and_hash_split(tmp_path):
    from dfgan.data.folder import TEST_FRACTION, hash_split

    root = tmp_path / "mine"
    names = {f"img{i:02d}": 1 + i % 3 for i in range(24)}
    names["nested/deep/odd"] = 2
    make_folder(root, names)
    # any size and aspect ratio, any format
    Image.fromarray(np.full((30, 200, 3), 200, np.uint8)).save(root / "img00.png")  # very wide
    (root / "img01.png").unlink()
    Image.fromarray(np.full((90, 31, 3), 10, np.uint8)).save(root / "img01.jpg")  # tall and small, JPEG
    with pytest.warns(UserWarning, match="fewer than K captions"):
        train = open_ds("folder", root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = open_ds("folder", root, "test")
    assert train.captions_per_image == 3  # K = the most captions of any image
    keys = {train.image_path(i).relative_to(root).with_suffix("").as_posix() for i in range(len(train))}
    tkeys = {test.image_path(i).relative_to(root).with_suffix("").as_posix() for i in range(len(test))}
    assert keys | tkeys == set(names) and not keys & tkeys
    assert tkeys == {k for k in names if hash_split(k) == "test"} and 0 < len(tkeys) < len(names)
    assert abs(len(tkeys) / len(names) - TEST_FRACTION) < 0.2
    for ds in (train, test):
        for i in range(len(ds)):
            check_item(ds, i, ds.captions_per_image - 1)
    i0 = next(i for i in range(len(train)) if train.image_path(i).stem == "img00")  # 1 caption, repeated
    assert [train.caption_ids(i0, j) for j in range(3)] == [train.caption_ids(i0, 0)] * 3


def test_folder_train_test_subfolders_and_shipped_vocab(tmp_path):
    root = tmp_path / "mine"
    make_folder(root / "train", {"a": 2, "b": 2, "c": 2})
    make_folder(root / "test", {"d": 2})
    (root / "test" / "d.txt").write_text("a train bird with a zebra\nnumber0 caption1\n")
    ixtoword, wordtoix = official_vocab({"train": 3, "test": 0}, 2)
    with open(root / "captions_DAMSM.pickle", "wb") as f:
        pickle.dump([[], [], ixtoword, wordtoix], f)
    train = open_ds("folder", root)
    with pytest.warns(UserWarning, match="unknown words"):
        test = open_ds("folder", root, "test")
    assert (len(train), len(test)) == (3, 1) and train.vocab.ixtoword == ixtoword
    assert test.caption_text(0, 0) == "a train bird a"  # 'with', 'zebra' unknown: dropped and reported
    assert test.problems.of("unknown_words")[0].path == str(root / "test" / "d.txt")


# ---- runs on the fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _tiny_spec(name, root, out_dir, uri, *extra):
    from dfgan.experiment import resolve_spec

    return resolve_spec("full", overrides=[
        f"data.name={name}", f"data.root={root}", f"data.imsize={IMSIZE}", "model.nf=4", "train.steps=2",
        "train.batch_size=2", "model.text_encoder.pretrain_steps=2", "model.text_encoder.pretrain_batch_size=4",
        f"train.out_dir={out_dir}", f"tracking.uri={uri}", "train.log_every=1", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["birds", "coco_json"])
def test_gan_run_and_sampling(tmp_path, mlflow_uri, capsys, layout):
    import mlflow

    from dfgan.cli import main
    from dfgan.train.loop import train

    root = tmp_path / layout
    make_birds(root, n_train=4, n_test=2) if layout == "birds" else make_coco_json(root, n_train=5, n_test=3)
    spec = _tiny_spec(layout, root, tmp_path / "runs", mlflow_uri)
    res = train(spec, progress=False)
    data_hash = open_ds(layout, root).content_hash
    assert res.steps == 2 and all(np.isfinite(v) for v in res.last_losses.values())
    run = mlflow.tracking.MlflowClient(mlflow_uri).get_run(res.run_id)
    assert run.data.tags["dataset"] == layout and run.info.status == "FINISHED"
    assert run.data.tags["dataset_hash"] == data_hash
    # new captions at sampling time: unknown words are reported with their line, not silently dropped
    caps = tmp_path / "caps.txt"
    caps.write_text("a train bird number1 caption2\n\n# comment\nA zebra train bird number0\n")
    out = tmp_path / "grid.png"
    assert main(["sample", "--run", str(res.run_dir), "--captions", str(caps), "--n", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"{caps}:4: unknown word(s) dropped: zebra" in captured.err
    assert json.loads(captured.out)["unknown_words"] == {"4": ["zebra"]}
    grid = Image.open(out)
    cell = IMSIZE * max(1, MIN_CELL // IMSIZE) + 2  # small samples are enlarged in grids
    assert grid.width == 2 * cell + 2 and grid.height > 3 * cell  # 2 captions x 3 noise rows
    caps.write_text("a train bird\nzebra unicorn\n")
    assert main(["sample", "--run", str(res.run_dir), "--captions", str(caps)]) == 1
    assert f"{caps}:2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["birds", "coco_json"])
def test_pretrain_text_command(tmp_path, mlflow_uri, layout, capsys):
    import mlflow

    from dfgan.cli import main
    from dfgan.nn.text_encoders import DAMSMTextEncoder
    from dfgan.text.encoders import load_damsm_checkpoint

    root = tmp_path / layout
    make_birds(root, n_train=4, n_test=2) if layout == "birds" else make_coco_json(root, n_train=5, n_test=3)
    out = tmp_path / "damsm"
    argv = ["pretrain-text", "--steps", "3", "--quiet", "--out", str(out), "--tracking-uri", mlflow_uri,
            f"data.name={layout}", f"data.root={root}", f"data.imsize={IMSIZE}",
            "model.text_encoder.pretrain_batch_size=4", f"train.out_dir={tmp_path / 'runs'}"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["word_loss"] is True and summary["steps"] == 3 and np.isfinite(summary["w_loss"])
    assert summary["w_loss"] > 0  # the word-level loss was on
    weights = out / "text_encoder.pth"
    state = torch.load(weights, weights_only=True)
    assert set(state) == set(DAMSMTextEncoder(10).state_dict())  # official key layout
    n_words = len(open_ds(layout, root).vocab)
    assert state["encoder.weight"].shape[0] == n_words == summary["n_words"]
    assert load_damsm_checkpoint(weights, n_words).output_dim == 256
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "dfgan-pretrain-text"
    assert run.data.params["pretrain.word_loss"] == "True" and run.data.params["data.name"] == layout
    assert [m.step for m in client.get_metric_history(run.info.run_id, "text_loss")] == [3]
    assert "text_encoder/text_encoder.pth" in {a.path for a in client.list_artifacts(run.info.run_id, "text_encoder")}
    # usable as model.text_encoder.checkpoint
    from dfgan.experiment import resolve_spec
    from dfgan.text.encoders import load_text_encoder

    spec = resolve_spec("full", overrides=[f"data.name={layout}", f"data.root={root}", f"data.imsize={IMSIZE}",
                                        f"model.text_encoder.checkpoint={weights}"])
    enc, info = load_text_encoder(spec, open_ds(layout, root), device="cpu", cache_dir=tmp_path / "c")
    assert info["source"] == "checkpoint" and torch.equal(enc.encoder.weight, state["encoder.weight"])
    assert os.path.exists(out / "image_encoder.pth")
