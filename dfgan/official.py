"""Read and write checkpoints in the layout of the official DF-GAN code (tobran/DF-GAN, HEAD).

* ``load_checkpoint(path)`` reads an official ``state_epoch_NNN.pth`` (``{'model': {'netG', 'netD', 'netC'},
  'optimizers': {...}, 'epoch'}``) into our ``OneStageGenerator``, ``DFGANDiscriminator`` and ``OneWayHead``.
* ``load_text_encoder(path)`` reads a DAMSM ``text_encoder*.pth`` (AttnGAN's ``RNN_ENCODER`` state dict) into
  our ``DAMSMTextEncoder``.
* ``to_official_state_dict(G, D, C)`` / ``save_official_checkpoint`` write our networks in the official layout.

Loading is strict: every key of our model must be in the file with the same shape and the file may hold no
other key, with one exception. The official ``D_Block`` instantiates its 1x1 shortcut conv ``conv_s`` in every
block but applies it only where ``fin != fout``; we do not build the unused ones (official
``code/models/GAN.py:D_Block``), so their ``DBlocks.N.conv_s.{weight,bias}`` keys are accepted, checked to have
the shape the official code would give them (``(fout, fin, 1, 1)`` and ``(fout,)``) and dropped. They never
influence any output.

A mismatch raises ``CheckpointError`` naming the network, the key and both shapes, and, when the file's own
shapes reveal it, the ``nf``/``imsize``/``z_dim``/``cond_dim`` it was trained with.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dfgan.nn.channels import discriminator_pairs
from dfgan.nn.discriminators import DFGANDiscriminator
from dfgan.nn.generators import OneStageGenerator
from dfgan.nn.heads import OneWayHead
from dfgan.nn.text_encoders import DAMSMTextEncoder, TextEncoderFileError, damsm_sizes, read_damsm_state
from dfgan.runs import load_failure

__all__ = [
    "CheckpointError",
    "infer_config",
    "load_checkpoint",
    "load_text_encoder",
    "unused_conv_s_shapes",
    "save_official_checkpoint",
    "to_official_state_dict",
]

_MODULE_PREFIX = "module."
_GBLOCK_RE = re.compile(r"^GBlocks\.(\d+)\.")
_NETS = ("netG", "netD", "netC")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: the message names the key and both shapes."""


# ---- helpers ----------------------------------------------------------------------------------------------
def _shape(t: Any) -> tuple[int, ...] | None:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix that ``DataParallel``/``DistributedDataParallel`` adds to every key."""
    return {(k[len(_MODULE_PREFIX) :] if k.startswith(_MODULE_PREFIX) else k): v for k, v in state.items()}


def _read(path_or_obj: Any, map_location) -> Any:
    if isinstance(path_or_obj, Mapping):
        return path_or_obj
    path = os.fspath(path_or_obj)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle with non-tensor objects, truncated file, ...
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint: {load_failure(e)}") from None


def infer_config(state: Mapping[str, Any]) -> dict[str, int] | None:
    """``nf``, ``imsize``, ``z_dim`` and ``cond_dim`` of an official ``netG`` state dict, or None if unclear."""
    state = _strip_prefix(state)
    try:
        fc = state["fc.weight"]
        out_features, z_dim = int(fc.shape[0]), int(fc.shape[1])
        n_blocks = 1 + max(int(m.group(1)) for k in state if (m := _GBLOCK_RE.match(k)))
        cond_in = int(state["GBlocks.0.fuse1.affine0.fc_gamma.linear1.weight"].shape[1])
    except (KeyError, ValueError, IndexError, AttributeError):
        return None
    if out_features % (8 * 16):
        return None
    return {"nf": out_features // (8 * 16), "imsize": 4 * 2**n_blocks, "z_dim": z_dim, "cond_dim": cond_in - z_dim}


def _hint(built: Mapping[str, int], found: Mapping[str, int] | None) -> str:
    want = ", ".join(f"{k}={v}" for k, v in built.items())
    if found and any(found.get(k) != v for k, v in built.items() if k in found):
        got = ", ".join(f"{k}={v}" for k, v in found.items())
        return f" — the model was built with {want}, but the checkpoint looks like {got}; pass those"
    return f" (the model was built with {want})"


def _check_and_load(
    net_name: str,
    model: nn.Module,
    state: Mapping[str, Any],
    hint: str,
    ignorable: Mapping[str, tuple[int, ...]] | None = None,
    load: bool = True,
) -> list[str]:
    """Load ``state`` into ``model`` strictly (or only check, ``load=False``); keys in ``ignorable`` are
    checked for shape and dropped.

    Returns the dropped keys. Raises ``CheckpointError`` listing every problem, first problem first.
    """
    ignorable = ignorable or {}
    expected = model.state_dict()
    problems: list[str] = []
    dropped: list[str] = []
    for key, ref in expected.items():
        if key not in state:
            problems.append(f"{net_name}: {key}: missing from the checkpoint, model expects {tuple(ref.shape)}")
        elif _shape(state[key]) != tuple(ref.shape):
            problems.append(f"{net_name}: {key}: checkpoint has {_shape(state[key])}, model expects {tuple(ref.shape)}")
    for key, value in state.items():
        if key in expected:
            continue
        if key in ignorable:
            if _shape(value) != ignorable[key]:
                problems.append(
                    f"{net_name}: {key}: checkpoint has {_shape(value)}, the official code would create "
                    f"{ignorable[key]} (an unused shortcut conv; it is dropped)"
                )
            else:
                dropped.append(key)
            continue
        problems.append(
            f"{net_name}: {key}: unexpected key in the checkpoint (checkpoint has {_shape(value)}, "
            f"model has no such entry)"
        )
    if problems:
        more = ""
        if len(problems) > 1:
            listed = "; ".join(problems[1:6]) + ("; ..." if len(problems) > 6 else "")
            more = f" (and {len(problems) - 1} more: {listed})"
        raise CheckpointError(problems[0] + hint + more)
    if load:
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
    return dropped


def unused_conv_s_shapes(nf: int, imsize: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the ``conv_s`` the official ``NetD`` instantiates but never uses (fin == fout)."""
    out: dict[str, tuple[int, ...]] = {}
    for i, (fin, fout) in enumerate(discriminator_pairs(nf, imsize)):
        if fin == fout:
            out[f"DBlocks.{i}.conv_s.weight"] = (fout, fin, 1, 1)
            out[f"DBlocks.{i}.conv_s.bias"] = (fout,)
    return out


