"""What the image-and-caption-file datasets (``birds``, ``coco``, ``coco_json``, ``folder``) share.

* ``Scan``: a dataset read from disk without decoding any image: per split the image paths and their K caption
  id lists, the vocabulary, the content hash, and every problem found (``dfgan.data.errors.Problems``). Each
  loader module has a ``scan(...)`` that builds one; the dataset class and ``dfgan data check`` both use it.
* ``FileCaptionDataset``: the ``CaptionDataset`` over one split of a ``Scan``; images are read on demand
  (``dfgan.data.images``), converted to RGB when needed (counted, one warning), and transformed with the
  item's own random generator, so ``ds[(i, j, seed)]`` is fully deterministic.
* caption text helpers (one caption per line, official tokenisation, repeat to K), a pickle reader that only
  accepts plain containers, the content hash, and the cache folder for derived files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dfgan.data.base import CaptionDataset
from dfgan.data.errors import (
    DataError,
    DataFormatError,
    EmptyCaptionsError,
    EmptyDatasetError,
    ImageConversionWarning,
    MissingDataError,
    Problems,
)
from dfgan.data.images import bird_crop_box, read_rgb, transform
from dfgan.data.layouts import layout_hint
from dfgan.data.vocab import Vocab, pad_caption, tokenize
from dfgan.runs import cache_dir

SPLITS = ("train", "test")  # the splits on disk; "val" is a seeded hold-out of train (``holdout_indices``)
SPLIT_ALIASES = {"train": "train", "test": "test", "val": "val"}
SCAN_VERSION = 1  # bump when what a scan derives changes: content hashes (and cached text encoders) change
HOLDOUT_STREAM = 1013  # the hold-out's own random stream of data.seed (no other draw uses it)


def canonical_split(name: str, split: str) -> str:
    try:
        return SPLIT_ALIASES[split]
    except KeyError:
        raise ValueError(f"{name} dataset: unknown split {split!r}; allowed: train, test, val (a seeded hold-out "
                         "of train, data.val_fraction)") from None


def holdout_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the train images held out as the validation split: ``round(fraction * n)`` of them
    (at least 1 when ``fraction`` > 0), a seeded draw. These images are never in the training split."""
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n - 1, max(1, round(fraction * n)))
    return np.sort(np.random.default_rng([int(seed), HOLDOUT_STREAM]).permutation(n)[:k])


def require_root(name: str, root) -> Path:
    """The dataset folder from ``data.root``; a clear error when unset or missing."""
    if not root:
        raise DataError(f"data.root must name the {name} dataset folder (e.g. data.root=data/{name}); it is unset")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MissingDataError(f"{name} dataset folder not found: {path} (data.root)", str(path))
    return path


# ---- plain pickles ----------------------------------------------------------------------------------------------
class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numbers (what the official pickles hold): loading a dataset file
    must never run code."""

    _ALLOWED = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"),
                ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "dict"), ("builtins", "list")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain lists, dicts, strings and "
                                     "numbers are accepted)")


def load_plain_pickle(path: Path):
    """Load a pickle of plain containers (Python 2 pickles too); raises ``DataFormatError`` naming the path."""
    try:
        with open(path, "rb") as f:
            return _PlainUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except FileNotFoundError:
        raise MissingDataError(f"file not found: {path}", str(path)) from None
    except Exception as e:
        raise DataFormatError(f"cannot read pickle {path}: {type(e).__name__}: {e}", str(path)) from None


def derived_cache(kind: str, key: str, suffix: str = ".pickle") -> Path:
    """Where files derived from a dataset (a built captions pickle, a parsed captions JSON) are cached:
    ``<cache_dir>/data/<kind>-<key><suffix>``. Dataset folders are never written to."""
    return cache_dir() / "data" / f"{kind}-{key}{suffix}"


# ---- hashing ----------------------------------------------------------------------------------------------------
def file_signature(path: Path, root: Path) -> tuple[str, int, int] | None:
    """``(path relative to root, size, mtime in whole seconds)``, or None if missing. Cheap: no bytes read."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return os.path.relpath(path, root), int(st.st_size), int(st.st_mtime)


def sha16(obj) -> str:
    blob = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---- caption text -------------------------------------------------------------------------------------------------
