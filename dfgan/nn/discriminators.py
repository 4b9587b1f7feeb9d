"""Discriminator trunks: images -> (B, 8nf, 4, 4) features. They see no text; the head does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfgan.nn.channels import discriminator_pairs
from dfgan.nn.fusion import LRELU_SLOPE
from dfgan.registry import DISCRIMINATORS


class DBlock(nn.Module):
    """DF-GAN's residual down-sampling block (``D_Block``): ``shortcut(x) + gamma * residual(x)``.

    residual = 4x4 stride-2 conv -> LReLU -> 3x3 conv -> LReLU (no biases); shortcut = 1x1 conv where the
    channels change, then 2x average pooling; ``gamma`` is a learned scalar that starts at 0.
    The official code also instantiates ``conv_s`` where channels do not change and never uses it; we do not
    build those (see ``dfgan.official`` and ``dfgan.metrics.nop`` for the counting rule).
    """

    def __init__(self, fin: int, fout: int, downsample: bool = True):
        super().__init__()
        self.downsample = downsample
        self.learned_shortcut = fin != fout
        self.conv_r = nn.Sequential(
            nn.Conv2d(fin, fout, 4, 2, 1, bias=False),
            nn.LeakyReLU(LRELU_SLOPE, inplace=True),
            nn.Conv2d(fout, fout, 3, 1, 1, bias=False),
            nn.LeakyReLU(LRELU_SLOPE, inplace=True),
        )
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, 1, 1, 0)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.conv_r(x)
        if self.learned_shortcut:
            x = self.conv_s(x)
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        return x + self.gamma * res


class DFGANDiscriminator(nn.Module):
    """DF-GAN's discriminator trunk (official ``NetD``): 3x3 ``conv_img`` then ``DBlocks`` down to 4x4."""

    def __init__(self, nf: int = 32, imsize: int = 256):
        super().__init__()
        self.nf, self.imsize = nf, imsize
        self.out_channels = nf * 8
        self.conv_img = nn.Conv2d(3, nf, 3, 1, 1)
        pairs = discriminator_pairs(nf, imsize)
        if pairs and pairs[-1][1] != self.out_channels:
            # below 32 px (the early stages of a stacked generator) DF-GAN's schedule stops short of 8nf
            # channels; the last block widens to 8nf so every trunk feeds the same heads. From 32 px up, the
            # schedule already ends at 8nf and this changes nothing.
            pairs[-1] = (pairs[-1][0], self.out_channels)
        self.DBlocks = nn.ModuleList([DBlock(i, o) for i, o in pairs])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_img(x)
        for block in self.DBlocks:
            out = block(out)
        return out


@DISCRIMINATORS.register("dfgan")
def dfgan_discriminator(nf: int, imsize: int) -> DFGANDiscriminator:
    """DF-GAN's residual discriminator trunk (paper Sec. 3.2), one per image resolution."""
    return DFGANDiscriminator(nf, imsize)
