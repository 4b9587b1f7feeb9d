"""Deterministic, resumable batch plan: every step's batch is a pure function of (seed, step).

Images are visited in a seeded permutation per epoch; the caption drawn for each item (one of K, as DF-GAN
does) and any subset of an over-long caption come from a per-step seed. With ``pairs`` (ground-truth attributes,
the built-in data) the permutation is made of adjacent pairs of images that differ in exactly one attribute
(``paired_permutation``), so that DF-GAN's rolled-batch mismatched pairs include hard negatives. So N steps
straight and N/2 steps, a resume, then N/2 steps see exactly the same batches, with any number of loader
workers. Under ``torchrun`` every rank computes the same global batch and takes its own slice of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dfgan.data.order import epoch_order


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) % (2**63) for k in keys]))


class BatchPlan:
    def __init__(self, n_images: int, captions_per_image: int, batch_size: int, seed: int,
                 world_size: int = 1, rank: int = 0, *, pairs: dict[str, np.ndarray] | None = None,
                 vary: Sequence[str] = ()):
        """``pairs``: every image's attribute ids (name -> (N,)); with it each epoch is a ``paired_permutation``
        over the attributes ``vary``. Any batch size works: whatever the parity of a batch's start, every other
        adjacent pair in it is a pair, so half of the rolled mismatches are hard negatives."""
        if n_images < batch_size * world_size:
            raise ValueError(
                f"dataset has {n_images} images, fewer than one global batch ({batch_size} x {world_size})"
            )
        self.n, self.k, self.b, self.seed = n_images, captions_per_image, batch_size, seed
        self.world, self.rank = world_size, rank
        self.pairs, self.vary = pairs, tuple(vary)
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            rng = _rng(self.seed, 1, epoch)
            self._perm_cache = {epoch: epoch_order(self.n, rng, self.pairs, self.vary)}
        return self._perm_cache[epoch]

    def keys(self, step: int) -> list[tuple[int, int, int]]:
        """(image, caption, subseed) for this rank's share of the global batch of ``step``."""
        gb = self.b * self.world
        start = step * gb
        idx = []
        while len(idx) < gb:
            epoch, pos = divmod(start + len(idx), self.n)
            take = min(gb - len(idx), self.n - pos)
            idx.extend(self._perm(epoch)[pos:pos + take].tolist())
        r = _rng(self.seed, 2, step)
        caps = r.integers(self.k, size=gb)
        subs = r.integers(2**31, size=gb)
        sl = slice(self.rank * self.b, (self.rank + 1) * self.b)
        return list(zip(idx[sl], caps[sl].tolist(), subs[sl].tolist()))


def collate(items: list[dict]) -> dict:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "caption": torch.stack([it["caption"] for it in items]),
        "length": torch.tensor([it["length"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "caption_index": torch.tensor([it["caption_index"] for it in items], dtype=torch.long),
    }


class _StepBatches(Dataset):
    def __init__(self, dataset, plan: BatchPlan, start: int, stop: int):
        self.dataset, self.plan, self.start, self.stop = dataset, plan, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, k: int) -> dict:
        step = self.start + k
        batch = collate([self.dataset[key] for key in self.plan.keys(step)])
        batch["step"] = step
        return batch


def step_loader(dataset, plan: BatchPlan, start: int, stop: int, num_workers: int = 0) -> DataLoader:
    """Batches for steps ``start..stop-1`` in order."""
    return DataLoader(
        _StepBatches(dataset, plan, start, stop),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
