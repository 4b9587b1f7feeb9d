"""``scripts/study_workers.sh``: background study workers on a frozen checkout, stores outside the work tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "study_workers.sh"


def _run(*args: str, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(work), "DFGAN_WORK": str(work / "w")})


def test_dry_run_names_one_commit_the_stores_and_one_thread_workers(tmp_path):
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    r = _run("claims", "--workers", "3", "--dry-run", work=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    code = tmp_path / "w" / f"code-{sha[:12]}"
    assert f"+ git -C {ROOT} worktree add --detach {code} {sha}" in lines
    workers = [x for x in lines if "dfgan ablate --study claims --progress train.threads=1" in x]
    assert len(workers) == 3 and all(f"PYTHONPATH={code} " in x and f"DFGAN_CACHE={tmp_path}/w/cache" in x
                                     and "OMP_NUM_THREADS=1" in x for x in workers)
    assert [x.rsplit(">>", 1)[1].split()[0] for x in workers] == [
        f"{tmp_path}/w/logs/claims-worker{i}.log" for i in (1, 2, 3)]
    assert not (tmp_path / "w").exists()  # a dry run creates nothing
    # before the workers: the finished cells back from the committed export, the queue in plan order
    restore = lines.index(f"+ env -C {ROOT} {ROOT}/.venv/bin/python -m dfgan restore --study claims --storage "
                          f"sqlite:///{tmp_path}/w/runs/studies.db --tracking-uri sqlite:///{tmp_path}/w/runs/mlflow.db")
    assert restore < lines.index(workers[0])
    commits = lines.index(f"+ env -C {ROOT} {ROOT}/.venv/bin/python -m dfgan commits --study claims --tracking-uri "
                          f"sqlite:///{tmp_path}/w/runs/mlflow.db --expect {sha}")  # one study, one commit
    assert restore < commits < lines.index(workers[0])


def test_a_pool_study_first_restores_the_cells_it_shares(tmp_path):
    """`cumulative` reuses `claims` cells (cell_pool paper_claims): on a new machine the claims export is restored
    (without queueing claims' own cells) before its workers start, so those cells are reused, not retrained."""
    assert (ROOT / "reports" / "claims" / "cells.jsonl").is_file()
    r = _run("cumulative", "--dry-run", work=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    claims = lines.index(f"+ env -C {ROOT} {ROOT}/.venv/bin/python -m dfgan restore --study claims --no-queue "
                         f"--storage sqlite:///{tmp_path}/w/runs/studies.db --tracking-uri "
                         f"sqlite:///{tmp_path}/w/runs/mlflow.db")
    workers = [i for i, x in enumerate(lines) if "dfgan ablate --study cumulative" in x]
    commits = [i for i, x in enumerate(lines) if "dfgan commits --study cumulative" in x]
    assert len(workers) == 2 and len(commits) == 1 and claims < commits[0] < workers[0]
    assert not [x for x in lines if "restore --study factorial" in x]  # not in the pool
    r = _run("factorial", "--dry-run", work=tmp_path)  # no pool: no other study restored
    assert r.returncode == 0 and " restore --study claims" not in r.stdout


def test_bad_arguments_say_what_is_wrong(tmp_path):
    r = _run("claims", "--frobnicate", work=tmp_path)
    assert r.returncode == 2 and "unknown argument '--frobnicate'" in r.stderr
    assert _run(work=tmp_path).returncode == 2
    r = _run("claims", "--commit", "no-such-rev", "--dry-run", work=tmp_path)
    assert r.returncode != 0
    r = _run("no_such_study", "--dry-run", work=tmp_path)
    assert r.returncode != 0 and "no study file 'no_such_study'" in r.stderr and "claims" in r.stderr
    assert "dfgan ablate" not in r.stdout


def test_benchmarks_mode_measures_the_cost_side_on_the_frozen_checkout_and_starts_no_worker(tmp_path):
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    r = _run("claims", "--benchmarks", "--dry-run", work=tmp_path)
    assert r.returncode == 0, r.stderr
    code = tmp_path / "w" / f"code-{sha[:12]}"
    bench = [x for x in r.stdout.splitlines() if " -m pytest benchmarks/test_train_variants.py" in x]
    assert len(bench) == 1 and f"env -C {code} PYTHONPATH={code} " in bench[0]
    assert f"--benchmark-json={ROOT}/reports/claims/benchmarks.json" in bench[0]
    assert "dfgan ablate" not in r.stdout and "nohup" not in r.stdout


def test_the_study_footing_goes_into_the_cache_and_a_different_file_stops_the_script(tmp_path):
    """reports/footing holds the networks the claims study's cells record (checked against its export), the
    script puts them in the cache, and a cache file another machine rebuilt differently stops it."""
    import csv
    import hashlib
    import json
    import sys

    from dfgan.fingerprint import weights_sha256
    from dfgan.text.encoders import load_damsm_checkpoint

    footing = ROOT / "reports" / "footing"
    rels = [line.split()[1] for line in (footing / "SHA256SUMS").read_text().splitlines() if line.strip()]
    csv.field_size_limit(sys.maxsize)
    with (ROOT / "reports" / "claims" / "runs.csv").open(newline="") as f:
        runs = list(csv.DictReader(f))
    enc = next(footing / r for r in rels if r.endswith("27.pth"))
    meta = json.loads(enc.with_suffix(".json").read_text())
    net = load_damsm_checkpoint(enc, meta["n_words"], device="cpu", embedding_dim=meta["embedding_dim"])
    assert {r["tags.text_encoder_sha256"] for r in runs} == {weights_sha256(net)}
    cls = next(footing / r for r in rels if r.startswith("attr_classifier/"))
    assert {json.loads(r["tags.protocol.attr_acc"])["weights_sha256"] for r in runs} == \
        {hashlib.sha256(cls.read_bytes()).hexdigest()}

    r = _run("claims", "--dry-run", work=tmp_path)
    assert r.returncode == 0, r.stderr
    for rel in rels:
        assert f"+ cp {footing}/{rel} {tmp_path}/w/cache/{rel}" in r.stdout
    bad = tmp_path / "w" / "cache" / rels[0]
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"rebuilt elsewhere")
    r = _run("claims", "--dry-run", work=tmp_path)
    assert r.returncode == 1 and f"{bad} (sha256 " in r.stderr and f"is not the study's {rels[0]}" in r.stderr
    assert "nohup" not in r.stdout
