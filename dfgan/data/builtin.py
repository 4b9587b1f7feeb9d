"""The built-in dataset: procedurally rendered, captioned images of simple shapes (no download).

Made on first use from a seed and cached on disk under a hash of every generation parameter, so a run can
train and evaluate anywhere.  Each image shows 1-3 identical objects whose colour, shape, size, horizontal
position and count, and the image background, are drawn at random (``dfgan.data.builtin_render``) and written
into K captions (``dfgan.data.builtin_captions``); the attributes are kept as integer class ids so that a metric
can check whether a generated image matches its caption (attribute accuracy). This module generates the splits
(``train``; ``test``, which tables report; ``val``, which searches and any choice of defaults use), caches them
and serves them as a dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from dfgan.data.base import CaptionDataset
from dfgan.data.builtin_captions import (  # noqa: F401  (KEYWORDS, ALWAYS_NAMED, caption_for_attributes: public here)
    ALWAYS_NAMED,
    KEYWORDS,
    caption_for_attributes,
    demo_captions,
    grammar_words,
    random_caption,
)
from dfgan.data.builtin_render import ATTRIBUTE_NAMES, ATTRIBUTES, render_image
from dfgan.data.vocab import Vocab, tokenize
from dfgan.progress import progress_bar
from dfgan.registry import DATASETS
from dfgan.runs import cache_dir
from dfgan.spec import DataSpec

# bump whenever rendering, captions, attribute sampling or the splits change (changes the hash). 7: a validation
# split of its own ("val", data.n_val images; train and test images are as in 6; the vocabulary is built over all three)
GENERATOR_VERSION = 7
# the index of a split seeds its random streams: a new split goes at the end (the others keep their bytes)
SPLITS = ("train", "test", "val")

# ---------------------------------------------------------------- generation and cache


def _sample_attributes(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.integers(0, len(v), n).astype(np.int64) for k, v in ATTRIBUTES.items()}


def generate_split(n: int, imsize: int, k: int, seed: int, split: str, progress=None) -> dict:
    """Render ``n`` images with ``k`` captions each; deterministic in (seed, split): the splits are independent
    draws (their own attributes, captions and pixel noise), so val shares no image with train or test."""
    ss = np.random.SeedSequence([int(seed), SPLITS.index(split)])
    attr_rng, cap_rng, img_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    labels = _sample_attributes(n, attr_rng)
    images = np.empty((n, imsize, imsize, 3), dtype=np.uint8)
    texts: list[list[str]] = []
    mentions = np.zeros((n, k, len(ATTRIBUTE_NAMES)), dtype=bool)
    for i in range(n):
        attrs = {a: int(labels[a][i]) for a in ATTRIBUTE_NAMES}
        images[i] = render_image(attrs, imsize, img_rng)
        caps = []
        for j in range(k):
            text, m = random_caption(attrs, cap_rng)
            caps.append(text)
            mentions[i, j] = [m[a] for a in ATTRIBUTE_NAMES]
        texts.append(caps)
        if progress is not None:
            progress.update(1)
    return {"images": images, "labels": labels, "texts": texts, "mentions": mentions}


def cache_root(root: str | None = None) -> Path:
    """``root`` (``data.root``), else the cache folder (``dfgan.runs.cache_dir``)."""
    return Path(root).expanduser() if root else cache_dir().expanduser()


def generation_params(spec: DataSpec) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": int(spec.seed),
        "n_train": int(spec.n_train),
        "n_test": int(spec.n_test),
        "n_val": int(spec.n_val),
        "imsize": int(spec.imsize),
        "captions_per_image": int(spec.captions_per_image),
    }


def content_hash_of(params: dict) -> str:
    blob = json.dumps(params, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _write_cache(folder: Path, params: dict) -> None:
    """Generate every split and the shared vocabulary into ``folder`` (atomically)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        sizes = {"train": params["n_train"], "test": params["n_test"], "val": params["n_val"]}
        data = {}
        with progress_bar(sum(sizes.values()), f"builtin data ({params['imsize']}px)", unit="img") as bar:
            for split in SPLITS:
                data[split] = generate_split(
                    sizes[split], params["imsize"], params["captions_per_image"], params["seed"], split, bar
                )
        toks = [tokenize(t) for split in SPLITS for caps in data[split]["texts"] for t in caps]
        vocab = Vocab.build(toks)
        words = [vocab.ixtoword[i] for i in range(len(vocab))]
        words += [w for w in grammar_words() if w not in vocab.wordtoix]
        vocab = Vocab(dict(enumerate(words)))
        (tmp / "vocab.json").write_text(json.dumps(words))
        for split in SPLITS:
            d = data[split]
            np.save(tmp / f"{split}_images.npy", d["images"])
            ids = [[vocab.encode(t)[0] for t in caps] for caps in d["texts"]]
            (tmp / f"{split}_captions.json").write_text(json.dumps({"texts": d["texts"], "ids": ids}))
            np.savez(tmp / f"{split}_labels.npz", mentions=d["mentions"], **d["labels"])
        (tmp / "meta.json").write_text(json.dumps({**params, "attributes": ATTRIBUTES}, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():  # not a concurrent writer that got there first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class BuiltinDataset(CaptionDataset):
    """Procedural captioned shapes: 1-3 objects of one colour/shape/size in one third of the image, on one
    of several textured backgrounds, with K varied captions per image and ground-truth attribute ids.

    The backgrounds are deliberately varied (dark to light, gradients, checkers, stripes, clouds, grain)
    and every pixel carries a little noise: a faithful DF-GAN trained on one shape over a constant light
    background collapsed (tanh saturating to all-white), and varied textured backgrounds removed the
    collapse.  Images are never flipped: a flip would swap "left" and "right".
    """

    name = "builtin"

    def __init__(self, spec: DataSpec, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"builtin dataset: unknown split {split!r}; allowed splits: {', '.join(SPLITS)}")
        if spec.imsize < 32 or spec.imsize > 512 or spec.imsize & (spec.imsize - 1):
            raise ValueError(f"builtin dataset: imsize must be a power of two from 32 to 512, got {spec.imsize}")
        self.split = split
        self.imsize = int(spec.imsize)
        self.captions_per_image = int(spec.captions_per_image)
        params = generation_params(spec)
        self.content_hash = content_hash_of(params)
        self.root = cache_root(spec.root) / f"builtin-{self.content_hash}"
        if not (self.root / "meta.json").exists():
            _write_cache(self.root, params)
        meta = json.loads((self.root / "meta.json").read_text())
        if {k: meta.get(k) for k in params} != params:
            raise RuntimeError(f"builtin cache {self.root} does not match its parameters; delete it")
        self.vocab = Vocab(dict(enumerate(json.loads((self.root / "vocab.json").read_text()))))
        self._images_path = self.root / f"{split}_images.npy"
        self._images_mmap: np.ndarray | None = None
        caps = json.loads((self.root / f"{split}_captions.json").read_text())
        self._texts: list[list[str]] = caps["texts"]
        self._ids: list[list[list[int]]] = caps["ids"]
        with np.load(self.root / f"{split}_labels.npz") as z:
            self._labels = {k: z[k] for k in ATTRIBUTE_NAMES}
            self._mentions = z["mentions"]

    @property
    def _images(self) -> np.ndarray:
        """(N, H, W, 3) uint8, memory-mapped on first use (and again in each worker process)."""
        if self._images_mmap is None:
            self._images_mmap = np.load(self._images_path, mmap_mode="r")
        return self._images_mmap

    def __getstate__(self) -> dict:  # DataLoader workers (spawn) reopen the file instead of copying it
        state = self.__dict__.copy()
        state["_images_mmap"] = None
        return state

    def __len__(self) -> int:
        return len(self._labels[ATTRIBUTE_NAMES[0]])

    def image_uint8(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 image i as stored."""
        return np.asarray(self._images[i])

    def load_image(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(np.array(self._images[i], dtype=np.float32)).permute(2, 0, 1)
        return (x / 127.5 - 1.0).contiguous()

    def caption_ids(self, i: int, j: int) -> list[int]:
        return list(self._ids[i][j])

    def caption_text(self, i: int, j: int) -> str:
        """The caption as written (with punctuation); ``vocab.decode(caption_ids)`` is its token form."""
        return self._texts[i][j]

    def attributes(self, i: int) -> dict[str, int]:
        return {k: int(self._labels[k][i]) for k in ATTRIBUTE_NAMES}

    def attribute_array(self) -> dict[str, np.ndarray]:
        """Class ids of every image of the split: name -> int64 (N,)."""
        return {k: v.copy() for k, v in self._labels.items()}

    def always_named(self) -> list[str]:
        """Attributes that every caption of the split names (a caption of the image can never be true of an
        image that differs in one of them)."""
        every = self._mentions.all(axis=(0, 1))
        return [a for a, m in zip(ATTRIBUTE_NAMES, every, strict=True) if m]

    def mentions(self, i: int, j: int) -> dict[str, bool]:
        """Which attributes caption j of image i names."""
        return {k: bool(v) for k, v in zip(ATTRIBUTE_NAMES, self._mentions[i, j], strict=True)}

    @staticmethod
    def demo_captions(n: int = 8) -> list[str]:
        return demo_captions(n)


@DATASETS.register("builtin")
def builtin(spec: DataSpec, split: str) -> BuiltinDataset:
    """Procedural captioned shapes (colour, shape, size, position, count, background); no download."""
    return BuiltinDataset(spec, split)
