import pytest

from dfgan.experiment import resolve_spec
from dfgan.run_identity import run_hash, run_identity
from dfgan.spec import SpecError
from dfgan.variants import variant_names


def test_full_variant_is_dfgan():
    spec = resolve_spec("full")
    m = spec.model
    assert (m.backbone, m.head, m.fusion.name, m.regulariser.name) == ("one_stage", "one_way", "dfblock", "ma_gp")
    assert (m.regulariser.k, m.regulariser.p, m.regulariser.target) == (2.0, 6.0, "real_match")
    assert (spec.train.lr_g, spec.train.lr_d, tuple(spec.train.betas)) == (1e-4, 4e-4, (0.0, 0.9))
    assert m.truncation == 0.88 and m.z_dim == 100


def test_variants_exist_and_differ():
    names = variant_names()
    assert {"full", "no_magp"} <= set(names)
    assert resolve_spec("no_magp").model.regulariser.name == "none"
    assert run_hash(resolve_spec("no_magp")) != run_hash(resolve_spec("full"))


def test_overrides_typed():
    spec = resolve_spec("full", overrides=["model.nf=16", "train.betas=[0.5, 0.99]", "data.imsize=128"])
    assert spec.model.nf == 16 and spec.data.imsize == 128 and tuple(spec.train.betas) == (0.5, 0.99)


def test_unknown_key_is_error():
    with pytest.raises(SpecError, match=r"model\.nff: unknown key"):
        resolve_spec("full", overrides=["model.nff=16"])


def test_bad_value_names_field():
    with pytest.raises(SpecError, match=r"data\.imsize: .*power of two"):
        resolve_spec("full", overrides=["data.imsize=100"])
    with pytest.raises(SpecError, match=r"model\.regulariser\.target"):
        resolve_spec("full", overrides=["model.regulariser.target=everything"])


def test_unknown_component_lists_allowed():
    with pytest.raises(SpecError) as e:
        resolve_spec("full", overrides=["model.fusion.name=nonsense"])
    msg = str(e.value)
    assert "model.fusion.name" in msg and "allowed:" in msg and "dfblock" in msg


def test_requirement_checked_before_work():
    """A component that needs word embeddings with an encoder that gives none fails at validation."""
    from dfgan.registry import FUSIONS, TEXT_ENCODERS

    FUSIONS.add("_needs_words_test", lambda **k: None, requires={"words"})
    TEXT_ENCODERS.add("_no_words_test", lambda **k: None)
    try:
        with pytest.raises(SpecError) as e:
            resolve_spec("full", overrides=["model.fusion.name=_needs_words_test",
                                         "model.text_encoder.name=_no_words_test"])
        assert "model.fusion.name" in str(e.value) and "requires word embeddings" in str(e.value)
        assert "text_encoder 'damsm'" in str(e.value)
    finally:
        FUSIONS._entries.pop("_needs_words_test")
        TEXT_ENCODERS._entries.pop("_no_words_test")


def test_hash_ignores_logging_fields_only():
    a = resolve_spec("full")
    assert run_hash(a) == run_hash(resolve_spec("full", overrides=["train.log_every=99", "train.out_dir=/tmp/x"]))
    assert run_hash(a) != run_hash(resolve_spec("full", overrides=["train.seed=1"]))


def test_unknown_variant_lists_known():
    with pytest.raises(SpecError, match="unknown variant 'nope'.*full"):
        resolve_spec("nope")


