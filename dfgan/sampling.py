"""Noise and image helpers shared by training, sampling and evaluation."""

from __future__ import annotations

import torch

TRUNCATION_BOUND = 2.0  # DF-GAN HEAD samples 0.88 * truncnorm(-2, 2) for evaluation


def truncated_noise(n: int, z_dim: int, truncation: float, generator: torch.Generator | None = None,
                    device="cpu") -> torch.Tensor:
    """``truncation * truncnorm(-2, 2)`` noise, as DF-GAN uses for sampling and FID (not for training)."""
    z = torch.empty(n, z_dim)
    torch.nn.init.trunc_normal_(z, 0.0, 1.0, -TRUNCATION_BOUND, TRUNCATION_BOUND, generator=generator)
    return (z * truncation).to(device)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float (B,3,H,W) -> uint8 (B,3,H,W), rounding as torchvision.save_image does."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)


def last_stage(images):
    """The full-resolution output of a generator (the last stage of a stacked one)."""
    return images[-1] if isinstance(images, (list, tuple)) else images
