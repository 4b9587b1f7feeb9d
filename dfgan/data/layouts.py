"""Which on-disk layouts a dataset folder looks like, for messages about an empty or unreadable dataset.

``guess_layouts(root)`` looks only at a few names (no file is read): DF-GAN's birds tree (``CUB_200_2011/``),
DF-GAN's COCO tree (``<split>/filenames.pickle`` with ``images/``), raw COCO (``annotations/captions_train*.json``)
and a folder of ``name.jpg`` + ``name.txt`` pairs. ``layout_hint`` turns the guesses into a sentence that names
the loader to use instead of the one that found nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from dfgan.data.images import IMAGE_EXTENSIONS

PAIR_SEARCH_LIMIT = 5000  # files looked at when searching a folder for image + caption-file pairs


def _has_pairs(root: Path) -> bool:
    """Whether some ``name.<image>`` has a ``name.txt`` beside it (the folder loader's pairs)."""
    seen = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = set(filenames)
        for f in filenames:
            stem, ext = os.path.splitext(f)
            if ext.lower() in IMAGE_EXTENSIONS and f"{stem}.txt" in names:
                return True
        seen += len(filenames)
        if seen > PAIR_SEARCH_LIMIT:
            return False
    return False


def guess_layouts(root) -> list[tuple[str, str]]:
    """``[(loader, what was seen)]`` for every layout ``root`` looks like (most specific first)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    out = []
    split_lists = [s for s in ("train", "test") if (root / s / "filenames.pickle").is_file()]
    lists = ", ".join(f"{s}/filenames.pickle" for s in split_lists)
    if (root / "CUB_200_2011").is_dir():
        out.append(("birds", "CUB_200_2011/" + (f" and {lists}" if lists else "")))
    elif split_lists and (root / "images").is_dir():
        out.append(("coco", f"images/ and {lists}"))
    years = [y for y in ("2014", "2017") if (root / "annotations" / f"captions_train{y}.json").is_file()]
    if years:
        out.append(("coco_json", f"annotations/captions_train{years[0]}.json"))
    if not out and _has_pairs(root):
        out.append(("folder", "image files with same-name .txt caption files"))
    return out


def layout_hint(root, used: str, *, flag: str = "--data") -> str:
    """``"; this looks like the birds layout (CUB_200_2011/ ...): use --data birds"``, or ``""`` when no other
    layout fits. ``flag`` is how the loader is chosen where the message is shown (``--data`` or ``data.name=``)."""
    other = [(name, seen) for name, seen in guess_layouts(root) if name != used]
    if not other:
        return ""
    sep = " " if flag.startswith("-") else ""
    parts = [f"the {name} layout ({seen}): use {flag}{sep}{name}" for name, seen in other]
    return "; this looks like " + "; or ".join(parts)
