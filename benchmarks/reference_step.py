"""The reference formulation of one DF-GAN training step, the yardstick our ``Stepper`` is measured against.

Written from the documented behaviour of the official code's step (``code/lib/modules.py``, its training
step), not from its source:
fp32, the official order of operations, nothing fused, nothing skipped:

1. the real images ``x`` and sentence vectors ``e`` become leaves that require grad;
2. ``D(x)`` -> ``C(D(x), e)`` (real, matching) and ``C(roll(D(x)), e)`` (mismatched: the features rolled by
   one along the batch);
3. ``fake = G(z, e)``, then ``C(D(fake.detach()), e)``;
4. MA-GP on the real/matching output with ``create_graph=True``: ``k * mean(||cat(dx, de)||_2 ** p)``;
5. ``L_D = L_real + (L_fake + L_mis) / 2 + L_gp``; zero D grads, backward, step D (and the head with it);
6. G step with the updated D: ``L_G = -mean(C(D(fake), e))``; zero G grads, backward (which also computes D's
   weight gradients, as the official code does), step G.

It works on our network modules (``OneStageGenerator``, a discriminator trunk, a head with a ``forward`` that
returns the raw logit), one stage only. Hinge losses and the penalty are written out here on purpose, so that
the comparison also checks ``dfgan.nn.heads`` and ``dfgan.nn.penalties`` against the formulas.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import autograd

MAGP_K = 2.0  # DF-GAN HEAD: L_gp = 2 * mean(||g|| ** 6) (official code/lib/modules.py, MA-GP)
MAGP_P = 6.0


class ReferenceStep:
    """One official-order DF-GAN step (D step, then G step) on a generator ``G``, trunk ``D`` and head ``C``."""

    def __init__(self, G, D, C, opt_g, opt_d, *, magp: bool = True, k: float = MAGP_K, p: float = MAGP_P):
        self.G, self.D, self.C, self.opt_g, self.opt_d = G, D, C, opt_g, opt_d
        self.magp, self.k, self.p = magp, k, p

    @classmethod
    def for_gan(cls, gan, opt_g, opt_d, *, magp: bool = True, k: float = MAGP_K, p: float = MAGP_P):
        if len(gan.discriminators) != 1:
            raise ValueError("the reference step covers one-stage generators only")
        return cls(gan.generator, gan.discriminators[0], gan.heads[0], opt_g, opt_d, magp=magp, k=k, p=p)

    def __call__(self, images: torch.Tensor, sentence: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
        G, D, C = self.G, self.D, self.C
        x = images.detach().clone().requires_grad_(True)
        e = sentence.detach().clone().requires_grad_(True)

        # ---- discriminator step
        f_real = D(x)
        out_real = C(f_real, e)
        loss_real = F.relu(1.0 - out_real).mean()
        f_mis = torch.cat((f_real[1:], f_real[:1]), dim=0)
        loss_mis = F.relu(1.0 + C(f_mis, e)).mean()
        fake = G(noise, e)
        loss_fake = F.relu(1.0 + C(D(fake.detach()), e)).mean()
        loss_d = loss_real + (loss_fake + loss_mis) / 2.0
        losses = {"d_real": loss_real, "d_mis": loss_mis, "d_fake": loss_fake}
        if self.magp:
            gx, ge = autograd.grad(out_real, (x, e), grad_outputs=torch.ones_like(out_real),
                                   retain_graph=True, create_graph=True)
            g = torch.cat((gx.reshape(gx.size(0), -1), ge.reshape(ge.size(0), -1)), dim=1)
            loss_gp = self.k * torch.mean(torch.sqrt(torch.sum(g**2, dim=1)) ** self.p)
            loss_d = loss_d + loss_gp
            losses["d_gp"] = loss_gp
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()

        # ---- generator step, with the updated discriminator
        loss_g = -C(D(fake), e).mean()
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()

        out = {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach())}
        out.update({k: float(v.detach()) for k, v in losses.items()})
        return out
