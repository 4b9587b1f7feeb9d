"""The fast path: fused affine modulation (same values and gradients as the per-affine path, no drift),
speed options applied by the loop, and bf16 autocast with the MA-GP, losses and optimiser kept in fp32."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from benchmarks.harness import Batch, TrainWorkload, bench_spec, build_models
from dfgan.nn.fused import FusedModulator, enable_fused_affine
from dfgan.train.step import Stepper, apply_speed_options


def _generator(backbone: str = "one_stage", fusion: str = "dfblock", imsize: int = 32):
    over = [f"model.backbone={backbone}", f"model.fusion.name={fusion}"]
    if fusion == "cross_attention":  # attention at 16 px, DFBlocks elsewhere: a mixed generator
        over += ["model.fusion.attention_resolutions=[16]", "model.fusion.fallback=dfblock"]
    spec = bench_spec("full", imsize=imsize, nf=4, batch=3, speed="reference", overrides=over)
    gan, _ = build_models(spec, "cpu", seed=0)
    with torch.no_grad():  # leave the identity initialisation: every second layer must matter
        for name, p in gan.generator.named_parameters():
            if "linear2" in name:
                p.normal_(0.0, 0.2)
    return spec, gan.generator


def _forward(G, batch, bf16=False):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with ctx:
        out = G(batch.noise, batch.sentence, batch.words, batch.mask)
    return out if isinstance(out, list) else [out]


def _grads(G, batch):
    G.zero_grad(set_to_none=True)
    sent = batch.sentence.clone().requires_grad_(True)
    outs = _forward(G, Batch(batch.images, sent, batch.words, batch.mask, batch.noise))
    sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
    return outs, {n: p.grad.clone() for n, p in G.named_parameters() if p.grad is not None}, sent.grad


def _close_to_scale(got: torch.Tensor, want: torch.Tensor, name: str, rel: float = 1e-4) -> None:
    """Equal up to float32 summation order: every element within ``rel`` of the tensor's largest value."""
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= rel * scale + 1e-8, f"{name}: max difference {err:.3g}, largest value {scale:.3g}"


@pytest.mark.parametrize("backbone,fusion", [("one_stage", "dfblock"), ("one_stage", "affine1"),
                                             ("one_stage", "dfblock_deep"), ("stacked", "dfblock"),
                                             ("one_stage", "cross_attention")])
