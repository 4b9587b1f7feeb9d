"""The frozen text encoder of a run: a checkpoint, the cache, or DAMSM pretraining on the dataset; and the
conditioner that turns batches of captions into the generator's sentence (and word) vectors.

The encoder is frozen (eval mode, no dropout). Word embeddings (needed only by word-attending fusions) are
computed per batch.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dfgan.data.check import check_text_encoder_vocab, size_only_note
from dfgan.data.identity import vocab_hash
from dfgan.data.vocab import MAX_WORDS, pad_caption
from dfgan.nn.text_encoders import DAMSMTextEncoder, damsm_sizes, read_damsm_state
from dfgan.registry import TEXT_ENCODERS
from dfgan.runs import atomic_torch_save, atomic_write_text, cache_build_lock
from dfgan.runtime import pick_device
from dfgan.text.pretrain import pretrain_sampler, pretrain_text_encoder
from dfgan.text.probe import attribute_probe, has_attributes

# Bump when the pretraining recipe changes (architecture, loss, sampler): cached encoders are then retrained.
PRETRAIN_VERSION = 1
TEXT_ENCODER_FILE = "text_encoder.pth"  # what `dfgan pretrain-text` saves into a folder (dfgan.pretrain_run)
IMAGE_ENCODER_FILE = "image_encoder.pth"



def load_damsm_checkpoint(path, n_words: int, *, device=None, embedding_dim: int | None = None) -> DAMSMTextEncoder:
    """Load a DAMSM text-encoder state dict (official ``text_encoder*.pth`` or ours; ``read_damsm_state``).
    Raises FileNotFoundError naming the path, ValueError if its vocabulary size or width differ."""
    state = read_damsm_state(path)
    rows, ninput, nhidden = damsm_sizes(state)
    if rows != n_words:
        raise ValueError(
            f"text encoder checkpoint {path} has a vocabulary of {rows} words (encoder.weight rows) but the "
            f"dataset vocabulary has {n_words} words; use the checkpoint made for this dataset's captions, or "
            "set model.text_encoder.checkpoint=null to pretrain one"
        )
    if embedding_dim is not None and nhidden != embedding_dim:
        raise ValueError(
            f"text encoder checkpoint {path} gives {nhidden}-d embeddings but model.text_encoder.embedding_dim "
            f"is {embedding_dim}"
        )
    enc = DAMSMTextEncoder(n_words, ninput=ninput, nhidden=nhidden)
    enc.load_state_dict(state)
    return enc.to(pick_device(device)).eval().requires_grad_(False)


def image_encoder_beside(text_encoder_path) -> Path:
    """Where ``dfgan pretrain-text`` saves the image encoder trained with the text encoder at
    ``text_encoder_path``: ``image_encoder.pth`` beside ``text_encoder.pth``, else ``<stem>.image_encoder.pth``."""
    p = Path(text_encoder_path).expanduser()
    return p.with_name(IMAGE_ENCODER_FILE if p.name == TEXT_ENCODER_FILE else p.stem + ".image_encoder.pth")


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
    n_words, vocab = len(dataset.vocab), vocab_hash(dataset.vocab)
    if spec.checkpoint:
        check_text_encoder_vocab(spec.checkpoint, dataset.vocab)  # size, and the recorded vocabulary hash if any
        if (note := size_only_note(spec.checkpoint)) is not None:
            warnings.warn(note, UserWarning, stacklevel=2)
        enc = load_damsm_checkpoint(spec.checkpoint, n_words, device=device, embedding_dim=spec.embedding_dim)
        return enc, {"source": "checkpoint", "path": str(Path(spec.checkpoint).expanduser()), "vocab_hash": vocab,
                     "vocab_check": "size" if note else "hash"}
    path = cache_path(spec, dataset, cache_dir)
    if not path.is_file():  # pretrained once; workers that start together wait for the first (cache_build_lock)
        with cache_build_lock(path, "a DAMSM text encoder") as missing:
            if missing:
                enc, info = _pretrain_into_cache(spec, dataset, path, vocab, device=device, progress=progress,
                                                 log_fn=log_fn, eval_dataset=eval_dataset)
                return enc, {**info, "source": "pretrained", "path": str(path)}
    enc = load_damsm_checkpoint(path, n_words, device=device, embedding_dim=spec.embedding_dim)
    info: dict[str, Any] = {}
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
    info.update(source="cache", path=str(path), vocab_hash=vocab)
    return enc, info


def _pretrain_into_cache(spec, dataset, path: Path, vocab: str, *, device, progress, log_fn, eval_dataset):
    """Pretrain the DAMSM pair, probe what its sentence vectors encode, and write encoder, image encoder and
    the sidecar record atomically to the cache."""
    print(f"dfgan: pretraining a DAMSM text encoder on the {getattr(dataset, 'name', 'training')} data "
          f"({spec.pretrain_steps} steps, sentence loss only: `dfgan pretrain-text` adds the word loss); it is "
          f"cached at {path} and reused by every run with this data and these pretraining fields", file=sys.stderr)
    enc, info, img_enc = pretrain_text_encoder(
        dataset, spec, device=device, progress=progress, log_fn=log_fn, eval_dataset=eval_dataset,
        return_image_encoder=True,
    )
    if has_attributes(dataset):  # what the sentence vectors encode of each attribute (built-in data)
        probe_on = eval_dataset if eval_dataset is not None and has_attributes(eval_dataset) else None
        info["attribute_probe"] = attribute_probe(enc, dataset, probe_on, device=pick_device(device))["accuracy"]
    state = {k: v.detach().cpu() for k, v in enc.state_dict().items()}
    info = {**info, "content_hash": dataset.content_hash, "dataset_hash": dataset.content_hash,
            "dataset": getattr(dataset, "name", None), "vocab_hash": vocab, "key": cache_key(spec, dataset),
            "version": PRETRAIN_VERSION}
    # the image encoder first, the encoder (what the cache check reads) next, the sidecar last: the image
    # encoder trained with it is the rprec_damsm evaluator pair (same recipe), which then needs no training
    atomic_torch_save({k: v.detach().cpu() for k, v in img_enc.state_dict().items()}, image_encoder_beside(path))
    atomic_torch_save(state, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=2, sort_keys=True))
    return enc, info


# ---- the run's frozen encoder and its conditioner ---------------------------------------------------------


def load_text_encoder(spec, dataset, *, device, cache_dir, progress=True, log_fn=None):
    """(encoder, info) for ``spec.model.text_encoder``: a checkpoint, the cache, or pretraining on ``dataset``."""
    te = spec.model.text_encoder
    if te.name == "damsm":
        enc, info = get_text_encoder(te, dataset, device=device, cache_dir=cache_dir, progress=progress,
                                     log_fn=log_fn)
    else:
        enc = TEXT_ENCODERS.build(te.name, spec=te, n_words=len(dataset.vocab), vocab=dataset.vocab)
        info = {"source": "pretrained", "name": te.name}
    enc = enc.to(device).eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc, info


class TextConditioner:
    """Encodes batches of captions with a frozen encoder; caches sentence vectors per (image, caption).

    A sentence vector must not depend on the batch a caption happens to be drawn in: the LSTM's output for one
    caption differs in its last bits with the batch around it (BLAS blocking), so a cache filled from training
    batches holds different bits after a resume (the cache then starts empty and fills from other batches) and
    resumed runs diverge. Cached vectors are therefore encoded in canonical groups: once ``bind(dataset)`` is
    called, a caption missing from the cache is encoded together with all fitting captions of its group of
    ``max(1, GROUP_CAPTIONS // K)`` consecutive images (``K`` captions each), whatever the batch. Filling the
    cache lazily or all at once (``fill``) gives the same bits. Captions longer than ``MAX_WORDS`` tokens (a
    random subset each draw) are never cached; they are encoded together as the batch's over-long captions, a
    pure function of the batch. Unbound, or with ``cache=False`` or word embeddings needed, every batch is
    encoded as it comes (also a pure function of the batch).
    """

    GROUP_CAPTIONS = 32  # captions per canonical group: batched LSTM cost per caption is ~4x lower than one by one

    def __init__(self, encoder, device, need_words: bool, cache: bool = True):
        self.encoder, self.device, self.need_words, self.use_cache = encoder, device, need_words, cache
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._groups: set[int] = set()  # canonical groups already encoded
        self._dataset = None

    def bind(self, dataset) -> TextConditioner:
        """Cache the sentence vectors of ``dataset``'s captions (the batches' ``index`` / ``caption_index``)."""
        if dataset is not self._dataset:
            self._dataset, self._cache, self._groups = dataset, {}, set()
        return self

    @property
    def _group_images(self) -> int:
        return max(1, self.GROUP_CAPTIONS // max(1, self._dataset.captions_per_image))

    def _fits(self, i: int, j: int) -> bool:
        return sum(1 for t in self._dataset.caption_ids(i, j) if t != 0) <= MAX_WORDS

    @torch.no_grad()
    def _encode_group(self, i: int) -> None:
        ds, g = self._dataset, self._group_images
        first = (i // g) * g
        if first in self._groups:
            return
        self._groups.add(first)
        keys = [(a, b) for a in range(first, min(first + g, len(ds))) for b in range(ds.captions_per_image)
                if self._fits(a, b)]
        if not keys:
            return
        ids = [pad_caption(ds.caption_ids(a, b)) for a, b in keys]
        _, sent = self.encode(torch.stack([c for c, _ in ids]), torch.tensor([n for _, n in ids]))
        self._cache.update(zip(keys, sent))

    def fill(self) -> None:
        """Encode every fitting caption of the bound dataset now (the same bits as filling lazily)."""
        g = self._group_images
        for first in range(0, len(self._dataset), g):
            self._encode_group(first)

    @torch.no_grad()
    def encode(self, captions: torch.Tensor, lengths: torch.Tensor):
        words, sent = self.encoder(captions.to(self.device), lengths)
        return words.float(), sent.float()

    @torch.no_grad()
    def __call__(self, batch: dict):
        caps, lens = batch["caption"], batch["length"]
        mask = (caps == 0).to(self.device)
        if self.need_words or not self.use_cache or self._dataset is None:
            words, sent = self.encode(caps, lens)
            return sent, (words if self.need_words else None), mask
        keys = list(zip(batch["index"].tolist(), batch["caption_index"].tolist()))
        for key in keys:
            if key not in self._cache and self._fits(*key):
                self._encode_group(key[0])
        rest = [n for n, k in enumerate(keys) if k not in self._cache]  # over-long captions
        if rest:
            sel = torch.tensor(rest)
            _, sent_rest = self.encode(caps[sel], lens[sel])
        sent = torch.stack([self._cache[k] if k in self._cache else sent_rest[rest.index(n)]
                            for n, k in enumerate(keys)])
        return sent, None, mask
