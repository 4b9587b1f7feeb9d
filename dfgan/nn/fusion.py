"""Fusion blocks: how the text condition enters the generator's features.

Every fusion block is built as ``FUSIONS.build(name, cond_dim=..., channels=..., spec=FusionSpec,
word_dim=..., resolution=...)`` and called as ``block(x, cond, words=None, mask=None)``; ``cond`` is the
generator's condition vector (B, cond_dim), ``words`` the word embeddings (B, word_dim, T) and ``mask`` (B, T)
is True at padding positions. Registered: ``dfblock`` (DF-GAN), ``affine1``, ``dfblock_deep`` (depth study),
``cbn`` (conditional batch norm), ``concat`` (StackGAN-style tiling) and ``cross_attention`` (AttnGAN).
A fusion whose blocks do not all take the sentence (``cross_attention``) also gives the generator's input the
sentence, as AttnGAN's first stage does (``generator_input``, ``SentenceInput``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfgan.registry import FUSIONS
from dfgan.spec import FusionSpec

LRELU_SLOPE = 0.2  # DF-GAN uses LeakyReLU(0.2) after each affine (the paper's figure draws ReLU)


class Affine(nn.Module):
    """DF-GAN's affine transformation: ``gamma(y) * x + beta(y)`` with channel-wise MLPs (paper Sec. 3.3).

    ``fc_gamma``/``fc_beta`` are Linear(cond, C) -> ReLU -> Linear(C, C), initialised to the identity map
    (gamma's last layer weight 0 bias 1, beta's weight 0 bias 0), as in the official code. No normalisation.
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.fc_gamma = nn.Sequential()
        self.fc_gamma.add_module("linear1", nn.Linear(cond_dim, channels))
        self.fc_gamma.add_module("relu1", nn.ReLU(inplace=True))
        self.fc_gamma.add_module("linear2", nn.Linear(channels, channels))
        self.fc_beta = nn.Sequential()
        self.fc_beta.add_module("linear1", nn.Linear(cond_dim, channels))
        self.fc_beta.add_module("relu1", nn.ReLU(inplace=True))
        self.fc_beta.add_module("linear2", nn.Linear(channels, channels))
        self.reset_identity()

    def reset_identity(self) -> None:
        nn.init.zeros_(self.fc_gamma.linear2.weight)
        nn.init.ones_(self.fc_gamma.linear2.bias)
        nn.init.zeros_(self.fc_beta.linear2.weight)
        nn.init.zeros_(self.fc_beta.linear2.bias)

    def modulation(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc_gamma(y), self.fc_beta(y)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.modulation(y)
        return gamma[:, :, None, None] * x + beta[:, :, None, None]


class DFBlock(nn.Module):
    """Deep text-image fusion block (DF-GAN Sec. 3.3): ``depth`` stacked (Affine -> LeakyReLU(0.2)).

    DF-GAN uses depth 2 (``affine0``, ``affine1``); depth 1 and deeper stacks are the paper's depth ablation.
    """

    def __init__(self, cond_dim: int, channels: int, depth: int = 2):
        super().__init__()
        self.depth = depth
        for i in range(depth):
            self.add_module(f"affine{i}", Affine(cond_dim, channels))
        self.act = nn.LeakyReLU(LRELU_SLOPE, inplace=False)

    def affines(self) -> list[Affine]:
        return [getattr(self, f"affine{i}") for i in range(self.depth)]

    def normalise(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """What happens to the features before affine ``i``: nothing in DF-GAN (CBN normalises here)."""
        return x

    def forward(self, x, cond, words=None, mask=None, modulation=None):
        """``modulation``: precomputed [(gamma, beta)] per affine (the fused-affine fast path)."""
        for i, aff in enumerate(self.affines()):
            x = self.normalise(i, x)
            if modulation is None:
                x = aff(x, cond)
            else:
                gamma, beta = modulation[i]
                x = gamma[:, :, None, None] * x + beta[:, :, None, None]
            x = self.act(x)
        return x


@FUSIONS.register("dfblock")
def dfblock(cond_dim: int, channels: int, spec=None, **_: object) -> DFBlock:
    """DF-GAN's fusion block: two stacked affine transformations with LeakyReLU (paper Sec. 3.3)."""
    return DFBlock(cond_dim, channels, depth=2)


# ---- the fusion-depth ablation: fewer or more stacked affines ---------------------------------------------------
DEEP_DEFAULT_DEPTH = 4  # dfblock_deep when model.fusion.depth is left at DF-GAN's 2: twice DF-GAN's depth


@FUSIONS.register("affine1")
def affine1(cond_dim: int, channels: int, spec=None, **_: object) -> DFBlock:
    """One affine transformation (+ LeakyReLU) per fusion block: the shallow end of DF-GAN's depth study
    (paper Sec. 4.3, 'the effect of stacking affines'; one affine is the plain affine/FiLM-style fusion)."""
    return DFBlock(cond_dim, channels, depth=1)


@FUSIONS.register("dfblock_deep")
def dfblock_deep(cond_dim: int, channels: int, spec=None, **_: object) -> DFBlock:
    """A deeper DFBlock: ``model.fusion.depth`` stacked affines (default 4), the paper's depth question.

    DF-GAN stacks two affines and reports that stacking more helps little (paper Sec. 4.3). Depth is read from
    ``model.fusion.depth`` when it is above DF-GAN's 2; left at 2 (the field's default) it means
    ``DEEP_DEFAULT_DEPTH`` = 4. Setting it explicitly to 1 or 2 is an error: those are ``affine1``/``dfblock``.
    """
    depth = DEEP_DEFAULT_DEPTH
    if spec is not None:
        if "depth" in spec.model_fields_set and spec.depth <= 2:
            raise ValueError(
                f"model.fusion.depth={spec.depth} with model.fusion.name=dfblock_deep: a deep DFBlock has more "
                "than DF-GAN's 2 affines (use depth >= 3, or fusion 'dfblock' for 2 and 'affine1' for 1)"
            )
        depth = spec.depth if spec.depth > 2 else DEEP_DEFAULT_DEPTH
    return DFBlock(cond_dim, channels, depth=depth)


# ---- conditional batch normalisation -------------------------------------------------------------------------------
class CBNBlock(DFBlock):
    """Conditional batch normalisation blocks: ``depth`` x (BatchNorm (no affine) -> text affine -> LeakyReLU).

    CBN (de Vries et al., NeurIPS 2017, 'Modulating early visual processing by language'; used for text in
    SD-GAN's semantic-conditioned BN) normalises the features with batch statistics, then modulates them with
    a scale and shift predicted from the condition. It differs from DF-GAN's DFBlock only by the normalisation
    (DF-GAN drops it, paper Sec. 3.3): same depth, same identity-initialised ``Affine`` MLPs, same activation.
    """

    def __init__(self, cond_dim: int, channels: int, depth: int = 2):
        super().__init__(cond_dim, channels, depth)
        for i in range(depth):
            self.add_module(f"norm{i}", nn.BatchNorm2d(channels, affine=False))

    def normalise(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"norm{i}")(x)


@FUSIONS.register("cbn")
def cbn(cond_dim: int, channels: int, spec=None, **_: object) -> CBNBlock:
    """Conditional batch norm (de Vries et al. 2017): normalise, then modulate; ``model.fusion.depth`` layers."""
    return CBNBlock(cond_dim, channels, depth=spec.depth if spec is not None else 2)


# ---- concatenation: the pre-DF-GAN sentence fusion ---------------------------------------------------------------
CONCAT_EMBED_DIM = 128  # StackGAN/StackGAN++ cfg.GAN.EMBEDDING_DIM: the text code tiled onto the feature map


class ConcatFusion(nn.Module):
    """Sentence condition tiled over the feature map and concatenated to it, then a 3x3 conv back to C.

    The fusion of StackGAN / StackGAN++ (and AttnGAN's first stage): the text code (128-d) is spatially
    replicated, concatenated with the image features and mixed by a 'joint' 3x3 convolution (DF-GAN paper
    Sec. 2 calls this the common way before DFBlock). The condition here is the generator's (noise, sentence)
    vector mapped to 128-d by a linear layer per block; StackGAN's conditioning augmentation (sampling + KL) is
    a separate technique DF-GAN does not use, so it is not modelled. No normalisation, LeakyReLU(0.2) after,
    as in the other fusions, so that only the way the text enters differs.
    """

    def __init__(self, cond_dim: int, channels: int, embed_dim: int = CONCAT_EMBED_DIM):
        super().__init__()
        self.embed_dim = embed_dim
        self.proj = nn.Linear(cond_dim, embed_dim)
        self.joint_conv = nn.Conv2d(channels + embed_dim, channels, 3, 1, 1)
        self.act = nn.LeakyReLU(LRELU_SLOPE, inplace=False)

    def forward(self, x, cond, words=None, mask=None):
        c = self.proj(cond).to(x.dtype)[:, :, None, None].expand(-1, -1, x.size(2), x.size(3))
        return self.act(self.joint_conv(torch.cat((x, c), dim=1)))


@FUSIONS.register("concat")
def concat(cond_dim: int, channels: int, spec=None, **_: object) -> ConcatFusion:
    """Sentence tiled and concatenated to the features, then a 3x3 conv (StackGAN/StackGAN++/AttnGAN)."""
    return ConcatFusion(cond_dim, channels)


# ---- cross-modal word-region attention -----------------------------------------------------------------------------
class WordRegionAttention(nn.Module):
    """AttnGAN's word-context attention (Xu et al., CVPR 2018, Sec. 3.1, ``GlobalAttentionGeneral``).

    Words (B, D, T) are projected to the feature width C by a 1x1 conv without bias; every image region
    (each of the H*W positions) attends over the words with a softmax of dot products (padding words masked
    out) and receives the attention-weighted sum of the projected words. Cost: O(H*W*T*C) time and an
    (H*W x T) attention map per image, which is why AttnGAN attends only at a few resolutions.
    """

    def __init__(self, word_dim: int, channels: int):
        super().__init__()
        self.word_proj = nn.Conv1d(word_dim, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None = None):
        b, c, h, w = x.shape
        keys = self.word_proj(words.to(x.dtype))  # (B, C, T)
        scores = torch.bmm(x.flatten(2).transpose(1, 2), keys)  # (B, HW, T)
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, : keys.size(2)].to(torch.bool), float("-inf"))
        attn = torch.softmax(scores.float(), dim=-1).to(x.dtype)
        context = torch.bmm(keys, attn.transpose(1, 2))  # (B, C, HW)
        return context.view(b, c, h, w), attn


