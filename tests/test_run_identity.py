"""Runs that know their data: the dataset's content hash is part of the run's identity, a checkpoint of other
data is never resumed nor deleted, and every cheap check of the data happens at validation, before any work."""

from __future__ import annotations

import shutil

import mlflow
import pytest
import torch

from dfgan import runs
from dfgan.cli import main
from dfgan.data.errors import EmptyDatasetError
from dfgan.experiment import check_data, resolve_spec
from dfgan.run_identity import dataset_hash, run_folder, run_hash, run_identity
from dfgan.spec import SpecError
from dfgan.tracking import Tracker
from dfgan.train.loop import train
from tests.data_fixtures import make_birds, make_folder

IMSIZE = 32


def folder_data(root, n_train=4, n_test=2, k=2):
    make_folder(root / "train", {f"tr{i}": k for i in range(n_train)})
    make_folder(root / "test", {f"te{i}": k for i in range(n_test)})
    return root


def tiny(root, out, *extra, name="folder"):
    return [f"data.name={name}", f"data.root={root}", f"data.imsize={IMSIZE}", "model.nf=4", "train.steps=4",
            "train.batch_size=2", "train.checkpoint_every=2", "train.sample_every=2", "train.log_every=1",
            "model.text_encoder.pretrain_steps=2", "model.text_encoder.pretrain_batch_size=4",
            f"train.out_dir={out}", *extra]


def spec_of(root, out, *extra, name="folder"):
    return resolve_spec("full", overrides=tiny(root, out, *extra, name=name))


def quiet_train(spec, **kw):
    return train(spec, progress=False, tracker=Tracker(enabled=False), **kw)


def test_the_data_is_part_of_the_run_identity(tmp_path):
    a, b = folder_data(tmp_path / "a"), tmp_path / "b"
    make_folder(b / "train", {f"other{i}": 3 for i in range(4)})
    make_folder(b / "test", {"o": 3, "p": 3})
    sa, sb = spec_of(a, tmp_path / "runs"), spec_of(b, tmp_path / "runs")
    assert sa.experiment_dict() == sb.experiment_dict()  # the spec alone cannot tell the two apart
    assert run_hash(sa) != run_hash(sb) and run_folder(sa) != run_folder(sb)
    assert run_identity(sa)["data"]["content_hash"] == dataset_hash(sa)
    assert "n_train" not in run_identity(sa)["data"]  # the built-in data's own fields are not a real run's
    # the folder's place is not part of it: the same files elsewhere (times kept) are the same experiment
    shutil.copytree(a, tmp_path / "moved")
    assert run_hash(spec_of(tmp_path / "moved", tmp_path / "runs")) == run_hash(sa)
    # the dataset's content hash is what the loader computes
    from dfgan.experiment import build_dataset

    assert build_dataset(sa).content_hash == dataset_hash(sa)


