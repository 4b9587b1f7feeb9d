"""Fusion blocks: how the text condition enters the generator's features.

Every fusion block is built as ``FUSIONS.build(name, cond_dim=..., channels=..., spec=FusionSpec,
word_dim=..., resolution=...)`` and called as ``block(x, cond, words=None, mask=None)``.
"""

from __future__ import annotations

import torch
from torch import nn

from dfgan.registry import FUSIONS

LRELU_SLOPE = 0.2  # DF-GAN uses LeakyReLU(0.2) after each affine (the paper's figure draws ReLU)


class Affine(nn.Module):
    """DF-GAN's affine transformation: ``gamma(y) * x + beta(y)`` with channel-wise MLPs (paper Sec. 3.3).

    ``fc_gamma``/``fc_beta`` are Linear(cond, C) -> ReLU -> Linear(C, C), initialised to the identity map
    (gamma's last layer weight 0 bias 1, beta's weight 0 bias 0), as in the official code. No normalisation.
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.fc_gamma = nn.Sequential()
        self.fc_gamma.add_module("linear1", nn.Linear(cond_dim, channels))
        self.fc_gamma.add_module("relu1", nn.ReLU(inplace=True))
        self.fc_gamma.add_module("linear2", nn.Linear(channels, channels))
        self.fc_beta = nn.Sequential()
        self.fc_beta.add_module("linear1", nn.Linear(cond_dim, channels))
        self.fc_beta.add_module("relu1", nn.ReLU(inplace=True))
        self.fc_beta.add_module("linear2", nn.Linear(channels, channels))
        self.reset_identity()

    def reset_identity(self) -> None:
        nn.init.zeros_(self.fc_gamma.linear2.weight)
        nn.init.ones_(self.fc_gamma.linear2.bias)
        nn.init.zeros_(self.fc_beta.linear2.weight)
        nn.init.zeros_(self.fc_beta.linear2.bias)

    def modulation(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc_gamma(y), self.fc_beta(y)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.modulation(y)
        return gamma[:, :, None, None] * x + beta[:, :, None, None]


class DFBlock(nn.Module):
    """Deep text-image fusion block (DF-GAN Sec. 3.3): ``depth`` stacked (Affine -> LeakyReLU(0.2)).

    DF-GAN uses depth 2 (``affine0``, ``affine1``); depth 1 and deeper stacks are the paper's depth ablation.
    """

    def __init__(self, cond_dim: int, channels: int, depth: int = 2):
        super().__init__()
        self.depth = depth
        for i in range(depth):
            self.add_module(f"affine{i}", Affine(cond_dim, channels))
        self.act = nn.LeakyReLU(LRELU_SLOPE, inplace=False)

    def affines(self) -> list[Affine]:
        return [getattr(self, f"affine{i}") for i in range(self.depth)]

    def forward(self, x, cond, words=None, mask=None, modulation=None):
        """``modulation``: precomputed [(gamma, beta)] per affine (the fused-affine fast path)."""
        for i, aff in enumerate(self.affines()):
            if modulation is None:
                x = aff(x, cond)
            else:
                gamma, beta = modulation[i]
                x = gamma[:, :, None, None] * x + beta[:, :, None, None]
            x = self.act(x)
        return x


@FUSIONS.register("dfblock")
def dfblock(cond_dim: int, channels: int, spec=None, **_: object) -> DFBlock:
    """DF-GAN's fusion block: two stacked affine transformations with LeakyReLU (paper Sec. 3.3)."""
    return DFBlock(cond_dim, channels, depth=2)
