"""Caption tokenisation is the official DF-GAN/AttnGAN one (``load_captions``): lower-case, nltk
``RegexpTokenizer(r'\\w+')`` runs (Unicode word characters), then the ASCII filter per token."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from dfgan.data import builtin as B
from dfgan.data.vocab import TOKENIZER_VERSION, Vocab, tokenize
from dfgan.experiment import resolve_spec
from dfgan.spec import TOKENISATION
from dfgan.variants import load_spec


@pytest.mark.parametrize("caption,tokens", [
    ("This bird’s wings are brown.", ["this", "bird", "s", "wings", "are", "brown"]),  # ’ splits words
    ("A café crème", ["a", "caf", "crme"]),  # é is a word character: one token, then ASCII only
    ("İstanbul", ["i", "stanbul"]),  # lower-cased before the split: 'i' + combining dot (not \w) + 'stanbul'
    ("日本 bird", ["bird"]),  # a token with no ASCII character left is dropped
    ("red—blue, x² and snake_case 2nd", ["red", "blue", "x", "and", "snake_case", "2nd"]),
    ("red\ufffd\ufffdbird\nON a\tbranch", ["red", "bird", "on", "a", "branch"]),
    ("...", []),
])
def test_official_tokenisation(caption, tokens):
    assert tokenize(caption) == tokens


def test_tokens_are_ascii_word_runs_of_the_lower_cased_caption():
    """Property check against the official steps written out with the standard library alone."""
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ019_ -’'.,é日ß\u0301\u00b2İ\n\t\ufffd")
    for _ in range(300):
        cap = "".join(rng.choice(alphabet, size=int(rng.integers(0, 30))))
        want = []
        for t in re.findall(r"\w+", cap.replace("\ufffd\ufffd", " ").lower()):
            t = t.encode("ascii", "ignore").decode("ascii")
            if len(t) > 0:
                want.append(t)
        got = tokenize(cap)
        assert got == want, cap
        assert all(t.isascii() and re.fullmatch(r"[a-z0-9_]+", t) for t in got)


def test_vocabulary_of_non_ascii_captions_follows_the_official_split():
    vocab = Vocab.build([tokenize("the bird’s beak"), tokenize("a bird")])
    assert [vocab.ixtoword[i] for i in range(len(vocab))] == ["<end>", "the", "bird", "s", "beak", "a"]
    assert vocab.encode("Bird’s BEAK") == ([2, 3, 4], [])


def test_builtin_captions_are_ascii_so_their_vocabulary_is_unchanged():
    """The built-in grammar's words and captions are ASCII, where the old caption-wide ASCII filter and the
    official per-token one agree: built-in vocabularies, ids and hashes stay the same."""
    def old(caption: str) -> list[str]:
        return re.findall(r"\w+", caption.replace("\ufffd\ufffd", " ").encode("ascii", "ignore").decode().lower())

    assert all(w.isascii() for w in B.grammar_words())
    rng = np.random.default_rng(0)
    names = list(B.ATTRIBUTE_NAMES)
    caps = B.demo_captions(24)
    for combo in itertools.islice(itertools.product(*(range(len(B.ATTRIBUTES[k])) for k in names)), 0, None, 7):
        caps.append(B.caption_for_attributes(dict(zip(names, combo, strict=True)), rng))
    assert len(caps) > 100
    for c in caps:
        assert c.isascii(), c
        assert tokenize(c) == old(c)


def test_tokenisation_version_in_caches_and_in_real_data_spec_hashes():
    assert TOKENISATION == TOKENIZER_VERSION == 2
    real = load_spec("full", overrides=["data.name=coco_json"]).experiment_dict()["data"]
    assert real["computation_version"] == TOKENISATION
    assert "computation_version" not in resolve_spec("full").experiment_dict()["data"]  # built-in: unchanged
