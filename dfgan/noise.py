"""Generator noise: the truncated noise of sampling and evaluation, and the per-step noise of training."""

from __future__ import annotations

import torch

TRUNCATION_BOUND = 2.0  # DF-GAN HEAD samples 0.88 * truncnorm(-2, 2) for evaluation


def truncated_noise(n: int, z_dim: int, truncation: float, generator: torch.Generator | None = None,
                    device="cpu") -> torch.Tensor:
    """``truncation * truncnorm(-2, 2)`` noise, as DF-GAN uses for sampling and FID (not for training)."""
    z = torch.empty(n, z_dim)
    torch.nn.init.trunc_normal_(z, 0.0, 1.0, -TRUNCATION_BOUND, TRUNCATION_BOUND, generator=generator)
    return (z * truncation).to(device)


def step_noise(seed: int, step: int, n: int, z_dim: int, rank: int = 0) -> torch.Tensor:
    """Training noise z ~ N(0, I), a pure function of (seed, step, rank): exact resumes."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + rank) % (2**63))
    return torch.randn(n, z_dim, generator=g)