class CrossAttentionFusion(nn.Module):
    """AttnGAN-style fusion: word-region attention context concatenated to the features, 3x3 conv back to C.

    AttnGAN's later stages concatenate the word-context map to the hidden features and process the 2C
    channels (``NEXT_STAGE_G``); here one 'joint' 3x3 conv + LeakyReLU(0.2) maps them back to C, so the block
    is a drop-in replacement for a DFBlock. The block uses only the word embeddings (as AttnGAN's later
    stages); the sentence reaches the features through the generator's input (``SentenceInput``), as in AttnGAN.
    """

    def __init__(self, word_dim: int, channels: int):
        super().__init__()
        self.attention = WordRegionAttention(word_dim, channels)
        self.joint_conv = nn.Conv2d(2 * channels, channels, 3, 1, 1)
        self.act = nn.LeakyReLU(LRELU_SLOPE, inplace=False)

    def forward(self, x, cond, words=None, mask=None):
        if words is None:
            raise ValueError("cross_attention fusion needs word embeddings (B, D, T); got words=None")
        context, _ = self.attention(x, words, mask)
        return self.act(self.joint_conv(torch.cat((x, context), dim=1)))


@FUSIONS.register("cross_attention", requires={"words"})
def cross_attention(cond_dim: int, channels: int, spec=None, word_dim: int = 256, resolution: int | None = None,
                    **_: object) -> nn.Module:
    """AttnGAN's word-region cross-modal attention at ``model.fusion.attention_resolutions`` (px), and the
    ``model.fusion.fallback`` fusion (default ``concat``) at every other resolution (AttnGAN, CVPR 2018). The
    generator's input also takes the sentence (``generator_input``), with ``model.fusion.conditioning_augmentation``
    AttnGAN's CA on it."""
    spec = spec or FusionSpec(name="cross_attention")
    if resolution in spec.attention_resolutions:
        return CrossAttentionFusion(word_dim, channels)
    if spec.fallback == "cross_attention":
        raise ValueError("model.fusion.fallback cannot be 'cross_attention' (it is the fusion used where "
                         "attention is not); choose e.g. 'concat' or 'dfblock'")
    return FUSIONS.build(spec.fallback, cond_dim=cond_dim, channels=channels, spec=spec, word_dim=word_dim,
                         resolution=resolution)


