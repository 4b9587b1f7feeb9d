"""The rprec_damsm evaluator pair: reused from `dfgan pretrain-text` or from the text-encoder cache, else trained
on the run's device after saying so; and the edges of evaluating and sampling a run on real data."""

from __future__ import annotations

import pytest
import torch

import dfgan.metrics.consistency as consistency
from dfgan.experiment import build_dataset, resolve_spec
from dfgan.metrics.consistency import damsm_pair
from dfgan.metrics.evaluate import EvalOptions
from dfgan.metrics.fid import InceptionWeightsMissing
from dfgan.metrics.registry import metrics as metric_defs
from dfgan.pretrain_run import pretrain_text
from dfgan.runs import cache_dir
from dfgan.text.encoders import load_text_encoder
from dfgan.trained import offline_metrics, require_inception
from tests.data_fixtures import make_folder

IMSIZE = 32


@pytest.fixture
def data(tmp_path):
    make_folder(tmp_path / "d" / "train", {f"tr{i}": 2 for i in range(6)})
    make_folder(tmp_path / "d" / "test", {"te0": 2, "te1": 2})
    return tmp_path / "d"


def spec_for(root, tmp_path, *extra):
    return resolve_spec("full", overrides=["data.name=folder", f"data.root={root}", f"data.imsize={IMSIZE}",
                                           "model.nf=4", "train.batch_size=2", "model.text_encoder.pretrain_steps=2",
                                           "model.text_encoder.pretrain_batch_size=4", "tracking.enabled=false",
                                           f"train.out_dir={tmp_path / 'runs'}", *extra])


def no_training(*a, **k):
    raise AssertionError("the evaluator pair was trained although a saved one exists")


def test_the_pair_saved_by_pretrain_text_is_reused(tmp_path, data, monkeypatch):
    summary = pretrain_text(spec_for(data, tmp_path), out=tmp_path / "damsm", tracking=False, progress=False)
    spec = spec_for(data, tmp_path, f"model.text_encoder.checkpoint={summary['text_encoder']}")
    monkeypatch.setattr(consistency, "pretrain_text_encoder", no_training)
    said = []
    text, image, info = damsm_pair(spec, build_dataset(spec), device="cpu", report=said.append)
    assert info["source"] == "pretrain-text" and info["path"] == summary["image_encoder_weights"] and not said
    saved = torch.load(summary["image_encoder_weights"], weights_only=True)
    assert all(torch.equal(v, image.state_dict()[k]) for k, v in saved.items())
    assert not (cache_dir() / "damsm_eval").exists()


def test_the_pair_pretrained_inline_with_the_runs_encoder_is_reused(tmp_path, data, monkeypatch, capsys):
    spec = spec_for(data, tmp_path)
    ds = build_dataset(spec)
    load_text_encoder(spec, ds, device="cpu", cache_dir=cache_dir(), progress=False)
    err = capsys.readouterr().err
    assert "pretraining a DAMSM text encoder" in err and f"cached at {cache_dir() / 'text_encoders'}" in err
    monkeypatch.setattr(consistency, "pretrain_text_encoder", no_training)
    _, _, info = damsm_pair(spec, ds, device="cpu", report=print)
    assert info["source"] == "text encoder cache"


def test_a_new_pair_is_announced_and_trained_on_the_runs_device(tmp_path, data, monkeypatch):
    spec = spec_for(data, tmp_path)
    ds = build_dataset(spec)
    events = []
    real = consistency.pretrain_text_encoder

    def spy(*a, **k):
        events.append(("train", str(k["device"])))
        return real(*a, **{**k, "device": "cpu"})

    monkeypatch.setattr(consistency, "pretrain_text_encoder", spy)
    run_device = torch.device("cpu", 0)  # stands for the run's device: not the bare "cpu" the code once forced
    _, _, info = damsm_pair(spec, ds, device=run_device, report=lambda m: events.append(("say", m)))
    assert events[0][0] == "say" and events[1] == ("train", "cpu:0")  # said before it starts, on that device
    said = events[0][1]
    assert "training an evaluator pair" in said and "2 steps of batch 4 on cpu:0" in said
    assert str(cache_dir() / "damsm_eval") in said and info["source"] == "damsm_eval cache"
    said = []  # a longer one also says, after 10 steps, how long the rest will take
    damsm_pair(spec_for(data, tmp_path, "model.text_encoder.pretrain_steps=12"), ds, report=said.append)
    assert len(said) == 2 and "steps/s: about" in said[1] and "min to go" in said[1]


def test_eval_without_inception_names_the_metrics_that_work_offline(tmp_path, data, monkeypatch):
    monkeypatch.setenv("DFGAN_INCEPTION", str(tmp_path / "nowhere.pt"))
    spec = spec_for(data, tmp_path)
    assert "rprec_damsm" in offline_metrics(spec) and "attr_acc" not in offline_metrics(spec)
    with pytest.raises(InceptionWeightsMissing, match=r"fid30k_test_clean: .*nowhere.pt.*Metrics that work "
                                                      r"offline on this data: .*rprec_damsm"):
        require_inception(metric_defs(["rprec_damsm", "fid30k_test_clean"]), EvalOptions(), spec)
    require_inception(metric_defs(["rprec_damsm"]), EvalOptions(), spec)  # nothing to check


def test_sample_grid_headers_mark_dropped_words(tmp_path, data):
    from dfgan.tracking import Tracker
    from dfgan.train.loop import train
    from dfgan.trained import sample_captions_grid

    spec = spec_for(data, tmp_path, "train.steps=1", "train.checkpoint_every=1", "train.sample_every=1")
    res = train(spec, progress=False, tracker=Tracker(enabled=False))
    caps = tmp_path / "caps.txt"
    caps.write_text("A zebra train bird\n")
    out = sample_captions_grid(res.run_dir, caps, n=1, out=tmp_path / "grid.png", report=lambda m: None)
    assert out["unknown_words"] == {1: ["zebra"]}
    assert (tmp_path / "grid.txt").read_text() == "a zebra[?] train bird\n"
