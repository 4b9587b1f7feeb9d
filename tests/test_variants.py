"""The named variants under ablations/variants: each trains, each differs from its reference in exactly the
component it names, each has a NoP through ``dfgan params``, and incompatible choices fail at validation."""

from __future__ import annotations

import importlib.util
import io
import json
import math
from contextlib import redirect_stdout

import pytest
import torch

from dfgan.experiment import build_gan, build_regulariser, resolve_spec
from dfgan.spec import REPO_ROOT, SpecError, flatten
from dfgan.train.step import Stepper
from dfgan.variants import variant_names

TABLE2_ROWS = ["baseline", "baseline_onestage", "baseline_onestage_magp", "baseline_onestage_magp_oneway", "full"]
# what each row adds to the previous one (DF-GAN Table 2 order: One-Stage, MA-GP, One-Way Output, DFBlock)
TABLE2_ADDS = ["model.backbone", "model.regulariser.", "model.head", "model.fusion."]
SINGLE = {"no_magp": "model.regulariser.", "two_way": "model.head", "stacked": "model.backbone",
          "cross_attention": "model.fusion.", "affine1": "model.fusion.", "dfblock_deep": "model.fusion.",
          "cbn": "model.fusion.", "concat": "model.fusion.", "magp_real_mismatch": "model.regulariser.",
          "magp_fake_match": "model.regulariser.", "magp_fake_mismatch": "model.regulariser.",
          "magp_sum_norm": "model.regulariser.", "r1": "model.regulariser.", "minilm_text": "model.text_encoder."}
EXPECTED = set(TABLE2_ROWS) | set(SINGLE)
B, COND, T, Z = 4, 12, 18, 8
TINY = ["model.nf=4", "data.imsize=32", f"model.z_dim={Z}"]


def test_every_named_variant_exists_with_a_description():
    names = set(variant_names())
    assert EXPECTED <= names, f"missing variants: {sorted(EXPECTED - names)}"
    for name in names:
        spec = resolve_spec(name)
        assert spec.name == name and len(spec.description.split()) >= 3, name


