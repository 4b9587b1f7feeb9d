"""From a spec to a live experiment: the one place that imports every registered component.

``resolve_spec`` reads and checks a spec (schema, then ``check_spec`` against the registries: every unknown name
or incompatible choice is listed with its field before any work); which experiment a run is, is
``dfgan.run_identity``'s. ``build_gan``,
``build_regulariser``, ``build_dataset`` and ``build_conditioning`` make the live parts; ``rebuild_run`` makes
them again from a run folder. Training, evaluation, sampling and benchmarks all assemble through here.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# every module that registers components, so that the registries are complete
import dfgan.data.builtin
import dfgan.data.coco_json
import dfgan.data.dfgan_layout
import dfgan.data.folder
import dfgan.nn.discriminators
import dfgan.nn.fusion
import dfgan.nn.generators
import dfgan.nn.heads
import dfgan.nn.penalties
import dfgan.nn.text_encoders  # noqa: F401
from dfgan import runs, variants
from dfgan import spec as spec_io
from dfgan.data.builtin import ALWAYS_NAMED
from dfgan.data.check import check_text_encoder_vocab
from dfgan.data.errors import EmptyDatasetError
from dfgan.data.identity import DataSummary, data_summary
from dfgan.data.layouts import layout_hint
from dfgan.metrics.consistency import R_CANDIDATES
from dfgan.metrics.fid import InceptionWeightsMissing, inception_weights
from dfgan.metrics.nop import nop_report
from dfgan.metrics.registry import metric
from dfgan.nn.text_encoders import DAMSMTextEncoder
from dfgan.registry import (
    ALL,
    BACKBONES,
    DATASETS,
    DISCRIMINATORS,
    FUSIONS,
    HEADS,
    REGULARISERS,
    TEXT_ENCODERS,
    Registry,
    RegistryError,
)
from dfgan.runtime import pick_device
from dfgan.spec import Spec, SpecError
from dfgan.text.encoders import TextConditioner, cache_path, load_text_encoder

NEEDS = {"words": "word embeddings"}  # what a requires/provides token means, for messages


# ---- checking a spec against the registries ------------------------------------------------------------------


def _lookup(errors: list[str], field: str, registry: Registry, name: str):
    try:
        return registry.entry(name)
    except RegistryError:
        errors.append(f"{field}: unknown {registry.axis} '{name}'; allowed: {', '.join(registry.names())}")
        return None


def _axis_could_provide(entry, need: str) -> bool:
    """Whether some component of ``entry``'s axis provides ``need`` (so that choice is worth naming)."""
    for reg in ALL.values():
        if entry.name in reg and reg.entry(entry.name) is entry:
            return any(need in reg.entry(n).provides for n in reg.names())
    return False


def _providers(need: str) -> list[str]:
    return [f"{reg.axis} '{name}'" for reg in ALL.values() for name in reg.names() if need in reg.entry(name).provides]


