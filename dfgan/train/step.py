"""One DF-GAN training step (official ``code/lib/modules.py``, the train loop): a discriminator step, then a
generator step.

The generator runs once per step; the discriminator step uses the fake images detached, the generator step
reuses them with the updated discriminator (as the official code does). Works for any backbone (one image
or a list of stage images, each judged by its own discriminator and head; losses summed over stages), any
head and any regulariser. Under ``precision="bf16"`` the networks run under autocast, the regulariser's own
discriminator pass included (``dfgan.nn.penalties``: one precision for every penalty); losses, penalty norms
and the optimisers stay in fp32.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F

from dfgan import runtime
from dfgan.nn.fused import enable_fused_affine
from dfgan.profile import NO_PROFILE


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; the message names the step and the loss."""

    def __init__(self, step: int, name: str, value: float, detail: str = ""):
        self.step, self.name, self.value = step, name, value
        super().__init__(f"non-finite loss at step {step}: {name} = {value}" + (f"; {detail}" if detail else ""))


def real_pyramid(images: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """The real batch at each stage's resolution (average pooling by the power-of-two factor)."""
    out = []
    for s in sizes:
        f = images.shape[-1] // s
        out.append(images if f == 1 else F.avg_pool2d(images, f))
    return out


def as_list(images) -> list[torch.Tensor]:
    return list(images) if isinstance(images, (list, tuple)) else [images]


def apply_speed_options(gan, train_spec) -> dict[str, Any]:
    """Apply the spec's speed options that change the networks (in place); returns what was applied.

    ``fused_affine``: every DFBlock modulation from one matmul per forward (``dfgan.nn.fused``); generators
    without DFBlocks, or backbones that cannot take precomputed modulation, keep their own path, and the
    returned dict (logged as the run's ``speed_*`` tags) says whether it applied. ``channels_last``: NHWC weights (the
    Stepper also feeds NHWC images). Precision and ``compile`` are applied by the Stepper and the loop.
    """
    applied: dict[str, Any] = {"fused_affine": False, "channels_last": False}
    if train_spec.fused_affine:
        applied["fused_affine"] = enable_fused_affine(gan.generator, warn=False)
    if train_spec.channels_last:
        gan.to(memory_format=torch.channels_last)
        applied["channels_last"] = True
    return applied


class Stepper:
    """Holds what a step needs (networks, optimisers, regulariser, precision) and runs steps."""

    def __init__(self, gan, regulariser, opt_g, opt_d, *, precision: str = "fp32", device="cpu",
                 channels_last: bool = False, grad_sync=None, profile=None):
        self.gan, self.reg, self.opt_g, self.opt_d = gan, regulariser, opt_g, opt_d
        self.profile = profile or NO_PROFILE  # times the parts of sampled steps (dfgan.profile: detail sections)
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = channels_last
        self.grad_sync = grad_sync  # callable(params) that averages grads across processes, or None
        if precision == "bf16":
            if not runtime.bf16_is_fast(self.device):
                import warnings

                warnings.warn(f"train.precision=bf16 on {self.device}, which has no native bf16 matmuls (CPU: no "
                              "AVX512-BF16/AMX; GPU: no bf16 support): expect it to be slower than fp32",
                              stacklevel=2)

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _check(self, step: int, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for name, v in losses.items():
            val = float(v.detach())
            if not math.isfinite(val):
                raise NonFiniteLossError(step, name, val)
            out[name] = val
        return out

    def _kl_loss(self) -> torch.Tensor | None:
        take = getattr(self.gan.generator, "take_kl_loss", None)  # backbones without an input KL term lack it
        return take() if take is not None else None

    def __call__(self, step: int, images, sentence, words, mask, noise) -> dict[str, float]:
        gan, reg, prof = self.gan, self.reg, self.profile
        sentence = sentence.detach()
        with prof.detail("g_forward"), self.autocast():
            fakes = as_list(gan.generator(noise, sentence, words, mask))
        reals = real_pyramid(images, gan.stage_sizes)

        # ---- discriminator step ---------------------------------------------------------------------------
        for p in gan.d_parameters():
            p.requires_grad_(True)
        terms: dict[str, torch.Tensor] = {}
        loss_d = images.new_zeros(())
        for s, (D, head) in enumerate(zip(gan.discriminators, gan.heads)):
            real = self._fmt(reals[s].detach())
            sent = sentence
            if reg.reuses_real_output:
                real = real.requires_grad_(True)
                sent = sentence.clone().requires_grad_(True)
            with prof.detail("d_forward"), self.autocast():
                f_real = D(real)
                f_fake = D(self._fmt(fakes[s].detach()))
                out_real = head.cond_score(f_real, sent).float()
                d = head.d_loss(f_real, f_fake, sent, out_real)
            # outside autocast: gradients and norm in fp32; an own pass of the penalty runs under self.autocast,
            # as the reused one did (dfgan.nn.penalties: one precision for every regulariser)
            with prof.detail("penalty"):
                gp = reg(D=D, head=head, real=real, fake=fakes[s], sentence=sent, out_real=out_real,
                         autocast=self.autocast)
            loss_d = loss_d + d["total"] + (gp if gp is not None else 0.0)
            suffix = "" if len(gan.heads) == 1 else f"_s{s}"
            for k, v in d.items():
                if k != "total":
                    terms[f"d_{k}{suffix}"] = v
            if gp is not None:
                terms[f"d_gp{suffix}"] = gp
        self._check(step, {"loss_d": loss_d})
        self.opt_d.zero_grad(set_to_none=True)
        d_params = [p for p in gan.d_parameters() if p.requires_grad]
        with prof.detail("d_backward"):
            loss_d.backward(inputs=d_params)  # only D's weights: no gradient for the real images or sentences
            if self.grad_sync:
                self.grad_sync(list(gan.d_parameters()))
        with prof.detail("d_optimiser"):
            self.opt_d.step()

        # ---- generator step, with the updated discriminator -----------------------------------------------
        for p in gan.d_parameters():  # D weight gradients are not needed here: skip that work
            p.requires_grad_(False)
        loss_g = images.new_zeros(())
        with prof.detail("g_d_forward"), self.autocast():  # D on the fakes, for the generator loss
            for s, (D, head) in enumerate(zip(gan.discriminators, gan.heads)):
                loss_g = loss_g + head.g_loss(D(self._fmt(fakes[s])), sentence).float()
        kl = self._kl_loss()
        if kl is not None:  # AttnGAN's conditioning augmentation: its KL term, weight 1 (dfgan.nn.fusion)
            loss_g = loss_g + kl
            terms["g_kl"] = kl
        self._check(step, {"loss_g": loss_g})
        self.opt_g.zero_grad(set_to_none=True)
        with prof.detail("g_backward"):
            loss_g.backward()
            if self.grad_sync:
                self.grad_sync(list(gan.generator.parameters()))
        with prof.detail("g_optimiser"):
            self.opt_g.step()
        for p in gan.d_parameters():
            p.requires_grad_(True)

        out = {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach())}
        out.update({k: float(v.detach()) for k, v in terms.items()})
        return out
