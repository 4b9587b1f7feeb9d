"""Data commands: ``dfgan data check`` and ``dfgan pretrain-text``.

* ``dfgan data check --data birds --root data/birds [--text-encoder text_encoder200.pth]`` scans a dataset for
  every problem (``dfgan.data.check``) and exits 1 if any is fatal.
* ``dfgan pretrain-text --variant full data.name=birds data.root=data/birds --out runs/damsm-birds`` pretrains a
  DAMSM text encoder with AttnGAN's sentence- and word-level losses (``dfgan.pretrain_run``), saves
  ``text_encoder.pth`` in the official key layout (usable as ``model.text_encoder.checkpoint=...``) and logs the
  run to MLflow (experiment ``dfgan-pretrain-text``).
"""

from __future__ import annotations

import argparse
import json

from dfgan.cli import command, load_spec_from, spec_args, tracking_args
from dfgan.pretrain_run import PRETRAIN_EXPERIMENT


# ---- data check ---------------------------------------------------------------------------------------------------
@command("data", "dataset tools: `dfgan data check` lists every problem of a dataset before training")
def _data_args(p):
    sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    c = sub.add_parser("check", help="scan a dataset (index files, every image, vocabulary) for all problems",
                       description="Scan a dataset for every problem at once: missing files, corrupt or truncated "
                       "images, converted image modes, empty caption files, captions with only unknown words, "
                       "a split without images (with the layout the folder looks like), a vocabulary that does not "
                       "fit a text-encoder checkpoint (its size; its hash when the checkpoint's .json sidecar "
                       "records one). Exit code 1 if any is fatal.")
    c.add_argument("--data", required=True, metavar="NAME", help="dataset loader: birds, coco, coco_json, folder")
    c.add_argument("--root", required=True, metavar="PATH", help="the dataset folder (e.g. data/birds)")
    c.add_argument("--text-encoder", metavar="PATH", help="a DAMSM text_encoder*.pth whose vocabulary must match "
                   "(the size; the words too when its .json sidecar records their hash, as dfgan pretrain-text's)")
    c.add_argument("--imsize", type=int, default=256, help="training image size, for the small-image check "
                   "and the content hash (default 256; training's default data.imsize is 64)")
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
    tracking_args(p)
    return _pretrain


def _pretrain(args) -> int:
    from dfgan.pretrain_run import pretrain_text

    if args.steps is not None:
        args.overrides.append(f"model.text_encoder.pretrain_steps={args.steps}")
    spec = load_spec_from(args)
    summary = pretrain_text(spec, word_loss=args.word_loss, image_encoder=args.image_encoder, seed=args.seed,
                            out=args.out, experiment=args.experiment, tracking=not args.no_track,
                            tracking_uri=args.tracking_uri, progress=not args.quiet)
    print(json.dumps(summary, indent=2, default=str))
    return 0