def check_spec(spec: Spec) -> None:
    """Raise ``SpecError`` listing every unknown or incompatible choice of ``spec``, each with its field."""
    m, errors = spec.model, []
    entries = {
        "model.backbone": _lookup(errors, "model.backbone", BACKBONES, m.backbone),
        "model.discriminator": _lookup(errors, "model.discriminator", DISCRIMINATORS, m.discriminator),
        "model.head": _lookup(errors, "model.head", HEADS, m.head),
        "model.fusion.name": _lookup(errors, "model.fusion.name", FUSIONS, m.fusion.name),
        "model.regulariser.name": _lookup(errors, "model.regulariser.name", REGULARISERS, m.regulariser.name),
        "model.text_encoder.name": _lookup(errors, "model.text_encoder.name", TEXT_ENCODERS, m.text_encoder.name),
        "data.name": _lookup(errors, "data.name", DATASETS, spec.data.name),
    }
    if m.fusion.name == "cross_attention":
        entries["model.fusion.fallback"] = _lookup(errors, "model.fusion.fallback", FUSIONS, m.fusion.fallback)
    provided: set[str] = set()
    for e in entries.values():
        if e is not None:
            provided |= e.provides
    for field, e in entries.items():
        if e is None:
            continue
        for need in sorted(e.requires - provided):
            givers = _providers(need)
            chosen = ", ".join(f"{f}='{x.name}'" for f, x in entries.items() if x is not None and f != field
                               and _axis_could_provide(x, need))
            errors.append(
                f"{field}: '{e.name}' requires {NEEDS.get(need, need)}, which no chosen component provides"
                + (f" (chosen: {chosen})" if chosen else "")
                + (f"; components that provide it: {', '.join(givers)}" if givers else "")
            )
    for field, name in spec.eval_metric_fields():
        try:
            d = metric(name)
        except RegistryError as e:
            errors.append(f"{field}: {e}")
            continue
        if d.builtin_only and spec.data.name != "builtin":
            errors.append(f"{field}: '{name}' needs the built-in dataset's ground-truth attributes "
                          f"(data.name=builtin), and data.name is '{spec.data.name}': set {field.split('[')[0]}=[] or "
                          "metrics for real data (dfgan eval --list)")
    samplers = {"train.sampler": spec.train.sampler,
                "model.text_encoder.pretrain_sampler": spec.model.text_encoder.pretrain_sampler}
    for field, sampler in samplers.items():
        if sampler == "attribute_pairs" and spec.data.name != "builtin":
            errors.append(f"{field}: 'attribute_pairs' needs the built-in dataset's ground-truth attributes "
                          f"(data.name=builtin), and data.name is '{spec.data.name}': use random or auto")
    if spec.train.sampler == "attribute_pairs" and spec.data.name == "builtin":
        for i, a in enumerate(spec.train.pair_attributes):
            if a not in ALWAYS_NAMED:
                errors.append(f"train.pair_attributes[{i}]: '{a}' is not an attribute every caption names; "
                              f"allowed: {', '.join(ALWAYS_NAMED)}")
    if errors:
        raise SpecError("incompatible spec:\n  " + "\n  ".join(errors))


def spec_from_dict(d: dict[str, Any]) -> Spec:
    """A spec document validated against the schema and checked against the registries."""
    spec = spec_io.from_dict(d)
    check_spec(spec)
    return spec


def resolve_spec(variant: str | None = None, spec_file: str | Path | None = None,
                 overrides: list[str] | None = None) -> Spec:
    """A named variant (default ``full``) or a spec file, then dotted overrides; validated and checked."""
    spec = variants.load_spec(variant, spec_file, overrides)
    check_spec(spec)
    return spec


# ---- the data, checked against the spec ---------------------------------------------------------------------


