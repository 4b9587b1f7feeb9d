"""Provenance that cannot drift: the commit (and diff) of the code a process imported, recorded per run; the
weights hash of a network."""

from __future__ import annotations

import subprocess

import mlflow
import pytest
import torch

from dfgan import fingerprint, tracking
from dfgan.experiment import resolve_spec
from dfgan.fingerprint import CodeVersion, file_commit, read_code_version, weights_sha256


def _git(root, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def test_code_version_of_a_checkout(tmp_path):
    assert read_code_version(tmp_path).commit == "unknown"  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-qm", "one")
    clean = read_code_version(tmp_path)
    assert len(clean.commit) == 40 and not clean.dirty and clean.label == clean.commit
    (tmp_path / "a.py").write_text("x = 2\n")
    dirty = read_code_version(tmp_path)
    assert dirty.commit == clean.commit and dirty.label == clean.commit + "-dirty"
    assert "-x = 1" in dirty.diff and "+x = 2" in dirty.diff and len(dirty.diff_sha256) == 64


def test_file_commit_names_the_last_change_of_one_file(tmp_path):
    assert file_commit(tmp_path / "a.txt", tmp_path) == (None, False)  # not a checkout
    _git(tmp_path, "init", "-q")
    for name, text in (("a.txt", "1"), ("b.txt", "1")):
        (tmp_path / name).write_text(text)
        _git(tmp_path, "add", name)
        _git(tmp_path, "commit", "-qm", name)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD~1"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    assert file_commit(tmp_path / "a.txt", tmp_path) == (head, False)  # a.txt's commit, not HEAD's
    (tmp_path / "a.txt").write_text("2")
    assert file_commit(tmp_path / "a.txt", tmp_path) == (head, True)
    (tmp_path / "c.txt").write_text("new")
    assert file_commit(tmp_path / "c.txt", tmp_path)[0] is None  # untracked
    assert file_commit(tmp_path.parent / "elsewhere.txt", tmp_path) == (None, False)  # outside the checkout


def test_runs_record_the_code_imported_not_head_now(tmp_path, monkeypatch):
    """The commit is the one read at import (HEAD may have moved since); a dirty one keeps its diff as an
    artifact of every run."""
    imported = CodeVersion("1" * 40, "diff --git a/x b/x\n-old\n+new\n")
    monkeypatch.setattr(fingerprint, "CODE", imported)
    assert tracking.git_commit() == "1" * 40 + "-dirty"  # not what `git rev-parse HEAD` says now
    spec = resolve_spec("full", overrides=[f"train.out_dir={tmp_path}"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.Tracker.for_spec(spec, uri=uri) as tr:
        run_id = tr.start(spec, "h", {})
    run = mlflow.tracking.MlflowClient(uri).get_run(run_id)
    assert run.data.tags["git_commit"] == imported.label
    assert run.data.tags["code_diff_sha256"] == imported.diff_sha256
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"code/{imported.diff_sha256}.diff",
                                               tracking_uri=uri, dst_path=str(tmp_path / "dl"))
    assert open(path).read() == imported.diff


def test_weights_hash_follows_the_weights():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    h = weights_sha256(a)
    assert h == weights_sha256(a) and len(h) == 64
    with torch.no_grad():
        a[0].weight[0, 0] += 1e-3
    assert weights_sha256(a) != h
    assert weights_sha256(a.to(torch.bfloat16)) != weights_sha256(a.float())  # dtypes are part of it
    assert weights_sha256(object()) is None


def test_git_is_not_asked_when_a_run_starts(monkeypatch):
    """git_commit() is the import-time reading: no git call (which would see today's HEAD) when a cell starts."""

    def no_git(*a, **k):
        raise AssertionError("git called after import")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert tracking.git_commit() == fingerprint.CODE.label
    assert tracking.code_tags()["git_commit"] == fingerprint.CODE.label
    with pytest.raises(AssertionError, match="after import"):  # the patch is live
        read_code_version()
