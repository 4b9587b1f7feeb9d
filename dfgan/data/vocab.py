"""Vocabulary and caption encoding, identical to the official DF-GAN/AttnGAN preprocessing.

Captions are lower-cased and tokenised on ``\\w+`` (ASCII only); id 0 is ``<end>`` and is used only as
padding; captions are padded to ``MAX_WORDS`` = 18 tokens, and a longer caption keeps a random ordered
subset of 18 tokens (DF-GAN ``get_caption``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

MAX_WORDS = 18  # DF-GAN/AttnGAN cfg.TEXT.WORDS_NUM
END_TOKEN = "<end>"  # id 0, padding only
_TOKEN = re.compile(r"\w+")


def tokenize(caption: str) -> list[str]:
    """Lower-case ``\\w+`` tokens, non-ASCII characters dropped (the official preprocessing)."""
    caption = caption.replace("\ufffd\ufffd", " ").encode("ascii", "ignore").decode("ascii")
    return _TOKEN.findall(caption.lower())


@dataclass
class Vocab:
    """Word <-> id maps; id 0 is ``<end>``."""

    ixtoword: dict[int, str]
    wordtoix: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.wordtoix:
            self.wordtoix = {w: i for i, w in self.ixtoword.items()}
        if self.ixtoword.get(0) != END_TOKEN:
            raise ValueError(f"vocabulary id 0 must be '{END_TOKEN}', got {self.ixtoword.get(0)!r}")

    @classmethod
    def build(cls, tokenised_captions, min_count: int = 0) -> Vocab:
        """Build from tokenised captions: words sorted by first appearance (stable), ``<end>`` at 0."""
        counts: dict[str, int] = {}
        for toks in tokenised_captions:
            for t in toks:
                counts[t] = counts.get(t, 0) + 1
        words = [w for w, c in counts.items() if c >= min_count]
        ixtoword = {0: END_TOKEN}
        for i, w in enumerate(words, start=1):
            ixtoword[i] = w
        return cls(ixtoword)

    def __len__(self) -> int:
        return len(self.ixtoword)

    def encode(self, caption: str | list[str]) -> tuple[list[int], list[str]]:
        """Return (ids, unknown words). Unknown words are dropped from ids and reported, never hidden."""
        toks = tokenize(caption) if isinstance(caption, str) else caption
        ids, unknown = [], []
        for t in toks:
            if t in self.wordtoix and self.wordtoix[t] != 0:
                ids.append(self.wordtoix[t])
            else:
                unknown.append(t)
        return ids, unknown

    def decode(self, ids) -> str:
        return " ".join(self.ixtoword.get(int(i), "?") for i in ids if int(i) != 0)


def pad_caption(ids: list[int], rng: np.random.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Pad with 0 to ``MAX_WORDS``; a longer caption keeps a random ordered subset (first 18 without rng)."""
    ids = [i for i in ids if i != 0]
    n = len(ids)
    out = torch.zeros(MAX_WORDS, dtype=torch.long)
    if n <= MAX_WORDS:
        out[:n] = torch.tensor(ids, dtype=torch.long)
        return out, n
    keep = np.arange(n) if rng is None else np.sort(rng.choice(n, MAX_WORDS, replace=False))
    keep = keep[:MAX_WORDS]
    out[:] = torch.tensor([ids[i] for i in keep], dtype=torch.long)
    return out, MAX_WORDS