def check_data(spec: Spec, *, world_size: int | None = None) -> DataSummary | None:
    """Raise before any work (text-encoder pretraining, a run folder) when the data cannot serve ``spec``: the
    train split's fatal problems (the loader's own error), an empty train split (naming the layouts the folder
    looks like), a text-encoder checkpoint made for another vocabulary (size, and hash when its sidecar records
    one), and, listed together as a ``SpecError`` naming each field: fewer training images than one batch
    (``train.batch_size`` x ``world_size`` processes, default ``$WORLD_SIZE``), metrics on a test split that
    is missing or too small. An Inception metric without the Inception weights file is a warning (training
    skips it). Cheap: the loader's scan, no image decoded (``dfgan.data.identity``). Returns a real dataset's
    summary, None for the built-in data."""
    world = world_size or int(os.environ.get("WORLD_SIZE") or 1)
    summary = None
    if spec.data.name == "builtin":
        n_train, n_test, k = spec.data.n_train, spec.data.n_test, spec.data.captions_per_image
    else:
        summary = data_summary(spec.data)
        summary.problems.raise_fatal("train")
        n_train, n_test, k = summary.n_train, summary.splits.get("test"), summary.captions_per_image
        if n_train == 0:
            raise EmptyDatasetError(f"{summary.name} dataset at {summary.root}: the train split has no images"
                                    + layout_hint(summary.root, summary.name, flag="data.name="), str(summary.root))
        te = spec.model.text_encoder
        if te.name == "damsm" and te.checkpoint:
            check_text_encoder_vocab(te.checkpoint, summary.vocab)
    errors = []
    b = spec.train.batch_size
    if n_train < b * world:
        procs = f" x {world} processes" if world > 1 else ""
        limit = f" (data.max_images={spec.data.max_images})" if spec.data.max_images == n_train else ""
        errors.append(f"train.batch_size: the dataset has {n_train} training images{limit}, fewer than one batch "
                      f"(train.batch_size={b}{procs}); set train.batch_size={max(2, n_train // world)} or less")
    for field, name in spec.eval_metric_fields():
        d = metric(name)
        if d.split == "test" and not n_test:
            errors.append(f"{field}: '{name}' is computed on the test split, and the dataset has none")
        elif d.kind == "rprec" and n_test and (n_test - 1) * k < R_CANDIDATES - 1:
            errors.append(f"{field}: '{name}' ranks each caption among {R_CANDIDATES - 1} captions of "
                          f"other test images, and the test split has {n_test} images x {k} captions")
        if d.mode is not None:  # training skips it then (evaluate_during_training): said now, not at the end
            try:
                inception_weights(d.mode)
            except InceptionWeightsMissing as e:
                warnings.warn(f"{field}: '{name}' will be skipped: {e}", UserWarning, stacklevel=2)
    if errors:
        raise SpecError("the data does not fit the spec:\n  " + "\n  ".join(errors))
    return summary


# ---- networks -----------------------------------------------------------------------------------------------------


class GAN(nn.Module):
    """The trainable networks of one experiment. ``discriminators[s]``/``heads[s]`` judge stage ``s``."""

    def __init__(self, generator: nn.Module, discriminators: list[nn.Module], heads: list[nn.Module]):
        super().__init__()
        self.generator = generator
        self.discriminators = nn.ModuleList(discriminators)
        self.heads = nn.ModuleList(heads)

    @property
    def stage_sizes(self) -> list[int]:
        return list(self.generator.stage_sizes)

    def d_parameters(self):
        yield from self.discriminators.parameters()
        yield from self.heads.parameters()


def build_gan(spec: Spec, cond_dim: int, word_dim: int) -> GAN:
    """Generator, and one discriminator trunk + head per generator stage."""
    m = spec.model
    gen = BACKBONES.build(m.backbone, model=m, imsize=spec.data.imsize, cond_dim=cond_dim, word_dim=word_dim)
    sizes = list(gen.stage_sizes)
    discs = [DISCRIMINATORS.build(m.discriminator, nf=m.nf, imsize=s) for s in sizes]
    heads = [HEADS.build(m.head, nf=m.nf, cond_dim=cond_dim) for _ in sizes]
    return GAN(gen, discs, heads)


def build_regulariser(spec: Spec):
    return REGULARISERS.build(spec.model.regulariser.name, spec=spec.model.regulariser)


def needs_words(spec: Spec) -> bool:
    """Whether the fusion attends over word embeddings (the conditioner then encodes them every batch)."""
    return "words" in FUSIONS.entry(spec.model.fusion.name).requires


def cond_dim_of(encoder, spec: Spec) -> int:
    return getattr(encoder, "output_dim", spec.model.text_encoder.embedding_dim)


