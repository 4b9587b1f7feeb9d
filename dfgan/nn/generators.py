"""Generator backbones. ``one_stage`` is DF-GAN's; alternatives register here too.

Every backbone is built as ``BACKBONES.build(name, model=ModelSpec, imsize=..., cond_dim=..., word_dim=...)``,
has ``stage_sizes`` (resolutions of the images it emits, smallest first) and is called as
``G(noise, sentence, words=None, mask=None)``; it returns one image tensor when it has one stage, else a
list of images, one per stage. ``fc`` takes the noise (DF-GAN); with a fusion whose blocks do not take the
sentence (``cross_attention``) it takes ``cat(c, noise)``, ``c`` the sentence or its conditioning-augmentation
code (AttnGAN's first stage; ``dfgan.nn.fusion.generator_input``), and ``take_kl_loss()`` hands the training
step that code's KL term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfgan.nn.channels import generator_pairs
from dfgan.nn.fusion import LRELU_SLOPE, check_attention_used, generator_input
from dfgan.registry import BACKBONES, FUSIONS
from dfgan.spec import FusionSpec


class SentenceAtInput:
    """What both backbones share: ``fc``'s input (the noise, or ``cat(c, noise)`` where the fusion needs the
    sentence there) and the hand-over of a conditioning-augmentation KL term."""

    sentence_input: nn.Module | None

    def fc_input(self, noise: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        return noise if self.sentence_input is None else self.sentence_input(noise, sentence)

    def take_kl_loss(self) -> torch.Tensor | None:
        """The conditioning-augmentation KL term of the last training forward (None without CA), once."""
        return None if self.sentence_input is None else self.sentence_input.take_kl()


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
        self.resolution = resolution  # the resolution the block works at (after its up-sampling)
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


class OneStageGenerator(SentenceAtInput, nn.Module):
    """DF-GAN's one-stage generator (paper Sec. 3.1, official ``NetG``).

    ``fc`` maps the noise to a 4x4 map with 8nf channels; a stack of ``GBlocks`` doubles the resolution each
    time, every fusion block conditioned on ``cat(noise, sentence)``; ``to_rgb`` is LReLU -> 3x3 conv -> tanh.
    With ``cross_attention`` ``fc`` maps ``cat(c, noise)`` instead (module docstring).
    """

    def __init__(self, nf: int = 32, z_dim: int = 100, cond_dim: int = 256, imsize: int = 256,
                 fusion_spec=None, word_dim: int = 256):
        super().__init__()
        fusion_spec = fusion_spec or FusionSpec()
        self.nf, self.z_dim, self.cond_dim, self.imsize = nf, z_dim, cond_dim, imsize
        self.stage_sizes = [imsize]
        self.sentence_input = generator_input(fusion_spec, cond_dim)
        self.fc = nn.Linear(z_dim + (self.sentence_input.out_dim if self.sentence_input else 0), nf * 8 * 4 * 4)
        blocks, res = [], 4
        for in_ch, out_ch in generator_pairs(nf, imsize):
            res *= 2
            blocks.append(GBlock(fusion_spec, z_dim + cond_dim, in_ch, out_ch, word_dim, res))
        check_attention_used(fusion_spec, [b.resolution for b in blocks])
        self.GBlocks = nn.ModuleList(blocks)
        self.to_rgb = nn.Sequential(
            nn.LeakyReLU(LRELU_SLOPE, inplace=False), nn.Conv2d(nf, 3, 3, 1, 1), nn.Tanh()
        )
        self.modulator = None  # set by dfgan.nn.fused.enable_fused_affine

    def forward(self, noise, sentence, words=None, mask=None):
        cond = torch.cat((noise, sentence), dim=1)
        out = self.fc(self.fc_input(noise, sentence)).view(noise.size(0), 8 * self.nf, 4, 4)
        mods = self.modulator(cond) if self.modulator is not None else None
        for i, block in enumerate(self.GBlocks):
            out = block(out, cond, words, mask, None if mods is None else mods[i])
        return self.to_rgb(out)


@BACKBONES.register("one_stage")
def one_stage(model, imsize: int, cond_dim: int, word_dim: int = 256) -> OneStageGenerator:
    """DF-GAN's one-stage backbone: one generator, one discriminator, images at the target size."""
    return OneStageGenerator(model.nf, model.z_dim, cond_dim, imsize, model.fusion, word_dim)


# ---- stacked (multi-stage) backbone -------------------------------------------------------------------------------
STACKED_STAGES = 3  # StackGAN++/AttnGAN: images at 64, 128 and 256 px
STACKED_RES_BLOCKS = 2  # residual blocks at the start of every later stage (StackGAN++/AttnGAN cfg.GAN.R_NUM = 2)


