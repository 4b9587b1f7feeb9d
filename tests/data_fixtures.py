"""Tiny datasets in each on-disk layout, built on the fly (a few generated images, captions, pickles)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BIRDS_K, COCO_K = 10, 5
BG, CROP_FILL, BOX_FILL = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # blue outside the crop, green, red box


def caption_text(i: int, j: int, split: str = "train") -> str:
    """A caption unique to (split, image, caption): its tokens name all three."""
    return f"A {split} bird, number{i}; caption{j}!"


def caption_tokens(i: int, j: int, split: str = "train") -> list[str]:
    return ["a", split, "bird", f"number{i}", f"caption{j}"]


def official_vocab(splits: dict[str, int], k: int) -> tuple[dict[int, str], dict[str, int]]:
    """The vocabulary written by hand: every word in order of first appearance over train then test."""
    words = ["<end>"]
    for split in ("train", "test"):
        for i in range(splits[split]):
            for j in range(k):
                for t in caption_tokens(i, j, split):
                    if t not in words:
                        words.append(t)
    ixtoword = dict(enumerate(words))
    return ixtoword, {w: i for i, w in ixtoword.items()}


def bird_image(size: tuple[int, int], bbox: tuple[int, int, int, int], rng) -> Image.Image:
    """Blue image; green square where the official crop goes; red box at ``bbox`` (x, y, w, h)."""
    from dfgan.data.images import bird_crop_box

    w, h = size
    img = Image.new("RGB", size, BG)
    d = ImageDraw.Draw(img)
    x1, y1, x2, y2 = bird_crop_box(bbox, w, h)
    d.rectangle([x1, y1, x2 - 1, y2 - 1], fill=CROP_FILL)
    x, y, bw, bh = bbox
    d.rectangle([x, y, x + bw - 1, y + bh - 1], fill=BOX_FILL)
    return img


def make_birds(root: Path, n_train: int = 6, n_test: int = 3, *, cr_keys: bool = False, pickle_file: bool = True,
               text: bool = True, size=(72, 60), bbox=(20, 16, 24, 20)) -> dict:
    """A CUB-like dataset in DF-GAN's layout. Returns the keys and the captions pickle content."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cub = root / "CUB_200_2011"
    keys = {"train": [f"001.Test_Bird/Test_Bird_{i:04d}" for i in range(n_train)],
            "test": [f"002.Other_Bird/Other_Bird_{i:04d}" for i in range(n_test)]}
    lines_img, lines_box = [], []
    n = 0
    for split in ("train", "test"):
        for i, key in enumerate(keys[split]):
            n += 1
            p = cub / "images" / f"{key}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            bird_image(size, bbox, rng).save(p, quality=95)
            lines_img.append(f"{n} {key}.jpg")
            lines_box.append(f"{n} {float(bbox[0])} {float(bbox[1])} {float(bbox[2])} {float(bbox[3])}")
            if text:
                tp = root / "text" / f"{key}.txt"
                tp.parent.mkdir(parents=True, exist_ok=True)
                tp.write_text("\n".join(caption_text(i, j, split) for j in range(BIRDS_K)) + "\n")
    (cub / "images.txt").write_text("\n".join(lines_img) + "\n")
    (cub / "bounding_boxes.txt").write_text("\n".join(lines_box) + "\n")
    for split in ("train", "test"):
        (root / split).mkdir(exist_ok=True)
        listed = [k + "\r" for k in keys[split]] if cr_keys else keys[split]
        with open(root / split / "filenames.pickle", "wb") as f:
            pickle.dump(listed, f, protocol=2)
    ixtoword, wordtoix = official_vocab({"train": n_train, "test": n_test}, BIRDS_K)
    caps = {s: [[wordtoix[t] for t in caption_tokens(i, j, s)] for i in range(len(keys[s])) for j in range(BIRDS_K)]
            for s in ("train", "test")}
    content = [caps["train"], caps["test"], ixtoword, wordtoix]
    if pickle_file:
        with open(root / "captions_DAMSM.pickle", "wb") as f:
            pickle.dump(content, f, protocol=2)
    return {"keys": keys, "pickle": content, "bbox": bbox, "size": size}


def make_coco_layout(root: Path, n_train: int = 4, n_test: int = 2) -> dict:
    """COCO in DF-GAN's layout: images/train2014|val2014/<key>.jpg, K=5."""
    rng = np.random.default_rng(1)
    keys = {"train": [f"COCO_train2014_{i:012d}" for i in range(1, n_train + 1)],
            "test": [f"COCO_val2014_{i:012d}" for i in range(1, n_test + 1)]}
    for split, folder in (("train", "train2014"), ("test", "val2014")):
        d = root / "images" / folder
        d.mkdir(parents=True, exist_ok=True)
        for key in keys[split]:
            arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{key}.jpg")
        (root / split).mkdir(exist_ok=True)
        with open(root / split / "filenames.pickle", "wb") as f:
            pickle.dump(keys[split], f)
    ixtoword, wordtoix = official_vocab({"train": n_train, "test": n_test}, COCO_K)
    caps = {s: [[wordtoix[t] for t in caption_tokens(i, j, s)] for i in range(len(keys[s])) for j in range(COCO_K)]
            for s in ("train", "test")}
    content = [caps["train"], caps["test"], ixtoword, wordtoix]
    with open(root / "captions_DAMSM.pickle", "wb") as f:
        pickle.dump(content, f)
    return {"keys": keys, "pickle": content}


def make_coco_json(root: Path, year: str = "2014", n_train: int = 5, n_test: int = 3, *, nested: bool = False,
                   caption_counts: dict | None = None) -> dict:
    """Raw COCO: annotations/captions_{train,val}<year>.json + image folders. ``caption_counts`` maps
    (split, image index) to a number of captions other than 5 (the rest of the images get 5, or 6 for
    the first train image: COCO has some with six)."""
    rng = np.random.default_rng(2)
    caption_counts = caption_counts or {}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    out = {}
    ann_id = 1000
    for split, prefix, n in (("train", "train", n_train), ("test", "val", n_test)):
        folder = (root / "images" if nested else root) / f"{prefix}{year}"
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        ids = [int(x) for x in rng.choice(10_000, n, replace=False)]
        for pos, img_id in enumerate(ids):  # listed out of id order on purpose
            name = f"COCO_{prefix}{year}_{img_id:012d}.jpg"
            Image.fromarray(rng.integers(0, 256, (40 + pos, 56, 3), dtype=np.uint8)).save(folder / name)
            images.append({"id": img_id, "file_name": name, "height": 40 + pos, "width": 56})
        for img_id in ids:
            rank = sorted(ids).index(img_id)
            k = caption_counts.get((split, rank), 6 if (split, rank) == ("train", 0) else COCO_K)
            for j in range(k):
                ann_id += 1
                anns.append({"id": ann_id, "image_id": img_id, "caption": caption_text(rank, j, split)})
        rng.shuffle(anns)
        (root / "annotations" / f"captions_{prefix}{year}.json").write_text(
            json.dumps({"info": {}, "images": images, "annotations": anns}))
        out[split] = sorted(ids)
    return out


def make_folder(root: Path, names: dict[str, int], *, size=(50, 40)) -> None:
    """``name -> number of captions`` pairs of name.png + name.txt (caption j of name: caption_text)."""
    rng = np.random.default_rng(3)
    for n, (name, k) in enumerate(names.items()):
        p = root / f"{name}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        p.with_suffix(".txt").write_text("".join(caption_text(n, j) + "\n" for j in range(k)))
