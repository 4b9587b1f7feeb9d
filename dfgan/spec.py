"""The experiment spec: one validated document covering model, data, training, evaluation and tracking.

A spec is read from YAML (a variant under ``ablations/variants`` is a small override of
``ablations/base.yaml``), patched with dotted overrides from the command line (``train.steps=200``), and
validated once: unknown keys are errors and values are typed. This module imports no other dfgan module:
checking the component names against the registries, and what each component requires, is
``dfgan.experiment.check_spec`` (``dfgan.experiment.resolve_spec`` does both), and a run's identity adds what
only the data knows (``dfgan.run_identity.run_identity``). The resolved spec and its hash are stored with every run.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


class SpecError(ValueError):
    """A spec that cannot be run: the message names the field and what is allowed."""


# a variant, spec or run name: it names files and folders, so no path separators and no leading '.'
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=,-]*")


def _takes_int(annotation) -> bool:
    if annotation is int:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return int in typing.get_args(annotation)
    return False


class _Strict(BaseModel):
    # no NaN or Inf in any float field: an infinite learning rate or a NaN penalty weight is a NaN at step 1
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_int(cls, v, info: ValidationInfo):
        """``steps=true`` is not 1 step: a bool where a number belongs is an error (pydantic would convert it)."""
        if isinstance(v, bool) and _takes_int(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected an integer, got a boolean")
        return v


def _power_of_two(v: int, lo: int = 32, hi: int = 512) -> int:
    if v < lo or v > hi or v & (v - 1):
        raise ValueError(f"must be a power of two from {lo} to {hi}, got {v}")
    return v


class RegulariserSpec(_Strict):
    name: str = "ma_gp"
    k: float = 2.0  # DF-GAN HEAD: L_gp = k * mean(||g||^p), k = 2
    p: float = 6.0  # p = 6
    target: Literal["real_match", "real_mismatch", "fake_match", "fake_mismatch"] = "real_match"
    norm: Literal["concat", "sum"] = "concat"  # official code: norm of concatenated grads; paper: sum of norms


class FusionSpec(_Strict):
    name: str = "dfblock"
    depth: int = Field(2, ge=1, le=8)  # affine layers per fusion block (DF-GAN: 2)
    # cross_attention only: resolutions (px) at which attention is used; other blocks fall back to `fallback`
    attention_resolutions: list[int] = Field(default_factory=lambda: [64, 128])
    fallback: str = "concat"
    # cross_attention only: the sentence fed to the generator's input, as AttnGAN's first stage (fc(cat(c, z))),
    # is c = AttnGAN's conditioning augmentation (CA_NET: a sampled 100-d code, KL term in the generator loss) when
    # true, the sentence itself when false (default: no arm of DF-GAN's comparisons uses CA; dfgan.nn.fusion)
    conditioning_augmentation: bool = False


class TextEncoderSpec(_Strict):
    name: str = "damsm"
    checkpoint: str | None = None  # a DAMSM text_encoder*.pth or ours; None = pretrain on the dataset (cached)
    embedding_dim: int = 256  # sentence/word vector size (DAMSM: 256; sentence_transformer: 384 = MiniLM native)
    pretrain_steps: int = Field(1500, ge=0)
    pretrain_batch_size: int = Field(64, ge=2)
    pretrain_lr: float = 2e-3
    # batches of the matching loss: random, or attribute_pairs (images differing in one always-named attribute,
    # hard negatives; built-in data only); auto = the dataset's own (AUTO_SAMPLER), resolved with the spec
    pretrain_sampler: Literal["auto", "random", "attribute_pairs"] = "auto"
    model_path: str | None = None  # sentence_transformer: local model folder (default: the packaged MiniLM)


class ModelSpec(_Strict):
    backbone: str = "one_stage"
    discriminator: str = "dfgan"
    head: str = "one_way"
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    regulariser: RegulariserSpec = Field(default_factory=RegulariserSpec)
    text_encoder: TextEncoderSpec = Field(default_factory=TextEncoderSpec)
    nf: int = Field(32, ge=1)  # base channel width (DF-GAN: 32)
    z_dim: int = Field(100, ge=1)  # noise size (DF-GAN: 100)
    truncation: float = Field(0.88, gt=0)  # sampling noise = truncation * truncnorm(-2, 2) (DF-GAN HEAD)


class DataSpec(_Strict):
    name: str = "builtin"
    root: str | None = None  # dataset folder; builtin: cache folder (default ~/.cache/dfgan or $DFGAN_CACHE)
    imsize: int = 64
    seed: int = 0  # builtin: the generation seed; real datasets: the seed of the val hold-out (val_fraction)
    # builtin dataset only
    n_train: int = Field(4000, ge=8)
    n_test: int = Field(1000, ge=8)
    n_val: int = Field(500, ge=8)  # the validation split (searches and choices of defaults use it, tables test)
    captions_per_image: int = Field(10, ge=1, le=10)
    # real datasets only
    max_images: int | None = Field(None, ge=1)  # use only the first N images (quick runs)
    # the validation split of a dataset that has none: this fraction of the train images, drawn with data.seed, is
    # held out as 'val' (and left out of training); 0 = no val split (the whole train split trains, as DF-GAN)
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("imsize")
    @classmethod
    def _imsize(cls, v: int) -> int:
        return _power_of_two(v)


# DataSpec fields that only the built-in data reads: a real dataset's identity and MLflow params leave them out
BUILTIN_ONLY_DATA_FIELDS = ("seed", "n_train", "n_test", "captions_per_image")


class TrainSpec(_Strict):
    steps: int = Field(1000, ge=0)
    batch_size: int = Field(32, ge=2)  # per process (DF-GAN: 32 per GPU)
    lr_g: float = Field(1e-4, gt=0)  # DF-GAN HEAD TTUR
    lr_d: float = Field(4e-4, gt=0)
    betas: tuple[float, float] = (0.0, 0.9)  # each in [0, 1) (torch.optim.Adam's range)
    seed: int = 100  # DF-GAN's seed
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # speed options (dfgan.train.step.apply_speed_options / Stepper), on by default where they win without hurting
    # quality: speed in benchmarks/ and reports/benchmarks.md, quality parity in reports/benchmarks.md (parity)
    # bf16: autocast fwd/bwd (MA-GP norm, losses, optimiser stay fp32); auto: bf16 where bf16 matmuls are native
    # (CUDA with bf16, CPU with AVX512-BF16/AMX), else fp32 (dfgan.runtime.resolve_precision; the run records it)
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    channels_last: bool = True  # NHWC weights and images
    fused_affine: bool = True  # all DFBlock (gamma, beta) from one matmul per forward (dfgan.nn.fused), if any
    compile: bool = False  # torch.compile of the generator only (never MA-GP's double backward)
    # order of images in batches: random = a seeded permutation per epoch (DF-GAN); attribute_pairs = adjacent
    # images differ in exactly one attribute that every caption names, so that DF-GAN's rolled-batch mismatched
    # pairs include hard negatives (built-in data only; dfgan.data.order.paired_permutation); auto = the
    # dataset's own (AUTO_SAMPLER), resolved when the spec is validated
    sampler: Literal["auto", "random", "attribute_pairs"] = "auto"
    # the attributes a pair may differ in (each pair: one of them, drawn uniformly); only attributes that every
    # caption names (builtin: colour, shape, count). Default shape: random mismatches already differ in colour
    # and count, and the built-in data's `full` follows those without pairs but not shape (docs/lab-notes.md)
    pair_attributes: list[str] = Field(default_factory=lambda: ["shape"], min_length=1)
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads (None = torch default)
    log_every: int = Field(10, ge=1)
    # seconds between plain status lines when stderr is no terminal (a log file; a terminal gets a bar): training,
    # DAMSM pretraining and evaluation (dfgan.progress)
    status_every_s: float = Field(30.0, gt=0)
    sample_every: int = Field(250, ge=1)
    checkpoint_every: int = Field(250, ge=1)
    out_dir: str = Field("runs", min_length=1)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each of Adam's betas must be in [0, 1), got {list(v)}")
        return v


AUTO_METRICS: dict[str, tuple[str, ...]] = {"builtin": ("attr_acc", "fd_attr", "memorisation_attr")}
AUTO_SAMPLER: dict[str, str] = {"builtin": "attribute_pairs"}  # any other dataset: random


def resolve_sampler(sampler: str, data_name: str) -> str:
    """A batch order as a run uses it: "auto" is the dataset's own (``AUTO_SAMPLER``), others are kept."""
    return AUTO_SAMPLER.get(data_name, "random") if sampler == "auto" else sampler


