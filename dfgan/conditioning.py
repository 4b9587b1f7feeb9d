"""Text conditioning for training and sampling: the frozen text encoder and a per-caption embedding cache.

The encoder is frozen (eval mode, no dropout), so a caption's sentence embedding never changes: each is
computed once and cached by (image, caption) rather than recomputed every batch. Word embeddings (needed only
by word-attending fusions) are computed per batch, which costs one LSTM pass and keeps memory flat.
"""

from __future__ import annotations

import torch

from dfgan.data.vocab import MAX_WORDS


def load_text_encoder(spec, dataset, *, device, cache_dir, progress=True, log_fn=None):
    """(encoder, info) for ``spec.model.text_encoder``: a checkpoint, the cache, or pretraining on ``dataset``."""
    te = spec.model.text_encoder
    if te.name == "damsm":
        from dfgan.train.pretrain_text import get_text_encoder

        enc, info = get_text_encoder(te, dataset, device=device, cache_dir=cache_dir, progress=progress,
                                     log_fn=log_fn)
    else:
        from dfgan.registry import TEXT_ENCODERS

        enc = TEXT_ENCODERS.build(te.name, spec=te, n_words=len(dataset.vocab), vocab=dataset.vocab)
        info = {"source": "pretrained", "name": te.name}
    enc = enc.to(device).eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc, info


class TextConditioner:
    """Encodes batches of captions with a frozen encoder; caches sentence vectors per (image, caption)."""

    def __init__(self, encoder, device, need_words: bool, cache: bool = True):
        self.encoder, self.device, self.need_words, self.use_cache = encoder, device, need_words, cache
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, captions: torch.Tensor, lengths: torch.Tensor):
        words, sent = self.encoder(captions.to(self.device), lengths)
        return words.float(), sent.float()

    @torch.no_grad()
    def __call__(self, batch: dict):
        caps, lens = batch["caption"], batch["length"]
        mask = (caps == 0).to(self.device)
        if self.need_words or not self.use_cache:
            words, sent = self.encode(caps, lens)
            return sent, (words if self.need_words else None), mask
        keys = list(zip(batch["index"].tolist(), batch["caption_index"].tolist()))
        # an over-long caption is a random subset each time: cache only captions that fit
        fits = (lens < MAX_WORDS).tolist()
        missing = [n for n, k in enumerate(keys) if not (fits[n] and k in self._cache)]
        if missing:
            sel = torch.tensor(missing)
            _, sent_new = self.encode(caps[sel], lens[sel])
            for n, v in zip(missing, sent_new):
                if fits[n]:
                    self._cache[keys[n]] = v
        sent = torch.stack([
            self._cache[k] if fits[n] and k in self._cache else sent_new[missing.index(n)]
            for n, k in enumerate(keys)
        ])
        return sent, None, mask
