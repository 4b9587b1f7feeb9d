"""What can be done with a trained run: evaluate it (``dfgan eval``) and draw images for new captions
(``dfgan sample``). Both rebuild the run through ``dfgan.experiment.rebuild_run``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from dfgan.data.user_captions import caption_batch, read_caption_file
from dfgan.experiment import rebuild_run, run_hash
from dfgan.images import last_stage, save_caption_grid
from dfgan.metrics.evaluate import ClientSink, EvalOptions, evaluate
from dfgan.metrics.nop import nop_report
from dfgan.metrics.registry import for_split
from dfgan.metrics.registry import metrics as metric_defs
from dfgan.noise import truncated_noise


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def default_metrics(spec) -> list[str]:
    """Metrics ``dfgan eval`` computes when neither ``--metrics`` nor ``spec.eval.metrics`` name any."""
    if spec.data.name == "builtin":
        return ["attr_acc", "fd_attr", "memorisation_attr", "rprec_damsm"]
    return ["fid30k_test_clean", "kid_test_clean", "is_test", "rprec_damsm"]


def default_tracking_uri(spec, run_dir: Path) -> str:
    """Where the run was logged by default: the spec's URI, $MLFLOW_TRACKING_URI, else the run folder's parent
    (``train.out_dir``) ``mlflow.db``, independent of the current folder."""
    return spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{Path(run_dir).resolve().parent / 'mlflow.db'}"


def evaluate_run(path, metric_names=None, *, options: EvalOptions | None = None, device: str = "auto",
                 tracking_uri: str | None = None, track: bool = True) -> dict[str, Any]:
    """``dfgan eval``: rebuild the run's GAN and text conditioning, evaluate, add the values to the run's
    ``metrics.jsonl`` and to its MLflow run (the id stored in the checkpoint)."""
    options = options or EvalOptions()
    run = rebuild_run(path, device=device, progress=options.progress)
    spec, saved = run.spec, run.saved
    names = metric_names or for_split(spec.eval.metrics or default_metrics(spec), spec.eval.split)
    metric_defs(names)  # unknown names fail before any work
    sink, uri = None, None
    if track and saved["mlflow_run_id"]:
        uri = tracking_uri or saved["mlflow_tracking_uri"] or default_tracking_uri(spec, saved["run_dir"])
        sink = ClientSink(uri, saved["mlflow_run_id"])
    records = evaluate(spec, run.gan, run.conditioner, run.device, names, step=saved["step"],
                       run_hash=run_hash(spec), run_dir=saved["run_dir"], sink=sink, options=options,
                       train_dataset=run.dataset, source="dfgan eval")
    nop = nop_report(run.gan, run.encoder)
    return {"run_dir": str(saved["run_dir"]), "step": saved["step"],
            "mlflow_run_id": saved["mlflow_run_id"] if sink else None, "tracking_uri": uri, "records": records,
            "nop": {k: v["count"] for k, v in nop["totals"].items()}}


def sample_captions_grid(run_path, captions_file, *, n: int = 4, out=None, seed: int = 0, text_encoder=None,
                         device: str = "cpu", report=_say) -> dict:
    """Images for each caption of ``captions_file`` (columns) x ``n`` truncated noise vectors (rows), saved as a
    captioned grid. Unknown words are reported through ``report``; a caption of only unknown words raises
    ``UnknownWordsError`` naming its line."""
    run = rebuild_run(run_path, device=device, text_encoder=text_encoder, report=report, allow_pretrain=False)
    spec = run.spec
    caps = read_caption_file(captions_file, run.dataset.vocab)
    for c in caps:
        for note in c.notes(str(captions_file)):
            report(note)
    tokens, lengths = caption_batch(caps)
    with torch.no_grad():
        words, sent = run.conditioner.encode(tokens, lengths)
        mask = (tokens == 0).to(run.device)
        noise = truncated_noise(n, spec.model.z_dim, spec.model.truncation, torch.Generator().manual_seed(seed))
        rows = [last_stage(run.gan.generator(z[None].expand(len(caps), -1).to(run.device), sent, words, mask))
                .float().cpu() for z in noise]
    path = run.saved["file"]
    if out is None:
        out = path.parent / "samples" / f"captions-{Path(captions_file).stem}.png"
    grid = save_caption_grid(torch.cat(rows), [c.text for c in caps], out, nrow=len(caps))
    return {"grid": str(grid), "checkpoint": str(path), "captions": len(caps), "per_caption": n,
            "unknown_words": {c.line: c.unknown for c in caps if c.unknown}, "step": run.saved["step"]}
