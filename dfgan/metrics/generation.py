"""The images an evaluation scores: generated from the split's captions in a fixed order (``CAPTION_ORDER``) with
DF-GAN's truncated sampling noise from a seeded generator, as uint8 exactly as a PNG would store them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from dfgan.data.vocab import pad_caption
from dfgan.images import last_stage, to_uint8
from dfgan.noise import truncated_noise
from dfgan.progress import progress_bar

EVAL_SEED = 0  # noise of the generated images and R-precision candidates
CAPTION_ORDER = "image p % N with its caption (p // N) % K (image-major passes over the split's captions)"


def caption_plan(n_images: int, captions_per_image: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(image index, caption index) of each of ``n`` generated images (see ``CAPTION_ORDER``)."""
    p = np.arange(n)
    return p % n_images, (p // n_images) % captions_per_image


@torch.no_grad()
def generate_images(generator, conditioner, dataset, n: int, batch_size: int, *, z_dim: int, truncation: float,
                    device, seed: int = EVAL_SEED, progress: bool = False
                    ) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
    """Yield (uint8 images (B, 3, H, W) on ``device``, image indices, caption indices) for ``n`` images."""
    img_idx, cap_idx = caption_plan(len(dataset), dataset.captions_per_image, n)
    noise = truncated_noise(n, z_dim, truncation, torch.Generator().manual_seed(seed))
    was_training = generator.training
    generator.eval()
    bar = progress_bar(n, "generate", unit="img", leave=False) if progress else None
    try:
        for s in range(0, n, batch_size):
            ii, jj = img_idx[s:s + batch_size], cap_idx[s:s + batch_size]
            ids = [pad_caption(dataset.caption_ids(int(i), int(j))) for i, j in zip(ii, jj, strict=True)]
            caps = torch.stack([c for c, _ in ids])
            lens = torch.tensor([max(k, 1) for _, k in ids])
            words, sent = conditioner.encode(caps, lens)
            mask = (caps == 0).to(device)
            z = noise[s:s + batch_size].to(device)
            out = last_stage(generator(z, sent, words if conditioner.need_words else None, mask))
            if bar is not None:
                bar.update(len(ii))
            yield to_uint8(out), ii, jj
    finally:
        generator.train(was_training)
        if bar is not None:
            bar.close()
