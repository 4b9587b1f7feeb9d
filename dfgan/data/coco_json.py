"""MS-COCO as downloaded: image folders plus the captions JSON files, no preprocessing by hand.

```
data/coco-raw/                          (2017: captions_train2017.json, train2017/, val2017/)
  annotations/captions_train2014.json
  annotations/captions_val2014.json
  train2014/COCO_train2014_000000000009.jpg ...     (or images/train2014/...)
  val2014/COCO_val2014_000000000042.jpg ...         (or images/val2014/...)
```

* The year is the one whose ``captions_train<year>.json`` is present; with both 2014 and 2017 present, 2014
  (the paper's) is used. train = ``train<year>``, test (and ``val``) = ``val<year>``, as DF-GAN uses val2014.
* Images are ordered by image id; an image's captions by annotation id. K = 5 (COCO's count): an image with
  more keeps its first five, one with fewer has them repeated to five (reported), one with none is skipped
  (reported). Caption lines without any word are skipped, as the official preprocessing does.
* The vocabulary follows the official rules (lower-cased ``\\w+`` ASCII tokens, ``<end>`` = 0, words in order
  of first appearance over the train then the val captions, like the official dictionary built from both
  splits), so no test caption loses a word. Its ids are not the official COCO pickle's: the official DAMSM
  weights need the ``coco`` loader with the shipped ``captions_DAMSM.pickle``.
* Parsing the JSON files (about 90 MB for 2014) takes seconds: the result is cached under
  ``$DFGAN_CACHE/data/`` keyed by the JSON files' names, sizes and mtimes. The dataset folder is not written.
"""

from __future__ import annotations

import json
import pickle
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
    repeat_to,
    require_root,
    sha16,
)
from dfgan.data.vocab import TOKENIZER_VERSION, Vocab, tokenize
from dfgan.registry import DATASETS
from dfgan.runs import atomic_write_bytes

CAPTIONS_PER_IMAGE = 5  # COCO has five captions per image (some have six or seven: the first five are kept)
YEARS = ("2014", "2017")  # searched in this order
SPLIT_PREFIX = {"train": "train", "test": "val"}
_PARSE_VERSION = 1


def find_year(root: Path) -> str | None:
    for year in YEARS:
        if (root / "annotations" / f"captions_train{year}.json").is_file():
            return year
    return None


def annotation_path(root: Path, year: str, split: str) -> Path:
    return root / "annotations" / f"captions_{SPLIT_PREFIX[split]}{year}.json"


def image_dir(root: Path, year: str, split: str) -> Path | None:
    name = f"{SPLIT_PREFIX[split]}{year}"
    for d in (root / name, root / "images" / name):
        if d.is_dir():
            return d
    return None


def _parse(path: Path, split: str, problems: Problems):
    """``[(file_name, [tokenised captions])]`` ordered by image id, from one captions JSON."""
    try:
        data = json.loads(path.read_bytes())
        images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        anns = sorted(data["annotations"], key=lambda a: int(a["id"]))
        caps: dict[int, list[list[str]]] = {i: [] for i in images}
        for a in anns:
            img = int(a["image_id"])
            if img not in caps:
                problems.add("bad_format", path, f"annotation {a['id']} refers to unknown image {img}", split)
                continue
            toks = tokenize(str(a["caption"]))
            if toks:
                caps[img].append(toks)
            else:
                problems.add("skipped_caption", path, f"annotation {a['id']}: no word in {a['caption']!r}", split)
    except (OSError, ValueError, KeyError, TypeError) as e:
        # every split: the vocabulary is built from both files
        problems.add("bad_format", path, f"not a COCO captions file: {type(e).__name__}: {e}")
        return None
    return [(images[i], caps[i]) for i in sorted(images)]


