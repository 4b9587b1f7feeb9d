"""The sample grids a run saves as it trains: the same captions with the same truncated noise at every call, so
that grids of one run, or of runs of different variants, show the same thing."""

from __future__ import annotations

from pathlib import Path

import torch

from dfgan.data.vocab import pad_caption
from dfgan.images import last_stage, save_caption_grid
from dfgan.noise import truncated_noise


def grid_captions(dataset, n: int = 8) -> list[str]:
    """Fixed captions for sample grids: the dataset's demo captions, else the first caption of n images."""
    if hasattr(dataset, "demo_captions"):
        return list(dataset.demo_captions(n))
    return [dataset.caption_text(i, 0) for i in range(min(n, len(dataset)))]


class SampleGrid:
    """Generates the same captions x the same truncated noise at every call, saves a labelled PNG."""

    def __init__(self, dataset, conditioner, z_dim: int, truncation: float, device, n_captions=8, n_noise=4):
        self.captions = grid_captions(dataset, n_captions)
        ids = [pad_caption(dataset.vocab.encode(c)[0]) for c in self.captions]
        self.caps = torch.stack([c for c, _ in ids])
        self.lens = torch.tensor([max(n, 1) for _, n in ids])
        self.conditioner, self.device, self.n_noise = conditioner, device, n_noise
        g = torch.Generator().manual_seed(1234)
        self.noise = truncated_noise(n_noise, z_dim, truncation, g)

    @torch.no_grad()
    def render(self, generator, path: Path) -> Path:
        words, sent = self.conditioner.encode(self.caps, self.lens)
        mask = (self.caps == 0).to(self.device)
        rows = []
        was_training = generator.training
        generator.eval()  # batch-norm fusions (cbn) use running statistics when sampling
        try:
            for z in self.noise:
                zz = z[None].expand(len(self.captions), -1).to(self.device)
                rows.append(last_stage(generator(zz, sent, words, mask)).float().cpu())
        finally:
            generator.train(was_training)
        save_caption_grid(torch.cat(rows), self.captions, path, nrow=len(self.captions))
        return path
