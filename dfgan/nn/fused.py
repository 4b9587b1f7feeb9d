"""Fused affine modulation: every DFBlock's (gamma, beta) of a generator from one matmul per forward.

DF-GAN's generator conditions each of its DFBlocks with ``depth`` affines, each holding two small MLPs
(``fc_gamma``, ``fc_beta``: Linear(cond, C) -> ReLU -> Linear(C, C); paper Sec. 3.3). At nf=32 / 256 px that
is 144 small matmuls per forward, all on the same condition vector. ``FusedModulator`` computes the same
values with

* one matmul for every first layer: the ``linear1`` weights of all MLPs stacked (``torch.cat``) into one
  (sum C, cond) matrix, so ``relu(cond @ W1.T + b1)`` gives every hidden vector at once;
* one batched matmul (``torch.baddbmm``) per distinct channel width for the second layers, whose weights
  are stacked (``torch.stack``) into (n, C, C): the block-diagonal second layer, grouped by size.

The stacked weights are rebuilt from the modules' own parameters on every call, so the original parameters
stay the single source of truth: optimiser steps, ``load_state_dict`` and ``.to()`` need no syncing, autograd
routes the gradients back through ``cat``/``stack``, and checkpoints keep the official key names (the
modulator is a plain object, not a submodule, so it adds nothing to the state dict).

Usage: ``enable_fused_affine(generator)`` sets ``generator.modulator``; ``OneStageGenerator.forward`` then
passes each ``GBlock`` its precomputed ``[(gamma, beta)]`` lists (``DFBlock.forward(modulation=...)``).
Fusion blocks that are not DFBlocks (e.g. cross-attention) get ``None`` and compute their own condition.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from dfgan.nn.fusion import Affine, DFBlock

__all__ = ["FusedModulator", "enable_fused_affine", "disable_fused_affine", "fusable_blocks"]

FUSES = ("fuse1", "fuse2")  # the two fusion blocks of a GBlock, in forward order


@dataclass(frozen=True)
class _Slot:
    """One MLP (``fc_gamma`` or ``fc_beta``) of one affine: where its output goes and where it is computed."""

    block: int  # GBlock index
    fuse: int  # 0 = fuse1, 1 = fuse2
    affine: int  # affine index inside the DFBlock
    kind: int  # 0 = gamma, 1 = beta
    group: int  # channel-width group
    member: int  # position inside the group


def fusable_blocks(generator: nn.Module) -> list[list[DFBlock | None]]:
    """``[[fuse1, fuse2] per GBlock]`` with each entry a ``DFBlock`` or ``None`` (a fusion it cannot fuse)."""
    blocks = getattr(generator, "GBlocks", None)
    if blocks is None:
        return []
    return [[f if isinstance(f, DFBlock) else None for f in (getattr(b, n, None) for n in FUSES)] for b in blocks]


class FusedModulator:
    """Computes ``[(m1, m2) per GBlock]``, each ``m`` a ``[(gamma, beta) per affine]`` list or ``None``.

    Holds references to the ``Affine`` modules (not copies of their weights); see the module docstring.
    """

    def __init__(self, generator: nn.Module):
        self.layout = fusable_blocks(generator)
        self.affines: list[Affine] = []
        slots: list[tuple[int, int, int, int, nn.Sequential]] = []
        for i, pair in enumerate(self.layout):
            for j, dfb in enumerate(pair):
                if dfb is None:
                    continue
                for k, aff in enumerate(dfb.affines()):
                    self.affines.append(aff)
                    slots.append((i, j, k, 0, aff.fc_gamma))
                    slots.append((i, j, k, 1, aff.fc_beta))
        widths: list[int] = []
        members: dict[int, list[nn.Sequential]] = {}
        self.slots: list[_Slot] = []
        for i, j, k, kind, mlp in slots:
            c = mlp.linear2.out_features
            if c not in members:
                widths.append(c)
                members[c] = []
            self.slots.append(_Slot(i, j, k, kind, widths.index(c), len(members[c])))
            members[c].append(mlp)
        self.widths = widths
        self.groups: list[list[nn.Sequential]] = [members[c] for c in widths]

    @property
    def n_mlps(self) -> int:
        return len(self.slots)

    def __bool__(self) -> bool:
        return bool(self.slots)

    def stacked_first_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum C, cond) weight and (sum C,) bias of every ``linear1``, in group order (built each call)."""
        mlps = [m for g in self.groups for m in g]
        return (torch.cat([m.linear1.weight for m in mlps], 0), torch.cat([m.linear1.bias for m in mlps], 0))

    def __call__(self, cond: torch.Tensor):
        w1, b1 = self.stacked_first_layer()
        hidden = torch.relu(torch.addmm(b1, cond, w1.t()))  # (B, sum C): every first layer in one matmul
        outs, off = [], 0
        for c, mlps in zip(self.widths, self.groups, strict=True):
            n = len(mlps)
            h = hidden[:, off:off + n * c].reshape(cond.size(0), n, c).transpose(0, 1)  # (n, B, C)
            w2 = torch.stack([m.linear2.weight for m in mlps], 0)  # (n, C_out, C_in)
            b2 = torch.stack([m.linear2.bias for m in mlps], 0)  # (n, C)
            outs.append(torch.baddbmm(b2.unsqueeze(1), h, w2.transpose(1, 2)))  # (n, B, C)
            off += n * c
        result = [[None if dfb is None else [[None, None] for _ in range(dfb.depth)] for dfb in pair]
                  for pair in self.layout]
        for s in self.slots:
            result[s.block][s.fuse][s.affine][s.kind] = outs[s.group][s.member]
        return [tuple(None if m is None else [tuple(gb) for gb in m] for m in pair) for pair in result]


def enable_fused_affine(generator: nn.Module, *, warn: bool = True) -> bool:
    """Make ``generator`` compute all its DFBlock modulations with one ``FusedModulator`` per forward.

    Returns True when applied. A backbone that does not accept precomputed modulation (no ``modulator``
    attribute) or has no DFBlock is left unchanged, with a warning naming why (unless ``warn`` is False), and
    False is returned.
    """
    if not hasattr(generator, "modulator"):
        if warn:
            warnings.warn(f"train.fused_affine: {type(generator).__name__} does not accept precomputed modulation "
                          "(no 'modulator' attribute); using its per-affine path", stacklevel=2)
        return False
    mod = FusedModulator(generator)
    if not mod:
        if warn:
            warnings.warn(f"train.fused_affine: {type(generator).__name__} has no DFBlock to fuse; unchanged",
                          stacklevel=2)
        return False
    generator.modulator = mod
    return True


def disable_fused_affine(generator: nn.Module) -> None:
    """Back to the per-affine path."""
    if hasattr(generator, "modulator"):
        generator.modulator = None
