"""Which experiment a run is: the spec's experiment fields plus what only the data knows (``run_identity``), its
16-hex-digit hash (``run_hash``: names the run folder, the study cell and the checkpoints), and the refusals
that keep a checkpoint from being resumed on other data than it was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dfgan import runs
from dfgan import spec as spec_io
from dfgan.data import builtin
from dfgan.data.identity import data_summary
from dfgan.spec import BUILTIN_ONLY_DATA_FIELDS, Spec


def dataset_hash(spec: Spec) -> str:
    """The content hash of the data ``spec`` reads (its datasets' ``content_hash``), without building a dataset:
    the built-in data's from its generation parameters, a real dataset's from its loader's scan
    (``dfgan.data.identity.data_summary``: no image decoded, one scan per process)."""
    if spec.data.name == "builtin":
        return builtin.content_hash_of(builtin.generation_params(spec.data))
    return data_summary(spec.data).content_hash


def run_identity(spec: Spec) -> dict[str, Any]:
    """What makes two runs the same experiment: the spec's experiment fields (``Spec.experiment_dict``) plus the
    data's own identity. For the built-in data that is its ``GENERATOR_VERSION`` (a new version of the generated
    data is a new experiment, so a study never reuses cells trained on older data). For a real dataset it is
    its content hash (``dataset_hash``: loader, image size, image limit, vocabulary, captions, each image file's
    name, size and modification time), so the same spec on two folders is two runs, in two run folders and two
    study cells, while ``data.root`` itself is not part of it (a moved folder is the same data); the built-in
    data's own fields (``BUILTIN_ONLY_DATA_FIELDS``) are left out. Raises the loader's error when the data is
    not there: a run on real data has no identity without it."""
    d = spec.experiment_dict()
    if spec.data.name == "builtin":
        d["data"]["generator_version"] = builtin.GENERATOR_VERSION
    else:
        for k in BUILTIN_ONLY_DATA_FIELDS:
            d["data"].pop(k)
        d["data"]["content_hash"] = dataset_hash(spec)
    return d


def run_hash(spec: Spec) -> str:
    """The run's 16-hex-digit identity: names its folder, its study cell and its checkpoints."""
    return spec_io.hash_identity(run_identity(spec))


def run_folder(spec: Spec) -> Path:
    return runs.run_dir(spec.train.out_dir, spec.name, run_hash(spec))


def data_label(data: dict[str, Any], content_hash: str | None) -> str:
    """``"folder data at /x (content hash ...)"`` from a spec's ``data`` section, for messages."""
    where = f" at {data.get('root')}" if data.get("root") else ""
    return f"{data.get('name')} data{where} (content hash {content_hash or 'not recorded'})"


def check_same_data(saved: dict[str, Any], spec: Spec, path, action: str) -> None:
    """Refuse (``CheckpointMismatchError``) to ``action`` (e.g. "resume it") a checkpoint written on other data
    than ``spec`` reads, naming both datasets. A checkpoint without a recorded dataset hash passes."""
    recorded, now = saved.get("dataset_hash"), dataset_hash(spec)
    if not recorded or recorded == now:
        return
    then = data_label((saved.get("spec") or {}).get("data") or {}, recorded)
    raise runs.CheckpointMismatchError(
        f"checkpoint {path} was trained on {then}; this spec reads {data_label(spec.to_dict()['data'], now)}: "
        f"refusing to {action}")


def refuse_resume_on_other_data(spec: Spec) -> None:
    """``--resume`` when the run folder of ``spec`` holds no checkpoint but a run of the same spec on other data
    does (same experiment fields, other data identity: another folder, or the data changed): refuse, naming both
    datasets, instead of silently starting a new run. Read from the run folders' ``spec.yaml``."""
    here = run_folder(spec)
    if (here / runs.CHECKPOINT).exists():
        return
    mine = spec.experiment_dict()
    for other in sorted(Path(spec.train.out_dir).glob(f"{spec.name}-*")):
        if other == here or not (other / runs.CHECKPOINT).is_file() or not (other / "spec.yaml").is_file():
            continue
        try:
            theirs = spec_io.from_dict(yaml.safe_load((other / "spec.yaml").read_text()))
        except (OSError, ValueError, yaml.YAMLError):
            continue  # not a run of this version's specs
        if theirs.experiment_dict() != mine:
            continue
        saved = runs.load_checkpoint(other / runs.CHECKPOINT)
        now = data_label(spec.to_dict()["data"], dataset_hash(spec))
        then = data_label(theirs.to_dict()["data"], saved.get("dataset_hash"))
        raise runs.CheckpointMismatchError(
            f"--resume: {here} holds no checkpoint of this spec on {now}, but {other} holds one (step "
            f"{saved.get('step')}) of the same spec on {then}. To continue that run, point data.root at its data; "
            "to train on this data from the start, drop --resume (if it is the same data copied elsewhere, its "
            "file sizes or times changed: copy with times kept, e.g. cp -p or rsync -a)")
