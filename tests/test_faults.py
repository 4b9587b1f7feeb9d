"""Faults without loss: a run is FINISHED only when complete, checkpoints hold finite weights, stale runs are swept,
and every CLI path gives a clean error naming the file (bad checkpoints, bad specs, full disks)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import mlflow
import pytest
import torch

from dfgan import runs
from dfgan.cli import main
from dfgan.experiment import resolve_spec
from dfgan.run_identity import run_folder
from dfgan.spec import SpecError
from dfgan.studies import runner
from dfgan.studies.definition import adhoc_definition
from dfgan.studies.runner import load_or_create_study
from dfgan.studies.storage import open_storage
from dfgan.tracking import Tracker, setup
from dfgan.train import loop
from dfgan.train.loop import train
from dfgan.train.step import NonFiniteLossError, Stepper
from dfgan.variants import load_spec
from tests.conftest import tiny_overrides


def _spec(tmp_path, **extra):
    return resolve_spec("full", overrides=tiny_overrides(tmp_path, **extra))


def _uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def _shared(tmp_path_factory):
    """One cache (data, text encoder, attribute classifier) and one freshly migrated MLflow database per module:
    creating them is most of a tiny run's time."""
    root = tmp_path_factory.mktemp("shared")
    mlflow.tracking.MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_experiments()  # creates the tables
    return root


@pytest.fixture(autouse=True)
def _shared_cache_and_db(_shared, tmp_path, monkeypatch):
    monkeypatch.setenv("DFGAN_CACHE", str(_shared / "cache"))
    shutil.copy(_shared / "mlflow.db", tmp_path / "mlflow.db")


def _history(tmp_path, run_id, key):
    return [m.step for m in mlflow.tracking.MlflowClient(_uri(tmp_path)).get_metric_history(run_id, key)]


# ---- a run is FINISHED only when complete ----------------------------------------------------------------------
def test_killed_in_final_evaluation_resume_evaluates(tmp_path, monkeypatch):
    """Killed during the final evaluation: the run is not FINISHED; --resume evaluates, logs it once, and only
    then is the run FINISHED. A resume of the complete run changes nothing (train_seconds included)."""
    spec = _spec(tmp_path)
    real = loop.evaluate_during_training

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "evaluate_during_training", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)))
    folder = run_folder(spec)
    assert not (folder / runs.FINAL_RECORD).exists()
    run_id = runs.read_json(folder / runs.RUN_RECORD)["run_id"]
    client = mlflow.tracking.MlflowClient(_uri(tmp_path))
    assert client.get_run(run_id).info.status == "KILLED"

    monkeypatch.setattr(loop, "evaluate_during_training", real)
    res = train(spec, resume=True, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)))
    assert res.run_id == run_id and "attr_acc" in res.evaluation
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _history(tmp_path, run_id, "attr_acc") == [4] and _history(tmp_path, run_id, "loss_g") == [1, 2, 3, 4]
    seconds = client.get_run(run_id).data.metrics["train_seconds"]

    again = train(spec, resume=True, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)))
    assert again.evaluation == res.evaluation and again.seconds == pytest.approx(seconds)
    assert _history(tmp_path, run_id, "train_seconds") == [4] and _history(tmp_path, run_id, "attr_acc") == [4]
    assert client.get_run(run_id).data.metrics["train_seconds"] == seconds


def test_train_seconds_add_up_and_stop_at_is_not_finished(tmp_path):
    spec = _spec(tmp_path)
    first = train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)), stop_at=2)
    client = mlflow.tracking.MlflowClient(_uri(tmp_path))
    assert client.get_run(first.run_id).info.status == "KILLED"  # stopped early: not complete
    before = runs.load_checkpoint(run_folder(spec) / runs.CHECKPOINT)["train_seconds"]
    assert before > 0
    res = train(spec, resume=True, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)))
    assert res.run_id == first.run_id and res.seconds > before
    assert client.get_run(res.run_id).data.metrics["train_seconds"] == pytest.approx(res.seconds)


