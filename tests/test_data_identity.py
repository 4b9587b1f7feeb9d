"""A text encoder knows its vocabulary (refused on another one of the same size, naming both), and `dfgan data
check` calls an empty dataset fatal, naming the loader and the layout the folder looks like."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dfgan.cli import main
from dfgan.data.check import check_dataset, check_text_encoder_vocab, size_only_note
from dfgan.data.errors import VocabularyMismatchError
from dfgan.data.identity import data_summary, vocab_hash
from dfgan.data.vocab import Vocab
from dfgan.experiment import build_dataset, check_data, resolve_spec
from dfgan.nn.text_encoders import DAMSMTextEncoder
from dfgan.text.encoders import load_text_encoder
from tests.data_fixtures import make_birds, make_coco_json, make_folder

IMSIZE = 32


def two_vocabularies(tmp_path):
    """Folders a and b: the same number of distinct words, b's 'bird' is a 'fish' (same size, other words)."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_folder(a / "train", {f"tr{i}": 2 for i in range(4)})
    make_folder(a / "test", {"te0": 2, "te1": 2})
    shutil.copytree(a, b)
    for txt in b.rglob("*.txt"):
        txt.write_text(txt.read_text().replace("bird", "fish"))
    return a, b


def spec_for(root, *extra):
    return resolve_spec("full", overrides=["data.name=folder", f"data.root={root}", f"data.imsize={IMSIZE}",
                                           "model.nf=4", "train.batch_size=2", *extra])


def test_vocab_hash_tells_words_apart():
    one = Vocab({0: "<end>", 1: "a", 2: "bird"})
    assert vocab_hash(one) == vocab_hash(Vocab({0: "<end>", 1: "a", 2: "bird"}))
    assert vocab_hash(one) != vocab_hash(Vocab({0: "<end>", 1: "a", 2: "fish"}))
    assert vocab_hash(one) != vocab_hash(Vocab({0: "<end>", 1: "bird", 2: "a"}))  # same words, other ids


def test_text_encoder_of_another_vocabulary_of_the_same_size_is_refused(tmp_path, capsys):
    a, b = two_vocabularies(tmp_path)
    va, vb = (data_summary(spec_for(r).data).vocab for r in (a, b))
    assert len(va) == len(vb) and vocab_hash(va) != vocab_hash(vb)
    out = tmp_path / "damsm"
    assert main(["pretrain-text", "--steps", "2", "--quiet", "--no-track", "--out", str(out), "data.name=folder",
                 f"data.root={a}", f"data.imsize={IMSIZE}", "model.text_encoder.pretrain_batch_size=4",
                 f"train.out_dir={tmp_path / 'runs'}"]) == 0
    capsys.readouterr()
    weights = out / "text_encoder.pth"
    assert json.loads(weights.with_suffix(".json").read_text())["vocab_hash"] == vocab_hash(va)
    # data check: fine on its own data, fatal on the other, naming both hashes
    assert main(["data", "check", "--data", "folder", "--root", str(a), "--text-encoder", str(weights),
                 "--imsize", str(IMSIZE), "--quiet"]) == 0
    assert "only its vocabulary size" not in capsys.readouterr().out
    assert main(["data", "check", "--data", "folder", "--root", str(b), "--text-encoder", str(weights),
                 "--imsize", str(IMSIZE), "--quiet"]) == 1
    report = capsys.readouterr().out
    assert "vocab_mismatch" in report and vocab_hash(va) in report and vocab_hash(vb) in report
    with pytest.raises(VocabularyMismatchError, match=rf"{weights} was trained on another vocabulary of the same "
                                                      rf"size.*{vocab_hash(va)}.*{a}.*{vocab_hash(vb)}"):
        check_text_encoder_vocab(weights, vb)
    # training: refused at validation (before any pretraining) and where the encoder is loaded
    spec = spec_for(b, f"model.text_encoder.checkpoint={weights}")
    with pytest.raises(VocabularyMismatchError, match=vocab_hash(vb)):
        check_data(spec)
    with pytest.raises(VocabularyMismatchError, match=vocab_hash(va)):
        load_text_encoder(spec, build_dataset(spec), device="cpu", cache_dir=tmp_path / "cache")
    enc, info = load_text_encoder(spec_for(a, f"model.text_encoder.checkpoint={weights}"),
                                  build_dataset(spec_for(a)), device="cpu", cache_dir=tmp_path / "cache")
    assert info["vocab_check"] == "hash" and info["vocab_hash"] == vocab_hash(va)


def test_without_a_sidecar_only_the_size_is_checked_and_that_is_said(tmp_path, capsys):
    a, b = two_vocabularies(tmp_path)
    official = tmp_path / "text_encoder200.pth"
    torch.save(DAMSMTextEncoder(len(data_summary(spec_for(b).data).vocab)).state_dict(), official)
    assert "only its vocabulary size could be checked" in size_only_note(official)
    assert main(["data", "check", "--data", "folder", "--root", str(b), "--text-encoder", str(official),
                 "--imsize", str(IMSIZE), "--quiet"]) == 0
    assert "note: text encoder" in capsys.readouterr().out
    spec = spec_for(b, f"model.text_encoder.checkpoint={official}")
    with pytest.warns(UserWarning, match="only its vocabulary size could be checked"):
        _, info = load_text_encoder(spec, build_dataset(spec), device="cpu", cache_dir=tmp_path / "cache")
    assert info["vocab_check"] == "size"


def test_data_check_calls_an_empty_dataset_fatal_and_suggests_the_layout(tmp_path, capsys):
    birds = tmp_path / "birds"
    make_birds(birds, n_train=3, n_test=2)
    assert main(["data", "check", "--data", "folder", "--root", str(birds), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "empty_dataset" in out and "FATAL" in out and "no problems found" not in out
    assert "the folder loader found no train images; this looks like the birds layout" in out
    assert "use --data birds" in out
    assert "found no test images" not in out  # one finding says it all
    few = tmp_path / "few"
    make_folder(few / "train", {"x": 1, "y": 1})
    (few / "test").mkdir()
    rep = check_dataset("folder", few, imsize=IMSIZE, progress=False)
    assert rep.ok and [r["kind"] for r in rep.rows()] == ["no_test_images"]  # trainable: a warning only
    raw = tmp_path / "raw"
    make_coco_json(raw, n_train=3, n_test=2)
    rep = check_dataset("folder", raw, imsize=IMSIZE, progress=False)
    assert not rep.ok and "use --data coco_json" in str(rep.problems.of("empty_dataset")[0])
    # a folder of pairs read with the birds loader: its missing index files say what is wrong already
    pairs = tmp_path / "pairs"
    make_folder(pairs, {"x": 1, "y": 1})
    assert not check_dataset("birds", pairs, imsize=IMSIZE, progress=False).ok


def test_data_check_help_gives_the_imsize_default(capsys):
    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    assert "default 256" in " ".join(capsys.readouterr().out.split())