def test_fused_modulation_same_outputs_and_gradients(backbone, fusion):
    spec, G = _generator(backbone, fusion)
    F = copy.deepcopy(G)
    assert enable_fused_affine(F)
    batch = Batch.random(spec, "cpu", seed=1)
    outs, grads, sgrad = _grads(G, batch)
    f_outs, f_grads, f_sgrad = _grads(F, batch)
    for a, b in zip(outs, f_outs, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert grads.keys() == f_grads.keys()
    n_affine = 0
    for name, g in grads.items():
        _close_to_scale(f_grads[name], g, name)
        n_affine += "fc_gamma" in name or "fc_beta" in name
    assert n_affine > 0 and all(g.abs().sum() > 0 for n, g in grads.items() if "linear1.weight" in n)
    _close_to_scale(f_sgrad, sgrad, "sentence")


def test_modulator_layout_and_mixed_fusions():
    """cross_attention at 16 px with the dfblock fallback elsewhere: only DFBlocks are fused, one group per width."""
    spec, G = _generator("one_stage", "cross_attention")
    mod = FusedModulator(G)
    kinds = [[type(b.fuse1).__name__, type(b.fuse2).__name__] for b in G.GBlocks]
    assert [[x is not None for x in pair] for pair in mod.layout] == [[k == "DFBlock" for k in p] for p in kinds]
    assert any(x is None for pair in mod.layout for x in pair), "the test needs a non-DFBlock fusion"
    n_affines = sum(f.depth for pair in mod.layout for f in pair if f is not None)
    assert mod.n_mlps == 2 * n_affines
    assert sorted(mod.widths, reverse=True) == mod.widths  # groups by channel width
    mods = mod(torch.randn(2, G.z_dim + G.cond_dim))
    for pair, got in zip(mod.layout, mods, strict=True):
        for f, m in zip(pair, got, strict=True):
            assert (m is None) == (f is None)
            if m is not None:
                assert len(m) == f.depth and all(g.shape == (2, f.affine0.fc_gamma.linear2.out_features)
                                                 for g, _ in m)


def test_fused_modulator_has_no_copy_that_drifts():
    """Parameters stay the single source of truth: after optimiser steps and a state-dict load, the fused
    generator still equals the per-affine one; the state dict keeps the official keys; deepcopy is safe."""
    spec, G = _generator()
    keys = list(G.state_dict())
    F = copy.deepcopy(G)
    enable_fused_affine(F)
    assert list(F.state_dict()) == keys and not any("modulator" in k for k in keys)
    batch = Batch.random(spec, "cpu", seed=2)
    opt = torch.optim.Adam(F.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        _forward(F, batch)[0].square().mean().backward()
        opt.step()
    G.load_state_dict(F.state_dict())  # G: per-affine path with the trained weights
    torch.testing.assert_close(_forward(F, batch)[0], _forward(G, batch)[0], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        G.GBlocks[0].fuse1.affine0.fc_gamma.linear2.bias.add_(1.0)
    F.load_state_dict(G.state_dict())
    torch.testing.assert_close(_forward(F, batch)[0], _forward(G, batch)[0], rtol=1e-5, atol=1e-6)
    C = copy.deepcopy(F)  # the copy's modulator must read the copy's weights
    assert C.modulator.affines[0] is C.GBlocks[0].fuse1.affine0
    with torch.no_grad():
        C.GBlocks[0].fuse1.affine0.fc_beta.linear1.weight.mul_(3.0)
    assert not torch.allclose(_forward(C, batch)[0], _forward(F, batch)[0])


def test_enable_fused_affine_refuses_what_it_cannot_fuse():
    class NoModulation(nn.Module):
        pass

    with pytest.warns(UserWarning, match="does not accept precomputed modulation"):
        assert enable_fused_affine(NoModulation()) is False
    _, G = _generator("one_stage", "concat")
    with pytest.warns(UserWarning, match="no DFBlock"):
        assert enable_fused_affine(G) is False
    assert G.modulator is None


def test_speed_options_applied_by_loop_helper():
    spec = bench_spec("full", imsize=32, nf=4, batch=2, speed="fast")
    gan, _ = build_models(spec, "cpu")
    applied = apply_speed_options(gan, spec.train)
    assert applied == {"fused_affine": True, "channels_last": True}
    assert gan.generator.modulator is not None
    conv = gan.discriminators[0].conv_img.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    # on by default, so a generator without DFBlocks keeps its path quietly and the record says so
    spec = bench_spec("baseline", imsize=32, nf=4, batch=2, speed="fast")
    gan, _ = build_models(spec, "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_speed_options(gan, spec.train) == {"fused_affine": False, "channels_last": True}


def test_bf16_step_keeps_penalty_losses_and_optimiser_in_fp32():
    spec = bench_spec("full", imsize=32, nf=4, batch=4, speed="fast")
    w = TrainWorkload(spec, "cpu")
    stepper: Stepper = w._stepper
    seen = {}
    reg, head = stepper.reg, w.gan.heads[0]
    grad_norm, cond_score = reg.grad_norm, head.cond_score

    def spy_norm(*a, **k):
        seen["grad_norm"] = out = grad_norm(*a, **k)
        return out

    def spy_score(*a, **k):
        out = cond_score(*a, **k)
        seen.setdefault("scores", []).append(out.dtype)
        return out

    reg.grad_norm, head.cond_score = spy_norm, spy_score
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. autocast complaining about an unsupported dtype
        losses = w()
    assert seen["grad_norm"].dtype == torch.float32 and seen["grad_norm"].requires_grad
    assert set(seen["scores"]) == {torch.float32}
    assert all(map(lambda v: v == v and abs(v) < 1e6, losses.values())) and losses["d_gp"] > 0
    for p in w.gan.parameters():
        assert p.dtype == torch.float32
    for opt in (w.opt_g, w.opt_d):
        for state in opt.state.values():
            assert state["exp_avg_sq"].dtype == torch.float32
    # bf16 computes the same step as fp32, to bf16 accuracy
    ref = TrainWorkload(bench_spec("full", imsize=32, nf=4, batch=4, speed="reference"), "cpu", reference=True)
    r = ref()
    fast = TrainWorkload(spec, "cpu")()
    for key in ("d_real", "d_fake", "d_mis", "loss_g"):
        assert fast[key] == pytest.approx(r[key], rel=0.05, abs=0.02), key


def test_train_loop_records_the_fast_path(tmp_path):
    from dfgan.experiment import resolve_spec
    from dfgan.tracking import Tracker
    from dfgan.train.loop import train
    from tests.conftest import tiny_overrides

    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path, **{
        "train.steps": 2, "train.precision": "bf16", "train.channels_last": "true", "train.fused_affine": "true"}))
    res = train(spec, progress=False, tracker=Tracker(enabled=False))
    assert res.steps == 2 and all(v == v for v in res.last_losses.values())
    assert res.info["speed"] == {"fused_affine": True, "channels_last": True, "precision": "bf16"}
    rt = res.info["runtime"]
    assert {"allocator", "allocator_env", "threads", "torch", "device"} <= rt.keys()


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_bf16_is_native(tmp_path, monkeypatch, native):
    """``train.precision=auto`` resolves per machine (``bf16_is_fast``) and the run records what it used."""
    import dfgan.runtime
    from dfgan.experiment import resolve_spec
    from dfgan.runtime import resolve_precision
    from dfgan.tracking import Tracker
    from dfgan.train.loop import train
    from tests.conftest import tiny_overrides

    monkeypatch.setattr(dfgan.runtime, "bf16_is_fast", lambda device="cpu": native)
    want = "bf16" if native else "fp32"
    assert resolve_precision("auto", "cpu") == want
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path, **{"train.steps": 1, "train.precision": "auto"}))
    res = train(spec, progress=False, tracker=Tracker(enabled=False))
    assert res.info["speed"]["precision"] == want


