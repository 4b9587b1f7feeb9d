"""Evaluation: one generation pass, one feature pass per feature space, every metric recorded with its protocol.

Images are generated from the split's captions in a fixed order (generated image p uses caption
``(p // N) % K`` of image ``p % N``: one pass over every image with its first caption, then its second, ...)
with DF-GAN's truncated sampling noise (``truncation * truncnorm(-2, 2)``, drawn from a seeded generator),
converted to uint8 exactly as a PNG would store them, and fed batch by batch to every feature extractor the
requested metrics need; nothing is written to disk. A metric asking for fewer images than the pass makes uses
the first ones (features do not depend on the batch), so ``fid1k`` and ``fid30k`` can share one pass.

The pass is repeated for each of ``spec.eval.noise_draws`` independent noise draws (torch seeds ``seed``,
``seed + 1``, ...; periodic evaluations during training use one): the value is the mean over the draws, and
the details keep each draw's value (``draw<k>``) and their SD (``noise_sd``), so that evaluation noise can be
told apart from seed noise. The protocol records the seeds.

Every value is appended as one JSON line to ``<run_dir>/metrics.jsonl`` (metric, value, step, image count,
protocol, details, seconds, device, torch version; ``seconds`` = the shared generation and feature pass plus
the metric's own computation, ``setup_seconds`` = loading or training the feature networks) and mirrored to
MLflow: metric ``<name>`` (and ``<name>.<detail>``) at the step, tag ``protocol.<name>`` = the protocol as JSON.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfgan.metrics import fid as fidlib
from dfgan.metrics import memorisation
from dfgan.metrics.attributes import (
    AttributeExtractor,
    attribute_accuracy,
    chance_level,
    load_classifier,
    mention_array,
)
from dfgan.metrics.consistency import R_CANDIDATES, DAMSMImageExtractor, damsm_pair, r_precision, same_text_encoder
from dfgan.metrics.features import Extractor, check_outputs, inception_extractor, reference_features
from dfgan.metrics.generation import CAPTION_ORDER, EVAL_SEED, generate_images
from dfgan.metrics.noise_draws import NOISE_DRAWS_RULE, combine_draws, draw_seeds
from dfgan.metrics.proxy import EffNetLite0Extractor
from dfgan.metrics.registry import MetricDef, for_split
from dfgan.metrics.registry import metrics as metric_defs
from dfgan.metrics.sinks import TrackerSink
from dfgan.profile import NO_PROFILE
from dfgan.registry import DATASETS

JSONL = "metrics.jsonl"


@dataclass
class EvalOptions:
    """How to evaluate. ``n``/``batch_size`` default to ``spec.eval``; Inception paths default to the
    environment / clean-fid's location (see ``dfgan.metrics.fid``); ``ref_stats`` replaces the cached reference
    statistics of FID metrics by an ``npz`` with ``mu``/``sigma`` (e.g. DF-GAN's)."""

    n: int | None = None
    batch_size: int | None = None
    inception: str | None = None
    inception_legacy: str | None = None
    ref_stats: str | None = None
    seed: int = EVAL_SEED
    progress: bool = False
    draws: int | None = None  # noise draws (seeds seed, seed + 1, ...); None = spec.eval.noise_draws


# ---- the evaluation -----------------------------------------------------------------------------------------------
def _build_extractor(key: str, ctx: dict[str, Any]) -> Extractor:
    device, options = ctx["device"], ctx["options"]
    if key.startswith("inception:"):
        mode = key.split(":", 1)[1]
        path = options.inception if mode in fidlib.TORCHSCRIPT_MODES else options.inception_legacy
        return inception_extractor(mode, device, path)
    if key == "attr":
        model, info = load_classifier(ctx["train"](), ctx["test"], device=device, progress=options.progress)
        return AttributeExtractor(model, info, device)
    if key == "damsm":
        text, image, info = damsm_pair(ctx["spec"], ctx["train"](), device=device, progress=options.progress)
        return DAMSMImageExtractor(text, image, info, device)
    if key == "effnet_lite0":
        return EffNetLite0Extractor(device)
    raise ValueError(f"unknown feature extractor {key!r}")


def _reference(defn: MetricDef, ext: Extractor, test, ctx) -> tuple[dict, dict]:
    """(statistics, protocol entry) of the reference set for ``defn``."""
    options = ctx["options"]
    if defn.kind == "fid" and options.ref_stats:
        stats = fidlib.load_stats(options.ref_stats)
        if ext.dim and stats["mu"].shape[0] != ext.dim:
            raise ValueError(f"--ref-stats {options.ref_stats}: mu has {stats['mu'].shape[0]} features, "
                             f"{ext.key} gives {ext.dim}")
        return stats, {"source": "file", "path": str(Path(options.ref_stats).expanduser().resolve()),
                       "hash": stats["hash"], "n": None}
    stats = reference_features(test, ext, ctx["batch_size"], progress=options.progress)
    return stats, {"source": "cached", "hash": stats["hash"], "n": stats["n"], "split": test.split,
                   "dataset_hash": getattr(test, "content_hash", None), "file": Path(stats["path"]).name}


def _compute(defn: MetricDef, out: dict[str, np.ndarray], img_idx: np.ndarray, cap_idx: np.ndarray,
             ext: Extractor, test, ctx) -> tuple[float, dict, dict]:
    """(value, details, protocol specific to the metric)."""
    feats = out["features"]
    if defn.kind == "fid" or defn.kind == "fd":
        ref, rp = _reference(defn, ext, test, ctx)
        if "features" in ref:  # the same value from a small matrix when a set has at most 2,048 images
            value = fidlib.fd_from_features(feats, ref["features"])
        else:
            value = fidlib.frechet_distance(*fidlib.feature_stats(feats), ref["mu"], ref["sigma"])
        return value, {}, {"reference": rp}
    if defn.kind == "kid":
        ref, rp = _reference(defn, ext, test, ctx)
        if "features" not in ref:
            raise ValueError(f"{defn.name}: the reference statistics hold no features (KID needs them)")
        seed = ctx["options"].seed
        mean, std = fidlib.kid(feats, ref["features"], seed=seed)
        m = min(len(feats), len(ref["features"]), fidlib.KID_SUBSET_SIZE)
        return mean, {"std": std}, {"reference": rp, "kernel": "(x.y/d + 1)^3", "subsets": fidlib.KID_SUBSETS,
                                    "subset_size": m, "subset_seed": seed}
    if defn.kind == "is":
        if "logits" not in out:
            raise ValueError(f"{defn.name}: this Inception network gives no class logits (IS needs clean-fid's "
                             "TorchScript model)")
        mean, std = fidlib.inception_score(out["logits"], fidlib.IS_SPLITS)
        return mean, {"std": std}, {"splits": fidlib.IS_SPLITS, "comparable_to_paper": False,
                                    "note": fidlib.IS_NOTE}
    if defn.kind == "rprec":
        pool = ext.sentence_pool(test)
        k = test.captions_per_image
        seed = ctx["options"].seed
        value = r_precision(feats, pool, img_idx * k + cap_idx, np.arange(len(pool)) // k, img_idx, seed=seed)
        cond = getattr(ctx["conditioner"], "encoder", None)
        same = same_text_encoder(ext.text, cond) if isinstance(cond, torch.nn.Module) else None
        return value, {}, {"candidates": R_CANDIDATES, "candidate_seed": seed, "chance": 1 / R_CANDIDATES,
                           "evaluator_is_conditioning_text_encoder": same}
    if defn.kind == "memorisation":
        ref, rp = _reference(defn, ext, test, ctx)
        value, details, specific = memorisation.evaluate(feats, img_idx, ext, ref["features"], ctx["train"](),
                                                         ctx["batch_size"], progress=ctx["options"].progress)
        return value, details, {"reference": rp, **specific}
    if defn.kind == "attr_acc":
        truth = test.attribute_array()
        stated = {a: v[img_idx] for a, v in truth.items()}
        mentioned = mention_array(test, img_idx, cap_idx)
        pred = {a: out[f"pred.{a}"] for a in truth}
        acc = attribute_accuracy(pred, stated, mentioned)
        overall = acc.pop("overall")
        return overall, acc, {"scored": "attributes the caption mentions (micro average)",
                              "chance": chance_level(mentioned)}
    raise ValueError(f"unknown metric kind {defn.kind!r}")


def _section_name(key: str) -> str:
    """A feature extractor's key as a profile section name (``inception:clean`` -> ``inception_clean``)."""
    return key.replace(":", "_")


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    return x


def evaluate(spec, gan, conditioner, device, metric_names, *, step: int, run_hash: str, run_dir=None, sink=None,
             options: EvalOptions | None = None, train_dataset=None, source: str = "eval",
             skip_unavailable: bool = False, extractor_cache: dict | None = None, profile=None) -> list[dict]:
    """Compute ``metric_names`` for the generator of ``gan`` and record them; returns the records.
    The spec's datasets are built from ``dfgan.registry.DATASETS`` (complete once ``dfgan.experiment``, through
    which every caller assembles its experiment, is imported); ``run_hash`` identifies the run in each record.

    ``train_dataset`` (built from the spec when missing) trains the attribute classifier and the DAMSM
    evaluator; test captions and reference images come from each metric's split. With ``skip_unavailable``, a
    metric whose feature extractor cannot be built (e.g. missing Inception weights) is skipped with a warning.
    ``extractor_cache`` (a dict kept by the caller) reuses networks between evaluations of one run.
    ``profile`` (a ``dfgan.profile.Profile``) times the parts: data, feature networks, generation, metrics."""
    options = options or EvalOptions()
    prof = profile or NO_PROFILE
    defs = metric_defs(metric_names)
    if not defs:
        raise ValueError("no metrics to evaluate: give metric names (see `dfgan eval --list`)")
    bad = [d.name for d in defs if d.builtin_only and spec.data.name != "builtin"]
    if bad:
        raise ValueError(f"metrics {', '.join(bad)} need the built-in dataset (data.name=builtin), this run uses "
                         f"data.name={spec.data.name}")
    device = torch.device(device)
    n_default = int(options.n or spec.eval.n_images)
    seeds = draw_seeds(options.seed, options.draws or spec.eval.noise_draws)
    batch_size = int(options.batch_size or spec.eval.batch_size)
    train_cache = {"ds": train_dataset}

    def train():
        if train_cache["ds"] is None:
            train_cache["ds"] = DATASETS.build(spec.data.name, spec.data, "train")
        return train_cache["ds"]

    records = []
    for split in dict.fromkeys(d.split for d in defs):
        group = [d for d in defs if d.split == split]
        with prof.section("data"):
            test = DATASETS.build(spec.data.name, spec.data, split)
        ctx = {"device": device, "options": options, "spec": spec, "train": train, "test": test,
               "batch_size": batch_size, "conditioner": conditioner}
        t_setup = time.perf_counter()
        extractors: dict[str, Extractor] = {}
        for d in group:
            if d.extractor in extractors:
                continue
            if extractor_cache is not None and (split, d.extractor) in extractor_cache:
                extractors[d.extractor] = extractor_cache[(split, d.extractor)]
                continue
            try:
                with prof.section(f"setup_{_section_name(d.extractor)}"):  # e.g. the attribute classifier
                    extractors[d.extractor] = _build_extractor(d.extractor, ctx)
                if extractor_cache is not None:
                    extractor_cache[(split, d.extractor)] = extractors[d.extractor]
            except (fidlib.InceptionWeightsMissing, FileNotFoundError) as e:
                if not skip_unavailable:
                    raise
                warnings.warn(f"skipping {d.name}: {e}", stacklevel=2)
                print(f"dfgan: skipping metric {d.name}: {e}", file=sys.stderr)
        for d in [d for d in group if d.extractor in extractors]:  # e.g. IS without logits: before the pass
            try:
                check_outputs(d.kind, extractors[d.extractor])
            except fidlib.InceptionLogitsMissing as e:
                if not skip_unavailable:
                    raise
                warnings.warn(f"skipping {d.name}: {e}", stacklevel=2)
                print(f"dfgan: skipping metric {d.name}: {e}", file=sys.stderr)
                group.remove(d)
        group = [d for d in group if d.extractor in extractors]
        if not group:
            continue
        setup_seconds = time.perf_counter() - t_setup  # networks loaded or trained once (classifier, DAMSM)
        n_gen = max(d.count or n_default for d in group)
        results: dict[str, list[tuple[float, dict, dict]]] = {d.name: [] for d in group}
        pass_seconds, own_seconds = 0.0, dict.fromkeys(results, 0.0)
        for seed in seeds:  # one generation and feature pass per noise draw
            t0 = time.perf_counter()
            parts: dict[str, dict[str, list[np.ndarray]]] = {k: {} for k in extractors}
            idx_i, idx_j = [], []
            for images, ii, jj in prof.iterate("generate", generate_images(
                    gan.generator, conditioner, test, n_gen, batch_size, z_dim=spec.model.z_dim,
                    truncation=spec.model.truncation, device=device, seed=seed, progress=options.progress)):
                idx_i.append(ii), idx_j.append(jj)
                for k, ext in extractors.items():
                    with prof.section(f"features_{_section_name(k)}"):
                        for name, v in ext(images).items():
                            parts[k].setdefault(name, []).append(v)
            outs = {k: {n: np.concatenate(v) for n, v in p.items()} for k, p in parts.items()}
            img_idx, cap_idx = np.concatenate(idx_i), np.concatenate(idx_j)
            pass_seconds += time.perf_counter() - t0
            for d in group:
                count = d.count or n_default
                t1 = time.perf_counter()
                out = {k: v[:count] for k, v in outs[d.extractor].items()}
                with prof.section(f"metric_{d.name}"):  # reference statistics included (cached after the first)
                    results[d.name].append(_compute(d, out, img_idx[:count], cap_idx[:count],
                                                    extractors[d.extractor], test, ctx))
                own_seconds[d.name] += time.perf_counter() - t1
        generation = {
            "split": split, "resolution": spec.data.imsize, "dataset": spec.data.name,
            "dataset_hash": getattr(test, "content_hash", None), "captions": CAPTION_ORDER,
            "noise": f"{spec.model.truncation} * truncnorm(-2, 2), one draw per torch seed of noise_seeds",
            "truncation": spec.model.truncation, "noise_draws": len(seeds), "noise_seeds": seeds,
            "value": NOISE_DRAWS_RULE if len(seeds) > 1 else "the one draw's value",
            "images_generated_in_pass": n_gen,
        }
        for d in group:
            count = d.count or n_default
            value, details = combine_draws(results[d.name])
            specific = results[d.name][0][2]
            protocol = {"metric": d.name, "kind": d.kind, "n_images": count, **generation,
                        **extractors[d.extractor].protocol(), **specific}
            rec = {
                "metric": d.name, "value": float(value), "step": int(step), "n_images": count,
                "details": details, "protocol": protocol,
                "seconds": round(pass_seconds + own_seconds[d.name], 3),
                "pass_seconds": round(pass_seconds, 3), "setup_seconds": round(setup_seconds, 3),
                "device": str(device), "torch": torch.__version__,
                "time": datetime.now(UTC).isoformat(timespec="seconds"), "source": source,
                "spec_hash": run_hash, "variant": spec.name,
            }
            rec = _json_safe(rec)
            records.append(rec)
            if run_dir is not None:
                path = Path(run_dir) / JSONL
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a") as f:
                    f.write(json.dumps(rec, sort_keys=True) + "\n")
            if sink is not None:
                values = {d.name: float(value)}
                values.update({f"{d.name}.{k}": float(v) for k, v in details.items()
                               if isinstance(v, (int, float)) and math.isfinite(v)})
                tags = {f"protocol.{d.name}": json.dumps(rec["protocol"], sort_keys=True, separators=(",", ":"))}
                sink.log(values, tags, int(step))
    return records


def evaluate_during_training(spec, run_hash: str, gan, conditioner, dataset, device, tracker, step,
                             run_dir, *, profile=None, progress: bool = False) -> list[dict]:
    """What the training loop calls every ``spec.eval.interval`` steps and at the end: ``spec.eval.metrics``
    (and, at the end, ``spec.eval.final_metrics``) on ``spec.eval.n_images`` images of the ``spec.eval.split``
    split (names as ``on_split`` gives them), logged to the run's MLflow run and ``metrics.jsonl``. Metrics
    whose weights are missing on this machine are skipped with a warning instead of stopping the training.
    ``progress``: a bar (terminal) or status lines (log file) while images are generated."""
    key = (run_hash, str(device))
    cache = _TRAINING_EXTRACTORS.setdefault(key, {})
    for other in [k for k in _TRAINING_EXTRACTORS if k != key]:  # keep only the networks of the run being trained
        del _TRAINING_EXTRACTORS[other]
    final = step >= spec.train.steps  # the final evaluation: spec.eval.noise_draws draws; periodic ones: one
    names = for_split(spec.end_metrics() if final else spec.eval.metrics, spec.eval.split)
    return evaluate(spec, gan, conditioner, device, names, step=step, run_hash=run_hash,
                    options=EvalOptions(draws=None if final else 1, progress=progress),
                    run_dir=run_dir, sink=TrackerSink(tracker) if tracker is not None else None,
                    train_dataset=dataset, source="train", skip_unavailable=True, extractor_cache=cache,
                    profile=profile)


_TRAINING_EXTRACTORS: dict[tuple[str, str], dict] = {}


def record_values(records: list[dict]) -> dict[str, float]:
    """Metric name -> value of evaluation records, with each numeric detail as ``<metric>.<part>`` (as MLflow
    has them, e.g. ``attr_acc.colour``)."""
    values: dict[str, float] = {}
    for r in records:
        values[r["metric"]] = float(r["value"]) if r["value"] is not None else float("nan")
        values.update({f"{r['metric']}.{k}": float(v) for k, v in (r.get("details") or {}).items()
                       if isinstance(v, (int, float))})
    return values
