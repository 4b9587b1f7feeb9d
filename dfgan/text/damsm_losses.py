"""AttnGAN's DAMSM matching losses (Xu et al., CVPR 2018, Sec. 3.3), written from the paper's formulas.

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAMMA1 = 4.0  # AttnGAN cfg.TRAIN.SMOOTH.GAMMA1: attention sharpness over regions
GAMMA2 = 5.0  # GAMMA2: word-score aggregation
GAMMA3 = 10.0  # GAMMA3: logit scale of both matching losses
_EPS = 1e-8


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


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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
    return _both_ways(gamma3 * cosine_matrix(image_global, sentences), image_ids)


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