def check_attention_used(fusion_spec, resolutions: list[int]) -> None:
    """A ``cross_attention`` generator must attend somewhere: fail if no block works at an attention resolution."""
    if fusion_spec is None or fusion_spec.name != "cross_attention":
        return
    if not set(fusion_spec.attention_resolutions) & set(resolutions):
        raise ValueError(
            f"model.fusion.attention_resolutions={fusion_spec.attention_resolutions}: no generator block works "
            f"at these resolutions (its blocks work at {sorted(set(resolutions))} px), so cross_attention "
            "would never attend; list at least one of those resolutions"
        )


# ---- the sentence at the generator's input: AttnGAN's first stage ------------------------------------------------
CA_DIM = 100  # AttnGAN cfg.GAN.CONDITION_DIM: the size of the conditioning-augmentation code


class ConditioningAugmentation(nn.Module):
    """AttnGAN's conditioning augmentation (StackGAN's CA; AttnGAN ``code/model.py:CA_NET``, paper Sec. 3).

    ``fc`` = Linear(sentence, 4 * CA_DIM) -> GLU gives ``mu`` and ``logvar`` (CA_DIM each); the code is
    ``mu + eps * exp(logvar / 2)``, eps ~ N(0, I), and ``kl`` = mean(-(1 + logvar - mu^2 - exp(logvar)) / 2), the
    KL divergence to N(0, I) that AttnGAN adds to the generator loss with weight 1 (``trainer.py``, ``KL_loss``).
    While sampling (eval mode) the code is ``mu``: AttnGAN draws eps there too, the mean keeps a sample a function
    of noise and caption as in every other arm. ``mu``, ``logvar`` and ``kl`` are fp32 under autocast.
    """

    def __init__(self, sentence_dim: int, c_dim: int = CA_DIM):
        super().__init__()
        self.c_dim = c_dim
        self.fc = nn.Linear(sentence_dim, 4 * c_dim)

    def forward(self, sentence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = F.glu(self.fc(sentence), dim=1).float().split(self.c_dim, dim=1)
        kl = (mu.pow(2) + logvar.exp() - 1 - logvar).mean() / 2
        if not self.training:
            return mu, kl
        return mu + torch.randn_like(mu) * (logvar / 2).exp(), kl


class SentenceInput(nn.Module):
    """The generator's input ``cat(c, z)`` with ``c`` the sentence: AttnGAN's first stage (``code/model.py``:
    ``G_NET`` computes ``c = CA_NET(sentence)`` and ``INIT_STAGE_G`` maps ``fc(cat(c, z))``), paper Sec. 3.

    ``augmentation`` on: ``c`` is the CA code (``ConditioningAugmentation``, CA_DIM = 100) and ``kl`` the KL term
    of the last training forward, which the training step adds to the generator loss (weight 1, as AttnGAN;
    ``take_kl``). Off (the default, ``model.fusion.conditioning_augmentation``): ``c`` is the sentence vector
    itself and there is no KL term, since no other arm of DF-GAN's comparisons uses CA. The backbone keeps its own
    ``fc`` (DF-GAN's Linear to the 4x4 map, not AttnGAN's Linear + BN + GLU), so that only how the text enters
    differs between the arms.
    """

    def __init__(self, sentence_dim: int, augmentation: bool = False):
        super().__init__()
        self.ca = ConditioningAugmentation(sentence_dim) if augmentation else None
        self.out_dim = CA_DIM if augmentation else sentence_dim
        self.kl: torch.Tensor | None = None

    def forward(self, noise: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        c = sentence
        if self.ca is not None:
            c, kl = self.ca(sentence)
            self.kl = kl if self.training else None
        return torch.cat((c.to(noise.dtype), noise), dim=1)

    def take_kl(self) -> torch.Tensor | None:
        """The KL term of the last training forward, handed over once (None without CA)."""
        kl, self.kl = self.kl, None
        return kl


def generator_input(fusion_spec, sentence_dim: int) -> SentenceInput | None:
    """The sentence input a fusion needs at the generator's ``fc``: ``cross_attention`` (its attention blocks
    never see the sentence; AttnGAN feeds it at the input), ``model.fusion.conditioning_augmentation`` for CA;
    None for every other fusion (each of their blocks takes ``cat(noise, sentence)``, DF-GAN's ``fc`` only noise)."""
    if fusion_spec is None or fusion_spec.name != "cross_attention":
        return None
    return SentenceInput(sentence_dim, augmentation=fusion_spec.conditioning_augmentation)