def test_spec_file_extends_variant(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("extends: no_magp\nmodel: {nf: 8}\n")
    spec = resolve_spec(spec_file=f)
    assert spec.model.nf == 8 and spec.model.regulariser.name == "none"


def test_auto_metrics_follow_the_dataset():
    """eval.metrics "auto": the built-in data's attribute metrics, nothing on real data; an explicit list is kept
    and resolves to the same spec hash as the "auto" it equals."""
    builtin = resolve_spec("full")
    assert builtin.eval.metrics == ["attr_acc", "fd_attr", "memorisation_attr"]
    assert run_hash(resolve_spec("full", overrides=["eval.metrics=[attr_acc, fd_attr, memorisation_attr]"])) == \
        run_hash(builtin)
    assert resolve_spec("full", overrides=["data.name=birds", "data.root=x"]).eval.metrics == []
    assert resolve_spec("full", overrides=["eval.metrics=[]"]).eval.metrics == []
    with pytest.raises(SpecError, match="eval.metrics"):
        resolve_spec("full", overrides=["eval.metrics=attr_acc"])


def test_unknown_metric_fails_at_validation():
    with pytest.raises(SpecError, match=r"eval\.metrics\[1\]: unknown metric 'fid_nonsense'"):
        resolve_spec("full", overrides=["eval.metrics=[attr_acc, fid_nonsense]"])
    with pytest.raises(SpecError, match=r"eval.metrics\[0\]: 'attr_acc' needs the built-in .*'birds'"):
        resolve_spec("full", overrides=["eval.metrics=[attr_acc]", "data.name=birds", "data.root=x"])
    spec = resolve_spec("full", overrides=["eval.metrics=[attr_acc, fid2k_test_clean]"])
    assert spec.eval.metrics[1] == "fid2k_test_clean"


def test_builtin_data_version_is_part_of_the_spec_hash(monkeypatch, tmp_path):
    """A new version of the generated data is a new experiment: a study must not reuse cells run on the old one."""
    from dfgan.data import builtin
    from tests.data_fixtures import make_birds

    spec = resolve_spec("full")
    before = run_hash(spec)
    assert run_identity(spec)["data"]["generator_version"] == builtin.GENERATOR_VERSION
    monkeypatch.setattr(builtin, "GENERATOR_VERSION", builtin.GENERATOR_VERSION + 1)
    assert run_hash(spec) != before
    make_birds(tmp_path / "birds", n_train=2, n_test=1)
    real = resolve_spec("full", overrides=["data.name=birds", f"data.root={tmp_path / 'birds'}"])
    assert "generator_version" not in run_identity(real)["data"]


def test_validation_fields_are_hashed_only_where_they_are_read(tmp_path):
    """data.n_val sizes the built-in val split (hashed there only); data.val_fraction holds out part of a real
    dataset's train split (hashed there only, and only when > 0: a real-data spec without a hold-out keeps its
    hash)."""
    b = resolve_spec("full")
    assert run_hash(resolve_spec("full", overrides=["data.n_val=100"])) != run_hash(b)
    assert run_hash(resolve_spec("full", overrides=["data.val_fraction=0.2"])) == run_hash(b)
    from tests.data_fixtures import make_birds

    make_birds(tmp_path / "birds", n_train=4, n_test=2)
    real = ["data.name=birds", f"data.root={tmp_path / 'birds'}"]
    r = resolve_spec("full", overrides=real)
    assert "val_fraction" not in run_identity(r)["data"] and "n_val" not in run_identity(r)["data"]
    assert run_hash(resolve_spec("full", overrides=[*real, "data.n_val=100"])) == run_hash(r)
    assert run_hash(resolve_spec("full", overrides=[*real, "data.val_fraction=0.1"])) != run_hash(r)


# Run hashes of named variants, as their study cells and run folders know them. A change here orphans every
# existing run and study cell of that variant: only a change of what the variant computes may move its hash.
# All eight moved together (issue 13) when the built-in data got its own validation split (data.n_val, built-in
# data version 7: a new version of the data is a new experiment) and the evaluation got eval.split (the split the
# run's evaluations use), eval.noise_draws (final values: the mean over 2 noise draws) and, on the built-in data,
# the memorisation check among its auto metrics. Before that, four had moved once, when their
# computation was fixed (equal-footing arms: cross-attention with the sentence at the generator's input, r1 in
# the training precision), through spec.computation_versions.
KNOWN_HASHES = {
    "full": "0af9269f56d26b3a",
    "no_magp": "4915dca16ee9a154",
    "two_way": "82d39386dcd5dc78",
    "stacked": "9e806f1ad3609de3",
    "cross_attention": "b7bf91ab49a24698",
    "baseline": "b8baa8ce35715447",
    "baseline_onestage_magp": "9f8a427795ec4335",
    "r1": "c00ebeda2dcbe0e7",
}


@pytest.mark.parametrize("variant", sorted(KNOWN_HASHES))
def test_named_variant_hashes_are_stable(variant):
    assert run_hash(resolve_spec(variant)) == KNOWN_HASHES[variant]
