"""Reading images from disk and the DF-GAN image transform, shared by the file-backed datasets.

* ``read_rgb(path)`` decodes an image fully (a truncated file fails here, not later) and converts any mode to
  8-bit RGB: grayscale and palette images are expanded, CMYK converted, images with alpha composited onto
  white, 16-bit and float images rescaled (PIL's own ``convert('RGB')`` clips 16-bit values to 255). It
  returns the original mode when it converted, so datasets can count conversions and warn once.
* ``bird_crop_box`` is the CUB bounding-box crop of the official loader (``code/lib/datasets.py:get_imgs``).
* ``transform`` is the official resize / random crop / random flip / [-1, 1] pipeline (``code/lib/datasets.py``),
  with its randomness drawn from a numpy generator so that a training batch is a pure function of its seed;
  the test split takes the centre crop and is never flipped (the official code uses the random transform for
  both; a deterministic test split makes evaluations repeatable).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from dfgan.data.errors import CorruptImageError, MissingImageError

LOAD_SCALE = 76 / 64  # DF-GAN: images are resized to int(imsize * 76 / 64) before the imsize crop
BIRD_CROP_SCALE = 0.75  # DF-GAN/AttnGAN birds: crop radius r = int(0.75 * max(w, h)) around the box centre
FLIP_P = 0.5  # RandomHorizontalFlip default probability
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_size(imsize: int) -> int:
    """Shorter-side size images are resized to before cropping ``imsize`` (DF-GAN: ``int(imsize*76/64)``)."""
    return int(imsize * LOAD_SCALE)


def to_rgb(im: Image.Image) -> tuple[Image.Image, str | None]:
    """``(rgb, converted_from)``: ``im`` as 8-bit RGB, and its original mode when that was not RGB."""
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode in _SIXTEEN_BIT or mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if mode == "F":
            scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0  # [0, 1] floats, else 8-bit values
        else:  # 16-bit: 0..65535 -> 0..255 (a 32-bit "I" image holding only 8-bit values is left as is)
            scale = 1.0 / 257.0 if mode != "I" or (a.size and a.max() > 255) else 1.0
        g = np.clip(np.nan_to_num(a * scale) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB"), mode
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB"), mode
    return im.convert("RGB"), mode  # L, 1, P, CMYK, YCbCr, LAB, HSV


def read_rgb(path: str | Path, *, exif_transpose: bool = False) -> tuple[Image.Image, str | None]:
    """Decode ``path`` completely and convert it to RGB; ``(image, converted_from_mode or None)``.

    Raises ``MissingImageError`` if the file is not there and ``CorruptImageError`` (naming the path and the
    decoder's complaint) if it cannot be decoded in full. ``exif_transpose`` applies the EXIF orientation
    (phone photos in custom folders; the official loaders ignore it)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            rgb, converted = to_rgb(im)
            if rgb is im:
                rgb = im.copy()
    except FileNotFoundError:
        raise MissingImageError(f"image not found: {path}", str(path)) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise CorruptImageError(f"cannot decode image {path}: {type(e).__name__}: {e}", str(path)) from None
    return rgb, converted


def bird_crop_box(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """The official CUB crop of an image ``width`` x ``height`` around its bounding box ``(x, y, w, h)``:
    a square of half-side ``r = int(0.75 * max(w, h))`` centred on the box, clipped to the image.
    Returns ``(left, top, right, bottom)`` for ``PIL.Image.crop``."""
    x, y, w, h = (int(v) for v in bbox)
    r = int(BIRD_CROP_SCALE * max(w, h))
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def transform(img: Image.Image, imsize: int, *, train: bool, rng: np.random.Generator | None = None) -> torch.Tensor:
    """DF-GAN's image transform: shorter side to ``load_size(imsize)``, an ``imsize`` square crop (random for
    training, centred otherwise), a random horizontal flip (training only), then (3, imsize, imsize) float32
    in [-1, 1]."""
    img = TF.resize(img, load_size(imsize), interpolation=InterpolationMode.BILINEAR)
    w, h = img.size
    if train:
        rng = rng if rng is not None else np.random.default_rng(int(torch.randint(2**31, ()).item()))
        top, left = int(rng.integers(h - imsize + 1)), int(rng.integers(w - imsize + 1))
        flip = bool(rng.random() < FLIP_P)
    else:
        top, left, flip = int(round((h - imsize) / 2.0)), int(round((w - imsize) / 2.0)), False
    img = img.crop((left, top, left + imsize, top + imsize))
    if flip:
        img = ImageOps.mirror(img)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    return (x / 127.5 - 1.0).contiguous()
