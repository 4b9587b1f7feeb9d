"""FID / KID / IS through our path: equal to clean-fid's own functions, ~0 on a set against itself,
independent of the batch size, the Fréchet distance against an independent scipy computation, cached
reference statistics, and Inception weights that are never downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from dfgan.metrics import fid as fidlib
from dfgan.metrics.features import CleanFIDExtractor, extract, reference_features
from dfgan.metrics.registry import METRICS, metric, metrics
from dfgan.registry import RegistryError

N_IMAGES = 36
FEATURE_DIM = 12


def _projection() -> torch.Tensor:
    return torch.randn(48, FEATURE_DIM, generator=torch.Generator().manual_seed(3))


def small_extractor(x: torch.Tensor) -> torch.Tensor:
    """A tiny deterministic feature extractor in clean-fid's custom_feat_extractor convention: float32
    (B, 3, 299, 299) in [0, 255] -> (B, 12)."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 4).flatten(1)  # (B, 48)
    return torch.tanh(pooled @ _projection())


def _images(seed: int, bright: float) -> np.ndarray:
    """(N, 24, 24, 3) uint8 images: smooth random blobs (two different sets for two seeds/brightnesses)."""
    rng = np.random.default_rng(seed)
    low = rng.random((N_IMAGES, 4, 4, 3)) * bright
    up = torch.nn.functional.interpolate(torch.from_numpy(low).permute(0, 3, 1, 2), size=(24, 24),
                                         mode="bilinear", align_corners=False)
    noise = rng.normal(0, 0.05, (N_IMAGES, 3, 24, 24))
    arr = np.clip((up.numpy() + noise) * 255, 0, 255).round().astype(np.uint8)
    return arr.transpose(0, 2, 3, 1)


def _folder(tmp_path, name, arr) -> str:
    d = tmp_path / name
    d.mkdir()
    for k, img in enumerate(arr):
        Image.fromarray(img).save(d / f"{k:03d}.png")
    return str(d)


def _batches(arr: np.ndarray, batch_size: int):
    t = torch.from_numpy(arr).permute(0, 3, 1, 2)
    for s in range(0, len(t), batch_size):
        yield t[s:s + batch_size]


@pytest.fixture(scope="module")
def two_sets():
    return _images(0, 1.0), _images(1, 0.7)


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow", "legacy_pytorch"])
def test_fid_and_kid_equal_cleanfid_on_the_same_folders(tmp_path, two_sets, mode):
    from cleanfid.fid import compute_fid, get_folder_features, kernel_distance

    a, b = two_sets
    da, db = _folder(tmp_path, "a", a), _folder(tmp_path, "b", b)
    kw = dict(mode=mode, num_workers=0, device=torch.device("cpu"), batch_size=8, verbose=False)
    theirs = compute_fid(da, db, custom_feat_extractor=small_extractor, use_dataparallel=False, **kw)
    ext = CleanFIDExtractor(small_extractor, mode=mode)
    fa, fb = extract(ext, _batches(a, 5))["features"], extract(ext, _batches(b, 7))["features"]
    ours = fidlib.fd_from_features(fa, fb)
    assert theirs > 0.05  # the two sets differ
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-9)

    # compute_kid takes no custom extractor: its body is get_folder_features + kernel_distance
    ka = get_folder_features(da, small_extractor, **kw)
    kb = get_folder_features(db, small_extractor, **kw)
    np.testing.assert_allclose(np.sort(fa, axis=0), np.sort(ka, axis=0), rtol=1e-5, atol=1e-6)
    their_kid = kernel_distance(ka, kb)  # equal set sizes <= 1000: every subset is the whole set
    our_kid, our_std = fidlib.kid(fa, fb)
    assert their_kid > 0
    assert our_kid == pytest.approx(their_kid, rel=5e-5)  # clean-fid computes the kernels in float32
    assert our_std < 1e-9 * abs(our_kid) + 1e-12  # whole-set subsets: no spread


def test_fid_of_a_set_against_itself_is_zero(two_sets):
    a, _ = two_sets
    f = extract(CleanFIDExtractor(small_extractor), _batches(a, 9))["features"]
    assert abs(fidlib.fd_from_features(f, f)) < 1e-6
    assert fidlib.fd_from_features(f, f + 0.1) == pytest.approx(0.1 ** 2 * FEATURE_DIM, rel=1e-6)


def test_features_do_not_depend_on_the_batch_size(two_sets):
    a, _ = two_sets
    ext = CleanFIDExtractor(small_extractor)
    ref = extract(ext, _batches(a, 1))["features"]
    for bs in (4, 11, N_IMAGES):
        np.testing.assert_allclose(extract(ext, _batches(a, bs))["features"], ref, rtol=0, atol=1e-6)


