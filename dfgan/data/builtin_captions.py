"""The built-in data's captions: a small grammar that states an image's attributes in varied words.

Any change here changes the generated captions: bump ``dfgan.data.builtin.GENERATOR_VERSION``.
"""

from __future__ import annotations

import numpy as np

from dfgan.data.builtin_render import ATTRIBUTE_NAMES, ATTRIBUTES
from dfgan.data.vocab import MAX_WORDS, tokenize

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


def random_caption(attrs: dict[str, int], rng: np.random.Generator) -> tuple[str, dict[str, bool]]:
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


def grammar_words() -> list[str]:
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