class EvalSpec(_Strict):
    interval: int = Field(0, ge=0)  # steps between periodic evaluations (0 = only at the end)
    # metrics evaluated at the end of a run (and every ``interval`` steps); "auto" = the dataset's own
    # (AUTO_METRICS: attribute accuracy, its Fréchet distance and the memorisation check on the built-in data,
    # none on real data, whose FID needs local Inception weights), resolved when the spec is validated
    metrics: list[str] | Literal["auto"] = "auto"
    # metrics added at the final evaluation only (its noise draws included), not at the periodic ones: the
    # costly ones, e.g. an Inception FID/KID on a CPU (about 0.4 s per image on one thread)
    final_metrics: list[str] = Field(default_factory=list)
    n_images: int = Field(1000, ge=2)
    batch_size: int = Field(64, ge=1)
    # the split whose captions and real images every evaluation of the run uses; the logged names carry it
    # (attr_acc on test, attr_acc_val on val: dfgan.metrics.registry.on_split). Searches select on val (they set
    # it), tables report test
    split: Literal["test", "val"] = "test"
    # independent noise draws of the final evaluation (each a generation pass of n_images; the value is their
    # mean, their SD is kept as <metric>.noise_sd); periodic evaluations use one
    noise_draws: int = Field(2, ge=1)
    # searches: no trial is pruned before this step (optuna MedianPruner n_warmup_steps); None = train.steps // 4.
    # Not part of the run's identity: it decides when a search may stop a run, not what the run computes
    prune_warmup_steps: int | None = Field(None, ge=0)


