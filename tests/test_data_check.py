"""Bad input: every kind gives a clear error of its own type naming the path (or is handled, counted and warned
about once), and `dfgan data check` reports all problems of a dataset at once."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import dfgan.experiment  # noqa: F401
from dfgan.data.check import check_dataset, check_text_encoder_vocab
from dfgan.data.errors import (
    CorruptImageError,
    DataError,
    DataFormatError,
    EmptyCaptionsError,
    ImageConversionWarning,
    MissingDataError,
    MissingImageError,
    UnknownWordsError,
    VocabularyMismatchError,
)
from dfgan.data.user_captions import encode_caption_lines, read_caption_file
from dfgan.nn.text_encoders import DAMSMTextEncoder
from dfgan.registry import DATASETS
from dfgan.spec import DataSpec
from tests.data_fixtures import make_birds, make_coco_json, make_folder, official_vocab

IMSIZE = 32


def open_ds(name, root, split="train"):
    return DATASETS.build(name, DataSpec(name=name, root=None if root is None else str(root), imsize=IMSIZE), split)


def bird_image_path(root, split="train", i=0):
    cls = "001.Test_Bird/Test_Bird" if split == "train" else "002.Other_Bird/Other_Bird"
    return root / "CUB_200_2011" / "images" / f"{cls}_{i:04d}.jpg"


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---- missing things -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["birds", "coco", "coco_json", "folder"])
def test_missing_or_unset_root(tmp_path, name):
    with pytest.raises(MissingDataError, match=str(tmp_path / "nope")) as e:
        open_ds(name, tmp_path / "nope")
    assert e.value.path == str(tmp_path / "nope")
    with pytest.raises(DataError, match="data.root"):
        open_ds(name, None)


def test_missing_index_files(tmp_path):
    root = tmp_path / "birds"
    make_birds(root, n_train=3, n_test=2, text=False)
    (root / "test" / "filenames.pickle").unlink()
    assert len(open_ds("birds", root)) == 3  # the train split does not need the test list
    with pytest.raises(MissingDataError, match=str(root / "test" / "filenames.pickle")):
        open_ds("birds", root, "test")
    (root / "captions_DAMSM.pickle").unlink()  # no pickle and no text/ to build it from
    with pytest.raises(MissingDataError, match="captions_DAMSM.pickle.*text"):
        open_ds("birds", root)
    make_birds(tmp_path / "b2", n_train=3, n_test=2)
    (tmp_path / "b2" / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    with pytest.raises(MissingDataError, match="bounding_boxes.txt"):
        open_ds("birds", tmp_path / "b2")


def test_key_without_image(tmp_path):
    root = tmp_path / "birds"
    make_birds(root, n_train=4, n_test=2)
    for i in (1, 3):
        bird_image_path(root, i=i).unlink()
    with pytest.raises(MissingImageError, match="image listed by the dataset not found") as e:
        open_ds("birds", root)
    msg = str(e.value)
    assert str(bird_image_path(root, i=1)) in msg and str(bird_image_path(root, i=3)) in msg
    assert "train/filenames.pickle" in msg and "dfgan data check --data birds" in msg
    assert len(open_ds("birds", root, "test")) == 2  # the other split is fine


def test_coco_json_missing_and_broken_annotations(tmp_path):
    root = tmp_path / "raw"
    make_coco_json(root, n_train=3, n_test=2)
    (root / "annotations" / "captions_val2014.json").unlink()
    with pytest.raises(MissingDataError, match="captions_val2014.json"):
        open_ds("coco_json", root)
    (root / "annotations" / "captions_val2014.json").write_text('{"images": [')
    with pytest.raises(DataFormatError, match="captions_val2014.json"):
        open_ds("coco_json", root)
    (root / "annotations" / "captions_val2014.json").unlink()
    (root / "annotations" / "captions_train2014.json").unlink()
    with pytest.raises(MissingDataError, match="captions_train2014.json"):
        open_ds("coco_json", root)


# ---- images -------------------------------------------------------------------------------------------------------
def test_corrupt_and_truncated_images_name_the_path(tmp_path):
    root = tmp_path / "birds"
    make_birds(root, n_train=4, n_test=2)
    bird_image_path(root, i=0).write_bytes(b"this is not a jpeg at all")
    truncate(bird_image_path(root, i=2))
    ds = open_ds("birds", root)  # opening reads no image
    for i in (0, 2):
        with pytest.raises(CorruptImageError, match=str(bird_image_path(root, i=i))) as e:
            ds[(i, 0, 1)]
        assert e.value.path == str(bird_image_path(root, i=i))
    ds[(1, 0, 1)]


def test_image_modes_are_converted_counted_and_warned_once(tmp_path):
    root = tmp_path / "modes"
    make_folder(root / "train", {"plain": 1})
    test = root / "test"  # the test split: centre crop, no flip, so pixel values can be checked
    make_folder(test, {"gray": 1, "cmyk": 1, "rgba": 1, "gray16": 1, "palette": 1, "rgb": 1})
    for p in test.glob("*.png"):
        p.unlink()
    Image.new("L", (40, 40), 77).save(test / "gray.png")
    Image.new("CMYK", (40, 40), (0, 255, 0, 0)).save(test / "cmyk.jpg", quality=100)
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 40, 20))  # top half opaque blue
    rgba.save(test / "rgba.png")
    Image.fromarray(np.full((40, 40), 32896, np.uint16)).save(test / "gray16.png")  # 16-bit: 128
    Image.new("P", (40, 40), 3).save(test / "palette.png")
    Image.new("RGB", (40, 40), (10, 200, 30)).save(test / "rgb.png")
    ds = open_ds("folder", root, "test")
    by_name = {ds.image_path(i).stem: i for i in range(len(ds))}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        imgs = {n: ds.load_image(i) for n, i in by_name.items()}
    conv = [w for w in rec if issubclass(w.category, ImageConversionWarning)]
    assert len(conv) == 1 and str(test) in str(conv[0].message)
    assert dict(ds.conversions) == {"L": 1, "CMYK": 1, "RGBA": 1, "I;16": 1, "P": 1}
    for img in imgs.values():
        assert img.shape == (3, IMSIZE, IMSIZE) and img.dtype == torch.float32
    u8 = {n: ((x + 1) * 127.5).round() for n, x in imgs.items()}
    assert torch.all(u8["gray"] == 77)
    assert torch.all(u8["gray16"] == 128)  # 32896 / 257 = 128, not clipped to 255
    assert torch.allclose(u8["cmyk"].mean(dim=(1, 2)), torch.tensor([255.0, 0.0, 255.0]), atol=3)
    top, bottom = u8["rgba"][:, 2, :], u8["rgba"][:, -3, :]
    assert torch.all(top == torch.tensor([0.0, 0.0, 255.0])[:, None])  # opaque blue stays
    assert torch.all(bottom == 255)  # transparent becomes white
    assert torch.all(u8["rgb"] == torch.tensor([10.0, 200.0, 30.0])[:, None, None])


# ---- captions -----------------------------------------------------------------------------------------------------
def test_empty_caption_file_and_missing_caption_file(tmp_path):
    root = tmp_path / "f"
    make_folder(root, {f"im{i}": 2 for i in range(12)})
    (root / "im3.txt").write_text("\n   \n")
    with pytest.raises(EmptyCaptionsError, match=str(root / "im3.txt")):
        open_ds("folder", root, _split_of("im3"))
    (root / "im3.txt").write_text("!!! ???\n")  # lines without any word: skipped, so nothing is left
    with pytest.raises(EmptyCaptionsError, match=str(root / "im3.txt")):
        open_ds("folder", root, _split_of("im3"))
    (root / "im3.txt").unlink()
    with pytest.raises(MissingDataError, match=str(root / "im3.txt")):
        open_ds("folder", root, _split_of("im3"))


def _split_of(name):
    from dfgan.data.folder import hash_split

    return hash_split(name)


def test_empty_text_file_when_building_the_birds_pickle(tmp_path):
    root = tmp_path / "birds"
    make_birds(root, n_train=3, n_test=2, pickle_file=False)
    bad = root / "text" / "001.Test_Bird" / "Test_Bird_0001.txt"
    bad.write_text("")
    with pytest.raises(EmptyCaptionsError, match=str(bad)):
        open_ds("birds", root)
    assert not list((tmp_path).rglob("captions_DAMSM-*.pickle"))  # a broken build is not cached


def test_caption_with_only_unknown_words(tmp_path):
    root = tmp_path / "f"
    make_folder(root / "train", {"a": 2, "b": 2})
    make_folder(root / "test", {"c": 1})
    ixtoword, wordtoix = official_vocab({"train": 2, "test": 0}, 2)
    with open(root / "captions_DAMSM.pickle", "wb") as f:
        pickle.dump([[], [], ixtoword, wordtoix], f)
    (root / "train" / "b.txt").write_text("a train bird number0\nzebra unicorn\n")
    with pytest.raises(UnknownWordsError, match=str(root / "train" / "b.txt")):
        open_ds("folder", root)
    # at sampling time: the line is named
    from dfgan.data.vocab import Vocab

    vocab = Vocab(ixtoword)
    caps = tmp_path / "caps.txt"
    caps.write_text("a train bird\nthe zebra and the unicorn\n")
    with pytest.raises(UnknownWordsError, match=f"{caps}:2"):
        read_caption_file(caps, vocab)
    caps.write_text("\n# only a comment\n")
    with pytest.raises(EmptyCaptionsError, match=str(caps)):
        read_caption_file(caps, vocab)
    ok = encode_caption_lines(["a zebra bird", "", "bird " * 20], vocab, "x.txt")
    assert [c.line for c in ok] == [1, 3] and ok[0].unknown == ["zebra"] and ok[1].truncated
    assert ok[0].notes("x.txt") == ["x.txt:1: unknown word(s) dropped: zebra"]


# ---- index files and vocabulary -----------------------------------------------------------------------------------
def test_bad_pickles(tmp_path):
    root = tmp_path / "birds"
    fx = make_birds(root, n_train=3, n_test=2)
    train_caps, test_caps, ixtoword, wordtoix = fx["pickle"]
    with open(root / "captions_DAMSM.pickle", "wb") as f:
        pickle.dump([train_caps[:-1], test_caps, ixtoword, wordtoix], f)
    with pytest.raises(DataFormatError, match=r"captions_DAMSM.pickle.*29 train captions for 3 train images"):
        open_ds("birds", root)

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with open(root / "captions_DAMSM.pickle", "wb") as f:
        pickle.dump([train_caps, test_caps, ixtoword, Evil()], f)
    with pytest.raises(DataFormatError, match="refusing"):
        open_ds("birds", root)
    assert not (tmp_path / "pwned").exists()


def _encoder_file(path, n_words):
    torch.save(DAMSMTextEncoder(n_words).state_dict(), path)
    return path


def test_vocabulary_size_must_match_the_text_encoder(tmp_path):
    root = tmp_path / "birds"
    make_birds(root, n_train=3, n_test=2)
    vocab = open_ds("birds", root).vocab
    good = _encoder_file(tmp_path / "good.pth", len(vocab))
    bad = _encoder_file(tmp_path / "bad.pth", 5450)
    assert check_text_encoder_vocab(good, vocab) == len(vocab)
    with pytest.raises(VocabularyMismatchError, match=rf"{bad}.*5450 words.*{len(vocab)}") as e:
        check_text_encoder_vocab(bad, vocab)
    assert e.value.path == str(bad)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(DataFormatError, match="junk.pth"):
        check_text_encoder_vocab(tmp_path / "junk.pth", vocab)
    # training with that checkpoint stops before any work, naming it
    from dfgan.experiment import resolve_spec
    from dfgan.text.encoders import load_text_encoder

    spec = resolve_spec("full", overrides=["data.name=birds", f"data.root={root}", f"data.imsize={IMSIZE}",
                                        f"model.text_encoder.checkpoint={bad}"])
    with pytest.raises(ValueError, match=str(bad)):
        load_text_encoder(spec, open_ds("birds", root), device="cpu", cache_dir=tmp_path / "c")


# ---- the scan -----------------------------------------------------------------------------------------------------
def test_check_reports_every_problem_at_once(tmp_path, capsys):
    from dfgan.cli import main

    root = tmp_path / "birds"
    make_birds(root, n_train=6, n_test=3, size=(96, 80), bbox=(20, 20, 50, 40))
    bird_image_path(root, i=0).unlink()  # missing
    bird_image_path(root, "test", 1).write_bytes(b"\x00" * 100)  # corrupt
    truncate(bird_image_path(root, i=4))  # truncated
    Image.new("L", (96, 80), 90).save(bird_image_path(root, i=2))  # grayscale: converted, not fatal
    bad = _encoder_file(tmp_path / "te.pth", 7)
    rep = check_dataset("birds", root, imsize=IMSIZE, text_encoder=bad, progress=False)
    counts = {r["kind"]: r["count"] for r in rep.rows()}
    assert counts == {"missing_image": 1, "corrupt_image": 2, "vocab_mismatch": 1, "converted_image": 1}
    assert not rep.ok and rep.n_fatal == 4
    rows = {r["kind"]: r for r in rep.rows()}
    assert any(str(bird_image_path(root, "test", 1)) in p for p in rows["corrupt_image"]["first"])
    assert any(str(bird_image_path(root, i=4)) in p for p in rows["corrupt_image"]["first"])
    assert rows["converted_image"]["severity"] == "warning" and "mode L" in rows["converted_image"]["first"][0]
    assert rep.summary["images_decoded"] == 9 and rep.summary["splits"] == {"train": 6, "test": 3}
    # the command: a table, exit code 1; --json gives the same rows
    argv = ["data", "check", "--data", "birds", "--root", str(root), "--imsize", str(IMSIZE), "--quiet"]
    assert main(argv + ["--text-encoder", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "missing_image" in out and "FATAL" in out and str(bird_image_path(root, i=0)) in out
    assert main(argv + ["--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert {r["kind"]: r["count"] for r in got["problems"]} == {"missing_image": 1, "corrupt_image": 2,
                                                                "converted_image": 1}


def test_check_clean_dataset_and_other_layouts(tmp_path, capsys):
    from dfgan.cli import main

    make_birds(tmp_path / "birds", n_train=3, n_test=2, size=(120, 100), bbox=(10, 10, 60, 60))
    assert main(["data", "check", "--data", "birds", "--root", str(tmp_path / "birds"), "--imsize", "32",
                 "--quiet"]) == 0
    assert "no problems found" in capsys.readouterr().out
    make_coco_json(tmp_path / "raw", n_train=3, n_test=2, caption_counts={("train", 1): 2})
    rep = check_dataset("coco_json", tmp_path / "raw", imsize=IMSIZE, progress=False)
    assert rep.ok and {r["kind"] for r in rep.rows()} == {"few_captions"}
    rep = check_dataset("folder", tmp_path / "missing", imsize=IMSIZE, progress=False)
    assert not rep.ok and rep.rows()[0]["kind"] == "missing_path"
    assert main(["data", "check", "--data", "builtin", "--root", str(tmp_path)]) == 1
    assert "checkable datasets" in capsys.readouterr().err