def test_stale_running_run_is_marked_killed(tmp_path):
    """A process killed before its first checkpoint left its MLflow run RUNNING: the next start of that run
    folder without --resume marks it KILLED (with --resume it would reopen it)."""
    spec = _spec(tmp_path)
    setup(_uri(tmp_path), spec.tracking.experiment, spec.train.out_dir)
    client = mlflow.tracking.MlflowClient(_uri(tmp_path))
    exp = client.get_experiment_by_name(spec.tracking.experiment)
    stale = client.create_run(exp.experiment_id).info.run_id
    folder = run_folder(spec)
    folder.mkdir(parents=True)
    runs.write_json(folder / runs.RUN_RECORD, {"run_id": stale, "uri": _uri(tmp_path), "experiment": "dfgan"})
    (folder / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    res = train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)))
    assert res.run_id != stale
    assert client.get_run(stale).info.status == "KILLED" and "stopped" in client.get_run(stale).data.tags
    assert not list(folder.glob(runs.TEMP_GLOB))  # the orphan temporary is gone


@pytest.mark.parametrize("where", ["other_experiment", "deleted"])
def test_resume_never_logs_into_another_experiments_or_a_deleted_run(tmp_path, where):
    """A run folder whose record names a run of another experiment (its cell began under another study of the
    cell pool, whose worker was stopped) or a deleted run: resuming it logs to a new run in this experiment, and
    the other study's run, left RUNNING by its stopped worker, is marked KILLED."""
    spec = _spec(tmp_path)
    setup(_uri(tmp_path), spec.tracking.experiment, spec.train.out_dir)
    client = mlflow.tracking.MlflowClient(_uri(tmp_path))
    exp_id = client.create_experiment("another_study") if where == "other_experiment" else \
        client.get_experiment_by_name(spec.tracking.experiment).experiment_id
    earlier = client.create_run(exp_id).info.run_id
    if where == "deleted":
        client.delete_run(earlier)
    folder = run_folder(spec)
    folder.mkdir(parents=True)
    runs.write_json(folder / runs.RUN_RECORD, {"run_id": earlier, "uri": _uri(tmp_path), "experiment": "x"})
    res = train(spec, resume=True, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)))
    new = client.get_run(res.run_id)
    assert res.run_id != earlier and new.info.status == "FINISHED"
    assert new.info.experiment_id == client.get_experiment_by_name(spec.tracking.experiment).experiment_id
    if where == "other_experiment":
        assert client.get_run(earlier).info.status == "KILLED"


def test_run_folder_is_locked(tmp_path):
    spec = _spec(tmp_path)
    with runs.run_lock(run_folder(spec)):
        with pytest.raises(runs.RunBusyError, match="another process"):
            train(spec, progress=False, tracker=Tracker(enabled=False))


# ---- checkpoints only of finite weights --------------------------------------------------------------------------
def _poison_weights_at(monkeypatch, done: int):
    """The update of step ``done`` (1-based) leaves NaN in one generator weight; its losses stay finite."""
    real = Stepper.__call__

    def call(self, step, *args):
        out = real(self, step, *args)
        if step + 1 == done:
            with torch.no_grad():
                next(self.gan.generator.parameters()).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(Stepper, "__call__", call)


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    spec = _spec(tmp_path, **{"train.steps": 6})
    _poison_weights_at(monkeypatch, 4)  # the update of step 4 (a checkpoint step) makes a weight NaN
    with pytest.raises(NonFiniteLossError) as e:
        train(spec, progress=False, tracker=Tracker(enabled=False))
    assert "non-finite weights at step 4" in str(e.value) and "last good checkpoint (step 2)" in str(e.value)
    ckpt = runs.load_checkpoint(run_folder(spec) / runs.CHECKPOINT)
    assert ckpt["step"] == 2 and loop.first_non_finite(ckpt["models"]) is None


def test_nan_before_the_first_checkpoint_names_none(tmp_path, monkeypatch):
    spec = _spec(tmp_path, **{"train.checkpoint_every": 3, "train.steps": 6})
    _poison_weights_at(monkeypatch, 1)
    with pytest.raises(NonFiniteLossError) as e:
        train(spec, progress=False, tracker=Tracker(enabled=False))
    assert "no checkpoint was written yet" in str(e.value) and "checkpoint.pt" not in str(e.value)
    assert not (run_folder(spec) / runs.CHECKPOINT).exists()


