"""FID, KID and IS: the distances themselves, and the Inception networks clean-fid computes them with.

The Fréchet distance is clean-fid's (``cleanfid.fid.frechet_distance``, Dowson & Landau's formula in
Sutherland's stable form); feature means and covariances are computed as clean-fid does (float64 mean,
``np.cov(rowvar=False)``). KID is the unbiased cubic-polynomial-kernel MMD of Bińkowski et al. (2018) averaged
over random subsets, the same estimator as ``cleanfid.fid.kernel_distance`` but drawn from a seeded generator
so that the number is reproducible. IS follows stylegan2-ada / torch-fidelity: softmax over the 1008 logits of
the TensorFlow Inception computed *without* the output bias, 10 splits.

Inception weights never come from the network:

* mode ``clean`` (and IS): clean-fid's TorchScript ``inception-2015-12-05.pt`` (NVIDIA's direct translation of
  TensorFlow's 2015-12-05 Inception). Looked up in this order: an explicit path, ``$DFGAN_INCEPTION``, then
  the place clean-fid itself looks (``/tmp/inception-2015-12-05.pt``).
* mode ``legacy_pytorch``: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``: an explicit path,
  ``$DFGAN_INCEPTION_LEGACY``, then the torch hub cache where pytorch-fid keeps it.

A missing file raises :class:`InceptionWeightsMissing` naming the file and where to put it, before clean-fid
is asked for anything (its own code would try to download). clean-fid's ``compute_*`` entry points and their
defaults (``device=cuda``, 12 loader workers, DataParallel, which breaks on any GPU but cuda:0) are never used
for evaluation: the networks are built here on an explicit device, without DataParallel, and images are
streamed in-process (no DataLoader, so no workers).
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from dfgan.runs import cache_dir

FID_MODES = ("clean", "legacy_pytorch")
INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's TorchScript Inception (cleanfid/inception_torchscript.py)
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
LEGACY_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's port (cleanfid/inception_pytorch.py)
LEGACY_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + LEGACY_FILE
INCEPTION_DIM = 2048  # pool3 features
KID_SUBSETS = 100  # clean-fid kernel_distance defaults
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10  # Salimans et al. 2016; stylegan2-ada and torch-fidelity use 10 splits
IS_NOTE = (
    "ImageNet Inception (TF 2015-12-05, 1008 classes, logits without output bias as stylegan2-ada/torch-fidelity); "
    "NOT comparable to DF-GAN/AttnGAN birds IS, which used an Inception fine-tuned on CUB"
)


class InceptionWeightsMissing(FileNotFoundError):
    """The Inception weights file for FID/KID/IS is not on this machine (nothing is ever downloaded)."""


# ---- statistics and distances ---------------------------------------------------------------------------------------


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of (N, D) features, as clean-fid computes them (float64, unbiased covariance)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N, D) features with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): clean-fid's implementation."""
    from cleanfid.fid import frechet_distance as _fd

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape[0]} vs {mu2.shape[0]} (reference statistics made "
                         "with another feature extractor?)")
    return float(_fd(mu1, np.atleast_2d(sigma1), mu2, np.atleast_2d(sigma2)))


