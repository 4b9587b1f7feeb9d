"""Generated image tensors: uint8 conversion, the full-resolution stage, and captioned grids (sample artifacts)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

MIN_CELL = 96  # px: the smallest cell a sample grid shows


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float (B,3,H,W) -> uint8 (B,3,H,W), rounding as torchvision.save_image does."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)


def last_stage(images):
    """The full-resolution output of a generator (the last stage of a stacked one)."""
    return images[-1] if isinstance(images, (list, tuple)) else images


def save_caption_grid(images: torch.Tensor, captions: list[str], path: str | Path, nrow: int,
                      label_height: int | None = None) -> Path:
    """Save ``images`` ([-1,1], rows of ``nrow``) as a PNG with column ``j`` headed by ``captions[j]``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, MIN_CELL // images.shape[-1])  # small images are enlarged (nearest) to stay legible
    if scale > 1:
        images = torch.nn.functional.interpolate(images.float(), scale_factor=scale, mode="nearest")
    grid = make_grid(to_uint8(images), nrow=nrow, padding=2, pad_value=255)
    img = Image.fromarray(grid.permute(1, 2, 0).numpy())
    cell = images.shape[-1] + 2
    font = ImageFont.load_default()
    chars = max(8, cell // 6)
    wrapped = [textwrap.wrap(c, chars)[:6] for c in captions[:nrow]]
    lines = max((len(w) for w in wrapped), default=1)
    label_height = label_height or 11 * lines + 4
    canvas = Image.new("RGB", (img.width, img.height + label_height), "white")
    canvas.paste(img, (0, label_height))
    draw = ImageDraw.Draw(canvas)
    for j, w in enumerate(wrapped):
        for k, line in enumerate(w):
            draw.text((j * cell + 3, 2 + 11 * k), line, fill="black", font=font)
    canvas.save(path)
    path.with_suffix(".txt").write_text("\n".join(captions) + "\n")
    return path