# ---- bad specs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, field", [
    ("train.lr_g=.inf", "train.lr_g"), ("train.lr_d=.nan", "train.lr_d"), ("model.regulariser.k=.nan",
    "model.regulariser.k"), ("model.truncation=.inf", "model.truncation"), ("train.steps=true", "train.steps"),
    ("train.betas=[2,-1]", "train.betas"), ("train.betas=[0.5,1.0]", "train.betas"),
    ("tracking.experiment=''", "tracking.experiment"), ("tracking.experiment='  '", "tracking.experiment"),
    ("name=../elsewhere", "name"), ("eval.interval=false", "eval.interval"),
])
def test_bad_spec_values_are_rejected_naming_the_field(override, field):
    with pytest.raises(SpecError, match=rf"{field.replace('.', '[.]')}:"):
        load_spec("full", overrides=[override])


def test_good_values_still_accepted():
    spec = load_spec("full", overrides=["train.betas=[0.5,0.999]", "train.threads=null", "train.steps=0"])
    assert spec.train.betas == (0.5, 0.999) and spec.train.steps == 0


@pytest.mark.parametrize("variant", ["../base", "../variants/full", "/etc/passwd", ".hidden"])
def test_variant_names_are_names(variant):
    with pytest.raises(SpecError, match="not a variant name"):
        load_spec(variant)


def test_run_folder_stays_under_out_dir(tmp_path):
    with pytest.raises(ValueError, match="not a plain name"):
        runs.run_dir(tmp_path, "../outside", "0" * 16)


# ---- clean CLI errors --------------------------------------------------------------------------------------------
def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


@pytest.fixture
def trained(tmp_path):
    spec = _spec(tmp_path)
    train(spec, progress=False, tracker=Tracker(enabled=False))
    return run_folder(spec)


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_bad_checkpoints_give_clean_errors(tmp_path, trained, capsys):
    weights = trained / runs.FINAL_WEIGHTS
    weights.write_bytes(b"")
    rc, err = _cli(capsys, "eval", "--run", str(weights), "--no-track")
    assert rc == 1 and str(weights) in err and "empty" in err and "Traceback" not in err

    good = torch.load(trained / runs.CHECKPOINT, weights_only=True)
    torch.save(good, weights)
    weights.write_bytes(weights.read_bytes()[:2000])  # truncated
    rc, err = _cli(capsys, "eval", "--run", str(weights), "--no-track")
    assert rc == 1 and str(weights) in err and "truncated" in err and "Traceback" not in err

    marker = tmp_path / "payload-ran"
    torch.save({"format": runs.FORMAT, "models": _Hostile(str(marker))}, trained / runs.CHECKPOINT)
    spec_args = tiny_overrides(tmp_path)
    for argv in (["eval", "--run", str(trained), "--no-track"], ["train", "--resume", "--no-track", "--quiet",
                                                                    *spec_args],
                 ["train", "--no-track", "--quiet", *spec_args,
                  f"model.text_encoder.checkpoint={trained / runs.CHECKPOINT}"]):
        rc, err = _cli(capsys, *argv)
        assert rc == 1 and str(trained / runs.CHECKPOINT) in err, (argv, err)
        assert "refused without running it" in err and "weights_only=False" not in err and "Traceback" not in err
    assert not marker.exists()