def _parsed(root: Path, year: str, problems: Problems, notes: list[str]):
    """``(vocab words, {split: [(file_name, [K id lists])]})`` for both splits, from the cache if unchanged."""
    paths = {s: annotation_path(root, year, s) for s in SPLITS}
    missing = [p for p in paths.values() if not p.is_file()]
    for p in missing:
        problems.add("missing_path", p, "COCO captions file (train and val are both needed: the vocabulary "
                     "is built from both)")
    if missing:
        return None
    key = sha16({"version": _PARSE_VERSION, "tokenizer": TOKENIZER_VERSION, "k": CAPTIONS_PER_IMAGE,
                 "files": [file_signature(p, root) for p in paths.values()]})
    cached = derived_cache(f"coco_json-{root.name}-{year}", key)
    if cached.is_file():
        try:
            data = load_plain_pickle(cached)
            for kind, path, detail, split in data["problems"]:
                problems.add(kind, path, detail, split)
            notes.append(f"parsed captions cached at {cached}")
            return data["words"], data["splits"]
        except (DataError, KeyError, TypeError, ValueError):
            pass  # unreadable cache: parse again
    local = Problems()
    parsed = {s: _parse(paths[s], s, local) for s in SPLITS}
    if any(v is None for v in parsed.values()):
        problems.extend(local)
        return None
    vocab = Vocab.build(c for s in SPLITS for _, caps in parsed[s] for c in caps)
    splits = {}
    for s in SPLITS:
        rows = []
        for name, caps in parsed[s]:
            where = str(paths[s]) + f" ({name})"
            if not caps:
                local.add("uncaptioned_image", where, "no caption", s)
                continue
            if len(caps) < CAPTIONS_PER_IMAGE:
                local.add("few_captions", where, f"{len(caps)} of {CAPTIONS_PER_IMAGE} captions", s)
            rows.append((name, [vocab.encode(c)[0] for c in repeat_to(caps, CAPTIONS_PER_IMAGE)]))
        splits[s] = rows
    words = [vocab.ixtoword[i] for i in range(len(vocab))]
    problems.extend(local)
    saved = [(p.kind, p.path, p.detail, p.split) for p in local.items]
    atomic_write_bytes(cached, pickle.dumps({"words": words, "splits": splits, "problems": saved}, protocol=4))
    notes.append(f"parsed captions cached at {cached}")
    return words, splits


def scan(root, *, imsize: int, max_images: int | None = None) -> Scan:
    """Read a raw COCO folder's captions JSON files and image listings, collecting every problem."""
    root = require_root("coco_json", root)
    problems = Problems(check_hint=f"dfgan data check --data coco_json --root {root}")
    notes: list[str] = []
    year = find_year(root)
    got = None
    if year is None:
        problems.add("missing_path", root / "annotations" / "captions_train2014.json",
                     "no annotations/captions_train2014.json or captions_train2017.json")
    else:
        notes.append(f"COCO {year}")
        got = _parsed(root, year, problems, notes)
    words, rows = got if got is not None else (["<end>"], {})
    vocab = Vocab(dict(enumerate(words)))
    splits = {}
    for s in SPLITS:
        if s not in rows:
            splits[s] = SplitIndex(present=False)
            continue
        folder = image_dir(root, year, s)
        if folder is None:
            name = f"{SPLIT_PREFIX[s]}{year}"
            problems.add("missing_path", root / name, f"image folder (or {root / 'images' / name})", s)
            splits[s] = SplitIndex(present=False)
            continue
        sel = rows[s] if max_images is None else rows[s][:max_images]
        idx = SplitIndex(images=[folder / name for name, _ in sel], captions=[c for _, c in sel],
                         caption_sources=[f"{name} in {annotation_path(root, year, s)}" for name, _ in sel])
        check_images_exist(idx, problems, s, str(annotation_path(root, year, s)))
        splits[s] = idx
    extra = {"year": year, "json": [file_signature(annotation_path(root, year, s), root) for s in SPLITS]
             if year else None}
    chash = content_hash_of("coco_json", imsize, max_images, vocab, splits, root, extra)
    return Scan("coco_json", root, vocab, CAPTIONS_PER_IMAGE, splits, chash, problems, notes=notes)


@DATASETS.register("coco_json")
def coco_json(spec, split: str) -> FileCaptionDataset:
    """MS-COCO 2014/2017 as downloaded: image folders + annotations/captions_*.json (K=5), nothing to preprocess."""
    split = canonical_split("coco_json", split)
    sc = scan(spec.root, imsize=spec.imsize, max_images=spec.max_images)
    return open_split("coco_json", sc, split, spec.imsize, val_fraction=spec.val_fraction, seed=spec.seed)
