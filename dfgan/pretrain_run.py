"""A DAMSM pretraining run (``dfgan pretrain-text``): a text encoder pretrained on a spec's data with AttnGAN's
word- and sentence-level losses (``dfgan.text.pretrain``), saved in the official key layout (usable as
``model.text_encoder.checkpoint=...``) with its image encoder, and logged to MLflow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dfgan.data.errors import DataError, MissingDataError
from dfgan.data.identity import vocab_hash
from dfgan.experiment import build_dataset
from dfgan.run_identity import run_hash
from dfgan.runs import atomic_torch_save, atomic_write_text
from dfgan.runtime import pick_device
from dfgan.text.encoders import TEXT_ENCODER_FILE, image_encoder_beside
from dfgan.text.image_encoders import IMAGE_ENCODERS
from dfgan.text.pretrain import pretrain_text_encoder
from dfgan.tracking import Tracker

PRETRAIN_EXPERIMENT = "dfgan-pretrain-text"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def pretrain_text(spec, *, word_loss: bool = True, image_encoder: str = "small_cnn", seed: int = 0,
                  out: str | Path | None = None, experiment: str = PRETRAIN_EXPERIMENT, tracking: bool = True,
                  tracking_uri: str | None = None, progress: bool = True) -> dict:
    """Pretrain a DAMSM text encoder on ``spec.data`` (train split; retrieval measured on the test split when
    it exists) for ``spec.model.text_encoder.pretrain_steps`` steps; save it (official keys) and the image
    encoder; log params, the loss curves and the checkpoint to MLflow. Returns a summary dict."""
    IMAGE_ENCODERS.entry(image_encoder)  # unknown name: RegistryError listing the choices
    dataset = build_dataset(spec, "train")
    try:
        eval_ds = build_dataset(spec, "test")
    except (MissingDataError, DataError) as e:
        _say(f"dfgan: no usable test split ({e}); retrieval is measured on training images")
        eval_ds = None
    te = spec.model.text_encoder
    if out is None:
        out = Path(spec.train.out_dir) / "pretrain-text" / f"{spec.data.name}-{dataset.content_hash}"
    out = Path(out)
    weights = out if out.suffix == ".pth" else out / TEXT_ENCODER_FILE
    device = pick_device(spec.train.device)
    tracker = Tracker.for_spec(spec, enabled=tracking, uri=tracking_uri, experiment=experiment)
    with tracker:
        tracker.start(spec, run_hash(spec), {"stage": "pretrain-text", "dataset": spec.data.name,
                                 "dataset_hash": dataset.content_hash, "image_encoder": image_encoder,
                                 "word_loss": word_loss, "device": str(device)})
        tracker.params({"pretrain.word_loss": word_loss, "pretrain.image_encoder": image_encoder,
                        "pretrain.seed": seed, "pretrain.n_words": len(dataset.vocab),
                        "pretrain.n_images": len(dataset)})
        enc, info, img_enc = pretrain_text_encoder(
            dataset, te, device=device, word_loss=word_loss, image_encoder=image_encoder, progress=progress,
            log_fn=lambda step, m: tracker.metrics({f"text_{k}": v for k, v in m.items()}, step), seed=seed,
            eval_dataset=eval_ds, return_image_encoder=True)
        atomic_torch_save({k: v.detach().cpu() for k, v in enc.state_dict().items()}, weights)
        img_path = image_encoder_beside(weights)
        atomic_torch_save({k: v.detach().cpu() for k, v in img_enc.state_dict().items()}, img_path)
        summary = {**info, "text_encoder": str(weights), "image_encoder_weights": str(img_path),
                   "dataset": spec.data.name, "dataset_hash": dataset.content_hash, "n_words": len(dataset.vocab),
                   "vocab_hash": vocab_hash(dataset.vocab), "data_root": spec.data.root,
                   "use_with": f"model.text_encoder.checkpoint={weights}", "mlflow_run_id": tracker.run_id}
        sidecar = weights.with_suffix(".json")
        atomic_write_text(sidecar, json.dumps(summary, indent=2, sort_keys=True, default=str))
        tracker.metrics({k: info[k] for k in ("retrieval_top1", "retrieval_chance", "seconds") if k in info},
                        info.get("steps", 0))
        tracker.artifact(weights, "text_encoder")
        tracker.artifact(sidecar, "text_encoder")
    return summary