def test_parity_study_runs_both_arms_and_rewrites_its_section(tmp_path, capsys):
    """The parity study on a tiny configuration: two arms x 2 seeds, each arm's TOST against reference on the
    paired seeds (recomputed here), its section replaced (not appended twice) in the Markdown report, the rest
    of the report kept; bad margins and arms are refused before any run."""
    import json

    import numpy as np

    from benchmarks.parity_study import main
    from benchmarks.report import PARITY_MARKER
    from dfgan.reports.equivalence import Margin, equivalence

    md, js = tmp_path / "benchmarks.md", tmp_path / "parity.json"
    md.write_text("# Throughput benchmarks\n\nearlier content\n")
    args = ["--seeds", "2", "--steps", "1", "--arms", "reference,fast", "--margin", "fd_attr=x1.5",
            "--n-images", "16", "--out-dir", str(tmp_path / "runs"), "--json",
            str(js), "--md", str(md), "--quiet", "model.nf=4", "data.imsize=32", "data.n_train=64", "data.n_test=16",
            "model.text_encoder.pretrain_steps=1", "model.text_encoder.pretrain_batch_size=8", "train.batch_size=4"]
    for bad, says in ((["--margin", "attr_acc=x0.5"], "> 1"), (["--arms", "reference,turbo"], "unknown turbo"),
                      (["--metrics", "fd_attr", "kid1k_test_clean"], "no default margin")):
        with pytest.raises(SystemExit):
            main([*args, *bad])  # the last --arms / --metrics wins
        assert says in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any work
    assert main(args) == 0
    result = json.loads(js.read_text())
    assert sorted((r["arm"], r["seed"]) for r in result["runs"]) == [("fast", 100), ("fast", 101),
                                                                      ("reference", 100), ("reference", 101)]
    assert {r["speed"]["fused_affine"] for r in result["runs"]} == {True, False}
    value = {(r["arm"], r["seed"]): r["metrics"] for r in result["runs"]}
    for m, margin in (("attr_acc", "0.02"), ("fd_attr", "x1.5")):
        s = result["summary"][m]["fast"]
        eq = equivalence(np.array([value["reference", k][m] for k in (100, 101)]),
                         np.array([value["fast", k][m] for k in (100, 101)]), Margin.parse(margin))
        assert s["n"] == 2 and s["verdict"] == eq.verdict and s["p_tost"] == pytest.approx(eq.p_tost)
        assert s["estimate"] == pytest.approx(eq.shown(eq.diff))
    assert main(args) == 0  # resumes the finished runs, rewrites the section
    again = json.loads(js.read_text())  # with the training times measured when they were trained
    assert [r["train_seconds"] for r in again["runs"]] == [r["train_seconds"] for r in result["runs"]]
    assert all(r["train_seconds"] > 0 for r in again["runs"])
    text = md.read_text()
    assert text.count(PARITY_MARKER) == 1 and "earlier content" in text and "| attr_acc |" in text
