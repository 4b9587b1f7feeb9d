"""CUB birds and COCO in the preprocessed layout the official DF-GAN code reads (``code/lib/datasets.py``).

```
data/birds/                                   data/coco/
  captions_DAMSM.pickle                         captions_DAMSM.pickle
  train/filenames.pickle                        train/filenames.pickle
  test/filenames.pickle                         test/filenames.pickle
  text/<key>.txt           (optional)           text/<key>.txt           (optional)
  CUB_200_2011/images/<key>.jpg                 images/train2014/<key>.jpg
  CUB_200_2011/images.txt                       images/val2014/<key>.jpg
  CUB_200_2011/bounding_boxes.txt
```

* ``captions_DAMSM.pickle`` = ``[train_captions, test_captions, ixtoword, wordtoix]``; caption j of image i of a
  split is ``captions[i*K + j]`` (K = 10 birds, 5 COCO). Its vocabulary is used as is: that keeps the official
  DAMSM text-encoder weights usable (5,450 words for CUB, 27,297 for COCO).
* Without the pickle it is built from ``text/<key>.txt`` as the official code builds it (one caption per line,
  lower-cased ``\\w+`` ASCII tokens, lines without a word skipped, the first K captions of each image, the
  vocabulary in order of first appearance over the train then the test captions, ``<end>`` = 0). The dataset
  folder is never written to: the built pickle is cached under ``$DFGAN_CACHE/data/`` (in the official
  four-list layout) and reused while the text files are unchanged. A file with fewer than K captions has them
  repeated to K (the official code would misalign every later image's captions); this is reported.
* Keys in ``filenames.pickle`` may end with ``\\r`` (some copies of CUB's): whitespace is stripped.
* Birds are cropped to ``bird_crop_box`` around their bounding box before the transform; COCO is not cropped.
  COCO images may also sit directly in ``images/<key>.jpg`` when there is no ``images/train2014`` folder.
* The split called ``val`` reads the test files (as the official code). The test split is centre-cropped and
  never flipped (see ``dfgan.data.images``).
"""

from __future__ import annotations

from pathlib import Path

from dfgan.data.errors import DataError, Problems
from dfgan.data.file_dataset import (
    SPLITS,
    FileCaptionDataset,
    Scan,
    SplitIndex,
    canonical_split,
    check_images_exist,
    content_hash_of,
    derived_cache,
    file_signature,
    load_plain_pickle,
    open_split,
    read_caption_lines,
    repeat_to,
    require_root,
    sha16,
)
from dfgan.data.vocab import TOKENIZER_VERSION, Vocab
from dfgan.registry import DATASETS
from dfgan.runs import atomic_write_bytes

CAPTIONS_PER_IMAGE = {"birds": 10, "coco": 5}  # CUB has 10 captions per image, COCO 5 (official code/lib/datasets.py)
CAPTIONS_PICKLE = "captions_DAMSM.pickle"
FILENAMES_PICKLE = "filenames.pickle"
TEXT_DIR = "text"
CUB_DIR = "CUB_200_2011"
COCO_IMAGE_DIRS = {"train": "train2014", "test": "val2014"}
_BUILD_VERSION = 1


# ---- index files ----------------------------------------------------------------------------------------------
def read_keys(path: Path, problems: Problems, split: str) -> list[str] | None:
    """Image keys of ``<split>/filenames.pickle``, stripped of trailing whitespace and ``\\r``."""
    if not path.is_file():
        problems.add("missing_path", path, "list of the split's image keys", split)
        return None
    try:
        obj = load_plain_pickle(path)
    except DataError as e:
        problems.add("bad_format", path, str(e), split)
        return None
    if not isinstance(obj, (list, tuple)) or not all(isinstance(k, (str, bytes)) for k in obj):
        problems.add("bad_format", path, f"expected a list of key strings, got {type(obj).__name__}", split)
        return None
    return [(k.decode("latin1") if isinstance(k, bytes) else k).strip() for k in obj]


