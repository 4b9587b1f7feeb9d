"""Memorisation check: do generated images sit closer to the training images than unseen real ones do?

A generator that copies training images would score well on attribute accuracy and Fréchet distances, so each
final evaluation also asks whether its images are nearer the images it was trained on than real images it never
saw. In one feature space (any extractor: the attribute classifier's penultimate features for
``memorisation_attr``, Inception pool3 for ``memorisation_inception``), each generated image p (made from
caption j of split image i) gets its nearest real neighbour (Euclidean) among the training images (all of them,
or a seeded sample of ``MAX_TRAIN_REFERENCE``) and the split's images except image i (its caption describes i,
which would favour the split). ``share`` = the fraction of generated images whose nearest real neighbour is a
training image (ties count half).

If the generator has not memorised its training images, which real images were the training ones is, from
where its samples land, an arbitrary labelling of images drawn from one distribution (the built-in splits are
independent draws): the nearest of ``N_train + N_split`` exchangeable images is a training one with probability
``expected = N_train / (N_train + N_split)``. Copies of training images push ``share`` to 1. The value is the
excess over that, scaled so that 1 is every nearest neighbour a training image:

    memorisation = (share - expected) / (1 - expected)      (0: no sign of memorisation)

With equally many training and held-out images this is the "DCR share" (distance to closest record, expected
50%) of Platzer & Reutterer, "Holdout-Based Empirical Assessment of Mixed-Type Synthetic Data", Frontiers in Big
Data 4:679939 (2021), here with all training images for power. Like the data-copying test of Meehan, Chaudhuri &
Dasgupta, "A Non-Parametric Test to Detect Data-Copying in Generative Models" (AISTATS 2020), it judges closeness
to the training set against held-out real images, not an absolute distance. A run is flagged when ``share``
exceeds ``expected`` by more than a one-sided binomial test at ``FLAG_ALPHA`` allows (normal approximation, the
generated images taken as independent): ``threshold`` (on the value's scale) in the details. A collapsed
generator (all images alike) breaks that independence: its images share one nearest neighbour and score 0 or 1
as a whole, so a flag is read together with the Fréchet distance.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from dfgan.data.images import transform
from dfgan.metrics.features import reference_features

SAMPLE_SEED = 0  # the training images a memorisation check compares with, when there are more than the maximum
MAX_TRAIN_REFERENCE = 10_000  # training images compared with at most (their features are cached per extractor)
FLAG_ALPHA = 0.01  # one-sided level of the flag
STATISTIC = ("(share - expected) / (1 - expected), share = fraction of generated images whose nearest real image "
             "(Euclidean; training images and the split's images except the one whose caption made it) is a "
             "training image (ties half), expected = N_train / (N_train + N_split) without memorisation; 0 = no "
             "sign of memorisation, 1 = every nearest neighbour a training image, > threshold = flagged "
             "(holdout-based DCR share, Platzer & Reutterer 2021)")


class SubsetView:
    """Images ``indices`` of ``dataset`` as a dataset of their own for reference features: the stored pixels (or
    the test-time transform, never a random crop) and a content hash of its own."""

    def __init__(self, dataset, indices: np.ndarray, label: str):
        self.base, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.name = getattr(dataset, "name", type(dataset).__name__)
        self.split = f"{getattr(dataset, 'split', '?')}-{label}"
        self.imsize = getattr(dataset, "imsize", None)
        blob = json.dumps({"data": getattr(dataset, "content_hash", None), "split": self.split,
                           "indices": self.indices.tolist()}).encode()
        self.content_hash = hashlib.sha256(blob).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.indices)

    def load_image(self, i: int) -> torch.Tensor:
        j = int(self.indices[i])
        if hasattr(self.base, "read_image"):  # image files: the deterministic test-time transform
            return transform(self.base.read_image(j), self.imsize, train=False)
        return self.base.load_image(j)


class _Stored(SubsetView):
    def image_uint8(self, i: int) -> np.ndarray:
        return self.base.image_uint8(int(self.indices[i]))


def training_sample(train, n: int = MAX_TRAIN_REFERENCE, seed: int = SAMPLE_SEED) -> SubsetView:
    """A seeded sample of ``n`` training images (all of them if there are fewer)."""
    n = min(int(n), len(train))
    idx = np.sort(np.random.default_rng(seed).permutation(len(train))[:n])
    view = _Stored if hasattr(train, "image_uint8") else SubsetView
    return view(train, idx, f"sample{n}-seed{seed}")


def nearest_distances(queries: np.ndarray, refs: np.ndarray, exclude: np.ndarray | None = None,
                      chunk: int = 1024) -> np.ndarray:
    """Euclidean distance of each query row to its nearest row of ``refs``; ``exclude[k]`` (a row index of
    ``refs``, or -1) is left out for query k."""
    q = torch.from_numpy(np.asarray(queries, dtype=np.float64))
    r = torch.from_numpy(np.asarray(refs, dtype=np.float64))
    out = np.empty(len(q))
    for s in range(0, len(q), chunk):
        d = torch.cdist(q[s:s + chunk], r)
        if exclude is not None:
            ex = torch.as_tensor(np.asarray(exclude[s:s + chunk], dtype=np.int64))
            rows = torch.nonzero(ex >= 0).flatten()
            d[rows, ex[rows]] = math.inf
        out[s:s + chunk] = d.min(1).values.numpy()
    return out


def flag_threshold(n: int, expected: float, alpha: float = FLAG_ALPHA) -> float:
    """The value (excess scale) above which n generated images are flagged: a one-sided binomial test of
    ``share = expected`` (normal approximation)."""
    se = math.sqrt(expected * (1 - expected) / max(n, 1))
    return float(stats.norm.isf(alpha)) * se / (1 - expected)


@dataclass
class MemorisationResult:
    value: float
    details: dict[str, float]


def memorisation_excess(generated: np.ndarray, train_refs: np.ndarray, split_refs: np.ndarray,
                        source_index: np.ndarray | None = None) -> MemorisationResult:
    """The statistic of the module docstring; ``source_index[k]`` = the split image whose caption made generated
    image k (left out of its split neighbours)."""
    d_train = nearest_distances(generated, train_refs)
    d_split = nearest_distances(generated, split_refs, exclude=source_index)
    share = float(np.mean((d_train < d_split) + 0.5 * (d_train == d_split)))
    n, n_train = len(generated), len(train_refs)
    n_split = len(split_refs) - (source_index is not None)
    expected = n_train / (n_train + n_split)
    value = (share - expected) / (1 - expected)
    se = math.sqrt(expected * (1 - expected) / n)
    z = (share - expected) / se
    med_train, med_split = float(np.median(d_train)), float(np.median(d_split))
    threshold = flag_threshold(n, expected)
    return MemorisationResult(value, {
        "share": share, "expected": expected, "median_nn_train": med_train, "median_nn_split": med_split,
        "median_ratio": med_train / med_split if med_split > 0 else float("nan"), "z": z,
        "p_one_sided": float(stats.norm.sf(z)), "threshold": threshold, "flagged": float(value > threshold),
        "n_train_reference": float(n_train), "n_split_reference": float(n_split)})


def evaluate(generated: np.ndarray, source_index: np.ndarray, extractor, split_features: np.ndarray, train,
             batch_size: int, *, progress: bool = False) -> tuple[float, dict[str, float], dict]:
    """(value, details, protocol) of the check for ``generated`` features (made from the captions of split images
    ``source_index``), the split's reference features and the training images of ``train`` (their features in
    ``extractor``'s space cached like any reference)."""
    sample = training_sample(train)
    ref = reference_features(sample, extractor, batch_size, progress=progress)
    res = memorisation_excess(generated, ref["features"], split_features, source_index=source_index)
    return res.value, res.details, {
        "statistic": STATISTIC, "flag_alpha": FLAG_ALPHA,
        "train_reference": {"hash": ref["hash"], "n": ref["n"], "split": sample.split, "sample_seed": SAMPLE_SEED,
                            "dataset_hash": getattr(train, "content_hash", None)}}
