"""Generator backbones. ``one_stage`` is DF-GAN's; alternatives register here too.

Every backbone is built as ``BACKBONES.build(name, model=ModelSpec, imsize=..., cond_dim=..., word_dim=...)``,
has ``stage_sizes`` (resolutions of the images it emits, smallest first) and is called as
``G(noise, sentence, words=None, mask=None)``; it returns one image tensor when it has one stage, else a
list of images, one per stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfgan.nn.channels import generator_pairs
from dfgan.nn.fusion import LRELU_SLOPE
from dfgan.registry import BACKBONES, FUSIONS


def make_fusion(fusion_spec, cond_dim: int, channels: int, word_dim: int, resolution: int) -> nn.Module:
    return FUSIONS.build(
        fusion_spec.name,
        cond_dim=cond_dim,
        channels=channels,
        spec=fusion_spec,
        word_dim=word_dim,
        resolution=resolution,
    )


class GBlock(nn.Module):
    """DF-GAN generator block (``G_Block``): upsample x2, then ``shortcut(x) + residual(x)``.

    residual = fuse1 -> 3x3 conv -> fuse2 -> 3x3 conv; shortcut = 1x1 conv only where channels change.
    """

    def __init__(self, fusion_spec, cond_dim: int, in_ch: int, out_ch: int, word_dim: int, resolution: int,
                 upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.learnable_sc = in_ch != out_ch
        self.c1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.c2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.fuse1 = make_fusion(fusion_spec, cond_dim, in_ch, word_dim, resolution)
        self.fuse2 = make_fusion(fusion_spec, cond_dim, out_ch, word_dim, resolution)
        if self.learnable_sc:
            self.c_sc = nn.Conv2d(in_ch, out_ch, 1, 1, 0)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_sc(x) if self.learnable_sc else x

    def residual(self, x, cond, words=None, mask=None, modulation=None):
        m1, m2 = (None, None) if modulation is None else modulation
        h = self.fuse1(x, cond, words, mask, **({} if m1 is None else {"modulation": m1}))
        h = self.c1(h)
        h = self.fuse2(h, cond, words, mask, **({} if m2 is None else {"modulation": m2}))
        return self.c2(h)

    def forward(self, x, cond, words=None, mask=None, modulation=None):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.shortcut(x) + self.residual(x, cond, words, mask, modulation)


class OneStageGenerator(nn.Module):
    """DF-GAN's one-stage generator (paper Sec. 3.1, official ``NetG``).

    ``fc`` maps the noise to a 4x4 map with 8nf channels; a stack of ``GBlocks`` doubles the resolution each
    time, every fusion block conditioned on ``cat(noise, sentence)``; ``to_rgb`` is LReLU -> 3x3 conv -> tanh.
    """

    def __init__(self, nf: int = 32, z_dim: int = 100, cond_dim: int = 256, imsize: int = 256,
                 fusion_spec=None, word_dim: int = 256):
        super().__init__()
        from dfgan.spec import FusionSpec

        fusion_spec = fusion_spec or FusionSpec()
        self.nf, self.z_dim, self.cond_dim, self.imsize = nf, z_dim, cond_dim, imsize
        self.stage_sizes = [imsize]
        self.fc = nn.Linear(z_dim, nf * 8 * 4 * 4)
        blocks, res = [], 4
        for in_ch, out_ch in generator_pairs(nf, imsize):
            res *= 2
            blocks.append(GBlock(fusion_spec, z_dim + cond_dim, in_ch, out_ch, word_dim, res))
        self.GBlocks = nn.ModuleList(blocks)
        self.to_rgb = nn.Sequential(
            nn.LeakyReLU(LRELU_SLOPE, inplace=False), nn.Conv2d(nf, 3, 3, 1, 1), nn.Tanh()
        )
        self.modulator = None  # set by dfgan.nn.fused.enable_fused_affine

    def forward(self, noise, sentence, words=None, mask=None):
        cond = torch.cat((noise, sentence), dim=1)
        out = self.fc(noise).view(noise.size(0), 8 * self.nf, 4, 4)
        mods = self.modulator(cond) if self.modulator is not None else None
        for i, block in enumerate(self.GBlocks):
            out = block(out, cond, words, mask, None if mods is None else mods[i])
        return self.to_rgb(out)


@BACKBONES.register("one_stage")
def one_stage(model, imsize: int, cond_dim: int, word_dim: int = 256) -> OneStageGenerator:
    """DF-GAN's one-stage backbone: one generator, one discriminator, images at the target size."""
    return OneStageGenerator(model.nf, model.z_dim, cond_dim, imsize, model.fusion, word_dim)
