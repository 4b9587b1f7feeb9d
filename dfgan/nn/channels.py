"""The channel schedule shared by generator and discriminator (DF-GAN HEAD ``get_G_in_out_chs``)."""

from __future__ import annotations

import math


def channel_schedule(nf: int, imsize: int) -> list[int]:
    """``ch[i] = nf * min(2**i, 8)`` for ``i < log2(imsize) - 1`` (DF-GAN HEAD)."""
    layers = int(math.log2(imsize)) - 1
    return [nf * min(2**i, 8) for i in range(layers)]


def generator_pairs(nf: int, imsize: int) -> list[tuple[int, int]]:
    """(in, out) channels of the generator's blocks: consecutive pairs of the reversed schedule."""
    ch = channel_schedule(nf, imsize)[::-1]
    return list(zip(ch[:-1], ch[1:]))


def discriminator_pairs(nf: int, imsize: int) -> list[tuple[int, int]]:
    ch = channel_schedule(nf, imsize)
    return list(zip(ch[:-1], ch[1:]))
