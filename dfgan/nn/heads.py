"""Discriminator output heads: (features, sentence) -> logits, and the adversarial hinge losses.

A head is built as ``HEADS.build(name, nf=..., cond_dim=...)`` and offers
``forward(features, sentence)`` (its raw output), ``cond_score(features, sentence) -> (B,)`` (the matching
score that MA-GP differentiates), ``realness_score(features, sentence) -> (B,)`` (the logit a text-blind
penalty such as R1 differentiates: the unconditional one where the head has it), ``d_loss(f_real, f_fake,
sentence, out_real=None) -> dict`` (with key ``total`` and one key per term) and
``g_loss(f_fake, sentence) -> Tensor``. Registered: ``one_way`` (DF-GAN) and ``two_way`` (StackGAN++/AttnGAN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfgan.nn.fusion import LRELU_SLOPE
from dfgan.registry import HEADS


def roll_batch(t: torch.Tensor) -> torch.Tensor:
    """Mismatched pairs as in DF-GAN HEAD: the batch rolled by one (``cat(t[1:], t[:1])``)."""
    return torch.cat((t[1:], t[:1]), dim=0)


def hinge_real(score: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - score).mean()


def hinge_fake(score: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 + score).mean()


class OneWayHead(nn.Module):
    """DF-GAN's one-way output (official ``NetC``, paper Sec. 3.2): one logit from features + sentence.

    The sentence is tiled to 4x4 and concatenated to the 8nf features; ``joint_conv`` = 3x3 conv (no bias)
    -> LReLU(0.2) -> 4x4 valid conv to one logit. There is no unconditional logit.
    Losses (DF-GAN HEAD): ``L_D = hinge(real, s) + (hinge(fake, s) + hinge(rolled real, s)) / 2``,
    ``L_G = -mean(C(D(fake), s))``.
    """

    def __init__(self, nf: int = 32, cond_dim: int = 256):
        super().__init__()
        self.cond_dim = cond_dim
        self.joint_conv = nn.Sequential(
            nn.Conv2d(nf * 8 + cond_dim, nf * 2, 3, 1, 1, bias=False),
            nn.LeakyReLU(LRELU_SLOPE, inplace=True),
            nn.Conv2d(nf * 2, 1, 4, 1, 0, bias=False),
        )

    def forward(self, features: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        h, w = features.shape[-2:]
        y = sentence.reshape(-1, self.cond_dim, 1, 1).expand(-1, -1, h, w)
        return self.joint_conv(torch.cat((features, y.to(features.dtype)), dim=1))

    def cond_score(self, features: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        return self(features, sentence).reshape(-1).float()  # losses and MA-GP in fp32

    def realness_score(self, features: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """The one-way head has a single logit: it is also the one a text-blind penalty differentiates."""
        return self.cond_score(features, sentence)

    def d_loss(self, f_real, f_fake, sentence, out_real=None) -> dict[str, torch.Tensor]:
        out_real = self.cond_score(f_real, sentence) if out_real is None else out_real
        real = hinge_real(out_real)
        mis = hinge_fake(self.cond_score(roll_batch(f_real), sentence))
        fake = hinge_fake(self.cond_score(f_fake, sentence))
        return {"total": real + (fake + mis) / 2, "real": real, "mis": mis, "fake": fake}

    def g_loss(self, f_fake, sentence) -> torch.Tensor:
        return -self.cond_score(f_fake, sentence).mean()


@HEADS.register("one_way")
def one_way(nf: int, cond_dim: int) -> OneWayHead:
    """DF-GAN's one-way discriminator output: a single conditional logit (paper Sec. 3.2)."""
    return OneWayHead(nf, cond_dim)


class TwoWayHead(OneWayHead):
    """Two-way output of the stacked text-to-image GANs DF-GAN compares against (StackGAN++, AttnGAN, DM-GAN).

    Two logits from the 8nf x 4 x 4 features: an unconditional real/fake logit (``uncond_conv``, a 4x4 valid
    conv, AttnGAN's ``D_GET_LOGITS(bcondition=False)``) and a conditional matching logit computed exactly like
    the one-way head's (``joint_conv`` on features + tiled sentence). Losses combine them as AttnGAN's
    ``discriminator_loss``/``generator_loss`` do:
    ``L_D = (u_real + c_real) / 2 + (u_fake + c_fake + c_mis) / 3`` and ``L_G = -mean(c(fake)) - mean(u(fake))``,
    but with DF-GAN's hinge terms instead of AttnGAN's binary cross-entropy and DF-GAN's rolled-batch mismatched
    pairs, so that only the output structure differs from ``one_way``. ``cond_score`` is the conditional logit
    (what MA-GP differentiates); ``realness_score`` the unconditional one.
    """

    def __init__(self, nf: int = 32, cond_dim: int = 256):
        super().__init__(nf, cond_dim)
        self.uncond_conv = nn.Conv2d(nf * 8, 1, 4, 1, 0, bias=False)

    def uncond_score(self, features: torch.Tensor) -> torch.Tensor:
        return self.uncond_conv(features).reshape(-1).float()

    def realness_score(self, features: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        return self.uncond_score(features)

    def d_loss(self, f_real, f_fake, sentence, out_real=None) -> dict[str, torch.Tensor]:
        out_real = self.cond_score(f_real, sentence) if out_real is None else out_real
        c_real = hinge_real(out_real)
        c_mis = hinge_fake(self.cond_score(roll_batch(f_real), sentence))
        c_fake = hinge_fake(self.cond_score(f_fake, sentence))
        u_real = hinge_real(self.uncond_score(f_real))
        u_fake = hinge_fake(self.uncond_score(f_fake))
        total = (u_real + c_real) / 2 + (u_fake + c_fake + c_mis) / 3
        return {"total": total, "real": c_real, "mis": c_mis, "fake": c_fake, "uncond_real": u_real,
                "uncond_fake": u_fake}

    def g_loss(self, f_fake, sentence) -> torch.Tensor:
        return -self.cond_score(f_fake, sentence).mean() - self.uncond_score(f_fake).mean()


@HEADS.register("two_way")
def two_way(nf: int, cond_dim: int) -> TwoWayHead:
    """StackGAN++/AttnGAN's two-way discriminator output: unconditional + conditional logits, losses summed."""
    return TwoWayHead(nf, cond_dim)
