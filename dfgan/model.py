"""Assemble a GAN from a spec: generator, one discriminator trunk + head per generator stage, regulariser."""

from __future__ import annotations

from torch import nn

from dfgan.registry import BACKBONES, DISCRIMINATORS, HEADS, REGULARISERS


class GAN(nn.Module):
    """The trainable networks of one experiment. ``discriminators[s]``/``heads[s]`` judge stage ``s``."""

    def __init__(self, generator: nn.Module, discriminators: list[nn.Module], heads: list[nn.Module]):
        super().__init__()
        self.generator = generator
        self.discriminators = nn.ModuleList(discriminators)
        self.heads = nn.ModuleList(heads)

    @property
    def stage_sizes(self) -> list[int]:
        return list(self.generator.stage_sizes)

    def d_parameters(self):
        yield from self.discriminators.parameters()
        yield from self.heads.parameters()


def build_gan(spec, cond_dim: int, word_dim: int) -> GAN:
    import dfgan.components  # noqa: F401  (registers every component)

    m = spec.model
    gen = BACKBONES.build(m.backbone, model=m, imsize=spec.data.imsize, cond_dim=cond_dim, word_dim=word_dim)
    sizes = list(gen.stage_sizes)
    discs = [DISCRIMINATORS.build(m.discriminator, nf=m.nf, imsize=s) for s in sizes]
    heads = [HEADS.build(m.head, nf=m.nf, cond_dim=cond_dim) for _ in sizes]
    return GAN(gen, discs, heads)


def build_regulariser(spec):
    import dfgan.components  # noqa: F401

    return REGULARISERS.build(spec.model.regulariser.name, spec=spec.model.regulariser)
