"""Spec documents on disk: the base spec and the variant files under ``ablations/``, merged (a variant may
``extends`` another), dotted ``key.path=value`` overrides applied, and the result validated into a ``Spec``
(``dfgan.spec`` owns the schema; ``dfgan.experiment.resolve_spec`` also checks it against the registries)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from dfgan.spec import NAME_PATTERN, REPO_ROOT, Spec, SpecError, from_dict

ABLATIONS_DIR = REPO_ROOT / "ablations"
BASE_SPEC = ABLATIONS_DIR / "base.yaml"
VARIANTS_DIR = ABLATIONS_DIR / "variants"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``model.nf=16`` -> (['model', 'nf'], 16); the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise SpecError(f"override '{text}' is not of the form key.path=value")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise SpecError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise SpecError(f"override '{text}': value is not valid YAML ({e})") from None
    return path, value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    d = copy.deepcopy(d)
    for text in overrides:
        path, value = parse_override(text)
        node = d
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise SpecError(f"override '{text}': '{part}' is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return d


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a mapping, got {type(data).__name__}")
    return data


def variant_names() -> list[str]:
    return sorted(p.stem for p in VARIANTS_DIR.glob("*.yaml"))


def variant_path(name: str) -> Path:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SpecError(f"variant {name!r} is not a variant name (letters, digits, _ . + = , -; no path "
                        f"separators); defined in {VARIANTS_DIR}: {', '.join(variant_names())}")
    path = VARIANTS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SpecError(f"unknown variant '{name}'; defined in {VARIANTS_DIR}: {', '.join(variant_names())}")
    return path


def variant_dict(name: str) -> dict[str, Any]:
    """The variant's overrides merged onto the base spec (a variant may name another in ``extends``)."""
    over = read_yaml(variant_path(name))
    parent = over.pop("extends", None)
    base = variant_dict(parent) if parent else read_yaml(BASE_SPEC)
    merged = deep_merge(base, over)
    merged["name"] = name
    return merged


def load_spec(
    variant: str | None = None,
    spec_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Spec:
    """Resolve a spec: a spec file, or a named variant (default ``full``), then dotted overrides; schema-checked
    only (``dfgan.experiment.resolve_spec`` also checks it against the registries)."""
    if variant and spec_file:
        raise SpecError("give either a variant or a spec file, not both")
    if spec_file:
        d = read_yaml(Path(spec_file))
        parent = d.pop("extends", None)
        if parent:
            d = deep_merge(variant_dict(parent), d)
    else:
        d = variant_dict(variant or "full")
    d = apply_overrides(d, overrides or [])
    return from_dict(d)