def read_caption_lines(path: Path, problems: Problems, split: str | None) -> list[list[str]] | None:
    """Tokenised captions of a caption file, one per line, the official way: blank lines and lines without
    any ``\\w+`` token are skipped (the latter reported). None (and a problem) if missing or empty."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.add("missing_path", path, "caption file not found", split)
        return None
    text = raw.decode("utf-8", errors="replace")
    caps = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        toks = tokenize(line)
        if toks:
            caps.append(toks)
        else:
            problems.add("skipped_caption", f"{path}:{n}", f"no word in {line.strip()[:40]!r}", split)
    if not caps:
        problems.add("empty_captions", path, "no caption in the file" if not text.strip()
                     else "no line with a word", split)
        return None
    return caps


def repeat_to(items: list, k: int) -> list:
    """The first ``k`` items, cycling through them when there are fewer."""
    return [items[i % len(items)] for i in range(k)]


def encode_captions(caps: list[list[str]], vocab: Vocab, where: str, problems: Problems, split: str | None,
                    k: int) -> list[list[int]] | None:
    """Encode tokenised captions with ``vocab`` and bring them to exactly ``k`` (repeating; reported).
    Unknown words are dropped and reported; a caption of only unknown words is a fatal problem."""
    out = []
    for n, toks in enumerate(caps):
        ids, unknown = vocab.encode(toks)
        if unknown and not ids:
            problems.add("unknown_words_only", where, f"caption {n}: {' '.join(toks)[:60]!r}", split)
            continue
        if unknown:
            problems.add("unknown_words", where, f"caption {n}: dropped {', '.join(unknown[:5])}", split)
        out.append(ids)
    if not out:
        return None
    if len(out) < k:
        problems.add("few_captions", where, f"{len(out)} of {k} captions", split)
    return repeat_to(out, k)


# ---- the scan and the dataset -------------------------------------------------------------------------------------
@dataclass
class SplitIndex:
    """One split: image paths, K caption id lists per image, optional crop boxes (birds), and the file each
    image's captions come from (for messages)."""

    images: list[Path] = field(default_factory=list)
    captions: list[list[list[int]]] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float] | None] | None = None
    caption_sources: list[str] | None = None
    present: bool = True  # False: the split's index file is missing

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Scan:
    name: str
    root: Path
    vocab: Vocab
    captions_per_image: int
    splits: dict[str, SplitIndex]
    content_hash: str
    problems: Problems
    exif_transpose: bool = False
    notes: list[str] = field(default_factory=list)


def content_hash_of(name: str, imsize: int, max_images, vocab: Vocab, splits: dict[str, SplitIndex],
                    root: Path, extra) -> str:
    """Identifies the data and its vocabulary, the same for every split: the loader, the image size, the image
    limit, the vocabulary, each split's image files (relative name, size, mtime: no image bytes are read),
    the captions, and ``extra`` (loader-specific, e.g. the hash of the captions pickle)."""
    h = hashlib.sha256()
    h.update(json.dumps({"loader": name, "version": SCAN_VERSION, "imsize": imsize, "max_images": max_images,
                         "extra": extra}, sort_keys=True).encode())
    h.update(json.dumps([vocab.ixtoword[i] for i in range(len(vocab))]).encode())
    for split in SPLITS:
        idx = splits.get(split)
        if idx is None or not idx.present:
            h.update(f"{split}:absent".encode())
            continue
        sigs = [file_signature(p, root) or (os.path.relpath(p, root), -1, -1) for p in idx.images]
        h.update(json.dumps({"split": split, "files": sigs, "captions": idx.captions}).encode())
    return h.hexdigest()[:16]


def check_images_exist(idx: SplitIndex, problems: Problems, split: str, listed_in: str) -> None:
    for p in idx.images:
        if not p.is_file():
            problems.add("missing_image", p, f"listed in {listed_in}", split)


def _subset(idx: SplitIndex, keep: np.ndarray) -> SplitIndex:
    pick = [int(i) for i in keep]
    return SplitIndex([idx.images[i] for i in pick], [idx.captions[i] for i in pick],
                      None if idx.boxes is None else [idx.boxes[i] for i in pick],
                      None if idx.caption_sources is None else [idx.caption_sources[i] for i in pick], idx.present)


