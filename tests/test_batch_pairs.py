"""Attribute-pair batches: adjacent images differ in exactly one always-named attribute (hard negatives for
DF-GAN's rolled mismatched pairs), deterministic, every image once per epoch, resumable; the spec resolves the
sampler from the dataset and rejects it where it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest

from dfgan.data.order import paired_permutation
from dfgan.experiment import resolve_spec
from dfgan.run_identity import run_hash
from dfgan.spec import SpecError
from dfgan.train.batches import BatchPlan


def _attributes(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"colour": rng.integers(3, size=n), "shape": rng.integers(3, size=n), "size": rng.integers(2, size=n)}


def _differences(attrs, order):
    table = np.stack(list(attrs.values()), axis=1)
    return table[order[0::2]] != table[order[1::2]]


def test_pairs_differ_in_exactly_one_varied_attribute():
    attrs = _attributes(600)
    order = paired_permutation(attrs, ["colour", "shape"], np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(600))  # a permutation
    diff = _differences(attrs, order)
    one = diff.sum(axis=1) == 1
    assert one.mean() > 0.9  # 18 attribute combinations, ~33 images each: nearly every image finds a partner
    assert not diff[one][:, 2].any()  # size is never the (only) difference: it is not in `vary`
    assert diff[one][:, 0].any() and diff[one][:, 1].any()  # both varied attributes occur


def test_pairs_fall_back_to_random_partners_and_keep_an_odd_image():
    attrs = {"colour": np.array([0, 0, 0, 0, 0]), "shape": np.array([0, 1, 2, 0, 1])}
    order = paired_permutation(attrs, ["colour"], np.random.default_rng(0))  # no image has a colour partner
    assert sorted(order.tolist()) == list(range(5))
    with pytest.raises(ValueError, match="vary must name"):
        paired_permutation(attrs, ["texture"], np.random.default_rng(0))


def test_paired_plan_is_deterministic_and_visits_every_image_once_per_epoch():
    attrs = _attributes(64, seed=2)
    plan = BatchPlan(64, 5, 8, seed=3, pairs=attrs, vary=["colour", "shape"])
    again = BatchPlan(64, 5, 8, seed=3, pairs=attrs, vary=["colour", "shape"])
    seen = [k[0] for step in range(8) for k in plan.keys(step)]
    assert sorted(seen) == list(range(64))
    assert [again.keys(s) for s in (7, 3)] == [plan.keys(7), plan.keys(3)]  # any step, in any order
    table = np.stack(list(attrs.values()), axis=1)

    def one_difference(p: BatchPlan, steps: int) -> float:
        """Share of the epoch's pairs (positions 2k, 2k+1), read back from the batches, that differ in one attribute."""
        order = np.array([k[0] for step in range(steps) for k in p.keys(step)])
        order = order[:len(order) - len(order) % 2]
        return float(((table[order[0::2]] != table[order[1::2]]).sum(axis=1) == 1).mean())

    assert one_difference(plan, 8) > 0.8
    assert one_difference(BatchPlan(64, 5, 8, seed=3), 8) < 0.6  # the random order has no such structure
    odd = BatchPlan(64, 5, 7, seed=3, pairs=attrs, vary=["colour", "shape"])  # batches start mid-pair: still pairs
    assert one_difference(odd, 9) > 0.8
    batch = [k[0] for k in odd.keys(1)]  # positions 7..13 of the epoch: pairs (8, 9), (10, 11), (12, 13)
    assert batch == odd._perm(0)[7:14].tolist()


def test_spec_resolves_the_sampler_from_the_dataset_and_rejects_it_where_it_cannot_apply():
    builtin = resolve_spec("full")
    assert builtin.train.sampler == "attribute_pairs" == builtin.model.text_encoder.pretrain_sampler
    assert run_hash(resolve_spec("full", overrides=["train.sampler=attribute_pairs"])) == run_hash(builtin)
    real = resolve_spec("full", overrides=["data.name=birds", "data.root=x"])
    assert real.train.sampler == "random" == real.model.text_encoder.pretrain_sampler
    with pytest.raises(SpecError, match=r"train.sampler: 'attribute_pairs' needs the built-in .*'birds'"):
        resolve_spec("full", overrides=["train.sampler=attribute_pairs", "data.name=birds", "data.root=x"])
    with pytest.raises(SpecError, match=r"pretrain_sampler: 'attribute_pairs' needs the built-in"):
        resolve_spec("full", overrides=["model.text_encoder.pretrain_sampler=attribute_pairs", "data.name=birds",
                                     "data.root=x"])
    with pytest.raises(SpecError, match="train.sampler"):
        resolve_spec("full", overrides=["train.sampler=hard"])
    assert builtin.train.pair_attributes == ["shape"]
    assert run_hash(resolve_spec("full", overrides=["train.pair_attributes=[colour, count]"])) != run_hash(builtin)
    with pytest.raises(SpecError, match=r"train.pair_attributes\[1\]: 'size' is not an attribute every caption "
                                        r"names; allowed: colour, shape, count"):
        resolve_spec("full", overrides=["train.pair_attributes=[shape, size]"])