def _scipy_reference_fd(x: np.ndarray, y: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), with symmetric square roots from
    eigendecompositions (a different route from clean-fid's sqrtm(S1 S2))."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)

    def psd_sqrt(s):
        w, v = linalg.eigh(s)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r1 = psd_sqrt(s1)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(psd_sqrt(r1 @ s2 @ r1)))


def test_frechet_distance_matches_an_independent_scipy_computation():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 16))
    y = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    ours, ref = fidlib.fd_from_features(x, y), _scipy_reference_fd(x, y)
    assert ref > 1.0
    assert ours == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("n1, n2", [(20, 30), (20, 500), (500, 12)])
def test_frechet_distance_with_fewer_images_than_dimensions_is_clean_fids(n1, n2):
    """The low-rank route of fd_from_features (no (D, D) sqrtm) against clean-fid's sqrtm on the covariances and
    against the independent eigendecomposition route."""
    rng = np.random.default_rng(n1 + n2)
    d = 200
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x, y = rng.normal(size=(n1, d)) @ mix, rng.normal(size=(n2, d)) @ mix * 0.7 + 0.1
    ours = fidlib.fd_from_features(x, y)
    clean = fidlib.frechet_distance(*fidlib.feature_stats(x), *fidlib.feature_stats(y))
    assert ours > 1.0
    assert ours == pytest.approx(clean, rel=1e-6)
    assert ours == pytest.approx(_scipy_reference_fd(x, y), rel=1e-6)
    assert abs(fidlib.fd_from_features(x, x)) < 1e-9 * ours


def test_kid_over_whole_sets_is_computed_once_and_subsets_otherwise():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 16)), rng.normal(size=(30, 16)) + 0.3
    whole, spread = fidlib.kid(x, y)
    assert spread == 0 and whole == pytest.approx(kernel_distance(x, y), rel=1e-9)
    assert fidlib.kid(x, y, subsets=1)[0] == pytest.approx(whole, rel=1e-12)
    sub, sub_std = fidlib.kid(x, y, subset_size=20)
    assert sub_std > 0 and sub != whole
    assert fidlib.kid(x, y, subset_size=20, seed=1)[0] != sub  # the seed picks the subsets


