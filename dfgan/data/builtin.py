"""The built-in dataset: procedurally rendered, captioned images of simple shapes (no download).

Made on first use from a seed and cached on disk under a hash of every generation parameter, so a run can
train and evaluate anywhere.  Each image shows 1-3 identical objects whose colour, shape, size, horizontal
position and count, and the image background, are drawn at random and written into K captions; the
attributes are kept as integer class ids so that a metric can check whether a generated image matches its
caption (attribute accuracy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dfgan.data.base import CaptionDataset
from dfgan.data.vocab import MAX_WORDS, Vocab, tokenize
from dfgan.registry import DATASETS
from dfgan.spec import DataSpec

GENERATOR_VERSION = 6  # bump whenever rendering, captions or attribute sampling change (changes the hash)
SPLITS = ("train", "test")
NOISE_STD = 3.0  # per-pixel Gaussian noise, in 0..255 units

ATTRIBUTES: dict[str, list[str]] = {
    "colour": ["red", "green", "blue", "yellow", "purple", "orange"],
    # silhouettes that stay apart when blurred (what an early GAN draws): blurred to sigma 1.5 px at 32 px, the
    # closest two (pillar, triangle) differ 3.0x more than circle and square did (GENERATOR_VERSION 1: circle,
    # square, triangle, star). A ring (v4) was learned last of all: its hole is a detail, not a silhouette. The
    # triangle is wider than tall since v6 (equilateral before, and mostly drawn as a square)
    "shape": ["pillar", "square", "triangle", "bar"],
    "size": ["small", "large"],
    "position": ["left", "middle", "right"],
    "count": ["one", "two", "three"],  # class id c means c + 1 objects
    "background": ["dark", "light", "sand", "sky", "stone"],
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)

# ---------------------------------------------------------------- rendering

_OBJECT_RGB = np.array(
    [
        [215, 30, 35],  # red
        [35, 175, 55],  # green
        [35, 75, 225],  # blue
        [245, 215, 25],  # yellow
        [145, 45, 185],  # purple
        [250, 130, 20],  # orange
    ],
    dtype=np.float32,
)
_SIZE_FRAC = (0.30, 0.46)  # object diameter / image side (small, large), before fitting `count` in a column
_POS_X = (1 / 6, 1 / 2, 5 / 6)  # centre of the left / middle / right third


def _value_noise(rng: np.random.Generator, n: int, cells: int, resample=Image.Resampling.BICUBIC) -> np.ndarray:
    """Smooth random field in about [0, 1] of shape (n, n): a cells x cells grid upsampled."""
    grid = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((n, n), resample)
    return np.asarray(img, dtype=np.float32)


def _background(b: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n, 3) float32 background of class ``b`` with its own texture, in 0..255."""
    yy, xx = np.meshgrid(
        np.linspace(0.0, 1.0, n, dtype=np.float32), np.linspace(0.0, 1.0, n, dtype=np.float32), indexing="ij"
    )
    name = ATTRIBUTES["background"][b]
    if name == "dark":  # charcoal, linear gradient in a random direction, fine speckle
        base = np.array([28, 28, 40], np.float32) + rng.uniform(-6, 10, 3).astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)) * 0.7071 + 0.5
        img = base + t[..., None] * np.array([30, 30, 38], np.float32) * rng.uniform(0.7, 1.3)
        img = img + rng.normal(0, 5, (n, n, 1)).astype(np.float32)
    elif name == "light":  # off-white with a soft checker pattern
        base = np.array([232, 230, 224], np.float32) + rng.uniform(-6, 6, 3).astype(np.float32)
        cells = rng.choice([4, 6, 8])
        ox, oy = rng.random(2)
        chk = ((np.floor(xx * cells + ox) + np.floor(yy * cells + oy)) % 2).astype(np.float32)
        img = base - (chk * rng.uniform(10, 18))[..., None]
    elif name == "sand":  # beige with wavy dune stripes and grain
        base = np.array([212, 186, 138], np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
        ang = rng.uniform(0, np.pi)
        u = np.cos(ang) * xx + np.sin(ang) * yy
        v = -np.sin(ang) * xx + np.cos(ang) * yy
        freq = rng.uniform(3, 6)
        waves = np.sin(
            2 * np.pi * (freq * u + 0.3 * np.sin(2 * np.pi * 1.5 * v + rng.uniform(0, 6.3))) + rng.uniform(0, 6.3)
        )
        img = base + (waves * 12)[..., None] * np.array([1.0, 1.0, 0.8], np.float32)
        img = img + rng.normal(0, 6, (n, n, 1)).astype(np.float32)
    elif name == "sky":  # blue vertical gradient with soft white clouds
        top = np.array([120, 172, 232], np.float32) + rng.uniform(-10, 10, 3).astype(np.float32)
        bottom = np.array([196, 222, 245], np.float32)
        img = top + yy[..., None] * (bottom - top)
        cloud = _value_noise(rng, n, int(rng.integers(3, 6)))
        alpha = np.clip((cloud - 0.55) * 2.5, 0, 0.75)[..., None]
        img = img * (1 - alpha) + 250 * alpha
    elif name == "stone":  # mid-grey cobbles: blocky value noise plus fine grain
        base = float(rng.uniform(112, 138))
        tint = rng.uniform(-4, 4, 3).astype(np.float32)
        tiles = _value_noise(rng, n, int(rng.integers(4, 9)), Image.Resampling.NEAREST)
        smooth = _value_noise(rng, n, 3)
        img = base + tint + ((tiles - 0.5) * 30 + (smooth - 0.5) * 20)[..., None]
        img = img + rng.normal(0, 5, (n, n, 1)).astype(np.float32)
    else:  # pragma: no cover - ATTRIBUTES and this function must agree
        raise AssertionError(name)
    return img.astype(np.float32)


def _shape_points(shape: str, cx: float, cy: float, d: float, rot: float) -> list[tuple[float, float]]:
    """Polygon of a square/triangle/bar/pillar of diameter ``d`` centred at (cx, cy), rotated by ``rot`` rad."""
    r = d / 2
    if shape == "square":
        ang = np.pi / 4 + np.arange(4) * np.pi / 2
        rad = np.full(4, r * np.sqrt(2) * 0.9)  # side 0.9 d
    elif shape == "triangle":  # pointing up, wider than tall (base 1.24 d, height 0.84 d), centred on its box
        x, y = np.array([-1.24, 1.24, 0.0]) * r, np.array([0.84, 0.84, -0.84]) * r
        ang, rad = np.arctan2(y, x), np.hypot(x, y)
    elif shape in ("bar", "pillar"):  # a horizontal / vertical 2.4:1 rectangle, 1.1 d long
        half_w, half_h = (1.1 * r, 0.45 * r) if shape == "bar" else (0.45 * r, 1.1 * r)
        ang = np.arctan2([-half_h, -half_h, half_h, half_h], [-half_w, half_w, half_w, -half_w])
        rad = np.full(4, np.hypot(half_w, half_h))
    else:  # pragma: no cover
        raise AssertionError(shape)
    ang = ang + rot
    return [(float(cx + a * np.cos(t)), float(cy + a * np.sin(t))) for a, t in zip(rad, ang, strict=True)]


def render_image(attrs: dict[str, int], imsize: int, rng: np.random.Generator) -> np.ndarray:
    """Render one image of the given attributes: (imsize, imsize, 3) uint8.

    The objects are drawn at ``ss`` x resolution into coverage masks (fill and a darker rim) and
    box-filtered down, so edges are anti-aliased at any ``imsize``; background textures are computed at
    the final resolution. Small Gaussian pixel noise is added last.
    """
    n = imsize
    ss = 4 if n <= 128 else 2
    big = n * ss
    shape = ATTRIBUTES["shape"][attrs["shape"]]
    count = attrs["count"] + 1
    # layout in unit coordinates: a column of `count` objects inside the chosen third. A shape's height is
    # at most ~1.12 d; when a column of large objects would not fit with clear gaps, both sizes are scaled
    # down together so that large stays ~1.6x small.
    fit = 0.98 / (1.12 * count + 0.10 * (count - 1))
    scale = min(1.0, fit / (_SIZE_FRAC[-1] * 1.05))
    d = _SIZE_FRAC[attrs["size"]] * scale * rng.uniform(0.95, 1.05)
    ext = 1.12 * d
    cx0 = _POS_X[attrs["position"]] + rng.uniform(-0.03, 0.03)
    gap = min(ext + d * rng.uniform(0.10, 0.4), (0.98 - ext) / max(count - 1, 1))
    span = gap * (count - 1)
    slack = max(0.0, 0.96 - ext - span) / 2
    cy0 = 0.5 + rng.uniform(-slack, slack)
    centres = []
    for k in range(count):
        cx = cx0 + (rng.uniform(-0.035, 0.035) if count > 1 else 0.0)
        cx = float(np.clip(cx, ext / 2 + 0.01, 1 - ext / 2 - 0.01))
        centres.append((cx, cy0 - span / 2 + k * gap))

    fill = Image.new("L", (big, big), 0)
    rim = Image.new("L", (big, big), 0)
    df, dr = ImageDraw.Draw(fill), ImageDraw.Draw(rim)
    width = max(1, round(0.075 * d * big))  # rim width ~ 7.5% of the object size (1-1.4 px at 64 px)
    for cx, cy in centres:
        cx, cy, dd = cx * big, cy * big, d * big
        rot = rng.uniform(-0.2, 0.2) if shape == "square" else rng.uniform(-0.12, 0.12)
        pts = _shape_points(shape, cx, cy, dd, rot)
        df.polygon(pts, fill=255)
        dr.polygon(pts, outline=255, width=width)
    a_fill = np.asarray(fill.reduce(ss), dtype=np.float32)[..., None] / 255.0
    a_rim = np.asarray(rim.reduce(ss), dtype=np.float32)[..., None] / 255.0

    img = _background(attrs["background"], n, rng)
    colour = _OBJECT_RGB[attrs["colour"]] + rng.uniform(-12, 12, 3).astype(np.float32)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    shade = (1.06 - 0.12 * (0.5 * xx + 0.5 * yy))[..., None]  # light from the top left
    obj = np.clip(colour * shade, 0, 255)
    img = img * (1 - a_fill) + obj * a_fill
    img = img * (1 - a_rim) + (obj * 0.6) * a_rim
    img = img + rng.normal(0, NOISE_STD, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- captions

_COLOUR_WORDS = [
    ["red", "crimson", "scarlet"],
    ["green", "emerald", "lime"],
    ["blue", "cobalt", "sapphire"],
    ["yellow", "golden", "lemon"],
    ["purple", "violet", "lilac"],
    ["orange", "amber", "tangerine"],
]
# (singular, plural) noun phrases per shape
_SHAPE_WORDS = [
    [("pillar", "pillars"), ("column", "columns"), ("tower", "towers")],
    [("square", "squares"), ("box", "boxes"), ("block", "blocks")],
    [("triangle", "triangles"), ("triangular shape", "triangular shapes")],
    [("bar", "bars"), ("stripe", "stripes"), ("strip", "strips")],
]
_SIZE_WORDS = [["small", "tiny", "little"], ["large", "big", "huge"]]
_POSITION_WORDS = [
    ["on the left", "at the left side", "to the left", "in the left part"],
    ["in the middle", "in the center", "in the centre", "at the center"],
    ["on the right", "at the right side", "to the right", "in the right part"],
]
_COUNT_WORDS = [["a", "one", "a single"], ["two", "a pair of"], ["three", "a trio of", "a group of three"]]
_BACKGROUND_WORDS = [
    ["dark", "black", "night"],
    ["light", "white", "pale"],
    ["sand", "sandy", "beige"],
    ["sky", "cloudy"],
    ["stone", "grey", "concrete"],
]
_BG_PREP = ["on", "against", "over"]
_BG_NOUN = ["background", "backdrop"]
_COLOUR_LINK = ["in", "coloured", "colored"]
_LEADS = ["a picture of", "an image of", "a photo of", "this image shows", "here we see"]

# Tokens that identify a class (for tests and metrics reading captions); the sets are disjoint.
KEYWORDS: dict[str, list[set[str]]] = {
    "colour": [set(ws) for ws in _COLOUR_WORDS],
    "shape": [{tokenize(s)[0] for pair in ws for s in pair} for ws in _SHAPE_WORDS],
    "size": [set(ws) for ws in _SIZE_WORDS],
    "position": [{"left"}, {"middle", "center", "centre"}, {"right"}],
    "count": [set(), {"two", "pair"}, {"three", "trio"}],  # one object: the article or "one"/"single"
    "background": [set(ws) for ws in _BACKGROUND_WORDS],
}
# probability that a caption mentions each attribute (colour, shape and count: always)
_MENTION_P = {"colour": 1.0, "shape": 1.0, "size": 0.8, "position": 0.8, "count": 1.0, "background": 0.75}
ALWAYS_NAMED = tuple(a for a, p in _MENTION_P.items() if p == 1.0)  # what a hard-negative pair may differ in


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_count(count_word: str, rest: str) -> str:
    if count_word == "a":
        return f"{_article(rest)} {rest}"
    return f"{count_word} {rest}"


def _compose(attrs: dict[str, int], mention: dict[str, bool], rng: np.random.Generator | None) -> str:
    """One caption for ``attrs`` mentioning exactly the attributes flagged in ``mention``.

    ``rng=None`` gives the canonical form (first synonym of every word, fixed word order)."""
    pick = (lambda xs: xs[0]) if rng is None else (lambda xs: xs[int(rng.integers(len(xs)))])
    plural = attrs["count"] > 0
    colour = pick(_COLOUR_WORDS[attrs["colour"]])
    noun = pick(_SHAPE_WORDS[attrs["shape"]])[1 if plural else 0]
    count_word = pick(_COUNT_WORDS[attrs["count"]])
    size = pick(_SIZE_WORDS[attrs["size"]]) if mention["size"] else ""
    be = "are" if plural else "is"
    there_be = "is" if count_word.startswith("a ") else be  # "there is a pair of ...", "there are two ..."
    pos = pick(_POSITION_WORDS[attrs["position"]]) if mention["position"] else ""
    bg = ""
    if mention["background"]:
        adj = pick(_BACKGROUND_WORDS[attrs["background"]])
        bg = f"{pick(_BG_PREP)} {_article(adj)} {adj} {pick(_BG_NOUN)}"

    # the object phrase, in one of three word orders
    form = 0 if rng is None else int(rng.choice(3, p=[0.6, 0.2, 0.2]))
    tail = ""
    if form == 1 and size:  # "two red squares that are small"
        obj = _with_count(count_word, f"{colour} {noun}")
        tail = f"that {be} {size}"
    elif form == 2:  # "two small squares in red"
        obj = _with_count(count_word, " ".join(w for w in (size, noun) if w)) + f" {pick(_COLOUR_LINK)} {colour}"
    else:  # "two small red squares"
        obj = _with_count(count_word, " ".join(w for w in (size, colour, noun) if w))

    def join(*parts: str) -> str:
        return " ".join(p for p in parts if p)

    if rng is None:
        return join(obj, pos, bg)
    templates = [
        lambda: join(obj, tail, pos, bg),
        lambda: join(obj, tail, bg, pos),
        lambda: join("there", there_be, obj, tail, pos, bg),
        lambda: join(pick(_LEADS), obj, tail, pos, bg),
    ]
    if pos:
        templates.append(lambda: f"{pos}, " + join("there", there_be, obj, tail, bg))
        if not tail:
            templates.append(lambda: join(obj, be, pos, bg))
    if bg:
        templates.append(lambda: f"{bg}, " + join(obj, tail, pos))
    return templates[int(rng.integers(len(templates)))]()


def caption_for_attributes(
    attrs: dict[str, int], rng: np.random.Generator | None = None, mention: dict[str, bool] | None = None
) -> str:
    """A caption for the given attribute class ids (keys as in ``ATTRIBUTES``).

    With ``rng`` the words, word order and template are drawn at random (as in the dataset); without it the
    caption is canonical ("two small red squares on the left on a dark background").  ``mention`` chooses
    which attributes are named (default: all); colour, shape and count are always named.  At most
    ``MAX_WORDS`` tokens.
    """
    for k in ATTRIBUTE_NAMES:
        if not 0 <= int(attrs[k]) < len(ATTRIBUTES[k]):
            raise ValueError(f"attribute {k}={attrs[k]} out of range 0..{len(ATTRIBUTES[k]) - 1}")
    attrs = {k: int(attrs[k]) for k in ATTRIBUTE_NAMES}
    m = {k: True for k in ATTRIBUTE_NAMES}
    if mention:
        m.update({k: bool(v) for k, v in mention.items()})
    m.update(colour=True, shape=True, count=True)
    for _ in range(50):
        text = _compose(attrs, m, rng)
        if len(tokenize(text)) <= MAX_WORDS:
            return text
    return _compose(attrs, m, None)  # canonical form is at most 14 tokens


def _random_caption(attrs: dict[str, int], rng: np.random.Generator) -> tuple[str, dict[str, bool]]:
    mention = {k: bool(rng.random() < p) for k, p in _MENTION_P.items()}
    return caption_for_attributes(attrs, rng, mention), mention


def demo_captions(n: int = 8) -> list[str]:
    """``n`` fixed canonical captions cycling through colours, shapes, sizes, positions, counts, backgrounds."""
    out = []
    for i in range(n):
        attrs = {
            "colour": i % 6,
            "shape": (i + i // 6) % 4,
            "size": (i // 2) % 2,
            "position": (i + 1) % 3,
            "count": (i // 3 + i) % 3,
            "background": (i * 2 + 1) % 5,
        }
        out.append(caption_for_attributes(attrs))
    return out


def _grammar_words() -> list[str]:
    """Every word any caption can use (appended to the vocabulary so no generated caption is unknown)."""
    phrases = [w for ws in _COLOUR_WORDS + _SIZE_WORDS + _POSITION_WORDS + _COUNT_WORDS + _BACKGROUND_WORDS for w in ws]
    phrases += [s for ws in _SHAPE_WORDS for pair in ws for s in pair]
    phrases += _BG_PREP + _BG_NOUN + _COLOUR_LINK + _LEADS + ["an", "there", "is", "are", "that"]
    words: list[str] = []
    for p in phrases:
        for t in tokenize(p):
            if t not in words:
                words.append(t)
    return words


# ---------------------------------------------------------------- generation and cache


def _sample_attributes(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.integers(0, len(v), n).astype(np.int64) for k, v in ATTRIBUTES.items()}


def generate_split(n: int, imsize: int, k: int, seed: int, split: str, progress=None) -> dict:
    """Render ``n`` images with ``k`` captions each; deterministic in (seed, split)."""
    ss = np.random.SeedSequence([int(seed), SPLITS.index(split)])
    attr_rng, cap_rng, img_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    labels = _sample_attributes(n, attr_rng)
    images = np.empty((n, imsize, imsize, 3), dtype=np.uint8)
    texts: list[list[str]] = []
    mentions = np.zeros((n, k, len(ATTRIBUTE_NAMES)), dtype=bool)
    for i in range(n):
        attrs = {a: int(labels[a][i]) for a in ATTRIBUTE_NAMES}
        images[i] = render_image(attrs, imsize, img_rng)
        caps = []
        for j in range(k):
            text, m = _random_caption(attrs, cap_rng)
            caps.append(text)
            mentions[i, j] = [m[a] for a in ATTRIBUTE_NAMES]
        texts.append(caps)
        if progress is not None:
            progress.update(1)
    return {"images": images, "labels": labels, "texts": texts, "mentions": mentions}


def cache_root(root: str | None = None) -> Path:
    """``root``, else ``$DFGAN_CACHE``, else ``~/.cache/dfgan``."""
    return Path(root or os.environ.get("DFGAN_CACHE") or Path.home() / ".cache" / "dfgan").expanduser()


def generation_params(spec: DataSpec) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": int(spec.seed),
        "n_train": int(spec.n_train),
        "n_test": int(spec.n_test),
        "imsize": int(spec.imsize),
        "captions_per_image": int(spec.captions_per_image),
    }


def content_hash_of(params: dict) -> str:
    blob = json.dumps(params, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _write_cache(folder: Path, params: dict) -> None:
    """Generate both splits and the shared vocabulary into ``folder`` (atomically)."""
    from tqdm import tqdm

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        sizes = {"train": params["n_train"], "test": params["n_test"]}
        data = {}
        with tqdm(total=sum(sizes.values()), desc=f"builtin data ({params['imsize']}px)", unit="img") as bar:
            for split in SPLITS:
                data[split] = generate_split(
                    sizes[split], params["imsize"], params["captions_per_image"], params["seed"], split, bar
                )
        toks = [tokenize(t) for split in SPLITS for caps in data[split]["texts"] for t in caps]
        vocab = Vocab.build(toks)
        words = [vocab.ixtoword[i] for i in range(len(vocab))]
        words += [w for w in _grammar_words() if w not in vocab.wordtoix]
        vocab = Vocab(dict(enumerate(words)))
        (tmp / "vocab.json").write_text(json.dumps(words))
        for split in SPLITS:
            d = data[split]
            np.save(tmp / f"{split}_images.npy", d["images"])
            ids = [[vocab.encode(t)[0] for t in caps] for caps in d["texts"]]
            (tmp / f"{split}_captions.json").write_text(json.dumps({"texts": d["texts"], "ids": ids}))
            np.savez(tmp / f"{split}_labels.npz", mentions=d["mentions"], **d["labels"])
        (tmp / "meta.json").write_text(json.dumps({**params, "attributes": ATTRIBUTES}, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():  # not a concurrent writer that got there first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class BuiltinDataset(CaptionDataset):
    """Procedural captioned shapes: 1-3 objects of one colour/shape/size in one third of the image, on one
    of several textured backgrounds, with K varied captions per image and ground-truth attribute ids.

    The backgrounds are deliberately varied (dark to light, gradients, checkers, stripes, clouds, grain)
    and every pixel carries a little noise: a faithful DF-GAN trained on one shape over a constant light
    background collapsed (tanh saturating to all-white), and varied textured backgrounds removed the
    collapse.  Images are never flipped: a flip would swap "left" and "right".
    """

    name = "builtin"

    def __init__(self, spec: DataSpec, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"builtin dataset: unknown split {split!r}; allowed splits: {', '.join(SPLITS)}")
        if spec.imsize < 32 or spec.imsize > 512 or spec.imsize & (spec.imsize - 1):
            raise ValueError(f"builtin dataset: imsize must be a power of two from 32 to 512, got {spec.imsize}")
        self.split = split
        self.imsize = int(spec.imsize)
        self.captions_per_image = int(spec.captions_per_image)
        params = generation_params(spec)
        self.content_hash = content_hash_of(params)
        self.root = cache_root(spec.root) / f"builtin-{self.content_hash}"
        if not (self.root / "meta.json").exists():
            _write_cache(self.root, params)
        meta = json.loads((self.root / "meta.json").read_text())
        if {k: meta.get(k) for k in params} != params:
            raise RuntimeError(f"builtin cache {self.root} does not match its parameters; delete it")
        self.vocab = Vocab(dict(enumerate(json.loads((self.root / "vocab.json").read_text()))))
        self._images_path = self.root / f"{split}_images.npy"
        self._images_mmap: np.ndarray | None = None
        caps = json.loads((self.root / f"{split}_captions.json").read_text())
        self._texts: list[list[str]] = caps["texts"]
        self._ids: list[list[list[int]]] = caps["ids"]
        with np.load(self.root / f"{split}_labels.npz") as z:
            self._labels = {k: z[k] for k in ATTRIBUTE_NAMES}
            self._mentions = z["mentions"]

    @property
    def _images(self) -> np.ndarray:
        """(N, H, W, 3) uint8, memory-mapped on first use (and again in each worker process)."""
        if self._images_mmap is None:
            self._images_mmap = np.load(self._images_path, mmap_mode="r")
        return self._images_mmap

    def __getstate__(self) -> dict:  # DataLoader workers (spawn) reopen the file instead of copying it
        state = self.__dict__.copy()
        state["_images_mmap"] = None
        return state

    def __len__(self) -> int:
        return len(self._labels[ATTRIBUTE_NAMES[0]])

    def image_uint8(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 image i as stored."""
        return np.asarray(self._images[i])

    def load_image(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(np.array(self._images[i], dtype=np.float32)).permute(2, 0, 1)
        return (x / 127.5 - 1.0).contiguous()

    def caption_ids(self, i: int, j: int) -> list[int]:
        return list(self._ids[i][j])

    def caption_text(self, i: int, j: int) -> str:
        """The caption as written (with punctuation); ``vocab.decode(caption_ids)`` is its token form."""
        return self._texts[i][j]

    def attributes(self, i: int) -> dict[str, int]:
        return {k: int(self._labels[k][i]) for k in ATTRIBUTE_NAMES}

    def attribute_array(self) -> dict[str, np.ndarray]:
        """Class ids of every image of the split: name -> int64 (N,)."""
        return {k: v.copy() for k, v in self._labels.items()}

    def always_named(self) -> list[str]:
        """Attributes that every caption of the split names (a caption of the image can never be true of an
        image that differs in one of them)."""
        every = self._mentions.all(axis=(0, 1))
        return [a for a, m in zip(ATTRIBUTE_NAMES, every, strict=True) if m]

    def mentions(self, i: int, j: int) -> dict[str, bool]:
        """Which attributes caption j of image i names."""
        return {k: bool(v) for k, v in zip(ATTRIBUTE_NAMES, self._mentions[i, j], strict=True)}

    @staticmethod
    def demo_captions(n: int = 8) -> list[str]:
        return demo_captions(n)


@DATASETS.register("builtin")
def builtin(spec: DataSpec, split: str) -> BuiltinDataset:
    """Procedural captioned shapes (colour, shape, size, position, count, background); no download."""
    return BuiltinDataset(spec, split)