def fd_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def kid(f1: np.ndarray, f2: np.ndarray, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) over ``subsets`` random subsets of ``min(n1, n2, subset_size)``.

    Per subset, the unbiased MMD^2 with the kernel ``k(x, y) = (x.y / d + 1)^3``; clean-fid's estimator,
    with the subsets drawn from ``np.random.default_rng(seed)`` instead of the global NumPy state."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    d = f1.shape[1]
    m = min(f1.shape[0], f2.shape[0], subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 images in each set")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = f2[rng.choice(f2.shape[0], m, replace=False)]
        y = f1[rng.choice(f1.shape[0], m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        a = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
        vals.append(a / (m * (m - 1)) - 2 * kxy.sum() / (m * m))
    return float(np.mean(vals)), float(np.std(vals))


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over ``splits`` consecutive chunks of the images."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if z.shape[0] < splits:
        raise ValueError(f"IS with {splits} splits needs at least {splits} images, got {z.shape[0]}")
    logp = torch.log_softmax(z, dim=1)
    scores = []
    for chunk in torch.tensor_split(logp, splits):
        logpy = torch.logsumexp(chunk, dim=0) - np.log(chunk.shape[0])
        kl = (chunk.exp() * (chunk - logpy)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


# ---- statistics files ------------------------------------------------------------------------------------------------


def stats_hash(mu: np.ndarray, sigma: np.ndarray) -> str:
    """Content hash of reference statistics (float64 bytes of mu then sigma), the same for any file holding them."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(mu, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(sigma, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def load_stats(path: str | os.PathLike) -> dict:
    """Read an ``npz`` of reference statistics (keys ``mu`` and ``sigma``: DF-GAN's, clean-fid's or ours)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics not found: {path}")
    with np.load(path) as z:
        if "mu" not in z or "sigma" not in z:
            raise ValueError(f"{path}: reference statistics need the keys 'mu' and 'sigma', found {sorted(z.files)}")
        out = {"mu": z["mu"].astype(np.float64), "sigma": z["sigma"].astype(np.float64)}
        if "features" in z:
            out["features"] = z["features"]
    if out["sigma"].shape != (out["mu"].shape[0],) * 2:
        raise ValueError(f"{path}: sigma has shape {out['sigma'].shape}, expected {(out['mu'].shape[0],) * 2}")
    out["hash"] = stats_hash(out["mu"], out["sigma"])
    return out


def save_stats(path: str | os.PathLike, mu, sigma, **extra) -> None:
    """Write ``mu``, ``sigma`` (and extra arrays) to ``path`` atomically: temporary file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, **extra)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- Inception weights and networks ----------------------------------------------------------------------------------


def cleanfid_inception_dir() -> Path:
    """The folder where clean-fid looks for ``inception-2015-12-05.pt`` (hard-coded in cleanfid/features.py)."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


def _legacy_default() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / LEGACY_FILE


def inception_weights(mode: str, path: str | os.PathLike | None = None) -> Path:
    """The local Inception weights file for ``mode``; raises :class:`InceptionWeightsMissing` saying where to put it."""
    if mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {mode!r}; allowed: {', '.join(FID_MODES)}")
    clean = mode == "clean"
    env = "DFGAN_INCEPTION" if clean else "DFGAN_INCEPTION_LEGACY"
    default = cleanfid_inception_dir() / INCEPTION_FILE if clean else _legacy_default()
    given = path or os.environ.get(env)
    p = Path(given).expanduser() if given else default
    if p.is_file():
        return p.resolve()
    fname, url = (INCEPTION_FILE, INCEPTION_URL) if clean else (LEGACY_FILE, LEGACY_URL)
    flag = "--inception" if clean else "--inception-legacy"
    where = f"{p} (given by {'the argument' if path else env})" if given else str(p)
    raise InceptionWeightsMissing(
        f"FID/KID/IS mode '{mode}' needs the Inception weights file {fname}, not found at {where}. Nothing is "
        f"downloaded: copy the file (from {url}, on a machine with network access) to {default}, or point "
        f"{flag} PATH or ${env} at it."
    )


@dataclass
class InceptionNet:
    """A clean-fid Inception network: ``features(x)`` on (B, 3, 299, 299) float in [0, 255] gives (B, 2048) pool3
    features; ``logits(features)`` the 1008 class logits without output bias (TorchScript model only)."""

    mode: str
    weights: Path
    features: Callable[[torch.Tensor], torch.Tensor]
    logits: Callable[[torch.Tensor], torch.Tensor] | None
    module: torch.nn.Module


def load_inception(mode: str, device, path: str | os.PathLike | None = None) -> InceptionNet:
    """Build clean-fid's Inception for ``mode`` from a local file on ``device`` (no DataParallel, no download)."""
    weights = inception_weights(mode, path)
    device = torch.device(device)
    if mode == "clean":
        from cleanfid.inception_torchscript import InceptionV3W

        folder = weights.parent
        if weights.name != INCEPTION_FILE:  # InceptionV3W takes a folder: link the file under its expected name
            folder = cache_dir() / "inception" / hashlib.sha256(str(weights).encode()).hexdigest()[:12]
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / INCEPTION_FILE
            if not link.exists():
                try:
                    link.symlink_to(weights)
                except OSError:
                    import shutil

                    shutil.copyfile(weights, link)
        net = InceptionV3W(str(folder), download=False, resize_inside=False).to(device).eval()
        out = getattr(net.base, "output", None)
        logits = (lambda f: f @ out.weight.t()) if out is not None else None
        return InceptionNet(mode, weights, lambda x: net(x), logits, net)
    import cleanfid.inception_pytorch as ip

    def local_state(url, *args, **kwargs):  # replaces the download inside pytorch-fid's loader
        return torch.load(weights, map_location="cpu", weights_only=True)

    with mock.patch.object(ip, "load_state_dict_from_url", local_state):
        net = ip.InceptionV3(output_blocks=[3], resize_input=False).to(device).eval()
    return InceptionNet(mode, weights, lambda x: net(x / 255)[0].squeeze(-1).squeeze(-1), None, net)
