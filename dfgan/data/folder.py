"""Your own images and captions: ``name.jpg`` (or .png, .jpeg, .bmp, .webp) next to ``name.txt`` holding one
caption per line, in a folder (searched recursively; hidden files and folders are ignored).

```
data/my-data/                     data/my-data/
  cat_01.jpg                        train/
  cat_01.txt                          cat_01.jpg, cat_01.txt, ...
  dogs/dog_07.png                   test/
  dogs/dog_07.txt                     dog_07.png, dog_07.txt, ...
  captions_DAMSM.pickle  (optional: reuse this vocabulary, e.g. CUB's, to keep its DAMSM weights usable)
```

* Splits: ``train/`` and ``test/`` subfolders when ``train/`` exists; otherwise every pair goes to the test split
  when the SHA-1 of its path (relative to the folder, without extension) falls in the first ``TEST_FRACTION``
  (10%) of the hash range, else to train. The split of a file never depends on the other files, so adding
  images keeps the existing split.
* K, the captions per image, is the largest number of captions of any image; images with fewer have theirs
  repeated to K (reported once as a warning). A caption file with no caption is an error naming it; so is an
  image without its caption file. A caption file without an image is ignored (reported).
* Vocabulary: the official rules (lower-cased ``\\w+`` ASCII tokens, ``<end>`` = 0, order of first appearance,
  train then test). If the folder holds a ``captions_DAMSM.pickle`` its vocabulary is used instead; unknown
  words are then dropped (reported) and a caption with only unknown words is an error naming its file.
* Images of any size and aspect ratio and any mode (converted to RGB, see ``dfgan.data.images``) are resized on
  their shorter side and cropped square; the EXIF orientation of photos is applied.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dfgan.data.errors import DataError, Problems
from dfgan.data.file_dataset import (
    SPLITS,
    FileCaptionDataset,
    Scan,
    SplitIndex,
    canonical_split,
    content_hash_of,
    encode_captions,
    load_plain_pickle,
    open_split,
    read_caption_lines,
    require_root,
    sha16,
)
from dfgan.data.images import IMAGE_EXTENSIONS
from dfgan.data.vocab import Vocab
from dfgan.registry import DATASETS

TEST_FRACTION = 0.1  # share of a folder without train/ and test/ subfolders that goes to the test split
VOCAB_PICKLE = "captions_DAMSM.pickle"


def hash_split(key: str) -> str:
    """``test`` for the keys whose SHA-1 falls in the first ``TEST_FRACTION`` of the hash range, else ``train``."""
    h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")
    return "test" if h < TEST_FRACTION * 2**64 else "train"


def _walk(folder: Path):
    """(images, caption files) under ``folder``, sorted, hidden entries skipped."""
    images, texts = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            ext = os.path.splitext(f)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                images.append(Path(dirpath) / f)
            elif ext == ".txt":
                texts.append(Path(dirpath) / f)
    return images, texts


def _vocab_from_pickle(path: Path, problems: Problems) -> Vocab | None:
    try:
        obj = load_plain_pickle(path)
        ixtoword = {int(i): w for i, w in obj[2].items()}
        return Vocab(ixtoword, {w: int(i) for w, i in obj[3].items()})
    except DataError as e:
        problems.add("bad_format", path, str(e))
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
        problems.add("bad_format", path, f"expected [train_captions, test_captions, ixtoword, wordtoix]: {e}")
    return None


def scan(root, *, imsize: int, max_images: int | None = None) -> Scan:
    """Pair the images and caption files of a folder, split them, build the vocabulary, collect problems."""
    root = require_root("folder", root)
    problems = Problems(check_hint=f"dfgan data check --data folder --root {root}")
    notes: list[str] = []
    by_folder = (root / "train").is_dir()
    pairs: dict[str, list[tuple[Path, Path]]] = {s: [] for s in SPLITS}
    present = {s: True for s in SPLITS}
    bases = {s: root / s for s in SPLITS} if by_folder else {None: root}
    if by_folder:
        present["test"] = (root / "test").is_dir()
        if not present["test"]:
            problems.add("missing_path", root / "test", "test folder (train/ exists, so splits are folders)",
                         "test")
        notes.append("splits: train/ and test/ folders")
    else:
        notes.append(f"splits: by hash of the file name, {TEST_FRACTION:.0%} test")
    for split, base in bases.items():
        if not base.is_dir():
            continue
        images, texts = _walk(base)
        used = set()
        for img in images:
            txt = img.with_suffix(".txt")
            s = split or hash_split(img.relative_to(root).with_suffix("").as_posix())
            if txt in used:
                problems.add("bad_format", txt, f"caption file shared by two images (e.g. {img})", s)
                continue
            used.add(txt)
            pairs[s].append((img, txt))
        for txt in texts:
            if txt not in used:
                problems.add("orphan_caption_file", txt, "no image with the same name",
                              split or hash_split(txt.relative_to(root).with_suffix("").as_posix()))
    # an image without its caption file is a missing_path problem naming the .txt expected
    tokenised = {s: [read_caption_lines(txt, problems, s) for _, txt in pairs[s]] for s in SPLITS}
    k = max((len(c) for s in SPLITS for c in tokenised[s] if c), default=1)
    vocab = None
    if (root / VOCAB_PICKLE).is_file():
        vocab = _vocab_from_pickle(root / VOCAB_PICKLE, problems)
        notes.append(f"vocabulary of {len(vocab) if vocab else '?'} words from {root / VOCAB_PICKLE}")
    if vocab is None:
        vocab = Vocab.build(c for s in SPLITS for caps in tokenised[s] if caps for c in caps)
    splits = {}
    for s in SPLITS:
        images, captions, sources = [], [], []
        for (img, txt), caps in zip(pairs[s], tokenised[s], strict=True):
            ids = encode_captions(caps, vocab, str(txt), problems, s, k) if caps else None
            if ids is None:
                continue  # the problem is recorded (missing, empty, or only unknown words)
            images.append(img)
            captions.append(ids)
            sources.append(str(txt))
        if max_images is not None:
            images, captions, sources = images[:max_images], captions[:max_images], sources[:max_images]
        splits[s] = SplitIndex(images=images, captions=captions, caption_sources=sources, present=present[s])
    extra = {"by_folder": by_folder, "test_fraction": None if by_folder else TEST_FRACTION,
             "vocab_pickle": sha16((root / VOCAB_PICKLE).read_bytes()) if (root / VOCAB_PICKLE).is_file() else None}
    chash = content_hash_of("folder", imsize, max_images, vocab, splits, root, extra)
    return Scan("folder", root, vocab, k, splits, chash, problems, exif_transpose=True, notes=notes)


@DATASETS.register("folder")
def folder(spec, split: str) -> FileCaptionDataset:
    """Your own image + caption-file pairs (name.jpg + name.txt, one caption per line), any size and mode."""
    split = canonical_split("folder", split)
    sc = scan(spec.root, imsize=spec.imsize, max_images=spec.max_images)
    return open_split("folder", sc, split, spec.imsize, val_fraction=spec.val_fraction, seed=spec.seed)
