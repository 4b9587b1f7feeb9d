"""Training loop: determinism, exact resume, NaN stop, checkpoint refusal, MLflow run status."""

from __future__ import annotations

import mlflow
import pytest
import torch

from dfgan import runs
from dfgan.experiment import resolve_spec
from dfgan.run_identity import run_folder, run_hash, run_identity
from dfgan.runs import RunExistsError
from dfgan.tracking import Tracker
from dfgan.train.loop import train
from dfgan.train.step import NonFiniteLossError
from tests.conftest import tiny_overrides


def _spec(tmp_path, variant="full", **extra):
    return resolve_spec(variant, overrides=tiny_overrides(tmp_path, **extra))


def _weights(run_dir):
    return runs.load_checkpoint(run_dir / "checkpoint.pt")["models"]


def _uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_resume_is_exact(tmp_path):
    """N steps straight == N/2 steps, resume, N/2 steps: same weights, bit for bit. Long enough (24 steps of 4
    over 64 images x 10 captions) that captions drawn before the resume are drawn again after it: their cached
    sentence vectors must not depend on the batch they were first encoded in."""
    long = {"train.steps": 24, "train.checkpoint_every": 12, "train.sample_every": 12, "eval.metrics": "[]"}
    a = train(_spec(tmp_path / "a", **long), progress=False, tracker=Tracker(enabled=False))
    half = _spec(tmp_path / "b", **long)
    train(half, progress=False, tracker=Tracker(enabled=False), stop_at=12)
    assert runs.load_checkpoint(run_folder(half) / "checkpoint.pt")["step"] == 12
    b = train(half, progress=False, tracker=Tracker(enabled=False), resume=True)
    assert b.steps == 24
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # and the run actually changed the weights
    c = train(_spec(tmp_path / "c", **{"train.steps": 2}), progress=False, tracker=Tracker(enabled=False))
    assert any(not torch.equal(wa[k], _weights(c.run_dir)[k]) for k in wa)


def test_same_seed_same_result_other_seed_differs(tmp_path):
    a = train(_spec(tmp_path / "a"), progress=False, tracker=Tracker(enabled=False))
    b = train(_spec(tmp_path / "b"), progress=False, tracker=Tracker(enabled=False))
    c = train(_spec(tmp_path / "c", **{"train.seed": 7}), progress=False, tracker=Tracker(enabled=False))
    assert a.last_losses == b.last_losses
    assert a.last_losses != c.last_losses


def test_existing_run_needs_resume_or_restart(tmp_path):
    spec = _spec(tmp_path)
    train(spec, progress=False, tracker=Tracker(enabled=False), stop_at=2)
    with pytest.raises(RunExistsError, match="--resume"):
        train(spec, progress=False, tracker=Tracker(enabled=False))
    res = train(spec, progress=False, tracker=Tracker(enabled=False), restart=True)
    assert res.steps == 4


def test_checkpoint_from_other_spec_refused(tmp_path):
    spec = _spec(tmp_path)
    train(spec, progress=False, tracker=Tracker(enabled=False), stop_at=2)
    saved = runs.load_checkpoint(run_folder(spec) / "checkpoint.pt")
    other = _spec(tmp_path, **{"model.nf": 8})
    with pytest.raises(runs.CheckpointMismatchError, match=r"model\.nf: checkpoint 4, now 8"):
        runs.check_same_experiment(saved, run_hash(other), run_identity(other), "x")


def test_checkpoint_is_weights_only_loadable(tmp_path):
    spec = _spec(tmp_path)
    res = train(spec, progress=False, tracker=Tracker(enabled=False))
    ckpt = torch.load(res.run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["spec_hash"] == run_hash(spec)
    assert not list(res.run_dir.glob(".*tmp"))  # atomic writes leave no temporaries


def test_nan_stops_run_keeps_checkpoint_and_marks_failed(tmp_path, monkeypatch):
    spec = _spec(tmp_path, **{"train.steps": 6})
    from dfgan.nn.heads import OneWayHead

    real_g_loss = OneWayHead.g_loss

    calls = [0]

    def poisoned(self, f_fake, sentence):
        calls[0] += 1
        out = real_g_loss(self, f_fake, sentence)
        return out * float("nan") if calls[0] == 3 else out  # third step's G loss

    monkeypatch.setattr(OneWayHead, "g_loss", poisoned)
    with pytest.raises(NonFiniteLossError) as e:
        train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)))
    assert e.value.step == 2 and e.value.name == "loss_g"
    assert "last good checkpoint (step 2)" in str(e.value)
    assert runs.load_checkpoint(run_folder(spec) / "checkpoint.pt")["step"] == 2
    mlflow.set_tracking_uri(_uri(tmp_path))
    found = mlflow.search_runs(experiment_names=[spec.tracking.experiment])
    assert list(found["status"]) == ["FAILED"]
    assert "non-finite loss at step 2: loss_g" in found["tags.error"].iloc[0]
    assert "metrics.loss_d" in found and found["metrics.loss_d"].notna().all()  # logged losses kept


def test_mlflow_run_layout(tmp_path):
    spec = _spec(tmp_path, variant="no_magp")
    res = train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)))
    client = mlflow.tracking.MlflowClient(_uri(tmp_path))
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    t, p = run.data.tags, run.data.params
    assert t["variant"] == "no_magp" and t["spec_hash"] == run_hash(spec) and t["regulariser"] == "none"
    assert int(t["nop_trainable"]) > 0 and "git_commit" in t
    assert p["model.regulariser.name"] == "none" and p["train.steps"] == "4"
    hist = client.get_metric_history(res.run_id, "loss_d")
    assert [m.step for m in hist] == [1, 2, 3, 4]
    arts = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"spec.yaml", "samples", "checkpoint"} <= arts
    # the checkpoint says where its run was logged, so `dfgan eval` finds it from any out_dir (studies)
    assert runs.load_checkpoint(res.run_dir / "checkpoint.pt")["mlflow_tracking_uri"] == _uri(tmp_path)
    samples = [a.path for a in client.list_artifacts(res.run_id, "samples")]
    assert any(s.endswith(".png") for s in samples)
