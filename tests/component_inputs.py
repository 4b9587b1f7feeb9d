"""Sizes and inputs shared by the component tests: a tiny model and a batch of padded word sequences."""

from __future__ import annotations

import torch

NF, COND, WORD, Z, T = 4, 12, 10, 8, 18  # channels, sentence dim, word dim, noise dim, words per caption
TINY = ["model.nf=4", "data.imsize=32", f"model.z_dim={Z}"]


def padding_mask(lengths, t: int = T) -> torch.Tensor:
    """True where a caption of each length has padding."""
    return torch.arange(t)[None] >= torch.as_tensor(lengths)[:, None]