def _set_eval(*modules: nn.Module | None) -> None:
    for m in modules:
        if m is not None:
            m.eval()


# ---- GAN checkpoints --------------------------------------------------------------------------------------
def load_checkpoint(
    path,
    nf: int | None = 32,
    imsize: int | None = 256,
    *,
    z_dim: int | None = 100,
    cond_dim: int | None = 256,
    map_location="cpu",
) -> tuple[OneStageGenerator, DFGANDiscriminator | None, OneWayHead | None]:
    """Load an official DF-GAN checkpoint into ``(G, D, C)``, all in eval mode.

    ``path`` is a ``state_epoch_NNN.pth`` file (or the dict it holds). Read with ``weights_only=True``; a
    ``module.`` prefix (weights saved under DDP) is stripped. The networks are built as
    ``OneStageGenerator(nf, z_dim, cond_dim, imsize)``, ``DFGANDiscriminator(nf, imsize)`` and
    ``OneWayHead(nf, cond_dim)`` and loaded strictly. Pass ``None`` for any of ``nf``, ``imsize``, ``z_dim``,
    ``cond_dim`` to take it from the file's ``netG`` shapes (the released birds/COCO models are nf=32, 256 px).

    NetD's unused ``DBlocks.N.conv_s.{weight,bias}`` (blocks with fin == fout) are checked to be
    ``(fout, fin, 1, 1)``/``(fout,)`` and dropped: our trunk does not build them and the official forward
    never applies them, so outputs are identical.

    The file may also be a bare ``netG`` state dict (what some sampling scripts save); then ``D`` and ``C``
    are returned as ``None``.

    Raises ``CheckpointError`` on a missing or unexpected key or a shape mismatch, naming the key and both shapes.
    """
    ckpt = _read(path, map_location)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(ckpt).__name__}")
    if "model" in ckpt and isinstance(ckpt["model"], Mapping):
        nets = ckpt["model"]
        missing = [n for n in _NETS if n not in nets]
        if missing:
            raise CheckpointError(
                f"{path}: checkpoint['model'] lacks {', '.join(missing)} (has {', '.join(map(str, nets))})"
            )
        states = {n: _strip_prefix(nets[n]) for n in _NETS}
    elif any(k.endswith("fc.weight") for k in ckpt if isinstance(k, str)):
        states = {"netG": _strip_prefix(ckpt)}
    else:
        raise CheckpointError(
            f"{path}: not a DF-GAN checkpoint: expected {{'model': {{'netG', 'netD', 'netC'}}, ...}} or a netG "
            f"state dict; top-level keys: {', '.join(map(str, list(ckpt)[:8]))}"
        )

    found = infer_config(states["netG"])
    requested = {"nf": nf, "imsize": imsize, "z_dim": z_dim, "cond_dim": cond_dim}
    for k, v in requested.items():
        if v is None:
            if found is None:
                raise CheckpointError(f"{path}: cannot infer {k} from netG (fc.weight/GBlocks keys); pass {k}=")
            requested[k] = found[k]
    nf, imsize, z_dim, cond_dim = (requested[k] for k in ("nf", "imsize", "z_dim", "cond_dim"))
    hint = _hint(requested, found)

    G = OneStageGenerator(nf, z_dim, cond_dim, imsize)
    _check_and_load("netG", G, states["netG"], hint)
    D = C = None
    if "netD" in states:
        D = DFGANDiscriminator(nf, imsize)
        _check_and_load("netD", D, states["netD"], hint, ignorable=unused_conv_s_shapes(nf, imsize))
        C = OneWayHead(nf, cond_dim)
        _check_and_load("netC", C, states["netC"], hint)
    _set_eval(G, D, C)
    return G, D, C


