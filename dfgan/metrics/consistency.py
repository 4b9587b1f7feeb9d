"""Text-image consistency: R-precision with DAMSM encoders (AttnGAN, Xu et al. CVPR 2018, Sec. 5; DM-GAN).

For every generated image, its true caption is ranked among ``R_CANDIDATES - 1`` = 99 captions of *other*
test images by the cosine similarity between the DAMSM image encoder's global feature and each caption's
sentence vector; R-precision (R = 1) is the fraction of images whose true caption ranks first (strictly above
every mismatched one). Chance is 1 / 100.

The evaluator is a DAMSM *pair* (text and image encoder trained together with AttnGAN's matching loss by
``dfgan.text.pretrain``) on the run's training data, on the run's device, taken from the first place that has
one: the pair ``dfgan pretrain-text`` saved (``image_encoder.pth`` beside the run's ``text_encoder.pth``
checkpoint); the pretrained-encoder cache (``get_text_encoder`` saves the image encoder beside the text encoder
it pretrains, with the evaluator's recipe and seed: a ``damsm`` run's own conditioning encoder); else a pair
pretrained here with that recipe, cached under ``cache_dir()/damsm_eval`` (said before it starts, with where it
goes, and after 10 steps how long it will take: 1,500 steps took 830 s of an 842 s evaluation on a CPU). The
protocol records both encoders' hashes and whether the text encoder is the run's conditioning one. Runs with
another text encoder are evaluated with the default DAMSM recipe, so numbers across text encoders are measured
by one evaluator.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfgan.data.check import check_text_encoder_vocab, text_encoder_record
from dfgan.data.vocab import pad_caption
from dfgan.metrics.features import Extractor
from dfgan.nn.text_encoders import DAMSMTextEncoder
from dfgan.runs import cache_dir, load_or_make
from dfgan.runtime import pick_device
from dfgan.spec import TextEncoderSpec
from dfgan.text.encoders import cache_key, cache_path, image_encoder_beside, load_damsm_checkpoint
from dfgan.text.image_encoders import IMAGE_ENCODERS
from dfgan.text.pretrain import pretrain_text_encoder

R_CANDIDATES = 100  # AttnGAN/DM-GAN: the true caption among 99 mismatched ones
R_SEED = 0


def r_precision(image_features: np.ndarray, sentences: np.ndarray, true_index: np.ndarray,
                caption_owner: np.ndarray, image_owner: np.ndarray, *, candidates: int = R_CANDIDATES,
                seed: int = R_SEED) -> float:
    """R-precision (R = 1) of images against a caption pool.

    ``image_features`` (n, D): one row per generated image; ``sentences`` (M, D): the pool of caption vectors;
    ``true_index`` (n,): row of each image's own caption in the pool; ``caption_owner`` (M,): the test image each
    pooled caption belongs to; ``image_owner`` (n,): the test image each generated image was made for.
    Mismatched candidates are drawn (seeded) from captions of other images."""
    img = torch.nn.functional.normalize(torch.as_tensor(np.asarray(image_features), dtype=torch.float64), dim=1)
    sen = torch.nn.functional.normalize(torch.as_tensor(np.asarray(sentences), dtype=torch.float64), dim=1)
    n = img.shape[0]
    caption_owner, image_owner = np.asarray(caption_owner), np.asarray(image_owner)
    rng = np.random.default_rng(seed)
    need = candidates - 1
    hits = 0
    for k in range(n):
        others = np.flatnonzero(caption_owner != image_owner[k])
        if len(others) < need:
            raise ValueError(f"R-precision needs {need} captions of other images, the pool has {len(others)}")
        wrong = rng.choice(others, need, replace=False)
        true_score = img[k] @ sen[int(true_index[k])]
        hits += int(bool((sen[torch.as_tensor(wrong)] @ img[k] < true_score).all()))
    return hits / n


# ---- the evaluator pair ------------------------------------------------------------------------------------------


def _state_hash(module: torch.nn.Module) -> str:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()[:16]


def evaluator_spec(spec):
    """The DAMSM pretraining fields the evaluator uses: the run's own when it uses DAMSM, else the defaults."""
    te = spec.model.text_encoder
    if te.name == "damsm":
        return te.model_copy(update={"checkpoint": None})
    return TextEncoderSpec()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def saved_pair(spec, train_dataset) -> dict[str, Any] | None:
    """The DAMSM pair ``dfgan pretrain-text`` saved for the run's text encoder, when the run's
    ``model.text_encoder.checkpoint`` is a ``pretrain-text`` output with its image encoder beside it
    (``image_encoder_beside``) and its sidecar (image encoder name, width, vocabulary); else None."""
    te = spec.model.text_encoder
    if te.name != "damsm" or not te.checkpoint:
        return None
    text_path = Path(te.checkpoint).expanduser()
    image_path = image_encoder_beside(text_path)
    rec = text_encoder_record(text_path)
    if not (image_path.is_file() and rec and rec.get("image_encoder") in IMAGE_ENCODERS):
        return None
    check_text_encoder_vocab(text_path, train_dataset.vocab)
    return {"text_path": text_path, "image_path": image_path, "record": rec}


