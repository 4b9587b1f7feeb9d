"""DAMSM pretraining: a text encoder trained on whatever dataset DF-GAN runs on.

DF-GAN freezes AttnGAN's DAMSM text encoder (a bi-LSTM) pretrained on the dataset; the official repository
ships checkpoints but no pretraining code. ``pretrain_text_encoder`` trains one from scratch with AttnGAN's
matching objective (``dfgan.text.damsm_losses``) and a pluggable image encoder (``dfgan.text.image_encoders``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dfgan.data.order import epoch_order
from dfgan.nn.text_encoders import DAMSMTextEncoder
from dfgan.progress import progress_bar
from dfgan.runtime import pick_device
from dfgan.spec import resolve_sampler
from dfgan.text.damsm_losses import cosine_matrix, sentence_loss
from dfgan.text.damsm_losses import word_loss as _word_loss_fn  # the ``word_loss`` flag below shadows the name
from dfgan.text.image_encoders import IMAGE_ENCODERS

RNN_GRAD_CLIP = 0.25  # AttnGAN cfg.TRAIN.RNN_GRAD_CLIP
ADAM_BETAS = (0.5, 0.999)  # AttnGAN's DAMSM optimiser
LOG_EVERY = 10
RETRIEVAL_N = 100  # candidate images for the retrieval check (AttnGAN's R-precision also uses 100)




def pretrain_sampler(spec, dataset) -> str:
    """The pretraining batch order of ``spec`` (a ``TextEncoderSpec``) on ``dataset``: "auto" resolved by the
    spec's own rule (``dfgan.spec.resolve_sampler``); attribute_pairs only on data with ground-truth attributes."""
    name = resolve_sampler(spec.pretrain_sampler, getattr(dataset, "name", ""))
    if name == "attribute_pairs" and not (hasattr(dataset, "always_named") and hasattr(dataset, "attribute_array")):
        raise ValueError("model.text_encoder.pretrain_sampler=attribute_pairs needs a dataset with ground-truth "
                         "attributes (the built-in data); use random or auto")
    return name


def _collate(dataset, keys) -> dict[str, torch.Tensor]:
    items = [dataset[k] for k in keys]
    return {
        "image": torch.stack([it["image"] for it in items]),
        "caption": torch.stack([torch.as_tensor(it["caption"]) for it in items]),
        "length": torch.tensor([int(it["length"]) for it in items]),
        "index": torch.tensor([int(it["index"]) for it in items]),
    }


class _PretrainBatches:
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
    device = pick_device(device)
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
        scores = cosine_matrix(sent, glob)  # (captions, images)
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
    device = pick_device(device)
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
        sampler = _PretrainBatches(len(dataset), dataset.captions_per_image, batch_size, seed,
                           pairs=dataset.attribute_array() if pairs else None,
                           vary=dataset.always_named() if pairs else ())
        text_enc.train(), img_enc.train()
        window: dict[str, list[float]] = {"loss": [], "s_loss": [], "w_loss": []}
        last = {"loss": float("nan"), "s_loss": float("nan"), "w_loss": 0.0}
        # a bar on a terminal, else a status line at the interval dfgan.progress.set_interval set
        bar = progress_bar(steps, "DAMSM pretraining", unit="step", enabled=progress, leave=False)
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