def _read_pickled_captions(path: Path, keys: dict, k: int, problems: Problems):
    """``(vocab, {split: [K id lists per image]})`` from ``captions_DAMSM.pickle``; None on a bad file."""
    try:
        obj = load_plain_pickle(path)
    except DataError as e:
        problems.add("bad_format", path, str(e))
        return None
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        problems.add("bad_format", path, "expected [train_captions, test_captions, ixtoword, wordtoix]")
        return None
    train_caps, test_caps, ixtoword, wordtoix = obj
    if not isinstance(ixtoword, dict) or not isinstance(wordtoix, dict):
        problems.add("bad_format", path, "ixtoword and wordtoix (items 3 and 4) must be dicts")
        return None
    ixtoword = {int(i): (w.decode("latin1") if isinstance(w, bytes) else w) for i, w in ixtoword.items()}
    if sorted(ixtoword) != list(range(len(ixtoword))):
        problems.add("bad_format", path, "ixtoword ids are not 0..N-1")
        return None
    try:
        vocab = Vocab(ixtoword, {(w.decode("latin1") if isinstance(w, bytes) else w): int(i)
                                 for w, i in wordtoix.items()})
    except ValueError as e:
        problems.add("bad_format", path, str(e))
        return None
    out = {}
    for split, caps in zip(SPLITS, (train_caps, test_caps), strict=True):
        n = len(keys[split]) if keys.get(split) is not None else None
        if n is None:
            continue
        if len(caps) != n * k:
            problems.add("bad_format", path, f"holds {len(caps)} {split} captions for {n} {split} images; "
                         f"expected {n} x {k} (K={k}, caption j of image i at i*K+j)", split)
            continue
        rows = []
        for i in range(n):
            row = [[int(t) for t in caps[i * k + j]] for j in range(k)]
            for j, ids in enumerate(row):
                if not any(ids):
                    problems.add("empty_caption", f"{path}[{split}][{i * k + j}]",
                                 f"caption {j} of {keys[split][i]}", split)
                bad = [t for t in ids if not 0 <= t < len(vocab)]
                if bad:
                    problems.add("bad_format", f"{path}[{split}][{i * k + j}]",
                                 f"word ids {bad[:3]} outside the vocabulary of {len(vocab)}", split)
            rows.append(row)
        out[split] = rows
    return vocab, out


def _build_from_text(root: Path, keys: dict, k: int, problems: Problems, notes: list[str]):
    """Build (or reuse the cached) captions pickle from ``text/<key>.txt`` the official way."""
    text_dir = root / TEXT_DIR
    if not text_dir.is_dir():
        problems.add("missing_path", root / CAPTIONS_PICKLE, f"and no {text_dir} folder to build it from")
        return None
    listed = {s: keys[s] or [] for s in SPLITS}
    sigs = [file_signature(text_dir / f"{key}.txt", root) for s in SPLITS for key in listed[s]]
    key = sha16({"k": k, "version": _BUILD_VERSION, "tokenizer": TOKENIZER_VERSION, "files": sigs})
    cached = derived_cache(f"captions_DAMSM-{root.name}", key)
    if cached.is_file():
        try:
            data = load_plain_pickle(cached)
            for kind, path, detail, split in data["problems"]:
                problems.add(kind, path, detail, split)
            notes.append(f"captions built from {text_dir}, cached at {cached}")
            return _from_official_lists(data["pickle"], listed, k)
        except (DataError, KeyError, TypeError, ValueError):
            pass  # unreadable cache: rebuild
    local = Problems()
    tokenised = {}
    for s in SPLITS:
        rows = []
        for kk in listed[s]:
            caps = read_caption_lines(text_dir / f"{kk}.txt", local, s)
            if caps is not None and len(caps) < k:
                local.add("few_captions", text_dir / f"{kk}.txt", f"{len(caps)} of {k} captions", s)
            rows.append(repeat_to(caps, k) if caps else None)
        tokenised[s] = rows
    vocab = Vocab.build(c for s in SPLITS for row in tokenised[s] if row for c in row)
    flat = {s: [vocab.encode(c)[0] for row in tokenised[s] for c in (row or [[]] * k)] for s in SPLITS}
    lists = [flat["train"], flat["test"], dict(vocab.ixtoword), dict(vocab.wordtoix)]
    problems.extend(local)
    if not local.fatal():
        import pickle

        saved = [(p.kind, p.path, p.detail, p.split) for p in local.items]
        atomic_write_bytes(cached, pickle.dumps({"pickle": lists, "problems": saved}, protocol=4))
        notes.append(f"captions built from {text_dir}, cached at {cached}")
    return _from_official_lists(lists, listed, k)


def _from_official_lists(lists, listed: dict, k: int):
    train_caps, test_caps, ixtoword, wordtoix = lists
    vocab = Vocab({int(i): w for i, w in ixtoword.items()}, dict(wordtoix))
    out = {}
    for s, caps in zip(SPLITS, (train_caps, test_caps), strict=True):
        out[s] = [[list(caps[i * k + j]) for j in range(k)] for i in range(len(listed[s]))]
    return vocab, out


