"""Which data a spec reads, without decoding an image: the loader's scan summarised (content hash, images per
split, captions per image, vocabulary and its hash, the problems found), and the hash of a vocabulary.

``data_summary(data_spec)`` runs the loader's own ``scan`` (the one its datasets and ``dfgan data check`` use,
so the content hash is exactly the dataset's ``content_hash``). A scan reads the index and caption files and
stats every image; measured on a CUB-sized DF-GAN tree (11,788 images, captions pickle) it takes 3.6-4.6 s on
this machine's CPU, on a COCO-sized one (123,287 images) 18-25 s. So one process scans a dataset once: the
summary is kept per (loader, folder, image size, image limit) while the folder's own entries (names, sizes,
modification times of ``root/*``) are unchanged. A change deeper down (an image rewritten in place) is seen by
the next process, or by ``forget`` (training compares the dataset it builds with the summary's hash, so a
stale summary stops a run instead of misnaming it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfgan.data import coco_json, dfgan_layout, folder
from dfgan.data.errors import Problems
from dfgan.data.file_dataset import SPLITS, Scan, require_root
from dfgan.data.vocab import Vocab


def vocab_hash(vocab: Vocab) -> str:
    """16 hex digits identifying a vocabulary: its words in id order (two vocabularies of the same size but other
    words, or the same words under other ids, differ)."""
    words = [vocab.ixtoword[i] for i in range(len(vocab))]
    return hashlib.sha256(json.dumps(words, separators=(",", ":")).encode()).hexdigest()[:16]


def scanners() -> dict[str, Callable[..., Scan]]:
    """The scan of every dataset read from disk, by loader name (``builtin`` is generated, not read)."""
    return {
        "birds": lambda root, **kw: dfgan_layout.scan("birds", root, **kw),
        "coco": lambda root, **kw: dfgan_layout.scan("coco", root, **kw),
        "coco_json": coco_json.scan,
        "folder": folder.scan,
    }


@dataclass(frozen=True)
class DataSummary:
    """A scanned dataset: ``splits`` = images per split present, the vocabulary, the problems the scan found."""

    name: str
    root: Path
    content_hash: str
    splits: dict[str, int]
    captions_per_image: int
    vocab: Vocab
    problems: Problems

    @property
    def vocab_hash(self) -> str:
        return vocab_hash(self.vocab)

    @property
    def n_train(self) -> int:
        return self.splits.get("train", 0)

    def label(self) -> str:
        return f"{self.name} data at {self.root} (content hash {self.content_hash})"


_SUMMARIES: dict[tuple, tuple[tuple, DataSummary]] = {}


def _stamp(root: Path) -> tuple:
    """The folder's own entries: name, size and modification time of each (cheap; nothing below is read)."""
    st = root.stat()
    entries = []
    with os.scandir(root) as it:
        for e in it:
            try:
                s = e.stat()
            except OSError:
                continue
            entries.append((e.name, s.st_size, s.st_mtime_ns))
    return st.st_mtime_ns, tuple(sorted(entries))


def _key(data_spec) -> tuple:
    root = require_root(data_spec.name, data_spec.root).resolve()
    return data_spec.name, str(root), int(data_spec.imsize), data_spec.max_images


def data_summary(data_spec) -> DataSummary:
    """The summary of the dataset ``data_spec`` (a ``DataSpec`` of a loader in ``scanners()``) names; raises the
    loader's error when ``data.root`` is unset or missing (see the module docstring for the cost and caching)."""
    scans = scanners()
    if data_spec.name not in scans:
        raise ValueError(f"no scan for dataset {data_spec.name!r}: datasets read from disk are {', '.join(scans)}")
    key = _key(data_spec)
    root = Path(key[1])
    stamp = _stamp(root)
    hit = _SUMMARIES.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    sc = scans[data_spec.name](root, imsize=data_spec.imsize, max_images=data_spec.max_images)
    summary = DataSummary(sc.name, sc.root, sc.content_hash, {s: len(sc.splits[s]) for s in SPLITS
                                                              if s in sc.splits and sc.splits[s].present},
                          sc.captions_per_image, sc.vocab, sc.problems)
    _SUMMARIES[key] = (stamp, summary)
    return summary


def forget(data_spec=None) -> None:
    """Drop the kept summary of ``data_spec`` (all of them when None): the next ``data_summary`` scans again."""
    if data_spec is None:
        _SUMMARIES.clear()
        return
    try:
        _SUMMARIES.pop(_key(data_spec), None)
    except (OSError, ValueError):
        pass