def spec_nop(spec: Spec, vocab_size: int = 5450) -> dict[str, Any]:
    """``nop_report`` for a spec without any data: networks built on the meta device (no memory, no init).

    The DAMSM text encoder is counted with ``vocab_size`` words (default 5,450: CUB's vocabulary, which the
    official birds encoder uses); other text encoders are counted as registered.
    """
    te_spec = spec.model.text_encoder
    with torch.device("meta"):
        encoder = DAMSMTextEncoder(vocab_size, nhidden=te_spec.embedding_dim) if te_spec.name == "damsm" else None
        cond = te_spec.embedding_dim
        gan = build_gan(spec, cond_dim=cond, word_dim=cond)
    if encoder is not None:
        encoder.requires_grad_(False)  # frozen while the GAN trains
    report = nop_report(gan, encoder)
    report["config"] = {"variant": spec.name, "nf": spec.model.nf, "imsize": spec.data.imsize,
                        "vocab_size": vocab_size if encoder is not None else None}
    return report


# ---- data and text ------------------------------------------------------------------------------------------------


def build_dataset(spec: Spec, split: str = "train"):
    return DATASETS.build(spec.data.name, spec.data, split)


def build_conditioning(spec: Spec, dataset, device, *, progress: bool = True, log_fn=None, cache: bool = True):
    """(encoder, info, conditioner): the run's frozen text encoder (checkpoint, cache or pretraining on
    ``dataset``) and the conditioner that encodes batches of captions with it."""
    encoder, info = load_text_encoder(spec, dataset, device=device, cache_dir=runs.cache_dir(), progress=progress,
                                      log_fn=log_fn)
    return encoder, info, TextConditioner(encoder, device, needs_words(spec), cache=cache)


# ---- a trained run, rebuilt -------------------------------------------------------------------------------------


@dataclass
class RebuiltRun:
    """A trained run made live again: its spec, networks (eval mode), text conditioning and training data."""

    spec: Spec
    gan: GAN
    encoder: nn.Module
    conditioner: TextConditioner
    dataset: Any
    saved: dict[str, Any]  # ``runs.read_run``: the file's state, file, run_dir, step, MLflow run id and URI
    device: torch.device


def rebuild_run(path, *, device: Any = "auto", progress: bool = False, text_encoder: str | None = None,
                report=None, allow_pretrain: bool = True) -> RebuiltRun:
    """Rebuild the run at ``path`` (a run folder or its checkpoint / final-weights file). ``text_encoder``
    replaces the run's text-encoder checkpoint. A dataset whose content changed since training is reported
    through ``report`` (its vocabulary may differ from the one the model learned). Without ``allow_pretrain``
    a DAMSM encoder no longer in the cache is taken from the path the checkpoint recorded, else refused: a
    newly pretrained one's embeddings would mean nothing to the generator."""
    saved = runs.read_run(path)
    state = saved["state"]
    spec = spec_from_dict(state["spec"])
    dataset = build_dataset(spec, "train")
    recorded = state.get("dataset_hash")
    if report is not None and recorded and recorded != dataset.content_hash:
        report(f"warning: the dataset changed since training (content hash {dataset.content_hash}, at training "
               f"{recorded}): its vocabulary may differ from the one the model learned")
    te = spec.model.text_encoder
    if not text_encoder and not allow_pretrain and te.name == "damsm" and not te.checkpoint:
        cached = cache_path(te, dataset, runs.cache_dir())
        recorded = (state.get("text_encoder") or {}).get("path")
        if not cached.is_file():
            if not (recorded and Path(recorded).is_file()):
                raise FileNotFoundError(
                    f"the text encoder this run was trained with is not in the cache ({cached}"
                    f"{'' if not recorded else ' nor at ' + recorded}); pass --text-encoder PATH (a newly "
                    "pretrained one's embeddings would mean nothing to the generator)")
            text_encoder = recorded
    if text_encoder:
        te = spec.model.text_encoder.model_copy(update={"checkpoint": str(text_encoder)})
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"text_encoder": te})})
    dev = pick_device(device)
    encoder, _, conditioner = build_conditioning(spec, dataset, dev, progress=progress, cache=False)
    cond = cond_dim_of(encoder, spec)
    gan = build_gan(spec, cond_dim=cond, word_dim=cond)
    gan.load_state_dict(state["models"])
    return RebuiltRun(spec, gan.to(dev).eval(), encoder, conditioner, dataset, saved, dev)