def test_full_disk_gives_a_clean_error(tmp_path, trained, capsys, monkeypatch):
    """A real file-size limit (EFBIG) at the checkpoint, and a simulated full disk (ENOSPC) at an fsync."""
    spec_args = tiny_overrides(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # 1 MiB; a tiny checkpoint is about 3 MiB
    try:
        rc, err = _cli(capsys, "train", "--quiet", "--no-track", "--restart", *spec_args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert rc == 1 and "File too large" in err and str(trained / runs.CHECKPOINT) in err and "Traceback" not in err
    assert not list(trained.glob(runs.TEMP_GLOB))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    rc, err = _cli(capsys, "train", "--quiet", "--restart", "--tracking-uri", _uri(tmp_path), *spec_args)
    monkeypatch.undo()
    assert rc == 1 and "disk is full" in err and str(trained) in err and "Traceback" not in err
    assert not list(trained.glob(runs.TEMP_GLOB))


def test_unopenable_tracking_store_is_a_clean_error(tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    rc, err = _cli(capsys, "train", "--quiet", "--tracking-uri", f"sqlite:///{blocker}/mlflow.db",
                   *tiny_overrides(tmp_path))
    assert rc == 1 and "TrackingError" in err and str(blocker) in err and "Traceback" not in err


def test_final_record_is_json(trained):
    final = json.loads((trained / runs.FINAL_RECORD).read_text())
    assert final["step"] == 4 and set(final["evaluation"]) >= {"attr_acc", "fd_attr"}


# ---- workers starting together -----------------------------------------------------------------------------------
def _open_both(folder: str, barrier, results) -> None:
    barrier.wait()
    try:
        load_or_create_study("s", open_storage(f"sqlite:///{folder}/optuna.db"), kind="grid", sampler=None,
                             direction="maximize")
        setup(f"sqlite:///{folder}/mlflow.db", "exp", folder)
        results.put("ok")
    except Exception as e:
        results.put(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")


def test_workers_create_a_new_database_together(tmp_path):
    """Four workers open a new Optuna and a new MLflow SQLite database at the same moment: MLflow's migrations
    and Optuna's alembic table are created once (without the lock, 3 of 3 tries here had one crash)."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_both, args=(str(tmp_path), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    got = [results.get(timeout=5) for _ in procs]
    assert got == ["ok"] * 4, got


# ---- studies: done only with the objective; SIGTERM ----------------------------------------------------------------
def test_cell_without_its_objective_metric_is_not_done(tmp_path, monkeypatch):
    plan = runner.plan_study(adhoc_definition("obj", ["full"], 1), overrides=tiny_overrides(tmp_path))

    def no_evaluation(spec, **kw):  # what a resumed run that skipped its final evaluation returned before
        return loop.TrainResult(run_folder(spec), None, spec.train.steps, {"loss_g": 1.0, "loss_d": 1.0})

    monkeypatch.setattr(runner.loop, "train", no_evaluation)
    lines: list[str] = []
    out = runner.run_study(plan, storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri=_uri(tmp_path),
                    echo=lines.append)
    assert out.trained == [] and len(out.failed) == 1 and out.remaining == out.failed
    text = "\n".join(lines)
    assert "without its objective metric 'attr_acc'" in text and "NOT DONE" in text


@pytest.mark.slow
def test_sigterm_marks_the_run_killed(tmp_path):
    env = {**os.environ, "DFGAN_CACHE": os.environ["DFGAN_CACHE"], "OMP_NUM_THREADS": "1"}
    spec_args = tiny_overrides(tmp_path, **{"train.steps": 100000, "train.checkpoint_every": 5})
    proc = subprocess.Popen([sys.executable, "-m", "dfgan", "train", "--quiet", "--tracking-uri", _uri(tmp_path),
                             *spec_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = run_folder(_spec(tmp_path, **{"train.steps": 100000, "train.checkpoint_every": 5}))
    deadline = time.time() + 120
    while not (folder / runs.CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in out and "Traceback" not in out, out
    run_id = runs.read_json(folder / runs.RUN_RECORD)["run_id"]
    assert mlflow.tracking.MlflowClient(_uri(tmp_path)).get_run(run_id).info.status == "KILLED"


def test_a_cache_file_is_built_once_by_processes_that_need_it_together(tmp_path, capsys):
    """Two builders of one cache file (study workers starting together): the second waits for the first,
    says so, then loads what the first wrote instead of building it again."""
    path, built = tmp_path / "cache" / "thing.pt", []
    entered = threading.Event()

    def slow_make():
        entered.set()
        time.sleep(0.5)
        built.append("first")
        return {"x": torch.ones(2)}

    first = threading.Thread(target=runs.load_or_make, args=(path, slow_make))
    first.start()
    entered.wait(10)
    got = runs.load_or_make(path, lambda: built.append("second") or {"x": torch.zeros(2)})
    first.join()
    assert built == ["first"] and torch.equal(got["x"], torch.ones(2))
    assert "waiting for another process that is building cache" in capsys.readouterr().err
