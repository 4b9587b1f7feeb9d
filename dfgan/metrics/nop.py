"""Number of parameters (NoP), with the counting rule stated.

DF-GAN's README reports a NoP of "19M" for the paper model and "18M" for the released one without saying what
it counts. Measured on the official modules (``code/models/GAN.py``): G + D + C is 16.66M at nf=32 / 256 px, and
adding the frozen birds DAMSM text encoder (2.08M) gives 18.73M. We *infer* that the README's figure counts the
text encoder too; that is the ``paper`` rule below. The ``trainable`` rule counts only what the GAN's optimisers
update (G + D + C).

Our discriminator trunk does not build the 1x1 ``conv_s`` that the official ``D_Block`` instantiates but never
applies where fin == fout; ``nop_report`` gives both our (used) count and the official-instantiation count,
the latter computed from the channel schedule.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from dfgan.nn.channels import discriminator_pairs
from dfgan.nn.discriminators import DFGANDiscriminator

__all__ = [
    "PAPER_RULE",
    "TRAINABLE_RULE",
    "count_parameters",
    "format_nop_report",
    "module_counts",
    "nop_report",
    "unused_official_conv_s",
]

PAPER_RULE = (
    "paper: generator + discriminator trunk(s) + head(s) + text encoder (frozen, pretrained DAMSM). Inferred, "
    "not stated, to be the rule behind DF-GAN README's NoP (19M paper / 18M released): with the official "
    "NetD instantiation and the birds encoder it gives 18.73M at nf=32, 256 px"
)
TRAINABLE_RULE = (
    "trainable: generator + discriminator trunk(s) + head(s), the networks the GAN optimisers update; "
    "the frozen text encoder is excluded"
)
_FUSION_RE = re.compile(r"(^|\.)fuse\d+\.")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (shared parameters once); only ``requires_grad`` ones if asked."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def module_counts(module: nn.Module) -> dict[str, int]:
    """``{'trainable', 'frozen', 'total'}`` parameter counts of one module."""
    total = count_parameters(module)
    trainable = count_parameters(module, trainable_only=True)
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def unused_official_conv_s(nf: int, imsize: int) -> int:
    """Parameters of the 1x1 ``conv_s`` (weight + bias) that official ``NetD`` builds in fin == fout blocks."""
    return sum(fin * fout + fout for fin, fout in discriminator_pairs(nf, imsize) if fin == fout)


def _unused_in(trunk: nn.Module) -> int:
    """Official-only parameters missing from one of our trunks (0 for trunks that are not DF-GAN's)."""
    if not isinstance(trunk, DFGANDiscriminator):
        return 0
    pairs = discriminator_pairs(trunk.nf, trunk.imsize)
    if len(pairs) != len(trunk.DBlocks):
        raise ValueError(f"discriminator has {len(trunk.DBlocks)} blocks, the schedule {len(pairs)}")
    return sum(
        fin * fout + fout
        for (fin, fout), block in zip(pairs, trunk.DBlocks, strict=True)
        if fin == fout and getattr(block, "conv_s", None) is None
    )


def nop_report(gan: nn.Module, text_encoder: nn.Module | None = None) -> dict[str, Any]:
    """Parameter counts of a ``GAN`` (and its text encoder), per module and under two counting rules.

    Returns ``{'modules': {name: counts}, 'totals': {'paper': ..., 'trainable': ...}}``. Each module entry has
    ``trainable``/``frozen``/``total``; the generator adds ``fusion`` (parameters inside its fusion blocks);
    each discriminator trunk adds ``official_instantiation`` (``total`` plus the unused ``conv_s`` that the
    official code builds) and ``unused_official``. Each total has ``count`` (our modules),
    ``official_instantiation`` (with the official discriminator count) and ``rule`` (what is counted).
    Modules are named ``generator``, ``discriminators.S``, ``heads.S`` (S = generator stage) and ``text_encoder``.
    """
    modules: dict[str, dict[str, int]] = {}
    g = module_counts(gan.generator)
    g["fusion"] = sum(p.numel() for n, p in gan.generator.named_parameters() if _FUSION_RE.search(n))
    modules["generator"] = g
    for s, trunk in enumerate(gan.discriminators):
        c = module_counts(trunk)
        c["unused_official"] = _unused_in(trunk)
        c["official_instantiation"] = c["total"] + c["unused_official"]
        modules[f"discriminators.{s}"] = c
    for s, head in enumerate(gan.heads):
        modules[f"heads.{s}"] = module_counts(head)

    gdc = sum(c["total"] for c in modules.values())
    unused = sum(c.get("unused_official", 0) for c in modules.values())
    te = 0
    paper_rule = PAPER_RULE
    if text_encoder is not None:
        modules["text_encoder"] = module_counts(text_encoder)
        te = modules["text_encoder"]["total"]
    else:
        paper_rule += " (no text encoder was given, so it is missing from this count)"
    totals = {
        "paper": {"count": gdc + te, "official_instantiation": gdc + unused + te, "rule": paper_rule},
        "trainable": {"count": gdc, "official_instantiation": gdc + unused, "rule": TRAINABLE_RULE},
    }
    return {"modules": modules, "totals": totals}


def format_nop_report(report: dict[str, Any]) -> str:
    """A plain-text table of ``nop_report``'s result."""
    lines = [f"{'module':<20}{'total':>14}{'trainable':>14}{'frozen':>14}{'official':>14}"]
    for name, c in report["modules"].items():
        official = c.get("official_instantiation", c["total"])
        lines.append(f"{name:<20}{c['total']:>14,}{c['trainable']:>14,}{c['frozen']:>14,}{official:>14,}")
    for name, t in report["totals"].items():
        lines.append(
            f"{'total ' + name:<20}{t['count']:>14,} ({t['count'] / 1e6:.2f}M; official instantiation "
            f"{t['official_instantiation']:,} = {t['official_instantiation'] / 1e6:.2f}M)"
        )
        lines.append(f"    rule: {t['rule']}")
    return "\n".join(lines)
