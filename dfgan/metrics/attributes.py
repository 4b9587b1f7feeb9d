"""Attribute accuracy on the built-in dataset: does a generated image show what its caption says?

A small CNN (:class:`AttributeClassifier`) is trained once on the *real* built-in training images to predict
every attribute of ``dfgan.data.builtin.ATTRIBUTES`` (colour, shape, size, position, count, background) and is
cached under the dataset's content hash. A generated image is then scored against the caption it was
generated from: only the attributes that caption mentions count (``mentions``), and the score is the fraction
predicted as stated, per attribute and overall (micro average over every mentioned attribute of every image).
Chance level depends on which attributes captions mention; :func:`chance_level` gives it for a caption set.

The classifier's penultimate layer (``FEATURE_DIM`` units) is also a feature space that needs no external
weights: the Fréchet distance between generated and real test images there is ``fd_attr`` (a built-in-data
Fréchet distance, not an FID).

Recipe (cheap on purpose: about half a minute on one busy CPU core for 4,000 images, always trained on the
CPU with one thread): images area-downsampled to ``INPUT_SIZE`` px, six 3x3 conv+BN+ReLU layers (three
with stride 2), a linear layer to the features, one linear head per attribute; Adam with a one-cycle
schedule, ``EPOCHS`` passes of batches of ``BATCH``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfgan.data.builtin_render import ATTRIBUTES
from dfgan.metrics.features import Extractor, extract, real_batches
from dfgan.progress import progress_bar
from dfgan.runs import cache_dir, load_or_make

CLASSIFIER_VERSION = 2  # bump when the recipe below changes: cached classifiers are retrained
INPUT_SIZE = 32  # classifier resolution (images are area-downsampled to it)
WIDTH = 16  # channels of the first conv layer
FEATURE_DIM = 128  # penultimate features, before their ReLU (the fd_attr feature space)
EPOCHS = 8
BATCH = 64
MAX_LR = 3e-3
SEED = 0
TRAIN_THREADS = 1  # one CPU thread: the same weights on any machine, and faster than 2 threads on busy CPUs


def _attributes() -> dict[str, list[str]]:
    return ATTRIBUTES


class AttributeClassifier(nn.Module):
    """Predicts every built-in attribute from an image in [-1, 1]; ``forward`` returns (features, logits per
    attribute), the features being the penultimate layer before its ReLU."""

    def __init__(self, classes: dict[str, int], width: int = WIDTH, feature_dim: int = FEATURE_DIM):
        super().__init__()
        c = width

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        side = INPUT_SIZE // 8
        self.trunk = nn.Sequential(
            *block(3, c, 1), *block(c, 2 * c, 2), *block(2 * c, 2 * c, 1), *block(2 * c, 4 * c, 2),
            *block(4 * c, 4 * c, 1), *block(4 * c, 8 * c, 2), nn.Flatten(),
            nn.Linear(8 * c * side * side, feature_dim),
        )
        self.classes = dict(classes)
        # features are taken before this ReLU: no dead (constant) units, so their covariance is full rank
        self.heads = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, sum(self.classes.values())))

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """uint8 or [-1, 1] float (B, 3, H, W) -> float [-1, 1] at ``INPUT_SIZE`` (area downsampling)."""
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
        h = x.shape[-1]
        if h == INPUT_SIZE:
            return x
        if h > INPUT_SIZE and h % INPUT_SIZE == 0:
            return F.avg_pool2d(x, h // INPUT_SIZE)
        return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                             antialias=h > INPUT_SIZE)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        f = self.trunk(self.prepare(images))
        logits = self.heads(f).split(list(self.classes.values()), dim=1)
        return f, dict(zip(self.classes, logits, strict=True))


# ---- training and cache --------------------------------------------------------------------------------------------


def _labels(dataset) -> torch.Tensor:
    arr = dataset.attribute_array()
    return torch.stack([torch.as_tensor(arr[k], dtype=torch.long) for k in _attributes()], dim=1)


def _images(dataset) -> torch.Tensor:
    """Every image of the split, prepared for the classifier: float (N, 3, INPUT_SIZE, INPUT_SIZE)."""
    return torch.cat([AttributeClassifier.prepare(b) for b in real_batches(dataset, 256)])


def recipe() -> dict[str, Any]:
    return {"version": CLASSIFIER_VERSION, "input": INPUT_SIZE, "width": WIDTH, "features": FEATURE_DIM,
            "epochs": EPOCHS, "batch": BATCH, "max_lr": MAX_LR, "seed": SEED}


def classifier_path(train_dataset) -> Path:
    key = hashlib.sha256(json.dumps({"data": train_dataset.content_hash, **recipe()}, sort_keys=True).encode())
    return cache_dir() / "attr_classifier" / f"attr-{train_dataset.content_hash}-{key.hexdigest()[:12]}.pt"


@torch.no_grad()
def predict(model: AttributeClassifier, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    model.eval()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in model.classes}
    dev = next(model.parameters()).device
    for s in range(0, len(images), batch_size):
        _, logits = model(images[s:s + batch_size].to(dev))
        for k, v in logits.items():
            out[k].append(v.argmax(1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def train_classifier(train_dataset, test_dataset=None, *, device="cpu", progress: bool = False
                     ) -> tuple[AttributeClassifier, dict[str, Any]]:
    """Train the attribute classifier on the real images of ``train_dataset`` (seeded, deterministic on CPU);
    ``info`` holds the per-attribute accuracy on ``test_dataset`` (held-out real images) when given."""
    classes = {k: len(v) for k, v in _attributes().items()}
    x, y = _images(train_dataset), _labels(train_dataset)
    steps = max(1, math.ceil(EPOCHS * len(x) / BATCH))
    device = torch.device(device)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        model = _fit(classes, x, y, steps, device, progress)
    finally:
        torch.set_num_threads(threads)
    info: dict[str, Any] = {**recipe(), "steps": steps, "n_train": len(x),
                            "seconds": round(time.perf_counter() - t0, 2), "dataset_hash": train_dataset.content_hash}
    if test_dataset is not None:
        pred = predict(model, _images(test_dataset))
        yt = _labels(test_dataset)
        info["heldout_accuracy"] = {k: float((pred[k] == yt[:, n]).float().mean()) for n, k in enumerate(pred)}
        info["heldout_n"] = len(yt)
    return model, info


def _fit(classes, x, y, steps, device, progress) -> AttributeClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = AttributeClassifier(classes).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=MAX_LR)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, MAX_LR, total_steps=steps)
        g = torch.Generator().manual_seed(SEED)
        order: list[int] = []
        model.train()
        bar = progress_bar(steps, "attribute classifier", unit="step", leave=False) if progress else None
        for _ in range(steps):
            if len(order) < BATCH:
                order += torch.randperm(len(x), generator=g).tolist()
            idx, order = order[:BATCH], order[BATCH:]
            _, logits = model(x[idx].to(device))
            yy = y[idx].to(device)
            loss = sum(F.cross_entropy(lg, yy[:, n]) for n, lg in enumerate(logits.values()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return model.eval().requires_grad_(False)


def load_classifier(train_dataset, test_dataset=None, *, device="cpu", progress: bool = False
                    ) -> tuple[AttributeClassifier, dict[str, Any]]:
    """The cached classifier for this dataset (trained and saved atomically on first use)."""
    path = classifier_path(train_dataset)

    def make() -> dict:
        model, info = train_classifier(train_dataset, test_dataset, device="cpu", progress=progress)
        return {"state_dict": model.state_dict(), "classes": model.classes, "info": json.dumps(info)}

    saved = load_or_make(path, make)
    model = AttributeClassifier(saved["classes"])
    model.load_state_dict(saved["state_dict"])
    info = json.loads(saved["info"])
    info["path"] = str(path)
    info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return model.to(device).eval().requires_grad_(False), info


# ---- scoring -------------------------------------------------------------------------------------------------------


def mention_array(dataset, image_idx, caption_idx) -> np.ndarray:
    """(n, A) bool: which attributes caption ``caption_idx[k]`` of image ``image_idx[k]`` mentions."""
    names = list(_attributes())
    return np.array([[dataset.mentions(int(i), int(j))[a] for a in names]
                     for i, j in zip(image_idx, caption_idx, strict=True)], dtype=bool).reshape(-1, len(names))


def attribute_accuracy(predicted: dict[str, np.ndarray], stated: dict[str, np.ndarray], mentioned: np.ndarray
                       ) -> dict[str, float]:
    """``overall`` (micro average) and per-attribute fraction of mentioned attributes predicted as stated.

    ``predicted``/``stated``: attribute -> (n,) class ids; ``mentioned``: (n, A) bool in ``ATTRIBUTES`` order.
    An attribute no caption mentions gets NaN."""
    names = list(_attributes())
    hits, total, out = 0, 0, {}
    for a, name in enumerate(names):
        m = mentioned[:, a]
        ok = (np.asarray(predicted[name]) == np.asarray(stated[name]))[m]
        out[name] = float(ok.mean()) if m.any() else float("nan")
        hits, total = hits + int(ok.sum()), total + int(m.sum())
    out["overall"] = hits / total if total else float("nan")
    return out


def chance_level(mentioned: np.ndarray) -> float:
    """Expected overall score of uniform random guesses for these mention masks."""
    sizes = np.array([len(v) for v in _attributes().values()], dtype=np.float64)
    m = np.asarray(mentioned, dtype=np.float64)
    return float((m / sizes).sum() / max(m.sum(), 1))


class AttributeExtractor(Extractor):
    """The attribute classifier as a feature extractor: penultimate ``features`` and per-attribute ``logits``."""

    def __init__(self, model: AttributeClassifier, info: dict[str, Any], device):
        self.model, self.info, self.device = model, info, torch.device(device)
        self.key, self.dim = "attr_classifier", FEATURE_DIM
        self.names = list(model.classes)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        f, logits = self.model(images.to(self.device))
        out = {"features": f.float().cpu().numpy()}
        for k, v in logits.items():
            out[f"pred.{k}"] = v.argmax(1).cpu().numpy()
        return out

    def protocol(self) -> dict[str, Any]:
        return {"extractor": self.key, "weights_sha256": self.info.get("sha256"), "recipe": recipe(),
                "trained_on": self.info.get("dataset_hash"), "classifier_heldout_accuracy":
                self.info.get("heldout_accuracy"), "input": f"area-downsampled to {INPUT_SIZE}px, [-1, 1]"}


def real_accuracy(model: AttributeClassifier, dataset, caption_index: int | np.ndarray = 0,
                  shuffle_seed: int | None = None, device="cpu") -> dict[str, float]:
    """Attribute accuracy of *real* images of ``dataset`` against their captions (``caption_index`` per image),
    or, with ``shuffle_seed``, against the captions of a random permutation of the images (chance baseline)."""
    n = len(dataset)
    img = np.arange(n)
    cap_img = np.random.default_rng(shuffle_seed).permutation(n) if shuffle_seed is not None else img
    j = np.broadcast_to(np.asarray(caption_index), (n,))
    feats = extract(AttributeExtractor(model, {}, device), real_batches(dataset, 256))
    truth = dataset.attribute_array()
    stated = {k: v[cap_img] for k, v in truth.items()}
    mentioned = mention_array(dataset, cap_img, j)
    pred = {k: feats[f"pred.{k}"] for k in model.classes}
    res = attribute_accuracy(pred, stated, mentioned)
    res["chance"] = chance_level(mentioned)
    return res