def stacked_stage_sizes(imsize: int) -> list[int]:
    """The stage resolutions of the stacked backbone: imsize/4, imsize/2, imsize (64, 128, 256 at 256 px)."""
    return [imsize // 2 ** (STACKED_STAGES - 1 - s) for s in range(STACKED_STAGES)]


class StackedGenerator(SentenceAtInput, nn.Module):
    """A StackGAN++/AttnGAN-style stacked generator (the backbone DF-GAN's one-stage design replaces, Sec. 3.1).

    Stage 1 maps the noise through ``fc`` and up-sampling blocks to imsize/4 and emits an image there; each
    later stage takes the previous stage's hidden features (not its image), refines them with
    ``STACKED_RES_BLOCKS`` same-resolution residual blocks (AttnGAN's ``NEXT_STAGE_G``: joint fusion + residual
    blocks + up-sampling), doubles the resolution and emits its own image. Every stage has its own
    discriminator and the adversarial losses of all stages are summed (``GAN`` builds one trunk + head per
    entry of ``stage_sizes``). To keep the fusion axis orthogonal, the blocks are DF-GAN's ``GBlock`` with the
    spec's fusion, conditioned on ``cat(noise, sentence)``, and the channel schedule is the one-stage one; the
    stacked design adds the intermediate images, their discriminators and the per-stage residual blocks.
    With ``cross_attention`` ``fc`` maps ``cat(c, noise)`` as AttnGAN's ``INIT_STAGE_G`` (module docstring).
    ``GBlocks`` lists every block in forward order; ``stage_ends[s]`` is the index of stage s's last block.
    """

    def __init__(self, nf: int = 32, z_dim: int = 100, cond_dim: int = 256, imsize: int = 256,
                 fusion_spec=None, word_dim: int = 256):
        super().__init__()
        fusion_spec = fusion_spec or FusionSpec()
        pairs = generator_pairs(nf, imsize)
        if len(pairs) < STACKED_STAGES:
            raise ValueError(f"data.imsize={imsize}: the stacked backbone needs at least 32 px (its first stage "
                             f"up-samples from 4 px to imsize/4)")
        self.nf, self.z_dim, self.cond_dim, self.imsize = nf, z_dim, cond_dim, imsize
        self.stage_sizes = stacked_stage_sizes(imsize)
        cdim = z_dim + cond_dim
        self.sentence_input = generator_input(fusion_spec, cond_dim)
        self.fc = nn.Linear(z_dim + (self.sentence_input.out_dim if self.sentence_input else 0), nf * 8 * 4 * 4)
        n_first = len(pairs) - (STACKED_STAGES - 1)  # up-sampling blocks of stage 1 (4 px -> imsize/4)
        blocks, res, ends, rgb_ch = [], 4, [], []
        for i, (in_ch, out_ch) in enumerate(pairs):
            if i >= n_first:  # a later stage: refine at the current resolution first
                for _ in range(STACKED_RES_BLOCKS):
                    blocks.append(GBlock(fusion_spec, cdim, in_ch, in_ch, word_dim, res, upsample=False))
            res *= 2
            blocks.append(GBlock(fusion_spec, cdim, in_ch, out_ch, word_dim, res))
            if i >= n_first - 1:
                ends.append(len(blocks) - 1)
                rgb_ch.append(out_ch)
        check_attention_used(fusion_spec, [b.resolution for b in blocks])
        self.GBlocks = nn.ModuleList(blocks)
        self.stage_ends = ends
        self.to_rgbs = nn.ModuleList([
            nn.Sequential(nn.LeakyReLU(LRELU_SLOPE, inplace=False), nn.Conv2d(c, 3, 3, 1, 1), nn.Tanh())
            for c in rgb_ch
        ])
        self.modulator = None  # set by dfgan.nn.fused.enable_fused_affine (one modulation per GBlock, in order)

    def forward(self, noise, sentence, words=None, mask=None) -> list[torch.Tensor]:
        cond = torch.cat((noise, sentence), dim=1)
        out = self.fc(self.fc_input(noise, sentence)).view(noise.size(0), 8 * self.nf, 4, 4)
        mods = self.modulator(cond) if self.modulator is not None else None
        images = []
        for i, block in enumerate(self.GBlocks):
            out = block(out, cond, words, mask, None if mods is None else mods[i])
            if i in self.stage_ends:
                images.append(self.to_rgbs[len(images)](out))
        return images


@BACKBONES.register("stacked")
def stacked(model, imsize: int, cond_dim: int, word_dim: int = 256) -> StackedGenerator:
    """StackGAN++/AttnGAN's stacked backbone: three generator stages (imsize/4, /2, 1), one discriminator each."""
    return StackedGenerator(model.nf, model.z_dim, cond_dim, imsize, model.fusion, word_dim)