class TrackingSpec(_Strict):
    enabled: bool = True
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI or sqlite:///<train.out_dir>/mlflow.db
    experiment: str = Field("dfgan", min_length=1)

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("an MLflow experiment name must not be blank")
        return v


class Spec(_Strict):
    name: str = Field("custom", pattern=f"^{NAME_PATTERN.pattern}$")  # names the run folder: no path separators
    description: str = ""
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @model_validator(mode="after")
    def _resolve_auto(self) -> Spec:
        if self.eval.metrics == "auto":
            self.eval.metrics = list(AUTO_METRICS.get(self.data.name, ()))
        self.train.sampler = resolve_sampler(self.train.sampler, self.data.name)
        te = self.model.text_encoder
        te.pretrain_sampler = resolve_sampler(te.pretrain_sampler, self.data.name)
        return self

    # ---- identity ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def experiment_dict(self) -> dict[str, Any]:
        """What the spec says defines the experiment: everything except where/how it is run and logged.
        A run's identity adds the data's own (``dfgan.run_identity.run_identity``)."""
        d = self.to_dict()
        d.pop("name"), d.pop("description"), d.pop("tracking")
        for k in ("device", "num_workers", "log_every", "sample_every", "checkpoint_every", "out_dir", "threads",
                  "status_every_s"):
            d["train"].pop(k)
        d["data"].pop("root")
        d["eval"].pop("prune_warmup_steps")
        if not self.eval.final_metrics:  # added after runs were hashed: hashed only when used
            d["eval"].pop("final_metrics")
        if self.data.name != "builtin":  # read by the built-in data only
            d["data"].pop("n_val")
        if self.data.name == "builtin" or not self.data.val_fraction:  # read by real data, and only when > 0
            d["data"].pop("val_fraction")
        if self.model.fusion.name != "cross_attention":  # read by cross_attention only: hashed only there
            d["model"]["fusion"].pop("conditioning_augmentation")
        for section, version in computation_versions(self).items():  # only where a fix changed what it computes
            node = d
            for part in section.split("."):
                node = node[part]
            node["computation_version"] = version
        return d

    def end_metrics(self) -> list[str]:
        """The metrics of the final evaluation: ``eval.metrics`` then ``eval.final_metrics`` (each once)."""
        return list(dict.fromkeys([*self.eval.metrics, *self.eval.final_metrics]))

    def eval_metric_fields(self) -> list[tuple[str, str]]:
        """(field, name) of every evaluated metric, e.g. ("eval.final_metrics[0]", "fid1k_test_clean")."""
        return [(f"eval.{field}[{i}]", name) for field in ("metrics", "final_metrics")
                for i, name in enumerate(getattr(self.eval, field))]

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def hash_identity(identity: dict[str, Any]) -> str:
    """The 16-hex-digit hash of an identity dict (stable across runs, hosts and log settings)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---- computations fixed since the first hashes -----------------------------------------------------------------
# A fix that changes what an existing spec computes, with no field of the spec changing, gets a version here,
# hashed (``Spec.experiment_dict``, as ``computation_version`` in the component's section) only into the specs
# it applies to: their hash changes, every other spec's hash stays what it was.
OWN_PASS_PENALTY_PRECISION = 2  # MA-GP's other targets and r1 run their own D pass under the training autocast
MINILM_NATIVE = 2  # sentence_transformer at the model's width: its own embedding, no longer a random rotation
MINILM_WIDTH = 384  # all-MiniLM-L6-v2's sentence width (the packaged default model of sentence_transformer)
# real data's captions: the official tokenisation (ASCII filter after the \w+ split); the built-in captions are
# ASCII, unchanged. Equal to dfgan.data.vocab.TOKENIZER_VERSION (not imported: this module stays free of torch)
TOKENISATION = 2


def computation_versions(spec: Spec) -> dict[str, int]:
    """``{section: version}`` of the fixed computations that apply to ``spec`` (empty if no fix changed it)."""
    out: dict[str, int] = {}
    reg = spec.model.regulariser
    own_pass = reg.name == "r1" or (reg.name == "ma_gp" and reg.target != "real_match")
    if own_pass and spec.train.precision != "fp32":  # 'auto' counts: it is bf16 where bf16 is native
        out["model.regulariser"] = OWN_PASS_PENALTY_PRECISION
    te = spec.model.text_encoder
    if te.name == "sentence_transformer" and te.embedding_dim == MINILM_WIDTH:
        out["model.text_encoder"] = MINILM_NATIVE
    if spec.data.name != "builtin":  # any real caption may hold non-ASCII characters
        out["data"] = TOKENISATION
    return out


# ---- loading ------------------------------------------------------------------------------------------------


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid spec:\n  " + "\n  ".join(lines)


def from_dict(d: dict[str, Any]) -> Spec:
    """Validate a spec document against the schema (component names are checked by ``dfgan.experiment``)."""
    try:
        return Spec.model_validate(d)
    except ValidationError as e:
        raise SpecError(format_validation_error(e)) from None
