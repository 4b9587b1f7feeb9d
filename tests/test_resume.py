"""Exact resume: what a resumed run rebuilds (cached sentence vectors, batches, metric history) is what an
uninterrupted run had."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from dfgan.experiment import build_dataset, resolve_spec
from dfgan.nn.text_encoders import DAMSMTextEncoder
from dfgan.run_identity import run_folder
from dfgan.runs import FINAL_RECORD, FINAL_WEIGHTS, KILL_ENV, TEMP_GLOB
from dfgan.text.encoders import TextConditioner
from dfgan.train.batches import BatchPlan, collate
from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def _batch(ds, keys):
    return collate([ds[k] for k in keys])


def test_sentence_vectors_do_not_depend_on_the_batch(tmp_path):
    """A caption's cached vector is the same whichever batch first drew it, and lazily or all at once."""
    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path))
    ds = build_dataset(spec, "train")
    torch.manual_seed(0)
    enc = DAMSMTextEncoder(len(ds.vocab)).eval().requires_grad_(False)
    plan = BatchPlan(len(ds), ds.captions_per_image, 8, seed=3)
    first, later = _batch(ds, plan.keys(0)), _batch(ds, plan.keys(0)[2:5] + plan.keys(1)[:5])
    a = TextConditioner(enc, "cpu", need_words=False).bind(ds)
    a(first)  # caches these captions from their own batch
    b = TextConditioner(enc, "cpu", need_words=False).bind(ds)  # a resumed run: empty cache
    c = TextConditioner(enc, "cpu", need_words=False).bind(ds)
    c.fill()
    sa, sb, sc = a(later)[0], b(later)[0], c(later)[0]
    assert torch.equal(sa, sb) and torch.equal(sa, sc)
    # and the vectors are the encoder's (not a stale or zero cache)
    plain = TextConditioner(enc, "cpu", need_words=False, cache=False)(later)[0]
    torch.testing.assert_close(sa, plain, rtol=1e-4, atol=1e-5)


# ---- killed anywhere, resumed: the same run ----------------------------------------------------------------------
KILL_STEPS = 60
KILL_SPEC = ["model.nf=4", "data.imsize=32", "data.n_train=64", "data.n_test=16", "model.text_encoder.pretrain_steps=2",
             "model.text_encoder.pretrain_batch_size=8", "train.batch_size=4", f"train.steps={KILL_STEPS}",
             "train.log_every=1", "train.sample_every=30", "train.checkpoint_every=10", "eval.interval=20",
             "eval.n_images=32", "train.threads=1"]
