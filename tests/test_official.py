"""Loading official DF-GAN / DAMSM checkpoints (``dfgan.official``).

The checkpoints here are written key by key from an independent table of the official layout (the state dicts
of official code/models/GAN.py and code/models/DAMSM.py), never by round-tripping our own ``state_dict()``, and
the loaded networks are compared with a functional re-computation (``F.linear``/``F.conv2d``) of the official
forward passes from the same tensors.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfgan.official import (
    CheckpointError,
    infer_config,
    load_checkpoint,
    load_text_encoder,
    save_official_checkpoint,
    to_official_state_dict,
)

Z, COND = 100, 256
SMALL = dict(nf=4, imsize=64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster on the shared 2-core machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- an independent description of the official layout ---------------------------------------------------
def official_channels(nf: int, imsize: int) -> list[int]:
    return [nf * min(2**i, 8) for i in range(int(math.log2(imsize)) - 1)]


def official_shapes(nf: int, imsize: int, z_dim: int = Z, cond_dim: int = COND) -> dict[str, dict]:
    """Key -> shape of the official NetG / NetD (with every conv_s) / NetC state dicts."""
    ch = official_channels(nf, imsize)
    g: dict[str, tuple] = {"fc.weight": (8 * nf * 16, z_dim), "fc.bias": (8 * nf * 16,)}
    cond = z_dim + cond_dim
    rev = ch[::-1]
    for i, (a, b) in enumerate(zip(rev[:-1], rev[1:], strict=True)):
        p = f"GBlocks.{i}."
        g[p + "c1.weight"], g[p + "c1.bias"] = (b, a, 3, 3), (b,)
        g[p + "c2.weight"], g[p + "c2.bias"] = (b, b, 3, 3), (b,)
        for fuse, c in (("fuse1", a), ("fuse2", b)):
            for aff in ("affine0", "affine1"):
                for fc in ("fc_gamma", "fc_beta"):
                    q = f"{p}{fuse}.{aff}.{fc}."
                    g[q + "linear1.weight"], g[q + "linear1.bias"] = (c, cond), (c,)
                    g[q + "linear2.weight"], g[q + "linear2.bias"] = (c, c), (c,)
        if a != b:
            g[p + "c_sc.weight"], g[p + "c_sc.bias"] = (b, a, 1, 1), (b,)
    g["to_rgb.1.weight"], g["to_rgb.1.bias"] = (3, nf, 3, 3), (3,)

    d: dict[str, tuple] = {"conv_img.weight": (nf, 3, 3, 3), "conv_img.bias": (nf,)}
    for i, (a, b) in enumerate(zip(ch[:-1], ch[1:], strict=True)):
        p = f"DBlocks.{i}."
        d[p + "conv_r.0.weight"] = (b, a, 4, 4)
        d[p + "conv_r.2.weight"] = (b, b, 3, 3)
        d[p + "conv_s.weight"], d[p + "conv_s.bias"] = (b, a, 1, 1), (b,)  # instantiated even when a == b
        d[p + "gamma"] = (1,)
    c = {"joint_conv.0.weight": (2 * nf, 8 * nf + cond_dim, 3, 3), "joint_conv.2.weight": (1, 2 * nf, 4, 4)}
    return {"netG": g, "netD": d, "netC": c}


def unused_keys(nf: int, imsize: int) -> set[str]:
    ch = official_channels(nf, imsize)
    same = [i for i, (a, b) in enumerate(zip(ch[:-1], ch[1:], strict=True)) if a == b]
    return {f"DBlocks.{i}.conv_s.{w}" for i in same for w in ("weight", "bias")}


def random_official_state(nf: int, imsize: int, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for net, shapes in official_shapes(nf, imsize).items():
        out[net] = {}
        for k, shape in shapes.items():
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            scale = 1.0 / math.sqrt(fan_in) if len(shape) > 1 else 0.3
            out[net][k] = torch.randn(shape, generator=gen) * scale
    return out


def official_file(nf: int, imsize: int, seed: int = 0, prefix: str = "") -> dict:
    """A ``state_epoch_NNN.pth`` payload, including real Adam optimiser states (they hold non-tensor leaves)."""
    nets = random_official_state(nf, imsize, seed)
    p = nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=1e-4, betas=(0.0, 0.9))
    p.sum().backward()
    opt.step()
    return {
        "model": {n: {prefix + k: v for k, v in sd.items()} for n, sd in nets.items()},
        "optimizers": {"optimizer_G": opt.state_dict(), "optimizer_D": opt.state_dict()},
        "epoch": 7,
    }


# ---- the official forward passes, computed functionally --------------------------------------------------
def lrelu(x):
    return F.leaky_relu(x, 0.2)


def ref_affine(sd, p, x, y):
    def mlp(q):
        h = F.relu(F.linear(y, sd[q + "linear1.weight"], sd[q + "linear1.bias"]))
        return F.linear(h, sd[q + "linear2.weight"], sd[q + "linear2.bias"])

    return mlp(p + "fc_gamma.")[:, :, None, None] * x + mlp(p + "fc_beta.")[:, :, None, None]


def ref_netG(sd, nf, noise, sentence):
    cond = torch.cat((noise, sentence), 1)
    x = F.linear(noise, sd["fc.weight"], sd["fc.bias"]).view(noise.size(0), 8 * nf, 4, 4)
    i = 0
    while f"GBlocks.{i}.c1.weight" in sd:
        p = f"GBlocks.{i}."
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        sc = F.conv2d(x, sd[p + "c_sc.weight"], sd[p + "c_sc.bias"]) if p + "c_sc.weight" in sd else x
        h = x
        for fuse, conv in (("fuse1", "c1"), ("fuse2", "c2")):
            h = lrelu(ref_affine(sd, f"{p}{fuse}.affine0.", h, cond))
            h = lrelu(ref_affine(sd, f"{p}{fuse}.affine1.", h, cond))
            h = F.conv2d(h, sd[f"{p}{conv}.weight"], sd[f"{p}{conv}.bias"], padding=1)
        x = sc + h
        i += 1
    return torch.tanh(F.conv2d(lrelu(x), sd["to_rgb.1.weight"], sd["to_rgb.1.bias"], padding=1))


def ref_netD(sd, img):
    x = F.conv2d(img, sd["conv_img.weight"], sd["conv_img.bias"], padding=1)
    i = 0
    while f"DBlocks.{i}.gamma" in sd:
        p = f"DBlocks.{i}."
        r = lrelu(F.conv2d(x, sd[p + "conv_r.0.weight"], stride=2, padding=1))
        r = lrelu(F.conv2d(r, sd[p + "conv_r.2.weight"], padding=1))
        w = sd[p + "conv_s.weight"]
        if w.shape[0] != w.shape[1]:  # learned shortcut only where fin != fout
            x = F.conv2d(x, w, sd[p + "conv_s.bias"])
        x = F.avg_pool2d(x, 2) + sd[p + "gamma"] * r
        i += 1
    return x


def ref_netC(sd, feats, sentence):
    y = sentence[:, :, None, None].expand(-1, -1, 4, 4)
    h = lrelu(F.conv2d(torch.cat((feats, y), 1), sd["joint_conv.0.weight"], padding=1))
    return F.conv2d(h, sd["joint_conv.2.weight"])


# ---- the layout table itself agrees with the official modules' parameter counts -----------------------------
@pytest.mark.parametrize(
    "nf, imsize, g, d, c",
    [
        (32, 256, 9_744_131, 6_619_206, 295_936),
        (32, 128, 7_306_499, 4_915_013, 295_936),
        (32, 64, 4_868_867, 3_210_820, 295_936),
        (64, 256, 31_819_267, 26_472_582, 886_784),
    ],
)
def test_layout_table_matches_reference_counts(nf, imsize, g, d, c):
    shapes = official_shapes(nf, imsize)
    counts = {n: sum(math.prod(s) for s in t.values()) for n, t in shapes.items()}
    assert counts == {"netG": g, "netD": d, "netC": c}


# ---- loading -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_matches_official_forward(tmp_path, prefix):
    nf, imsize = SMALL["nf"], SMALL["imsize"]
    payload = official_file(nf, imsize, seed=1, prefix=prefix)
    path = tmp_path / "state_epoch_007.pth"
    torch.save(payload, path)
    G, D, C = load_checkpoint(path, nf, imsize)
    assert not (G.training or D.training or C.training)
    sd = random_official_state(nf, imsize, seed=1)  # the same tensors, without prefix

    torch.manual_seed(0)
    noise, sentence = torch.randn(2, Z), torch.randn(2, COND)
    images = torch.rand(2, 3, imsize, imsize) * 2 - 1
    with torch.no_grad():
        fake = G(noise, sentence)
        assert fake.shape == (2, 3, imsize, imsize)
        torch.testing.assert_close(fake, ref_netG(sd["netG"], nf, noise, sentence), rtol=1e-4, atol=1e-5)
        feats = D(images)
        assert feats.shape == (2, 8 * nf, 4, 4)
        torch.testing.assert_close(feats, ref_netD(sd["netD"], images), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(C(feats, sentence), ref_netC(sd["netC"], feats, sentence), rtol=1e-4, atol=1e-5)
    # the residual paths matter: gamma != 0 and the affine layers are not the identity
    assert float(sd["netD"]["DBlocks.0.gamma"].abs()) > 0


def test_shapes_at_nf32_256_and_config_inference():
    nets = {n: {k: torch.zeros(s) for k, s in t.items()} for n, t in official_shapes(32, 256).items()}
    assert infer_config(nets["netG"]) == {"nf": 32, "imsize": 256, "z_dim": 100, "cond_dim": 256}
    G, D, C = load_checkpoint({"model": nets, "epoch": 1}, nf=None, imsize=None)  # inferred from netG
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (G.nf, G.imsize, len(G.GBlocks), len(D.DBlocks)) == (32, 256, 6, 6)
    assert (n(G), n(D), n(C)) == (9_744_131, 6_619_206 - 197_376, 295_936)


def test_bare_netG_state_dict(tmp_path):
    sd = random_official_state(**SMALL)["netG"]
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "netG.pth")
    G, D, C = load_checkpoint(tmp_path / "netG.pth", **SMALL)
    assert D is None and C is None and not G.training
    torch.testing.assert_close(G.fc.weight, sd["fc.weight"])


def _err(payload, **kw) -> str:
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(payload, **{**SMALL, **kw})
    return str(ei.value)


def test_wrong_nf_names_key_both_shapes_and_file_config():
    msg = _err(official_file(8, 64), nf=4)
    assert msg.startswith("netG: fc.weight: checkpoint has (1024, 100), model expects (512, 100)")
    assert "nf=8, imsize=64" in msg and "nf=4, imsize=64" in msg


def test_wrong_imsize_is_reported():
    msg = _err(official_file(4, 128), imsize=64)
    assert "imsize=128" in msg and "netG: " in msg


def test_missing_key():
    payload = official_file(**SMALL)
    del payload["model"]["netG"]["GBlocks.1.fuse2.affine1.fc_beta.linear2.bias"]
    msg = _err(payload)
    assert "netG: GBlocks.1.fuse2.affine1.fc_beta.linear2.bias: missing" in msg
    assert "model expects (16,)" in msg


def test_extra_key():
    payload = official_file(**SMALL)
    payload["model"]["netC"]["joint_conv.1.weight"] = torch.zeros(3, 5)
    msg = _err(payload)
    assert "netC: joint_conv.1.weight: unexpected" in msg and "(3, 5)" in msg


def test_wrong_shape_names_both_shapes():
    payload = official_file(**SMALL)
    payload["model"]["netD"]["DBlocks.2.conv_r.2.weight"] = torch.zeros(32, 32, 4, 4)
    msg = _err(payload)
    assert re.search(
        r"netD: DBlocks\.2\.conv_r\.2\.weight: checkpoint has \(32, 32, 4, 4\), model expects "
        r"\(32, 32, 3, 3\)",
        msg,
    )


def test_unused_conv_s_checked_and_optional():
    # nf=4, 64 px: the D blocks are (4,8),(8,16),(16,32),(32,32); block 3's conv_s is unused.
    assert unused_keys(**SMALL) == {"DBlocks.3.conv_s.weight", "DBlocks.3.conv_s.bias"}
    payload = official_file(**SMALL)
    payload["model"]["netD"]["DBlocks.3.conv_s.weight"] = torch.zeros(32, 16, 1, 1)
    msg = _err(payload)
    assert "netD: DBlocks.3.conv_s.weight: checkpoint has (32, 16, 1, 1)" in msg and "(32, 32, 1, 1)" in msg
    payload = official_file(**SMALL)
    for k in unused_keys(**SMALL):
        del payload["model"]["netD"][k]
    load_checkpoint(payload, **SMALL)  # a file without them (e.g. written by us) loads too
    payload["model"]["netD"]["DBlocks.2.conv_s.bias"] = payload["model"]["netD"].pop("DBlocks.2.conv_s.bias")
    del payload["model"]["netD"]["DBlocks.2.conv_s.weight"]  # a *used* shortcut may not be missing
    assert "netD: DBlocks.2.conv_s.weight: missing" in _err(payload)


def test_missing_network_and_not_a_checkpoint():
    payload = official_file(**SMALL)
    del payload["model"]["netC"]
    assert "netC" in _err(payload)
    assert "not a DF-GAN checkpoint" in _err({"foo": torch.zeros(1)})


# ---- writing ----------------------------------------------------------------------------------------------
def test_to_official_state_dict_layout_and_round_trip(tmp_path):
    nf, imsize = SMALL["nf"], SMALL["imsize"]
    G, D, C = load_checkpoint(official_file(nf, imsize, seed=3), nf, imsize)
    out = to_official_state_dict(G, D, C, epoch=11)
    assert out["epoch"] == 11 and set(out["model"]) == {"netG", "netD", "netC"}
    table = official_shapes(nf, imsize)
    for net, shapes in table.items():
        assert {k: tuple(v.shape) for k, v in out["model"][net].items()} == shapes, net
    sd = random_official_state(nf, imsize, seed=3)
    for net in table:
        for k, v in out["model"][net].items():
            expected = torch.zeros_like(v) if k in unused_keys(nf, imsize) else sd[net][k]
            torch.testing.assert_close(v, expected, rtol=0, atol=0)
    lean = to_official_state_dict(G, D, C, include_unused_conv_s=False)
    assert set(out["model"]["netD"]) - set(lean["model"]["netD"]) == unused_keys(nf, imsize)

    save_official_checkpoint(tmp_path / "ours.pth", G, D, C, epoch=11)
    G2, D2, C2 = load_checkpoint(tmp_path / "ours.pth", nf, imsize)
    x = torch.rand(1, 3, imsize, imsize)
    with torch.no_grad():
        torch.testing.assert_close(D2(x), D(x))


def test_to_official_rejects_foreign_layout():
    from dfgan.nn.discriminators import DFGANDiscriminator
    from dfgan.nn.fusion import DFBlock
    from dfgan.nn.generators import OneStageGenerator
    from dfgan.nn.heads import OneWayHead

    G, D, C = OneStageGenerator(4, Z, COND, 64), DFGANDiscriminator(4, 64), OneWayHead(4, COND)
    G.GBlocks[0].fuse1 = DFBlock(Z + COND, 32, depth=1)  # the paper's depth ablation has no official layout
    with pytest.raises(CheckpointError, match=r"netG: GBlocks\.0\.fuse1\.affine1\..*missing"):
        to_official_state_dict(G, D, C)
    G = OneStageGenerator(4, Z, COND, 64)
    G.extra = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"netG: extra\.weight: unexpected.*\(2, 2\)"):
        to_official_state_dict(G, D, C)


# ---- DAMSM text encoder -----------------------------------------------------------------------------------
def damsm_state(n_words: int, seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {"encoder.weight": torch.randn(n_words, 300, generator=gen) * 0.1}
    for sfx in ("", "_reverse"):
        sd[f"rnn.weight_ih_l0{sfx}"] = torch.randn(512, 300, generator=gen) * 0.06
        sd[f"rnn.weight_hh_l0{sfx}"] = torch.randn(512, 128, generator=gen) * 0.09
        sd[f"rnn.bias_ih_l0{sfx}"] = torch.randn(512, generator=gen) * 0.1
        sd[f"rnn.bias_hh_l0{sfx}"] = torch.randn(512, generator=gen) * 0.1
    return {prefix + k: v for k, v in sd.items()}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_text_encoder_matches_hand_made_lstm(tmp_path, prefix):
    V = 50
    sd = damsm_state(V, seed=2)
    torch.save(damsm_state(V, seed=2, prefix=prefix), tmp_path / "text_encoder200.pth")
    enc = load_text_encoder(tmp_path / "text_encoder200.pth")
    assert enc.n_words == V and not enc.training
    assert not any(p.requires_grad for p in enc.parameters())

    lstm = nn.LSTM(300, 128, 1, batch_first=True, bidirectional=True)
    lstm.load_state_dict({k[len("rnn.") :]: v for k, v in sd.items() if k.startswith("rnn.")})
    lengths = torch.tensor([5, 18, 1])
    captions = torch.zeros(3, 18, dtype=torch.long)
    gen = torch.Generator().manual_seed(5)
    for i, n in enumerate(lengths.tolist()):
        captions[i, :n] = torch.randint(1, V, (n,), generator=gen)
    with torch.no_grad():
        words, sentence = enc(captions, lengths)
        assert words.shape == (3, 256, 18) and sentence.shape == (3, 256)
        for i, n in enumerate(lengths.tolist()):
            emb = F.embedding(captions[i : i + 1, :n], sd["encoder.weight"])
            out, (h, _) = lstm(emb)
            torch.testing.assert_close(words[i, :, :n], out[0].T, rtol=1e-4, atol=1e-5)
            if n < 18:
                assert words[i, :, n:].abs().max().item() == 0  # padding positions
            torch.testing.assert_close(sentence[i], torch.cat((h[0, 0], h[1, 0])), rtol=1e-4, atol=1e-5)
            # the backward direction's final state is its output at position 0
            torch.testing.assert_close(sentence[i, 128:], out[0, 0, 128:], rtol=1e-4, atol=1e-5)


def test_text_encoder_vocabulary_check_and_errors():
    sd = damsm_state(40)
    assert load_text_encoder(sd, n_words=40).n_words == 40
    with pytest.raises(CheckpointError) as ei:
        load_text_encoder(sd, n_words=41)
    msg = str(ei.value)
    assert "encoder.weight" in msg and "(40, 300)" in msg and "(41, 300)" in msg and "vocabulary" in msg
    broken = dict(sd)
    del broken["rnn.bias_hh_l0_reverse"]
    with pytest.raises(CheckpointError, match=r"text_encoder: rnn\.bias_hh_l0_reverse: missing.*\(512,\)"):
        load_text_encoder(broken)
    extra = {**sd, "rnn.weight_ih_l1": torch.zeros(512, 256)}
    with pytest.raises(CheckpointError, match=r"rnn\.weight_ih_l1: unexpected.*\(512, 256\)"):
        load_text_encoder(extra)