def test_resume_on_other_data_is_refused_naming_both(tmp_path, capsys):
    """Train on folder a, interrupt, `--resume` on folder b: refused with both folders and content hashes."""
    a, b = folder_data(tmp_path / "a"), folder_data(tmp_path / "b", n_train=5)
    out = tmp_path / "runs"
    first = quiet_train(spec_of(a, out), stop_at=2)
    assert runs.load_checkpoint(first.run_dir / "checkpoint.pt")["step"] == 2
    argv = ["train", "--variant", "full", "--no-track", "--quiet", "--resume", *tiny(b, out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    ha, hb = dataset_hash(spec_of(a, out)), dataset_hash(spec_of(b, out))
    assert "CheckpointMismatchError" in err and str(first.run_dir) in err
    assert f"{a} (content hash {ha})" in err and f"{b} (content hash {hb})" in err
    assert len(list(out.glob("full-*"))) == 1  # nothing was started on b
    # on its own data the run resumes
    assert main(["train", "--variant", "full", "--no-track", "--quiet", "--resume", *tiny(a, out)]) == 0
    assert runs.load_checkpoint(first.run_dir / "checkpoint.pt")["step"] == 4


def test_checkpoint_of_other_data_is_neither_resumed_nor_deleted(tmp_path):
    a = folder_data(tmp_path / "a")
    spec = spec_of(a, tmp_path / "runs")
    res = quiet_train(spec, stop_at=2)
    ckpt = res.run_dir / "checkpoint.pt"
    saved = runs.load_checkpoint(ckpt)
    assert saved["dataset_hash"] == dataset_hash(spec)
    saved["dataset_hash"], saved["spec"]["data"]["root"] = "0123456789abcdef", "/elsewhere"
    torch.save(saved, ckpt)
    for flag, action in (("resume", "resume it"), ("restart", r"delete it \(--restart\)")):
        with pytest.raises(runs.CheckpointMismatchError,
                           match=rf"/elsewhere \(content hash 0123456789abcdef\).*{a} \(content hash "
                                 rf"{dataset_hash(spec)}\).*{action}"):
            quiet_train(spec, **{flag: True})
    assert runs.load_checkpoint(ckpt)["step"] == 2  # still there


def test_batch_larger_than_the_data_fails_at_validation_before_any_work(tmp_path):
    data = folder_data(tmp_path / "d", n_train=3)
    spec = spec_of(data, tmp_path / "runs", "train.batch_size=4")
    with pytest.raises(SpecError, match=r"the dataset has 3 training images, fewer than one batch "
                                        r"\(train.batch_size=4\)"):
        check_data(spec)
    cache = tmp_path / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFGAN_CACHE", str(cache))
        with pytest.raises(SpecError, match="train.batch_size=4"):
            quiet_train(spec)
    assert not (cache / "text_encoders").exists()  # no text encoder was pretrained
    assert not (tmp_path / "runs").exists()  # and no run folder made
    with pytest.raises(SpecError, match=r"train.batch_size=2 x 2 processes"):
        check_data(spec_of(data, tmp_path / "runs", "train.batch_size=2"), world_size=2)
    # the built-in data too, from its spec
    builtin = resolve_spec("full", overrides=["data.n_train=8", "train.batch_size=16"])
    with pytest.raises(SpecError, match=r"has 8 training images, fewer than one batch \(train.batch_size=16\)"):
        check_data(builtin)


def test_other_cheap_checks_at_validation(tmp_path):
    data = folder_data(tmp_path / "d", n_test=2)
    with pytest.raises(SpecError, match=r"eval.metrics\[0\]: 'rprec_damsm' ranks each caption among 99 .* 2 "
                                        r"images x 2 captions"):
        check_data(spec_of(data, tmp_path / "runs", "eval.metrics=[rprec_damsm]"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFGAN_INCEPTION", str(tmp_path / "nowhere.pt"))
        with pytest.warns(UserWarning, match=r"eval.metrics\[0\]: 'fid1k_test_clean' will be skipped: .*Inception"):
            check_data(spec_of(data, tmp_path / "runs", "eval.metrics=[fid1k_test_clean]"))  # as training does


def test_an_empty_dataset_names_the_loader_and_the_layout_it_looks_like(tmp_path):
    birds = tmp_path / "birds"
    make_birds(birds, n_train=3, n_test=2)
    spec = spec_of(birds, tmp_path / "runs")  # data.name=folder on DF-GAN's birds tree
    with pytest.raises(EmptyDatasetError, match=r"folder dataset at .*birds: the train split has no images; this "
                                                r"looks like the birds layout .*: use data.name=birds"):
        quiet_train(spec)
    assert not (tmp_path / "runs").exists()


def test_failed_runs_leave_no_empty_run_folder(tmp_path, monkeypatch):
    import dfgan.train.loop as loop

    spec = spec_of(folder_data(tmp_path / "d"), tmp_path / "runs")

    def broken(*a, **k):
        raise RuntimeError("text encoder unavailable")

    monkeypatch.setattr(loop, "build_conditioning", broken)
    with pytest.raises(RuntimeError, match="text encoder unavailable"):
        quiet_train(spec)
    assert not run_folder(spec).exists()


def test_mlflow_logs_the_real_datasets_numbers(tmp_path):
    data = folder_data(tmp_path / "d", n_train=5, n_test=2, k=3)
    spec = spec_of(data, tmp_path / "runs")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=uri), stop_at=2)
    params = mlflow.tracking.MlflowClient(uri).get_run(res.run_id).data.params
    for field in ("data.n_train", "data.n_test", "data.seed"):  # the built-in data's, meaningless here
        assert field not in params
    assert params["data.n_train_images"] == "5" and params["data.n_test_images"] == "2"
    assert params["data.captions_per_image"] == "3" and params["data.root"] == str(data)
