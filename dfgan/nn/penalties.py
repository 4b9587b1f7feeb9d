"""Discriminator regularisers: ``ma_gp`` (DF-GAN's matching-aware zero-centred gradient penalty), ``r1``
(text-blind zero-centred penalty on real images) and ``none``.

A regulariser is built as ``REGULARISERS.build(name, spec=RegulariserSpec)`` and called as
``reg(D=..., head=..., real=..., fake=..., sentence=..., out_real=...) -> Tensor``. When its
``reuses_real_output`` is true, the training step makes ``real`` and ``sentence`` leaves that require grad
before computing ``out_real = head.cond_score(D(real), sentence)`` and passes that output in (DF-GAN reuses
the real/matching logit of the adversarial loss instead of a second discriminator pass).

Precision and pass structure, the same for every regulariser: the discriminator pass that a penalty
differentiates runs in the training precision, and the gradients, their norm and the penalty are taken outside
autocast in fp32. The training step passes its autocast as ``autocast`` (a callable returning a context
manager; bf16 under ``train.precision=bf16``, or ``auto`` resolved to bf16): ``real_match`` reuses the
adversarial pass, which ran under it; every other MA-GP target and ``r1`` run their own pass under it. So
the two paths differ only in whether the pass is shared, and give the same penalty for the same inputs (both
in fp32 and in bf16; ``tests/test_magp.py``): comparing regularisers does not also compare precisions.
Without ``autocast`` (the default) an own pass runs in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import autograd

from dfgan.nn.heads import roll_batch
from dfgan.registry import REGULARISERS

Autocast = Callable[[], contextlib.AbstractContextManager] | None


def training_precision(autocast: Autocast) -> contextlib.AbstractContextManager:
    """The context of a penalty's own discriminator pass: the training step's autocast, or none (fp32)."""
    return autocast() if autocast is not None else contextlib.nullcontext()


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

    def __call__(self, *, D, head, real, fake, sentence, out_real=None, autocast: Autocast = None) -> torch.Tensor:
        """``out_real``: the adversarial pass's real/matching logit, reused for ``real_match``; ``autocast``: the
        training step's precision, under which an own pass runs (module docstring)."""
        if self.reuses_real_output and out_real is not None:
            image, sent, out = real, sentence, out_real
        else:
            src = real if self.target.startswith("real") else fake
            image = src.detach().float().requires_grad_(True)  # an fp32 leaf, as the reused pass's real images
            sent = sentence.detach()
            if self.target.endswith("mismatch"):
                sent = roll_batch(sent)
            sent = sent.requires_grad_(True)
            with training_precision(autocast):
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
    pass on the real batch (it cannot reuse the conditional logit of the adversarial loss), in the training
    precision like every other penalty (module docstring).
    """

    reuses_real_output = False

    def __init__(self, k: float = 2.0, p: float = 6.0):
        self.k, self.p = k, p

    def __call__(self, *, D, head, real, fake, sentence, out_real=None, autocast: Autocast = None) -> torch.Tensor:
        image = real.detach().float().requires_grad_(True)
        with training_precision(autocast):
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