def damsm_pair(spec, train_dataset, *, device="cpu", progress: bool = False, report=_say):
    """(text_encoder, image_encoder, info): the evaluator pair on ``device``. The pair ``dfgan pretrain-text``
    saved for the run's text encoder when there is one (``saved_pair``); else the pair the text-encoder cache
    holds for the evaluator recipe on ``train_dataset``; else a pair trained with that recipe on ``device``,
    cached under ``cache_dir()/damsm_eval`` (``report`` says so, with the step count and the cache path, before
    it starts, and after 10 steps how long the rest will take). ``info["source"]`` says which."""
    saved = saved_pair(spec, train_dataset)
    if saved is not None:
        rec = saved["record"]
        text = load_damsm_checkpoint(saved["text_path"], len(train_dataset.vocab), device="cpu")
        image = IMAGE_ENCODERS.build(rec["image_encoder"], out_dim=text.output_dim)
        image.load_state_dict(torch.load(saved["image_path"], map_location="cpu", weights_only=True))
        info = {k: rec.get(k) for k in ("steps", "image_encoder", "retrieval_top1", "retrieval_n", "word_loss",
                                        "embedding_dim", "dataset_hash", "vocab_hash")}
        info.update(source="pretrain-text", evaluator="DAMSM pair saved by dfgan pretrain-text (the run's text "
                    "encoder and its image encoder)", path=str(saved["image_path"]),
                    text_encoder_path=str(saved["text_path"]), key=None)
    else:
        text, image, info = _trained_pair(spec, train_dataset, device, progress, report)
    text, image = (m.to(device).eval().requires_grad_(False) for m in (text, image))
    info.update(text_encoder_hash=_state_hash(text), image_encoder_hash=_state_hash(image))
    return text, image, info