# where each successive process is killed (DFGAN_TEST_KILL_AT, see dfgan.runs.kill_point; "timed": SIGKILL from
# here a random 0-0.2 s after the checkpoint (training) or the final weights (completion) next change on disk)
KILL_POINTS = [
    "step:4",                   # before the first checkpoint: the MLflow run is reopened, training restarts at 0
    "write:checkpoint.pt:1",    # inside the first checkpoint write: a temporary left, no checkpoint
    "step:17",                  # between checkpoints: steps 11-17 recomputed, not logged twice
    "write:checkpoint.pt:2",    # resumed at 10: inside the write of step 30's checkpoint (after step 20's)
    "step:26",                  # after the periodic evaluation of step 20 and its checkpoint
    "timed:checkpoint.pt",      # anywhere in training
    "write:final_weights.pt:1", # inside the final weights write
    "final-eval",               # after the final evaluation is logged, before final.json
    "write:final.json:1",       # inside the completion record's write
    "timed:final_weights.pt",   # anywhere in the completion (or after it)
]
PROCESS_TIMEOUT_S = 120
# The killed processes are forks of one interpreter that has imported dfgan, torch and MLflow and run nothing
# (importing them is most of a `python -m dfgan train` start here, ~6 of ~9 CPU seconds); each fork runs exactly
# what `python -m dfgan train ...` runs after its imports, `dfgan.cli.main(argv)`, and is SIGKILLed like one.
# The uninterrupted reference and the final resume are real `python -m dfgan train` processes.
FORK_SERVER = r"""
import json, os, sys, traceback
import mlflow, mlflow.tracking, mlflow.store.tracking.sqlalchemy_store  # noqa: F401
import dfgan.cli, dfgan.train.loop, dfgan.metrics.evaluate, dfgan.metrics.attributes  # noqa: F401
dfgan.cli.build_parser()  # imports the command modules
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1), os.dup2(fd, 2)
            os.environ.pop(req["kill_env"], None)
            os.environ.update(req["env"])
            rc = dfgan.cli.main(req["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            rc = 1
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(int(rc or 0))
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"pid": pid, "rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", KILL_ENV)}
    env.update({"DFGAN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    return env


def _train_argv(tmp_path, out_dir, experiment, resume=True) -> list[str]:
    return ["train", "--quiet", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            *(["--resume"] if resume else []), *KILL_SPEC, f"train.out_dir={out_dir}",
            f"tracking.experiment={experiment}"]


def _dfgan_train(tmp_path, out_dir, experiment, resume=True) -> tuple[int, str]:
    """A real `python -m dfgan train` process: (return code, output)."""
    proc = subprocess.run([sys.executable, "-m", "dfgan", *_train_argv(tmp_path, out_dir, experiment, resume)],
                          env=_env(tmp_path), capture_output=True, text=True, cwd=tmp_path,
                          timeout=PROCESS_TIMEOUT_S * 2)
    return proc.returncode, proc.stdout + proc.stderr


class _Forks:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], env=_env(tmp_path), cwd=tmp_path,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline()).get("ready")

    def train(self, out_dir, experiment, kill_at: str | None, log: Path, watch: Path | None = None, rng=None):
        """One `dfgan train --resume` in a fork, killed at ``kill_at`` (``DFGAN_TEST_KILL_AT``), or, with
        ``watch``, by SIGKILL from here a random 0-0.2 s after that file next changes: its return code."""
        before = watch.stat().st_mtime_ns if watch is not None and watch.exists() else None
        req = {"argv": _train_argv(self.tmp, out_dir, experiment), "log": str(log), "kill_env": KILL_ENV,
               "env": {KILL_ENV: kill_at} if kill_at else {}}
        self.proc.stdin.write(json.dumps(req) + "\n"), self.proc.stdin.flush()
        pid = json.loads(self.proc.stdout.readline())["pid"]
        if watch is not None:
            deadline = time.time() + PROCESS_TIMEOUT_S
            while time.time() < deadline:
                if watch.exists() and watch.stat().st_mtime_ns != before:
                    time.sleep(float(rng.uniform(0, 0.2)))
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    break
                if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                    break
                time.sleep(0.005)
        return json.loads(self.proc.stdout.readline())["rc"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_killed_anywhere_resumes_to_the_same_run(tmp_path):
    """`dfgan train` SIGKILLed at ten points (inside checkpoint writes and the final evaluation included), resumed
    each time: bit-identical weights and final evaluation, one MLflow run, every metric at every step once."""
    rng = np.random.default_rng(18)
    rc, out = _dfgan_train(tmp_path, tmp_path / "ref", "ref", resume=False)
    assert rc == 0, out
    spec = resolve_spec("full", overrides=[*KILL_SPEC, f"train.out_dir={tmp_path / 'killed'}"])
    folder = run_folder(spec)
    forks = _Forks(tmp_path)
    try:
        for n, point in enumerate(KILL_POINTS):
            log = tmp_path / f"killed-{n}.log"
            timed = point.startswith("timed:")
            rc = forks.train(tmp_path / "killed", "killed", None if timed else point, log,
                             watch=folder / point.split(":", 1)[1] if timed else None, rng=rng)
            may_finish = point == KILL_POINTS[-1]  # a timed kill after the completion finds the process gone
            assert rc == -signal.SIGKILL or (may_finish and rc == 0), (point, rc, log.read_text()[-3000:])
    finally:
        forks.close()
    rc, out = _dfgan_train(tmp_path, tmp_path / "killed", "killed")
    assert rc == 0, out

    ref_folder = run_folder(spec.model_copy(update={"train": spec.train.model_copy(
        update={"out_dir": str(tmp_path / "ref")})}))
    wa = torch.load(ref_folder / FINAL_WEIGHTS, weights_only=True)["models"]
    wb = torch.load(folder / FINAL_WEIGHTS, weights_only=True)["models"]
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"
    fa, fb = (json.loads((f / FINAL_RECORD).read_text()) for f in (ref_folder, folder))
    assert fa["evaluation"] == fb["evaluation"] and "attr_acc" in fb["evaluation"]
    assert not list(folder.glob(TEMP_GLOB)) and not list(folder.glob(f"*/{TEMP_GLOB}"))

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run_a,), found = (client.search_runs([client.get_experiment_by_name(e).experiment_id]) for e in ("ref", "killed"))
    assert [r.info.status for r in found] == ["FINISHED"], "one MLflow run, finished"
    run_b = found[0]
    pretraining = {k for k in run_a.data.metrics if k.startswith("text_") and not k.startswith("text_probe")}
    # phase_seconds.* time the phases of the session that logged them (dfgan.profile): a resumed session that
    # never trained logs no training phases; they are not part of the run's history
    session = {k for k in set(run_a.data.metrics) | set(run_b.data.metrics) if k.startswith("phase_seconds.")}
    assert set(run_a.data.metrics) - pretraining - session == set(run_b.data.metrics) - session
    for key in sorted(set(run_b.data.metrics) - session):
        ha, hb = (client.get_metric_history(r.info.run_id, key) for r in (run_a, run_b))
        steps_b = [m.step for m in hb]
        assert len(steps_b) == len(set(steps_b)), f"{key}: steps logged twice: {sorted(steps_b)}"
        assert sorted(steps_b) == sorted(m.step for m in ha), key
        if key not in ("steps_per_sec", "images_per_sec", "train_seconds"):
            assert sorted((m.step, m.value) for m in ha) == sorted((m.step, m.value) for m in hb), key
