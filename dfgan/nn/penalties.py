"""Discriminator regularisers: ``ma_gp`` (DF-GAN's matching-aware zero-centred gradient penalty), ``r1``
(text-blind zero-centred penalty on real images) and ``none``.

A regulariser is built as ``REGULARISERS.build(name, spec=RegulariserSpec)`` and called as
``reg(D=..., head=..., real=..., fake=..., sentence=..., out_real=...) -> Tensor``. When its
``reuses_real_output`` is true, the training step makes ``real`` and ``sentence`` leaves that require grad
before computing ``out_real = head.cond_score(D(real), sentence)`` and passes that output in (DF-GAN reuses
the real/matching logit of the adversarial loss instead of a second discriminator pass).
"""

from __future__ import annotations

import torch
from torch import autograd

from dfgan.nn.heads import roll_batch
from dfgan.registry import REGULARISERS


class MAGP:
    """Matching-aware gradient penalty (DF-GAN paper Sec. 3.2, Eq. 4-5).

    ``L = k * mean(norm(g) ** p)`` with g the gradients of the conditional logit w.r.t. the image and the
    sentence vector, on the pair selected by ``target`` (DF-GAN: real image + matching sentence), k=2, p=6.
    ``norm='concat'`` is the official code's L2 norm of the concatenated gradients; ``norm='sum'`` the
    paper's formula, the sum of the two gradient norms.
    """

    def __init__(self, k: float = 2.0, p: float = 6.0, target: str = "real_match", norm: str = "concat"):
        self.k, self.p, self.target, self.norm = k, p, target, norm
        self.reuses_real_output = target == "real_match"

    def grad_norm(self, out: torch.Tensor, image: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        gi, gs = autograd.grad(out.sum(), (image, sentence), create_graph=True)
        gi, gs = gi.float().flatten(1), gs.float().flatten(1)
        if self.norm == "concat":
            return torch.cat((gi, gs), dim=1).pow(2).sum(1).sqrt()
        return gi.pow(2).sum(1).sqrt() + gs.pow(2).sum(1).sqrt()

    def __call__(self, *, D, head, real, fake, sentence, out_real=None) -> torch.Tensor:
        if self.reuses_real_output and out_real is not None:
            image, sent, out = real, sentence, out_real
        else:
            src = real if self.target.startswith("real") else fake
            image = src.detach().float().requires_grad_(True)  # fakes are bf16 under autocast; D is fp32
            sent = sentence.detach()
            if self.target.endswith("mismatch"):
                sent = roll_batch(sent)
            sent = sent.requires_grad_(True)
            out = head.cond_score(D(image), sent)
        return self.k * self.grad_norm(out, image, sent).pow(self.p).mean()


@REGULARISERS.register("ma_gp")
def ma_gp(spec) -> MAGP:
    """DF-GAN's matching-aware zero-centred gradient penalty (paper Sec. 3.2)."""
    return MAGP(spec.k, spec.p, spec.target, spec.norm)


class NoPenalty:
    """No discriminator regulariser (the paper's 'w/o MA-GP' row)."""

    reuses_real_output = False

    def __call__(self, **_: object) -> torch.Tensor | None:
        return None


@REGULARISERS.register("none")
def none(spec) -> NoPenalty:
    """No gradient penalty (the paper's ablation without MA-GP)."""
    return NoPenalty()


class ImageGP:
    """Text-blind zero-centred gradient penalty on real images: R1 (Mescheder et al., ICML 2018, Eq. 9).

    ``L = k * mean(||grad_x s(x)|| ** p)`` with ``s`` the head's ``realness_score`` on real images: the only
    logit for the one-way head (its sentence input is held fixed, not differentiated), the unconditional logit
    for the two-way head. No gradient w.r.t. the text: the control for MA-GP's text term. With p = 2 and
    k = gamma / 2 it is R1 exactly; the ``r1`` variant keeps DF-GAN's k = 2, p = 6 so that it differs from
    MA-GP only in ignoring the sentence (``target`` and ``norm`` do not apply). It makes its own discriminator
    pass on the real batch (it cannot reuse the conditional logit of the adversarial loss).
    """

    reuses_real_output = False

    def __init__(self, k: float = 2.0, p: float = 6.0):
        self.k, self.p = k, p

    def __call__(self, *, D, head, real, fake, sentence, out_real=None) -> torch.Tensor:
        image = real.detach().float().requires_grad_(True)
        out = head.realness_score(D(image), sentence.detach())
        (g,) = autograd.grad(out.sum(), (image,), create_graph=True)
        return self.k * g.float().flatten(1).pow(2).sum(1).sqrt().pow(self.p).mean()


@REGULARISERS.register("r1")
def r1(spec) -> ImageGP:
    """Zero-centred gradient penalty on real images only, no text gradient (R1, Mescheder et al. 2018)."""
    if spec.target != "real_match" or spec.norm != "concat":
        raise ValueError(
            f"model.regulariser.name=r1 penalises real images only and has no text gradient: "
            f"model.regulariser.target ({spec.target!r}) and .norm ({spec.norm!r}) do not apply; leave them "
            "at their defaults ('real_match', 'concat')"
        )
    return ImageGP(spec.k, spec.p)
