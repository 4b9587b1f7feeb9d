"""Dataset problems: one error type per kind of bad input, and a collector that gathers them all.

Every loader scans its dataset into a ``Problems`` collector instead of stopping at the first problem, so that
``dfgan data check`` can report all of them at once; a loader then raises the first fatal problem that
concerns the split asked for (``Problems.raise_fatal``), as an error of that kind whose message names the path,
counts the other paths with the same problem and points to ``dfgan data check``. Non-fatal problems (an image
mode converted to RGB, a caption file with fewer than K captions) are handled, counted, and reported by one
warning.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """A dataset that cannot be read as it is; the message names the path."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class MissingDataError(FileNotFoundError):
    """A dataset folder or file that is not there (the message names the path that was looked for)."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:  # FileNotFoundError's own formatting would drop the message
        return self.args[0]


class MissingImageError(MissingDataError):
    """An image listed by the dataset (``filenames.pickle``, a captions JSON, a caption file) is missing."""


class CorruptImageError(DataError):
    """An image file that cannot be decoded (corrupt, truncated, not an image)."""


class DataFormatError(DataError):
    """A dataset file with the wrong structure or content (a pickle, JSON or index file)."""


class EmptyCaptionsError(DataError):
    """A caption file, or an image's captions, without a single usable caption."""


class EmptyDatasetError(DataError):
    """A dataset split without a single image (often the wrong loader for the folder: the message suggests one)."""


class UnknownWordsError(DataError):
    """A caption none of whose words is in the vocabulary (it would encode to nothing)."""


class VocabularyMismatchError(DataError):
    """A text-encoder checkpoint made for another vocabulary (its embedding rows != vocabulary size, or its sidecar's
    vocabulary hash != the dataset's)."""


class ImageConversionWarning(UserWarning):
    """Images were converted to RGB (grayscale, CMYK, alpha, 16-bit, palette): handled, counted, warned once."""


@dataclass(frozen=True)
class Kind:
    name: str
    description: str
    error: type[Exception] | None  # None: a warning, never raised


# Every kind of problem a loader or the scanner can find. Fatal ones carry the error raised for them.
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("missing_path", "dataset file or folder not found", MissingDataError),
    Kind("missing_image", "image listed by the dataset not found", MissingImageError),
    Kind("corrupt_image", "image cannot be decoded (corrupt or truncated)", CorruptImageError),
    Kind("bad_format", "dataset file with the wrong structure", DataFormatError),
    Kind("empty_dataset", "split without any image (wrong loader or root?)", EmptyDatasetError),
    Kind("empty_captions", "no usable caption for an image (empty caption file)", EmptyCaptionsError),
    Kind("empty_caption", "caption without any word id", EmptyCaptionsError),
    Kind("unknown_words_only", "caption with only unknown words", UnknownWordsError),
    Kind("vocab_mismatch", "vocabulary differs from the text encoder checkpoint's (size or hash)",
         VocabularyMismatchError),
    Kind("converted_image", "image converted to RGB (mode shown)", None),
    Kind("few_captions", "fewer than K captions: repeated to K", None),
    Kind("skipped_caption", "caption line without any word: skipped", None),
    Kind("unknown_words", "caption with unknown words: those words dropped", None),
    Kind("orphan_caption_file", "caption file without an image: ignored", None),
    Kind("uncaptioned_image", "image without any caption in the captions JSON: skipped", None),
    Kind("no_test_images", "test split without images: test-split metrics cannot be computed", None),
    Kind("small_image", "image smaller than the load size: upscaled", None),
)}


@dataclass
class Problem:
    kind: str
    path: str
    detail: str = ""
    split: str | None = None  # None: concerns every split

    @property
    def fatal(self) -> bool:
        return KINDS[self.kind].error is not None

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}" if self.detail else self.path


@dataclass
class Problems:
    """Collects the problems of one dataset; ``check_hint`` is the command that lists them all."""

    check_hint: str = "dfgan data check"
    items: list[Problem] = field(default_factory=list)

    def add(self, kind: str, path, detail: str = "", split: str | None = None) -> None:
        if kind not in KINDS:
            raise KeyError(f"unknown problem kind {kind!r}; known: {', '.join(KINDS)}")
        self.items.append(Problem(kind, str(path), detail, split))

    def extend(self, other: Problems) -> None:
        self.items.extend(other.items)

    def of(self, kind: str, split: str | None = None) -> list[Problem]:
        return [p for p in self.items if p.kind == kind and (split is None or p.split in (None, split))]

    def counts(self) -> Counter:
        return Counter(p.kind for p in self.items)

    def fatal(self, split: str | None = None) -> list[Problem]:
        """Fatal problems concerning ``split`` (or every split when None)."""
        return [p for p in self.items if p.fatal and (split is None or p.split in (None, split))]

    def raise_fatal(self, split: str | None = None) -> None:
        """Raise the first fatal problem (of ``split``) as its error type; the message names its path."""
        fatal = self.fatal(split)
        if not fatal:
            return
        first = fatal[0]
        same = [p for p in fatal if p.kind == first.kind]
        kind = KINDS[first.kind]
        msg = f"{kind.description}: {first}"
        if len(same) > 1:
            more = "; ".join(str(p) for p in same[1:4])
            msg += f" (and {len(same) - 1} more: {more}{' ...' if len(same) > 4 else ''})"
        if len(fatal) > len(same):
            msg += f"; {len(fatal) - len(same)} other fatal problem(s)"
        msg += f". Run `{self.check_hint}` to list every problem of the dataset."
        raise kind.error(msg, first.path)

    def warn(self, split: str | None = None, stacklevel: int = 3) -> None:
        """One warning summarising the non-fatal problems (of ``split``), if any."""
        soft = [p for p in self.items if not p.fatal and (split is None or p.split in (None, split))]
        if not soft:
            return
        counts = Counter(p.kind for p in soft)
        parts = [f"{n} x {KINDS[k].description} (first: {next(p for p in soft if p.kind == k)})"
                 for k, n in counts.items()]
        warnings.warn("dataset: " + "; ".join(parts) + f". `{self.check_hint}` lists them all.",
                      UserWarning, stacklevel=stacklevel)
