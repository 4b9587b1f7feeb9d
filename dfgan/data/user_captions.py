"""New captions at sampling time: a text file, one caption per line, encoded with a dataset's vocabulary.

Encoding follows the training data exactly (``dfgan.data.vocab``: lower-cased ``\\w+`` ASCII tokens). A word the
vocabulary does not know cannot be given to the text encoder: it is dropped, and *reported* with its line
number (``EncodedCaption.unknown``), never silently. A line none of whose words is known is an
``UnknownWordsError`` naming ``file:line``. Blank lines and lines starting with ``#`` are skipped. A caption of
more than ``MAX_WORDS`` known words keeps the first ``MAX_WORDS`` (reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dfgan.data.errors import EmptyCaptionsError, MissingDataError, UnknownWordsError
from dfgan.data.vocab import MAX_WORDS, Vocab, pad_caption, tokenize


@dataclass
class EncodedCaption:
    line: int  # 1-based line number in the file
    text: str
    ids: list[int]
    unknown: list[str]

    @property
    def truncated(self) -> bool:
        return len(self.ids) > MAX_WORDS

    @property
    def marked(self) -> str:
        """The caption as the model read it, for grid headers: its tokens, each dropped unknown word marked
        ``word[?]``."""
        unknown = set(self.unknown)
        return " ".join(f"{t}[?]" if t in unknown else t for t in tokenize(self.text))

    def notes(self, where: str) -> list[str]:
        out = []
        if self.unknown:
            out.append(f"{where}:{self.line}: unknown word(s) dropped: {', '.join(self.unknown)}")
        if self.truncated:
            out.append(f"{where}:{self.line}: {len(self.ids)} known words, only the first {MAX_WORDS} are used")
        return out


def encode_caption_lines(lines: list[str], vocab: Vocab, where: str = "<captions>") -> list[EncodedCaption]:
    out = []
    for n, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        ids, unknown = vocab.encode(text)
        if not ids:
            words = ", ".join(unknown) if unknown else "no word at all"
            raise UnknownWordsError(
                f"{where}:{n}: caption {text!r} has no word in the vocabulary ({words}); the model can only "
                f"read the {len(vocab) - 1} words of its training captions", f"{where}:{n}")
        out.append(EncodedCaption(n, text, ids, unknown))
    if not out:
        raise EmptyCaptionsError(f"{where}: no caption (one caption per line; blank and # lines are skipped)", where)
    return out


def read_caption_file(path, vocab: Vocab) -> list[EncodedCaption]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingDataError(f"captions file not found: {path}", str(path))
    return encode_caption_lines(path.read_text(encoding="utf-8", errors="replace").splitlines(), vocab, str(path))


def caption_batch(captions: list[EncodedCaption]) -> tuple[torch.Tensor, torch.Tensor]:
    """(captions (N, MAX_WORDS) int64, lengths (N,)) as the text encoder takes them (first 18 known words)."""
    padded = [pad_caption(c.ids) for c in captions]
    return torch.stack([p for p, _ in padded]), torch.tensor([n for _, n in padded])


__all__ = ["EncodedCaption", "caption_batch", "encode_caption_lines", "read_caption_file", "tokenize"]