def _read_boxes(root: Path, problems: Problems) -> dict[str, tuple[float, ...]] | None:
    """CUB bounding boxes by key (image path without ``.jpg``) from images.txt + bounding_boxes.txt."""
    files = {}
    for name in ("images.txt", "bounding_boxes.txt"):
        p = root / CUB_DIR / name
        if not p.is_file():
            problems.add("missing_path", p, "CUB index needed for the bounding-box crop")
            return None
        rows = {}
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            want = 2 if name == "images.txt" else 5
            if len(parts) != want:
                problems.add("bad_format", f"{p}:{n}", f"expected {want} fields, got {len(parts)}")
                continue
            rows[parts[0]] = parts[1:]
        files[name] = rows
    boxes = {}
    bb_path = root / CUB_DIR / "bounding_boxes.txt"
    for img_id, (rel,) in files["images.txt"].items():
        box = files["bounding_boxes.txt"].get(img_id)
        if box is None:
            continue
        try:
            boxes[rel.rsplit(".", 1)[0]] = tuple(float(v) for v in box)
        except ValueError:
            problems.add("bad_format", bb_path, f"image id {img_id}: non-numeric box {box}")
    return boxes


def _image_path(kind: str, root: Path, split: str, key: str) -> Path:
    if kind == "birds":
        return root / CUB_DIR / "images" / f"{key}.jpg"
    folder = root / "images" / COCO_IMAGE_DIRS[split]
    return (folder if folder.is_dir() else root / "images") / f"{key}.jpg"


# ---- scan and datasets ------------------------------------------------------------------------------------------
def scan(kind: str, root, *, imsize: int, max_images: int | None = None) -> Scan:
    """Read the index files of a DF-GAN-layout dataset (``kind`` = birds or coco) and collect every problem."""
    if kind not in CAPTIONS_PER_IMAGE:
        raise ValueError(f"unknown DF-GAN layout {kind!r}; known: {', '.join(CAPTIONS_PER_IMAGE)}")
    root = require_root(kind, root)
    k = CAPTIONS_PER_IMAGE[kind]
    problems = Problems(check_hint=f"dfgan data check --data {kind} --root {root}")
    notes: list[str] = []
    keys = {s: read_keys(root / s / FILENAMES_PICKLE, problems, s) for s in SPLITS}
    cap_path = root / CAPTIONS_PICKLE
    if cap_path.is_file():
        got = _read_pickled_captions(cap_path, keys, k, problems)
        extra = {"captions": sha16(cap_path.read_bytes())}
    else:
        got = _build_from_text(root, keys, k, problems, notes)
        extra = {"captions": "built-from-text"}
    vocab, caps = got if got is not None else (Vocab({0: "<end>"}), {})
    boxes = _read_boxes(root, problems) if kind == "birds" else None
    if boxes is not None:
        extra["boxes"] = sha16((root / CUB_DIR / "bounding_boxes.txt").read_bytes())
    splits = {}
    for s in SPLITS:
        if keys[s] is None:
            splits[s] = SplitIndex(present=False)
            continue
        n = len(keys[s]) if max_images is None else min(max_images, len(keys[s]))
        sk = keys[s][:n]
        rows = caps.get(s) or [[[]] * k for _ in sk]
        idx = SplitIndex(images=[_image_path(kind, root, s, key) for key in sk], captions=rows[:n],
                         caption_sources=[f"{key} ({s}/{FILENAMES_PICKLE} #{i})" for i, key in enumerate(sk)])
        if boxes is not None:
            idx.boxes = []
            for key in sk:
                box = boxes.get(key)
                if box is None:
                    problems.add("bad_format", root / CUB_DIR / "bounding_boxes.txt",
                                 f"no bounding box for {key!r} (via images.txt)", s)
                idx.boxes.append(box)
        check_images_exist(idx, problems, s, str(root / s / FILENAMES_PICKLE))
        splits[s] = idx
    chash = content_hash_of(kind, imsize, max_images, vocab, splits, root, extra)
    return Scan(kind, root, vocab, k, splits, chash, problems, notes=notes)


def open_dfgan_layout(kind: str, spec, split: str) -> FileCaptionDataset:
    split = canonical_split(kind, split)
    sc = scan(kind, spec.root, imsize=spec.imsize, max_images=spec.max_images)
    return open_split(kind, sc, split, spec.imsize, val_fraction=spec.val_fraction, seed=spec.seed)


@DATASETS.register("birds")
def birds(spec, split: str) -> FileCaptionDataset:
    """CUB-200-2011 birds in DF-GAN's preprocessed layout (captions_DAMSM.pickle, bounding-box crop, K=10)."""
    return open_dfgan_layout("birds", spec, split)


@DATASETS.register("coco")
def coco(spec, split: str) -> FileCaptionDataset:
    """MS-COCO 2014 in DF-GAN's preprocessed layout (captions_DAMSM.pickle, images/train2014|val2014, K=5)."""
    return open_dfgan_layout("coco", spec, split)
