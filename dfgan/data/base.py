"""The contract every dataset keeps.

An item is a dict:
  ``image``   float32 (3, H, W) in [-1, 1]
  ``caption`` int64 (MAX_WORDS,), word ids padded with 0
  ``length``  int, number of real tokens (>= 1)
  ``index``   int, image index in the split
  ``caption_index`` int, which of the K captions was drawn (caption j of image i is global caption i*K + j)
Datasets also expose ``vocab``, ``captions_per_image`` (K), ``content_hash`` (identifies the data and the
vocabulary, used to cache text encoders and reference statistics), ``split``, ``imsize`` and
``caption_ids(i, j)`` (the raw id list of caption j of image i).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from dfgan.data.vocab import Vocab, pad_caption


class CaptionDataset(Dataset):
    vocab: Vocab
    captions_per_image: int
    content_hash: str
    split: str
    imsize: int
    name: str = "dataset"

    def __len__(self) -> int:  # number of images
        raise NotImplementedError

    def load_image(self, i: int) -> torch.Tensor:
        """(3, H, W) float32 in [-1, 1], transformed for this split."""
        raise NotImplementedError

    def caption_ids(self, i: int, j: int) -> list[int]:
        raise NotImplementedError

    def caption_text(self, i: int, j: int) -> str:
        return self.vocab.decode(self.caption_ids(i, j))

    def __getitem__(self, key) -> dict:
        """``ds[i]``: image i with a random one of its K captions (DF-GAN); ``ds[(i, j, seed)]``: caption j,
        any >18-token subset drawn from ``seed`` (what the deterministic training sampler asks for)."""
        if isinstance(key, tuple):
            i, j, seed = key
            return self.item(int(i), int(j), np.random.default_rng(int(seed)))
        j = int(torch.randint(self.captions_per_image, ()).item())
        return self.item(int(key), j, np.random.default_rng(int(torch.randint(2**31, ()).item())))

    def item(self, i: int, j: int, rng: np.random.Generator | None = None) -> dict:
        cap, length = pad_caption(self.caption_ids(i, j), rng)
        return {"image": self.load_image(i), "caption": cap, "length": length, "index": i, "caption_index": j}
