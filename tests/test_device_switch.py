"""The suite's device switch: ``$DFGAN_TEST_DEVICE`` (default cpu), which the GPU check sets to cuda."""

from __future__ import annotations

import os

from tests.conftest import tiny_overrides


def test_device_fixture_follows_dfgan_test_device(test_device, tmp_path):
    want = os.environ.get("DFGAN_TEST_DEVICE", "cpu")
    assert test_device.type == want
    assert f"train.device={want}" in tiny_overrides(tmp_path)
