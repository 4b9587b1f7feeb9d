"""Data commands: ``dfgan data check``, ``dfgan pretrain-text`` and ``dfgan sample``.

* ``dfgan data check --data birds --root data/birds [--text-encoder text_encoder200.pth]`` scans a dataset for
  every problem (``dfgan.data.check``) and exits 1 if any is fatal.
* ``dfgan pretrain-text --variant full data.name=birds data.root=data/birds --out runs/damsm-birds`` pretrains a
  DAMSM text encoder with AttnGAN's sentence- and word-level losses (``dfgan.train.pretrain_text``), saves
  ``text_encoder.pth`` in the official key layout (usable as ``model.text_encoder.checkpoint=...``) and logs the
  run to MLflow (experiment ``dfgan-pretrain-text``).
* ``dfgan sample --run runs/full-<hash> --captions my_captions.txt`` draws images for new captions from a
  trained run; unknown words are reported with their line numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dfgan.cli import command, load_spec_from, spec_args

PRETRAIN_EXPERIMENT = "dfgan-pretrain-text"
TEXT_ENCODER_FILE = "text_encoder.pth"
IMAGE_ENCODER_FILE = "image_encoder.pth"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---- data check ---------------------------------------------------------------------------------------------------
@command("data", "dataset tools: `dfgan data check` lists every problem of a dataset before training")
def _data_args(p):
    sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    c = sub.add_parser("check", help="scan a dataset (index files, every image, vocabulary) for all problems",
                       description="Scan a dataset for every problem at once: missing files, corrupt or truncated "
                       "images, converted image modes, empty caption files, captions with only unknown words, "
                       "a vocabulary that does not fit a text-encoder checkpoint. Exit code 1 if any is fatal.")
    c.add_argument("--data", required=True, metavar="NAME", help="dataset loader: birds, coco, coco_json, folder")
    c.add_argument("--root", required=True, metavar="PATH", help="the dataset folder (e.g. data/birds)")
    c.add_argument("--text-encoder", metavar="PATH", help="a DAMSM text_encoder*.pth whose vocabulary must match")
    c.add_argument("--imsize", type=int, default=256, help="training image size, for the small-image check")
    c.add_argument("--max-images", type=int, help="check only the first N images of each split")
    c.add_argument("--workers", type=int, help="decoding threads (default: up to 8)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    return _data


def _data(args) -> int:
    from dfgan.data.check import check_dataset

    rep = check_dataset(args.data, args.root, imsize=args.imsize, max_images=args.max_images,
                        text_encoder=args.text_encoder, progress=not args.quiet, workers=args.workers)
    print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.format())
    return 0 if rep.ok else 1


# ---- pretrain-text ------------------------------------------------------------------------------------------------
@command("pretrain-text", "pretrain a DAMSM text encoder on a dataset (AttnGAN's word + sentence losses)")
def _pretrain_args(p):
    spec_args(p)
    p.add_argument("--steps", type=int, help="training steps (default: model.text_encoder.pretrain_steps)")
    p.add_argument("--word-loss", action=argparse.BooleanOptionalAction, default=True,
                   help="add AttnGAN's word-level attention loss to the sentence-level loss (default: on)")
    p.add_argument("--image-encoder", default="small_cnn",
                   help="small_cnn (trained from scratch) or efficientnet_lite0 (frozen ImageNet weights, local)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="PATH", help="a .pth file, or a folder that receives text_encoder.pth "
                   "(default: <train.out_dir>/pretrain-text/<data.name>-<content hash>/)")
    p.add_argument("--experiment", default=PRETRAIN_EXPERIMENT, help="MLflow experiment")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                   "sqlite:///<train.out_dir>/mlflow.db)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return _pretrain


def pretrain_text(spec, *, word_loss: bool = True, image_encoder: str = "small_cnn", seed: int = 0,
                  out: str | Path | None = None, experiment: str = PRETRAIN_EXPERIMENT, tracking: bool = True,
                  tracking_uri: str | None = None, progress: bool = True) -> dict:
    """Pretrain a DAMSM text encoder on ``spec.data`` (train split; retrieval measured on the test split when
    it exists) for ``spec.model.text_encoder.pretrain_steps`` steps; save it (official keys) and the image
    encoder; log params, the loss curves and the checkpoint to MLflow. Returns a summary dict."""
    import torch

    import dfgan.components  # noqa: F401
    from dfgan.data.errors import DataError, MissingDataError
    from dfgan.registry import DATASETS
    from dfgan.tracking import Tracker
    from dfgan.train.loop import pick_device
    from dfgan.train.pretrain_text import IMAGE_ENCODERS, pretrain_text_encoder

    IMAGE_ENCODERS.entry(image_encoder)  # unknown name: RegistryError listing the choices
    dataset = DATASETS.build(spec.data.name, spec.data, "train")
    try:
        eval_ds = DATASETS.build(spec.data.name, spec.data, "test")
    except (MissingDataError, DataError) as e:
        _say(f"dfgan: no usable test split ({e}); retrieval is measured on training images")
        eval_ds = None
    te = spec.model.text_encoder
    if out is None:
        out = Path(spec.train.out_dir) / "pretrain-text" / f"{spec.data.name}-{dataset.content_hash}"
    out = Path(out)
    weights = out if out.suffix == ".pth" else out / TEXT_ENCODER_FILE
    device = pick_device(spec.train.device)
    tspec = spec.model_copy(deep=True)
    tspec.tracking.experiment = experiment
    tracker = Tracker(tspec, enabled=tracking, uri=tracking_uri)
    try:
        tracker.start({"stage": "pretrain-text", "dataset": spec.data.name, "dataset_hash": dataset.content_hash,
                       "image_encoder": image_encoder, "word_loss": word_loss, "device": str(device)})
        if tracking:
            import mlflow

            mlflow.log_params({"pretrain.word_loss": word_loss, "pretrain.image_encoder": image_encoder,
                               "pretrain.seed": seed, "pretrain.n_words": len(dataset.vocab),
                               "pretrain.n_images": len(dataset)})
        enc, info, img_enc = pretrain_text_encoder(
            dataset, te, device=device, word_loss=word_loss, image_encoder=image_encoder, progress=progress,
            log_fn=lambda step, m: tracker.metrics({f"text_{k}": v for k, v in m.items()}, step), seed=seed,
            eval_dataset=eval_ds, return_image_encoder=True)
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in enc.state_dict().items()}, weights)
        img_path = weights.with_name(IMAGE_ENCODER_FILE if weights.name == TEXT_ENCODER_FILE
                                     else weights.stem + ".image_encoder.pth")
        torch.save({k: v.detach().cpu() for k, v in img_enc.state_dict().items()}, img_path)
        summary = {**info, "text_encoder": str(weights), "image_encoder_weights": str(img_path),
                   "dataset": spec.data.name, "dataset_hash": dataset.content_hash, "n_words": len(dataset.vocab),
                   "use_with": f"model.text_encoder.checkpoint={weights}", "mlflow_run_id": tracker.run_id}
        sidecar = weights.with_suffix(".json")
        sidecar.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
        tracker.metrics({k: info[k] for k in ("retrieval_top1", "retrieval_chance", "seconds") if k in info},
                        info.get("steps", 0))
        tracker.artifact(weights, "text_encoder")
        tracker.artifact(sidecar, "text_encoder")
        tracker.finish()
        return summary
    except KeyboardInterrupt:
        tracker.kill()
        raise
    except BaseException as e:
        tracker.fail(e)
        raise


def _pretrain(args) -> int:
    if args.steps is not None:
        args.overrides.append(f"model.text_encoder.pretrain_steps={args.steps}")
    spec = load_spec_from(args)
    summary = pretrain_text(spec, word_loss=args.word_loss, image_encoder=args.image_encoder, seed=args.seed,
                            out=args.out, experiment=args.experiment, tracking=not args.no_track,
                            tracking_uri=args.tracking_uri, progress=not args.quiet)
    print(json.dumps(summary, indent=2, default=str))
    return 0


# ---- sample -------------------------------------------------------------------------------------------------------
@command("sample", "draw images for your own captions from a trained run (unknown words are reported)")
def _sample_args(p):
    p.add_argument("--run", required=True, metavar="PATH", help="a run folder (runs/<name>-<hash>) or its "
                   "checkpoint.pt / final_weights.pt")
    p.add_argument("--captions", required=True, metavar="FILE", help="one caption per line (# lines skipped)")
    p.add_argument("--n", type=int, default=4, help="images per caption (rows of the grid)")
    p.add_argument("--out", metavar="PNG", help="grid image (default: <run>/samples/captions-<file>.png)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--text-encoder", metavar="PATH", help="the run's text encoder weights, if not in the cache")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    return _sample


def load_run(run) -> tuple[dict, Path]:
    """The saved state of a training run: ``checkpoint.pt`` (preferred: it records the dataset hash and the
    text encoder) or ``final_weights.pt``, from the run folder or the file given."""
    import torch

    from dfgan.data.errors import MissingDataError
    from dfgan.train.loop import CHECKPOINT, FINAL_WEIGHTS

    path = Path(run).expanduser()
    if path.is_dir():
        found = [path / n for n in (CHECKPOINT, FINAL_WEIGHTS) if (path / n).is_file()]
        if not found:
            raise MissingDataError(f"no {CHECKPOINT} or {FINAL_WEIGHTS} in run folder {path}", str(path))
        path = found[0]
    elif not path.is_file():
        raise MissingDataError(f"run folder or checkpoint not found: {path}", str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "spec" not in state or "models" not in state:
        raise ValueError(f"{path} is not a dfgan training checkpoint (no 'spec' and 'models')")
    return state, path


def sample_captions_grid(run, captions_file, *, n: int = 4, out=None, seed: int = 0, text_encoder=None,
                         device: str = "cpu", report=_say) -> dict:
    """Images for each caption of ``captions_file`` (columns) x ``n`` truncated noise vectors (rows), saved as a
    captioned grid. Unknown words are reported through ``report``; a caption of only unknown words raises
    ``UnknownWordsError`` naming its line."""
    import torch

    import dfgan.components  # noqa: F401
    from dfgan.conditioning import TextConditioner, load_text_encoder
    from dfgan.data.user_captions import caption_batch, read_caption_file
    from dfgan.model import build_gan
    from dfgan.paths import cache_dir
    from dfgan.registry import DATASETS, FUSIONS
    from dfgan.sampling import last_stage, truncated_noise
    from dfgan.spec import from_dict
    from dfgan.train.loop import pick_device
    from dfgan.viz import save_caption_grid

    state, path = load_run(run)
    spec = from_dict(state["spec"])
    te = spec.model.text_encoder
    dataset = DATASETS.build(spec.data.name, spec.data, "train")
    saved_hash = state.get("dataset_hash")
    if saved_hash and saved_hash != dataset.content_hash:
        report(f"warning: the dataset changed since training (content hash {dataset.content_hash}, at training "
               f"{saved_hash}): its vocabulary may differ from the one the model learned")
    if text_encoder:
        te = te.model_copy(update={"checkpoint": str(text_encoder)})
    elif te.name == "damsm" and not te.checkpoint:
        from dfgan.train.pretrain_text import cache_path

        cached = cache_path(te, dataset, cache_dir())
        recorded = (state.get("text_encoder") or {}).get("path")
        if not cached.is_file():
            if recorded and Path(recorded).is_file():
                te = te.model_copy(update={"checkpoint": recorded})
            else:
                raise FileNotFoundError(
                    f"the text encoder this run was trained with is not in the cache ({cached}"
                    f"{'' if not recorded else ' nor at ' + recorded}); pass --text-encoder PATH (sampling never "
                    "pretrains a new one: its embeddings would mean nothing to the generator)")
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"text_encoder": te})})
    dev = pick_device(device)
    encoder, _ = load_text_encoder(spec, dataset, device=dev, cache_dir=cache_dir(), progress=False)
    caps = read_caption_file(captions_file, dataset.vocab)
    for c in caps:
        for note in c.notes(str(captions_file)):
            report(note)
    cond_dim = getattr(encoder, "output_dim", te.embedding_dim)
    gan = build_gan(spec, cond_dim=cond_dim, word_dim=cond_dim)
    gan.load_state_dict(state["models"])
    gen = gan.generator.to(dev).eval()
    need_words = "words" in FUSIONS.entry(spec.model.fusion.name).requires
    cond = TextConditioner(encoder, dev, need_words)
    tokens, lengths = caption_batch(caps)
    with torch.no_grad():
        words, sent = cond.encode(tokens, lengths)
        mask = (tokens == 0).to(dev)
        noise = truncated_noise(n, spec.model.z_dim, spec.model.truncation, torch.Generator().manual_seed(seed))
        rows = [last_stage(gen(z[None].expand(len(caps), -1).to(dev), sent, words, mask)).float().cpu()
                for z in noise]
    if out is None:
        base = path.parent if path.is_file() else path
        out = base / "samples" / f"captions-{Path(captions_file).stem}.png"
    grid = save_caption_grid(torch.cat(rows), [c.text for c in caps], out, nrow=len(caps))
    return {"grid": str(grid), "checkpoint": str(path), "captions": len(caps), "per_caption": n,
            "unknown_words": {c.line: c.unknown for c in caps if c.unknown}, "step": state.get("step")}


def _sample(args) -> int:
    res = sample_captions_grid(args.run, args.captions, n=args.n, out=args.out, seed=args.seed,
                               text_encoder=args.text_encoder, device=args.device)
    print(json.dumps(res, indent=2))
    return 0