def _model_diff(a: str, b: str) -> set[str]:
    fa, fb = (flatten(resolve_spec(v).experiment_dict()) for v in (a, b))
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def test_table2_rows_add_one_component_each_in_the_papers_order():
    for prev, row, adds in zip(TABLE2_ROWS[:-1], TABLE2_ROWS[1:], TABLE2_ADDS, strict=True):
        diff = _model_diff(prev, row)
        assert diff and all(k.startswith(adds) for k in diff), (prev, row, diff)
    base = resolve_spec("baseline").model
    assert (base.backbone, base.head, base.regulariser.name, base.fusion.name, base.fusion.fallback) == \
        ("stacked", "two_way", "none", "cross_attention", "concat")
    assert max(base.fusion.attention_resolutions) == 128  # attention up to AttnGAN's largest map, concat above


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_single_change_variants_differ_from_full_in_one_component(name):
    diff = _model_diff("full", name)
    assert diff and all(k.startswith(SINGLE[name]) for k in diff), diff


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_variant_trains_and_every_parameter_gets_a_gradient(name):
    """Two D + G steps on random text embeddings at nf=4, 32 px: finite losses, and at the second step every
    parameter of G (from the G step) and of every D trunk and head (from the D step) has a non-zero gradient.

    Why the second step: at step 1 some gradients are exactly zero by design, not by a bug. DF-GAN's DBlock
    scales its residual path by ``gamma`` = 0, so its convolutions get no gradient; the affines' output layers
    start at the identity (weight 0), so their first layers get none. The first optimiser step moves those
    gates off zero; from then on a parameter with a zero gradient does not learn.
    """
    spec = resolve_spec(name, overrides=TINY)
    torch.manual_seed(0)
    gan = build_gan(spec, cond_dim=COND, word_dim=COND)
    opt_g = torch.optim.Adam(gan.generator.parameters(), 1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(list(gan.d_parameters()), 4e-4, betas=(0.0, 0.9))
    step = Stepper(gan, build_regulariser(spec), opt_g, opt_d)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(B, 3, 32, 32, generator=g) * 2 - 1
    sentence, words = torch.randn(B, COND, generator=g), torch.randn(B, COND, T, generator=g)
    mask = torch.arange(T)[None] >= torch.tensor([5, 18, 3, 9])[:, None]
    for s in range(2):
        losses = step(s, images, sentence, words, mask, torch.randn(B, Z, generator=g))
        assert all(math.isfinite(v) for v in losses.values()), losses
    assert any(k.startswith("d_gp") for k in losses) == (spec.model.regulariser.name != "none")
    dead = [n for n, p in gan.generator.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    dead += [f"D.{n}" for n, p in gan.discriminators.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    dead += [f"head.{n}" for n, p in gan.heads.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"{name}: no gradient reaches {dead}"
    assert len(gan.discriminators) == (3 if spec.model.backbone == "stacked" else 1)


# ---- NoP ---------------------------------------------------------------------------------------------------
def _cli(*argv: str):
    from dfgan.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(list(argv))
    return rc, buf.getvalue()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dfgan_params_json_works_and_counts_the_built_networks(name):
    rc, out = _cli("params", "--variant", name, "--nf", "4", "--json")
    assert rc == 0, out
    rep = json.loads(out)
    spec = resolve_spec(name, overrides=["model.nf=4"])
    dim = spec.model.text_encoder.embedding_dim
    gan = build_gan(spec, cond_dim=dim, word_dim=dim)  # a real build, parameters counted directly
    assert rep["totals"]["trainable"]["count"] == sum(p.numel() for p in gan.parameters())
    assert rep["modules"]["generator"]["total"] == sum(p.numel() for p in gan.generator.parameters())


def test_dfgan_variants_lists_every_variant_with_its_nop():
    rc, out = _cli("variants", "--nf", "4", "--imsize", "32", "--json")
    assert rc == 0, out
    rows = {r["variant"]: r for r in json.loads(out)}
    assert EXPECTED <= set(rows)
    assert all(r["description"] for r in rows.values())


def _nop_table():
    mod_spec = importlib.util.spec_from_file_location("make_nop_table", REPO_ROOT / "reports" / "make_nop_table.py")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def test_nop_table_at_256px_reproduces_dfgan_and_measures_the_efficiency_claims():
    mod = _nop_table()
    rows = {r["variant"]: r for r in mod.rows(32, 256)}
    assert EXPECTED <= set(rows)
    full = rows["full"]
    # the official HEAD networks at nf=32, 256 px (code/models/GAN.py, instantiated): NetG, NetD (used part), NetC
    assert full["G"] == 9_744_131 and full["D"] == 6_421_830 and full["heads"] == 295_936
    assert rows["stacked"]["trainable"] > full["trainable"]
    assert rows["stacked"]["D"] > 2 * full["D"]  # three discriminators
    assert rows["cross_attention"]["G_fusion"] > full["G_fusion"] > rows["affine1"]["G_fusion"]
    assert rows["cross_attention"]["G_attention"] > 0 and full["G_attention"] == 0
    text = mod.render(list(rows.values()), 32, 256)
    assert all(f"`{v}`" in text for v in EXPECTED)


# ---- incompatible choices fail at validation, naming the field ---------------------------------------------
@pytest.mark.parametrize("variant,overrides,field", [
    ("cross_attention", ["model.text_encoder.name=sentence_transformer"], "model.fusion.name"),
    ("baseline", ["model.text_encoder.name=sentence_transformer"], "model.fusion.name"),
    ("full", ["model.head=three_way"], "model.head"),
    ("full", ["model.backbone=progressive"], "model.backbone"),
    ("full", ["model.regulariser.name=wgan_gp"], "model.regulariser.name"),
    ("full", ["model.regulariser.target=real_random"], "model.regulariser.target"),
    ("full", ["model.regulariser.norm=max"], "model.regulariser.norm"),
    ("cross_attention", ["model.fusion.fallback=film"], "model.fusion.fallback"),
    ("full", ["model.fusion.name=attention"], "model.fusion.name"),
    ("full", ["data.imsize=1024"], "data.imsize"),
    ("full", ["model.fusion.depth=0"], "model.fusion.depth"),
])
def test_incompatible_choice_fails_validation_naming_the_field(variant, overrides, field):
    with pytest.raises(SpecError) as e:
        resolve_spec(variant, overrides=overrides)
    assert field in str(e.value), str(e.value)


def test_compatible_extremes_validate():
    for over in (["data.imsize=512"], ["data.imsize=32"]):
        for v in ("baseline", "stacked", "full", "minilm_text"):
            assert resolve_spec(v, overrides=over).data.imsize == int(over[0].split("=")[1])