class FileCaptionDataset(CaptionDataset):
    """One split of a scanned image-and-caption dataset (see the module docstring). With ``val_fraction`` > 0
    the train images of ``holdout_indices`` are the ``val`` split and are left out of ``train``."""

    def __init__(self, scan: Scan, split: str, imsize: int, *, val_fraction: float = 0.0, seed: int = 0):
        self.name = scan.name
        self.split = split
        self.imsize = int(imsize)
        self.root = scan.root
        self.vocab = scan.vocab
        self.captions_per_image = scan.captions_per_image
        self.content_hash = scan.content_hash
        self.problems = scan.problems
        self.notes = list(scan.notes)
        self._index = scan.splits["train" if split == "val" else split]
        if split == "val" and val_fraction <= 0:
            raise DataError(f"{self.name} dataset has no validation split: set data.val_fraction (e.g. 0.1) to hold "
                            "out a seeded part of the train images as 'val' (they are then left out of training)")
        if val_fraction > 0 and split in ("train", "val"):
            held = holdout_indices(len(self._index), val_fraction, seed)
            keep = held if split == "val" else np.setdiff1d(np.arange(len(self._index)), held)
            self._index = _subset(self._index, keep)
            # the training images differ from the full split's: their own hash (caches, the run's dataset_hash)
            self.content_hash = sha16({"scan": scan.content_hash, "val_fraction": val_fraction, "seed": seed})
        self._exif = scan.exif_transpose
        self.conversions: Counter = Counter()  # original image mode -> images converted to RGB (this process)
        self._warned = False
        if len(self._index) == 0:
            raise EmptyDatasetError(f"{self.name} dataset at {self.root}: the {split} split has no images"
                                    + layout_hint(self.root, self.name, flag="data.name="), str(self.root))

    def __len__(self) -> int:
        return len(self._index)

    def image_path(self, i: int) -> Path:
        return self._index.images[i]

    def crop_box(self, i: int):
        """The bounding box ``(x, y, w, h)`` image i is cropped around (birds), or None."""
        return self._index.boxes[i] if self._index.boxes is not None else None

    def read_image(self, i: int):
        """Image i as an RGB PIL image before the transform (birds: already cropped to its box)."""
        img, converted = read_rgb(self._index.images[i], exif_transpose=self._exif)
        if converted is not None:
            self.conversions[converted] += 1
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"{self.name} dataset: converting images to RGB (first: {self._index.images[i]}, mode "
                    f"{converted}); the count per mode is in dataset.conversions, `dfgan data check` lists them",
                    ImageConversionWarning, stacklevel=4)
        box = self.crop_box(i)
        if box is not None:
            img = img.crop(bird_crop_box(box, *img.size))
        return img

    def load_image(self, i: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        return transform(self.read_image(i), self.imsize, train=self.split == "train", rng=rng)

    def caption_ids(self, i: int, j: int) -> list[int]:
        return list(self._index.captions[i][j])

    def item(self, i: int, j: int, rng: np.random.Generator | None = None) -> dict:
        ids = self.caption_ids(i, j)
        if not any(ids):
            src = self._index.caption_sources[i] if self._index.caption_sources else str(self._index.images[i])
            raise EmptyCaptionsError(f"{self.name}: caption {j} of image {i} ({src}) has no word ids", src)
        rng = rng if rng is not None else np.random.default_rng(int(torch.randint(2**31, ()).item()))
        cap, length = pad_caption(ids, rng)  # the same generator then draws the crop and the flip
        return {"image": self.load_image(i, rng), "caption": cap, "length": length, "index": i,
                "caption_index": j}


def open_split(name: str, scan: Scan, split: str, imsize: int, *, val_fraction: float = 0.0,
               seed: int = 0) -> FileCaptionDataset:
    """The dataset for ``split`` of ``scan`` (``val``: the hold-out of train, ``val_fraction`` of it drawn with
    ``seed``): raises the first fatal problem of that split, warns once about the handled ones."""
    on_disk = "train" if split == "val" else split
    idx = scan.splits.get(on_disk)
    scan.problems.raise_fatal(on_disk)
    if idx is None or not idx.present:
        raise MissingDataError(f"{name} dataset at {scan.root} has no {on_disk} split", str(scan.root))
    scan.problems.warn(on_disk, stacklevel=4)
    return FileCaptionDataset(scan, split, imsize, val_fraction=val_fraction, seed=seed)
