"""Scan a dataset for every problem before training (``dfgan data check``).

A loader stops at the first fatal problem of the split it opens; the scan goes on: it reads the dataset's
index files with the loader's own ``scan`` (so it sees exactly what training would see), then decodes every
image of every split (in threads, with a progress bar), and optionally compares the vocabulary with a
text-encoder checkpoint. The report counts the problems of each kind and lists the first paths of each.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfgan.data.errors import (
    KINDS,
    DataError,
    DataFormatError,
    MissingDataError,
    Problems,
    VocabularyMismatchError,
)
from dfgan.data.file_dataset import SPLITS
from dfgan.data.identity import scanners, vocab_hash
from dfgan.data.images import bird_crop_box, load_size, read_rgb
from dfgan.data.layouts import layout_hint
from dfgan.nn.text_encoders import TextEncoderFileError, damsm_sizes, read_damsm_state

FIRST_PATHS = 3  # paths listed per problem kind in the report


# ---- text encoder vocabulary ------------------------------------------------------------------------------------
def text_encoder_vocab_size(path) -> int:
    """Rows of the word embedding (``encoder.weight``) of a DAMSM text-encoder checkpoint (official or ours)."""
    try:
        state = read_damsm_state(path)
    except FileNotFoundError as e:
        raise MissingDataError(str(e), str(path)) from None
    except TextEncoderFileError as e:
        raise DataFormatError(str(e), str(path)) from None
    return damsm_sizes(state)[0]


def text_encoder_record(path) -> dict[str, Any] | None:
    """What a text encoder's sidecar (``<name>.json`` beside the weights, written by ``dfgan pretrain-text`` and
    by the pretrained-encoder cache) records: ``vocab_hash``, ``n_words``, ``dataset``, ``dataset_hash``, ...,
    plus ``sidecar`` (its path); None without a readable one (an official DAMSM checkpoint has none)."""
    side = Path(path).expanduser().with_suffix(".json")
    try:
        rec = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return {**rec, "sidecar": str(side)} if isinstance(rec, dict) else None


def size_only_note(path) -> str | None:
    """The note that only the vocabulary size of text encoder ``path`` can be checked (no recorded vocabulary
    hash), or None when its sidecar records one."""
    rec = text_encoder_record(path)
    if rec and rec.get("vocab_hash"):
        return None
    why = f"its sidecar {rec['sidecar']} records no vocabulary hash" if rec else \
        f"it has no sidecar {Path(path).expanduser().with_suffix('.json')} recording its vocabulary (as an official " \
        "DAMSM checkpoint)"
    return (f"text encoder {path}: only its vocabulary size could be checked, {why}; make sure it was trained on "
            "this dataset's vocabulary (the captions_DAMSM.pickle it shipped with)")


def check_text_encoder_vocab(path, vocab) -> int:
    """Raise ``VocabularyMismatchError`` naming the checkpoint unless it was made for ``vocab``: the same size
    (embedding rows), and, when its sidecar records one (``text_encoder_record``), the same vocabulary hash
    (``dfgan.data.identity.vocab_hash``: the words in id order), naming both hashes. Returns the size."""
    rows = text_encoder_vocab_size(path)
    if rows != len(vocab):
        raise VocabularyMismatchError(
            f"text encoder checkpoint {path} embeds {rows} words but the dataset vocabulary has {len(vocab)}: "
            "its word ids would mean other words. Use the captions_DAMSM.pickle the checkpoint was trained with "
            "(the official CUB encoder needs the shipped birds pickle, 5,450 words), or pretrain one on this data "
            "with `dfgan pretrain-text`", str(path))
    rec = text_encoder_record(path) or {}
    recorded, mine = rec.get("vocab_hash"), vocab_hash(vocab)
    if recorded and recorded != mine:
        origin = "".join(f", {k} {rec[k]}" for k in ("dataset", "data_root", "dataset_hash") if rec.get(k))
        raise VocabularyMismatchError(
            f"text encoder checkpoint {path} was trained on another vocabulary of the same size ({rows} words): "
            f"vocabulary hash {recorded} ({rec['sidecar']}{origin}), and this dataset's vocabulary hash is {mine}: "
            "its word ids would mean other words. Use the text encoder trained on this data, or pretrain one with "
            "`dfgan pretrain-text`", str(path))
    return rows


# ---- the scan -----------------------------------------------------------------------------------------------------
@dataclass
class CheckReport:
    name: str
    root: str
    imsize: int
    problems: Problems
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_fatal(self) -> int:
        return len(self.problems.fatal())

    @property
    def ok(self) -> bool:
        return self.n_fatal == 0

    def rows(self) -> list[dict[str, Any]]:
        """One row per problem kind found: kind, severity, count, description, the first paths."""
        out = []
        for kind, n in sorted(self.problems.counts().items(), key=lambda kv: (KINDS[kv[0]].error is None, kv[0])):
            items = self.problems.of(kind)
            out.append({"kind": kind, "severity": "FATAL" if KINDS[kind].error else "warning", "count": n,
                        "description": KINDS[kind].description,
                        "first": [str(p) + (f" [{p.split}]" if p.split else "") for p in items[:FIRST_PATHS]]})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.name, "root": self.root, "imsize": self.imsize, "ok": self.ok,
                "fatal": self.n_fatal, "summary": self.summary, "notes": self.notes, "problems": self.rows()}

    def format(self) -> str:
        s = self.summary
        lines = [f"{self.name} dataset at {self.root}"]
        if s.get("splits"):
            parts = [f"{k} {v} images" for k, v in s["splits"].items()]
            lines.append("  " + ", ".join(parts) + f"; K = {s.get('captions_per_image')} captions per image; "
                         f"vocabulary {s.get('vocab_size')} words; content hash {s.get('content_hash')}")
        lines += [f"  note: {n}" for n in self.notes]
        rows = self.rows()
        if not rows:
            lines.append("no problems found")
            return "\n".join(lines)
        lines.append(f"{'problem':22s} {'severity':8s} {'count':>7s}  first paths")
        for r in rows:
            lines.append(f"{r['kind']:22s} {r['severity']:8s} {r['count']:>7d}  {r['description']}")
            lines += [f"{'':40s}{p}" for p in r["first"]]
            if r["count"] > len(r["first"]):
                lines.append(f"{'':40s}... and {r['count'] - len(r['first'])} more")
        if self.ok:
            lines.append("no fatal problem: the dataset can be trained on (warnings are handled as described)")
        else:
            lines.append(f"{self.n_fatal} fatal problem(s): training would stop at the first one; fix them first")
        return "\n".join(lines)


def _check_image(path: Path, box, min_side: int) -> list[tuple[str, str]]:
    """Decode one image: [(problem kind, detail)]."""
    if not path.is_file():
        return []  # reported by the scan as missing_image
    try:
        img, converted = read_rgb(path)
    except DataError as e:
        return [("corrupt_image", str(e).split(": ", 2)[-1])]
    out = []
    if converted is not None:
        out.append(("converted_image", f"mode {converted}"))
    w, h = img.size
    if box is not None:
        x1, y1, x2, y2 = bird_crop_box(box, w, h)
        w, h = x2 - x1, y2 - y1
    if min(w, h) < min_side:
        out.append(("small_image", f"{w}x{h}{' after the box crop' if box is not None else ''}, "
                                   f"shorter side < {min_side}"))
    return out


def check_dataset(name: str, root, *, imsize: int = 256, max_images: int | None = None, text_encoder=None,
                  progress: bool = True, workers: int | None = None) -> CheckReport:
    """Every problem of dataset ``name`` (birds, coco, coco_json, folder) at ``root``: index files, every image
    of every split decoded, and (``text_encoder``) the vocabulary against a checkpoint. Never raises for bad
    data: the problems are in the report (``report.ok`` is False when any is fatal)."""
    scans = scanners()
    if name not in scans:
        raise ValueError(f"cannot check dataset {name!r}: checkable datasets are {', '.join(scans)} "
                         "(builtin is generated, not read)")
    try:
        sc = scans[name](root, imsize=imsize, max_images=max_images)
    except (MissingDataError, DataError) as e:  # no folder to scan at all
        problems = Problems()
        problems.add("missing_path" if isinstance(e, MissingDataError) else "bad_format", e.path or root, str(e))
        return CheckReport(name, str(root), imsize, problems)
    problems = sc.problems
    notes = list(sc.notes)
    train, test = sc.splits.get("train"), sc.splits.get("test")
    if train is not None and train.present and len(train) == 0:
        problems.add("empty_dataset", sc.root, f"the {name} loader found no train images" + layout_hint(sc.root, name),
                     "train")
    elif test is not None and test.present and len(test) == 0:
        problems.add("no_test_images", sc.root, f"the {name} loader found no test images", "test")
    jobs = [(s, p, (idx.boxes[i] if idx.boxes else None)) for s in SPLITS
            if (idx := sc.splits.get(s)) is not None and idx.present for i, p in enumerate(idx.images)]
    min_side = load_size(imsize)
    from tqdm.auto import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(jobs), desc=f"checking {name} images", unit="img", disable=not progress,
                 dynamic_ncols=True) as bar:
        results = pool.map(lambda j: _check_image(j[1], j[2], min_side), jobs)
        for (split, path, _), found in zip(jobs, results, strict=True):
            for kind, detail in found:
                problems.add(kind, path, detail, split)
            bar.update(1)
    vocab_size = len(sc.vocab)
    if text_encoder:
        try:
            check_text_encoder_vocab(text_encoder, sc.vocab)
            if (note := size_only_note(text_encoder)) is not None:
                notes.append(note)
        except MissingDataError as e:
            problems.add("missing_path", e.path, "text encoder checkpoint")
        except VocabularyMismatchError as e:
            rows = text_encoder_vocab_size(text_encoder)
            recorded = (text_encoder_record(text_encoder) or {}).get("vocab_hash")
            problems.add("vocab_mismatch", e.path, f"{rows} words in the checkpoint, {vocab_size} in the dataset "
                         "vocabulary" if rows != vocab_size else f"same size ({rows} words), other words: vocabulary "
                         f"hash {recorded} recorded with the checkpoint, {vocab_hash(sc.vocab)} of the dataset")
        except DataError as e:
            problems.add("bad_format", e.path, str(e))
    summary = {"splits": {s: len(idx) for s, idx in sc.splits.items() if idx.present},
               "captions_per_image": sc.captions_per_image, "vocab_size": vocab_size,
               "content_hash": sc.content_hash, "images_decoded": len(jobs)}
    return CheckReport(name, str(sc.root), imsize, problems, summary, notes)