def _trained_pair(spec, train_dataset, device, progress: bool, report):
    te = evaluator_spec(spec)
    key = cache_key(te, train_dataset)
    text_file = cache_path(te, train_dataset, cache_dir())
    if text_file.is_file() and image_encoder_beside(text_file).is_file():  # pretrained with the run's encoder
        info = text_encoder_record(text_file) or {"image_encoder": "small_cnn"}
        text = DAMSMTextEncoder(len(train_dataset.vocab), nhidden=te.embedding_dim)
        text.load_state_dict(torch.load(text_file, map_location="cpu", weights_only=True))
        image = IMAGE_ENCODERS.build(info.get("image_encoder", "small_cnn"), out_dim=te.embedding_dim)
        image.load_state_dict(torch.load(image_encoder_beside(text_file), map_location="cpu", weights_only=True))
        info.update(source="text encoder cache", path=str(text_file), key=key)
        return text, image, info
    path = cache_dir() / "damsm_eval" / f"damsm-pair-{key}.pt"

    def make() -> dict:
        dev = pick_device(device)
        report(f"rprec_damsm: no DAMSM image encoder saved for this run's text encoder (`dfgan pretrain-text` saves "
               f"one beside text_encoder.pth, used when the run's model.text_encoder.checkpoint is that file); "
               f"training an evaluator pair on the {getattr(train_dataset, 'name', 'training')} data first: "
               f"{te.pretrain_steps} steps of batch {min(te.pretrain_batch_size, len(train_dataset))} on {dev}, "
               f"cached at {path} for every later evaluation on this data")
        t0 = time.perf_counter()

        def eta(step: int, _losses) -> None:
            if step == 10 < te.pretrain_steps:
                rate = step / (time.perf_counter() - t0)
                report(f"rprec_damsm: evaluator pair at {rate:.2f} steps/s: about "
                       f"{(te.pretrain_steps - step) / rate / 60:.1f} min to go")

        text, info, image = pretrain_text_encoder(train_dataset, te, device=dev, progress=progress, log_fn=eta,
                                                  return_image_encoder=True)
        return {"text_encoder": {k: v.cpu() for k, v in text.state_dict().items()},
                "image_encoder": {k: v.cpu() for k, v in image.state_dict().items()},
                "info": json.dumps({**info, "key": key})}

    saved = load_or_make(path, make)
    info = json.loads(saved["info"])
    text = DAMSMTextEncoder(len(train_dataset.vocab), nhidden=te.embedding_dim)
    text.load_state_dict(saved["text_encoder"])
    image = IMAGE_ENCODERS.build(info.get("image_encoder", "small_cnn"), out_dim=te.embedding_dim)
    image.load_state_dict(saved["image_encoder"])
    info.update(source="damsm_eval cache", path=str(path))
    return text, image, info


class DAMSMImageExtractor(Extractor):
    """The DAMSM image encoder's global feature of each image (input [-1, 1], the encoder resizes itself)."""

    def __init__(self, text_encoder, image_encoder, info: dict[str, Any], device):
        self.text, self.image, self.info, self.device = text_encoder, image_encoder, info, torch.device(device)
        self.key, self.dim = "damsm_image_global", int(getattr(image_encoder, "out_dim", 0))
        self._pool: dict[tuple[str, int], np.ndarray] = {}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        x = images.to(self.device).float() / 127.5 - 1.0
        return {"features": self.image(x)[1].float().cpu().numpy()}

    @torch.no_grad()
    def sentence_pool(self, dataset, batch_size: int = 256) -> np.ndarray:
        """Sentence vectors of every caption of ``dataset`` (row i*K + j: caption j of image i)."""
        key = (getattr(dataset, "content_hash", str(id(dataset))), len(dataset))
        if key not in self._pool:
            k = dataset.captions_per_image
            pairs = [(i, j) for i in range(len(dataset)) for j in range(k)]
            out = []
            for s in range(0, len(pairs), batch_size):
                ids = [pad_caption(dataset.caption_ids(i, j)) for i, j in pairs[s:s + batch_size]]
                caps = torch.stack([c for c, _ in ids]).to(self.device)
                lens = torch.tensor([max(n, 1) for _, n in ids])
                out.append(self.text(caps, lens)[1].float().cpu().numpy())
            self._pool[key] = np.concatenate(out)
        return self._pool[key]

    def protocol(self) -> dict[str, Any]:
        keep = ("source", "key", "steps", "image_encoder", "retrieval_top1", "retrieval_n", "text_encoder_hash",
                "image_encoder_hash", "embedding_dim")
        return {"extractor": self.key,
                "evaluator": self.info.get("evaluator", "DAMSM pair (dfgan.train.pretrain_text, sentence loss)"),
                **{k: self.info.get(k) for k in keep}}


def same_text_encoder(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two text encoders hold identical weights (e.g. the evaluator's and the run's conditioning one)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)
