"""Vocabulary and caption encoding, identical to the official DF-GAN/AttnGAN preprocessing.

Tokenisation (``tokenize``) is the official one (DF-GAN ``code/lib/datasets.py:TextImgDataset.load_captions``,
AttnGAN ``code/datasets.py:load_captions``), step by step: every ``"\\ufffd\\ufffd"`` becomes a space; the caption
is lower-cased (``str.lower``, full Unicode); it is split into the ``\\w+`` runs of nltk's
``RegexpTokenizer(r'\\w+')`` (``re.findall`` with ``re.UNICODE | re.MULTILINE | re.DOTALL``: Unicode word
characters, so "’" and "—" separate words while "é" belongs to one); then each token loses its non-ASCII
characters (``encode('ascii', 'ignore')``) and a token left empty is dropped. So "bird’s" gives ``bird``, ``s``,
"café" gives ``caf`` and "日本" nothing. ASCII text (the built-in data's) tokenises as a plain lower-cased
``[A-Za-z0-9_]+`` split. Id 0 is ``<end>`` and is used only as padding; captions are padded to ``MAX_WORDS`` =
18 tokens, and a longer caption keeps a random ordered subset of 18 tokens (DF-GAN ``get_caption``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

MAX_WORDS = 18  # DF-GAN/AttnGAN cfg.TEXT.WORDS_NUM
END_TOKEN = "<end>"  # id 0, padding only
# nltk RegexpTokenizer's default flags; its tokenize() is this pattern's findall (no nltk dependency needed)
_TOKEN = re.compile(r"\w+", re.UNICODE | re.MULTILINE | re.DOTALL)
TOKENIZER_VERSION = 2  # 2: ASCII filter per token after the \w+ split (1 filtered the caption first); cache keys


def tokenize(caption: str) -> list[str]:
    """The official tokenisation (module docstring): lower-case, ``\\w+`` runs, then ASCII only per token."""
    tokens = _TOKEN.findall(caption.replace("\ufffd\ufffd", " ").lower())
    return [a for a in (t.encode("ascii", "ignore").decode("ascii") for t in tokens) if a]


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
