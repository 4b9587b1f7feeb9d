"""The order of images in an epoch: a seeded permutation, or adjacent pairs of images that differ in one attribute.

Shared by GAN training (``dfgan.train.batches``) and DAMSM pretraining (``dfgan.text.pretrain``), so both read
the data in the same way from the same rule.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def paired_permutation(attributes: dict[str, np.ndarray], vary: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """A permutation of all images in which each pair of positions (2k, 2k+1) holds, wherever the data has one,
    two images that differ in exactly one attribute of ``vary`` (drawn uniformly per pair) and agree on all others.

    DF-GAN's mismatched pairs are the batch rolled by one, so image 2k+1 meets the caption of image 2k: with
    independent attributes almost every such pair differs in colour (or position, background...) and the
    discriminator never needs the harder attributes to reject it; here half of them differ in one attribute
    only. ``vary`` must hold attributes that every caption names, or a "mismatched" caption could be true of
    the image. Images left without a partner are paired at random; with an odd count the last one is single.
    """
    names = list(attributes)
    if not vary or any(a not in names for a in vary):
        raise ValueError(f"vary must name attributes among {names}, got {list(vary)}")
    table = np.stack([np.asarray(attributes[a]) for a in names], axis=1)
    n = len(table)
    buckets: dict[str, tuple[int, dict[tuple, list[int]]]] = {}
    for a in vary:
        col = names.index(a)
        rest = np.delete(table, col, axis=1)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i in rng.permutation(n).tolist():
            groups[tuple(rest[i].tolist())].append(i)
        buckets[a] = (col, groups)
    used = np.zeros(n, dtype=bool)
    units: list[tuple[int, ...]] = []
    singles: list[int] = []
    for i in rng.permutation(n).tolist():
        if used[i]:
            continue
        used[i] = True
        partner = None
        for a in rng.permutation(list(vary)).tolist():
            col, groups = buckets[a]
            key = tuple(np.delete(table[i], col).tolist())
            partner = next((j for j in groups[key] if not used[j] and table[j, col] != table[i, col]), None)
            if partner is not None:
                break
        if partner is None:
            singles.append(i)
        else:
            used[partner] = True
            units.append((i, partner))
    units.extend(zip(singles[0::2], singles[1::2], strict=False))
    order = [i for u in (units[k] for k in rng.permutation(len(units)).tolist()) for i in u]
    if len(singles) % 2:
        order.append(singles[-1])
    return np.asarray(order, dtype=np.int64)


def epoch_order(n: int, rng: np.random.Generator, pairs: dict[str, np.ndarray] | None = None,
                vary: Sequence[str] = ()) -> np.ndarray:
    """One epoch's order of ``n`` images: a permutation, or with ``pairs`` a ``paired_permutation`` over ``vary``."""
    return rng.permutation(n) if pairs is None else paired_permutation(pairs, vary, rng)