def test_inception_score_extremes():
    rng = np.random.default_rng(0)
    assert fidlib.inception_score(rng.normal(size=(50, 1008)) * 1e-6)[0] == pytest.approx(1.0, abs=1e-4)
    onehot = np.full((1000, 1008), -50.0)
    onehot[np.arange(1000), np.arange(1000) % 10] = 50.0  # ten classes, evenly in every split
    mean, std = fidlib.inception_score(onehot, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6


def test_reference_statistics_are_cached_atomically_under_a_content_hash(tmp_path):
    from dfgan.data.builtin import BuiltinDataset
    from dfgan.spec import DataSpec

    test = BuiltinDataset(DataSpec(imsize=32, n_train=8, n_test=12, root=str(tmp_path / "data")), "test")
    ext = CleanFIDExtractor(small_extractor)
    first = reference_features(test, ext, batch_size=5)
    again = reference_features(test, ext, batch_size=12)
    assert first["source"] == "computed" and again["source"] == "cache"
    assert first["hash"] == again["hash"] and first["path"] == again["path"]
    assert "/fd_stats/" in first["path"] and "builtin-test-32px-custom-" in first["path"]
    with np.load(first["path"]) as z:
        assert {"mu", "sigma", "features"} <= set(z.files) and z["features"].shape == (12, FEATURE_DIM)
    assert not [p for p in (tmp_path.parent.glob("**/.*.tmp"))]
    # a DF-GAN-style npz (mu/sigma only) reads back with the same content hash
    dfgan_npz = tmp_path / "birds_val256_FIDK0.npz"
    np.savez(dfgan_npz, mu=first["mu"], sigma=first["sigma"])
    assert fidlib.load_stats(dfgan_npz)["hash"] == first["hash"]
    np.savez(tmp_path / "bad.npz", m=first["mu"])
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        fidlib.load_stats(tmp_path / "bad.npz")


def test_missing_inception_weights_name_the_file_and_never_download(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    missing = tmp_path / "nowhere" / "inception-2015-12-05.pt"
    with pytest.raises(fidlib.InceptionWeightsMissing) as e:
        fidlib.load_inception("clean", "cpu", missing)
    assert "inception-2015-12-05.pt" in str(e.value) and "/tmp/inception-2015-12-05.pt" in str(e.value)
    assert "--inception" in str(e.value) and "DFGAN_INCEPTION" in str(e.value)
    monkeypatch.delenv("DFGAN_INCEPTION_LEGACY", raising=False)
    with pytest.raises(fidlib.InceptionWeightsMissing, match="pt_inception-2015-12-05-6726825d.pth"):
        fidlib.load_inception("legacy_pytorch", "cpu")
    with pytest.raises(ValueError, match="allowed: clean, legacy_tensorflow, legacy_pytorch"):
        fidlib.inception_weights("tensorflow")


class _FakeInceptionLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.proj = torch.nn.Conv2d(3, fidlib.INCEPTION_DIM, 1)

    def forward(self, x):
        return self.proj(self.pool(x))


class _FakeInception(torch.nn.Module):
    """The interface of NVIDIA's TorchScript Inception that clean-fid uses: ``layers`` and ``output``."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeInceptionLayers()
        self.output = torch.nn.Linear(fidlib.INCEPTION_DIM, 1008)

    def forward(self, x):
        return self.output(self.layers(x).flatten(1))


def test_torchscript_inception_file_is_loaded_locally_with_logits_without_bias(tmp_path, monkeypatch):
    from dfgan.metrics.features import inception_extractor

    torch.manual_seed(0)
    path = tmp_path / "my-inception.pt"  # any name: linked under clean-fid's expected name
    torch.jit.script(_FakeInception()).save(str(path))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(AssertionError("download")))
    ext = inception_extractor("clean", "cpu", str(path))
    imgs = torch.from_numpy(_images(0, 1.0)[:4]).permute(0, 3, 1, 2)
    out = ext(imgs)
    assert out["features"].shape == (4, fidlib.INCEPTION_DIM) and out["logits"].shape == (4, 1008)
    scripted = torch.jit.load(str(path))
    np.testing.assert_allclose(out["logits"], out["features"] @ scripted.output.weight.detach().numpy().T,
                               rtol=1e-4, atol=1e-4)
    proto = ext.protocol()
    assert proto["weights_sha256"] == fidlib.sha256_file(path) and proto["mode"] == "clean"
    assert json.loads(json.dumps(proto)) == proto


def test_metric_names_carry_their_protocol():
    d = metric("fid30k_test_clean")
    assert (d.kind, d.count, d.split, d.mode) == ("fid", 30_000, "test", "clean")
    assert metric("fid2500_test_legacy_pytorch").count == 2500 and metric("fid2k_train_clean").split == "train"
    assert metric("kid_test_clean").count is None
    k = metric("kid2500_val_legacy_tensorflow")
    assert (k.kind, k.count, k.split, k.mode) == ("kid", 2500, "val", "legacy_tensorflow")
    assert metric("kid1k_test_clean").count == 1000 and metric("kid1k_test_clean").extractor == "inception:clean"
    from dfgan.metrics.registry import FID_MODES

    assert FID_MODES == fidlib.FID_MODES
    with pytest.raises(RegistryError, match="at least 2 images"):
        metric("kid1_test_clean")
    for name in METRICS.names():  # only FIDs are called FID
        assert ("fid" in name) == (metric(name).kind == "fid"), name
    assert [m.name for m in metrics("attr_acc, fd_attr,attr_acc")] == ["attr_acc", "fd_attr"]
    with pytest.raises(RegistryError, match="registered: .*attr_acc"):
        metric("fid_cub")


def test_legacy_pytorch_inception_weights_load_from_a_local_file(tmp_path, monkeypatch):
    """pytorch-fid's network built through clean-fid, its weights read from our file, never from the URL."""
    import sys

    import cleanfid.inception_pytorch as ip

    def own_state(url, *a, **k):  # stands in for the real weights: the freshly built network's own state
        return sys._getframe(1).f_locals["inception"].state_dict()

    with monkeypatch.context() as m:
        m.setattr(ip, "load_state_dict_from_url", own_state)
        torch.manual_seed(0)
        state = ip.fid_inception_v3().state_dict()
    path = tmp_path / fidlib.LEGACY_FILE
    torch.save(state, path)
    monkeypatch.setattr(ip, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(AssertionError("url")))
    net = fidlib.load_inception("legacy_pytorch", "cpu", path)
    assert net.logits is None and net.weights == path.resolve()
    assert torch.equal(net.module.blocks[0][0].conv.weight, state["Conv2d_1a_3x3.conv.weight"])
    x = torch.rand(2, 3, 299, 299) * 255
    f = net.features(x)
    assert f.shape == (2, fidlib.INCEPTION_DIM) and torch.isfinite(f).all()