def to_official_state_dict(
    G: OneStageGenerator,
    D: DFGANDiscriminator,
    C: OneWayHead,
    *,
    epoch: int = 0,
    include_unused_conv_s: bool = True,
) -> dict[str, Any]:
    """Our networks in the official checkpoint layout: ``{'model': {'netG', 'netD', 'netC'}, 'epoch'}``.

    Keys carry no ``module.`` prefix; tensors are detached CPU copies. With ``include_unused_conv_s`` (the
    default) NetD gets the ``DBlocks.N.conv_s.{weight,bias}`` of fin == fout blocks re-created as **zeros**:
    the official ``NetD`` instantiates them and its loader calls ``load_state_dict`` strictly, so without them
    the file would not load there; their values never affect an output. Set it False to omit them (our
    ``load_checkpoint`` accepts both). No ``'optimizers'`` entry is written: the file serves the official
    sampling/testing code, not resuming official training. Raises ``CheckpointError`` when a network has
    entries the official layout has no place for (e.g. a non-DF-GAN fusion block).
    """
    ref_G = OneStageGenerator(G.nf, G.z_dim, G.cond_dim, G.imsize)
    ref_D = DFGANDiscriminator(D.nf, D.imsize)
    ref_C = OneWayHead(_head_nf(C), C.cond_dim)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, net, ref in (("netG", G, ref_G), ("netD", D, ref_D), ("netC", C, ref_C)):
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        hint = f" — {type(net).__name__} does not have the official DF-GAN {name} layout"
        _check_and_load(name, ref, state, hint, load=False)  # validates keys and shapes only
        out[name] = state
    if include_unused_conv_s:
        dtype = out["netD"]["conv_img.weight"].dtype
        for key, shape in unused_conv_s_shapes(D.nf, D.imsize).items():
            out["netD"][key] = torch.zeros(shape, dtype=dtype)
        out["netD"] = dict(sorted(out["netD"].items(), key=lambda kv: _official_d_order(kv[0])))
    return {"model": out, "epoch": int(epoch)}


def save_official_checkpoint(path, G, D, C, *, epoch: int = 0, include_unused_conv_s: bool = True) -> None:
    """``torch.save(to_official_state_dict(G, D, C, ...), path)``."""
    torch.save(to_official_state_dict(G, D, C, epoch=epoch, include_unused_conv_s=include_unused_conv_s), path)


def _head_nf(C: OneWayHead) -> int:
    return C.joint_conv[0].out_channels // 2


def _official_d_order(key: str) -> tuple:
    """Official NetD key order: conv_img, then per block conv_r.0, conv_r.2, conv_s, gamma."""
    if not key.startswith("DBlocks."):
        return (-1, 0, key)
    _, idx, rest = key.split(".", 2)
    rank = {"conv_r": 0, "conv_s": 1, "gamma": 2}.get(rest.split(".")[0], 3)
    return (int(idx), rank, rest)


# ---- DAMSM text encoder -----------------------------------------------------------------------------------
def load_text_encoder(path, n_words: int | None = None, *, map_location="cpu") -> DAMSMTextEncoder:
    """Load a DAMSM ``text_encoder*.pth`` (AttnGAN ``RNN_ENCODER`` state dict) into ``DAMSMTextEncoder``.

    Keys: ``encoder.weight`` (n_words, 300) and ``rnn.{weight_ih,weight_hh,bias_ih,bias_hh}_l0[_reverse]``
    (one bidirectional LSTM layer, 128 per direction); a ``module.`` prefix is stripped. ``n_words`` is taken
    from ``encoder.weight`` when None, else checked against it. The embedding and hidden sizes are read from
    the file. Returns the encoder in eval mode with ``requires_grad`` False; call it as
    ``encoder(captions, lengths) -> (words (B, 256, T), sentence (B, 256))``.
    """
    try:
        state = read_damsm_state(path)
    except TextEncoderFileError as e:
        raise CheckpointError(f"text_encoder: {e}; model expects encoder.weight (n_words, 300) and "
                              "rnn.weight_hh_l0 (512, 128)") from None
    file_words, ninput, nhidden = damsm_sizes(state)
    if n_words is not None and int(n_words) != file_words:
        raise CheckpointError(
            f"text_encoder: encoder.weight: checkpoint has ({file_words}, {ninput}), model expects "
            f"({n_words}, {ninput}) — the vocabulary has {n_words} words but the encoder was trained with "
            f"{file_words}; captions must be encoded with the vocabulary the encoder was trained with"
        )
    enc = DAMSMTextEncoder(file_words, ninput=ninput, nhidden=nhidden)
    hint = f" — the model was built with n_words={file_words}, ninput={ninput}, nhidden={nhidden}"
    _check_and_load("text_encoder", enc, state, hint)
    enc.eval()
    enc.requires_grad_(False)
    return enc
