"""Compatibility check of a validated spec against the registries, run before any work.

Each component is looked up in its registry (an unknown name lists the registered ones) and what a component
requires (e.g. word embeddings) is checked against what the others provide. Errors name the spec field.
"""

from __future__ import annotations

from dfgan.registry import (
    BACKBONES,
    DATASETS,
    DISCRIMINATORS,
    FUSIONS,
    HEADS,
    REGULARISERS,
    TEXT_ENCODERS,
    Registry,
    RegistryError,
)

NEEDS = {"words": "word embeddings"}  # what a requires/provides token means, for messages


def _lookup(errors: list[str], field: str, registry: Registry, name: str):
    try:
        return registry.entry(name)
    except RegistryError:
        errors.append(f"{field}: unknown {registry.axis} '{name}'; allowed: {', '.join(registry.names())}")
        return None


def check_compatibility(spec) -> None:
    """Raise ``SpecError`` listing every incompatible or unknown choice in ``spec``."""
    import dfgan.components  # noqa: F401
    from dfgan.spec import SpecError

    m, errors = spec.model, []
    entries = {
        "model.backbone": _lookup(errors, "model.backbone", BACKBONES, m.backbone),
        "model.discriminator": _lookup(errors, "model.discriminator", DISCRIMINATORS, m.discriminator),
        "model.head": _lookup(errors, "model.head", HEADS, m.head),
        "model.fusion.name": _lookup(errors, "model.fusion.name", FUSIONS, m.fusion.name),
        "model.regulariser.name": _lookup(errors, "model.regulariser.name", REGULARISERS, m.regulariser.name),
        "model.text_encoder.name": _lookup(errors, "model.text_encoder.name", TEXT_ENCODERS, m.text_encoder.name),
        "data.name": _lookup(errors, "data.name", DATASETS, spec.data.name),
    }
    if m.fusion.name == "cross_attention":
        entries["model.fusion.fallback"] = _lookup(errors, "model.fusion.fallback", FUSIONS, m.fusion.fallback)
    provided: set[str] = set()
    for e in entries.values():
        if e is not None:
            provided |= e.provides
    for field, e in entries.items():
        if e is None:
            continue
        for need in sorted(e.requires - provided):
            givers = [n for n, r in _providers(need)]
            chosen = ", ".join(f"{f}='{x.name}'" for f, x in entries.items() if x is not None and f != field
                               and _axis_could_provide(x, need))
            errors.append(
                f"{field}: '{e.name}' requires {NEEDS.get(need, need)}, which no chosen component provides"
                + (f" (chosen: {chosen})" if chosen else "")
                + (f"; components that provide it: {', '.join(givers)}" if givers else "")
            )
    if spec.eval.metrics:
        from dfgan.metrics.registry import metric

        for i, name in enumerate(spec.eval.metrics):
            try:
                d = metric(name)
            except RegistryError as e:
                errors.append(f"eval.metrics[{i}]: {e}")
                continue
            if d.builtin_only and spec.data.name != "builtin":
                errors.append(f"eval.metrics[{i}]: '{name}' needs the built-in dataset's ground-truth attributes "
                              f"(data.name=builtin), and data.name is '{spec.data.name}': set eval.metrics=[] or "
                              "metrics for real data (dfgan eval --list)")
    samplers = {"train.sampler": spec.train.sampler,
                "model.text_encoder.pretrain_sampler": spec.model.text_encoder.pretrain_sampler}
    for field, sampler in samplers.items():
        if sampler == "attribute_pairs" and spec.data.name != "builtin":
            errors.append(f"{field}: 'attribute_pairs' needs the built-in dataset's ground-truth attributes "
                          f"(data.name=builtin), and data.name is '{spec.data.name}': use random or auto")
    if spec.train.sampler == "attribute_pairs" and spec.data.name == "builtin":
        from dfgan.data.builtin import ALWAYS_NAMED

        for i, a in enumerate(spec.train.pair_attributes):
            if a not in ALWAYS_NAMED:
                errors.append(f"train.pair_attributes[{i}]: '{a}' is not an attribute every caption names; "
                              f"allowed: {', '.join(ALWAYS_NAMED)}")
    if errors:
        raise SpecError("incompatible spec:\n  " + "\n  ".join(errors))


def _axis_could_provide(entry, need: str) -> bool:
    """Whether some component of ``entry``'s axis provides ``need`` (so that choice is worth naming)."""
    from dfgan.registry import ALL

    for reg in ALL.values():
        if entry.name in reg and reg.entry(entry.name) is entry:
            return any(need in reg.entry(n).provides for n in reg.names())
    return False


def _providers(need: str):
    from dfgan.registry import ALL

    for reg in ALL.values():
        for name in reg.names():
            if need in reg.entry(name).provides:
                yield f"{reg.axis} '{name}'", reg
