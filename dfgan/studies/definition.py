"""Study definitions: which cells a study runs, read from ``ablations/studies/<name>.yaml``.

A *cell* is one training run of a study: a row label (a variant, or one crossing of a factorial design), the
variant file its spec starts from, cell-specific overrides, and a seed. Every cell of one invocation shares the
same common overrides (the study file's, then the command line's), so all rows stand on one footing; the seed
only sets ``train.seed``. The resolved spec of a cell, and so its hash, covers all of that.

Kinds of study (they differ only in which tables the report makes):
- ``grid``: any list of variants (``dfgan ablate --variants a,b``);
- ``cumulative``: the paper's component table (Table 2): each row adds one DF-GAN component to the previous;
- ``fusion``: fusion variants (the paper's Table 3 style);
- ``factorial``: named axes, each with two or more levels given as overrides of a base variant; the cells are
  all crossings (e.g. 2^4 = 16), so main effects and interactions can be estimated.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dfgan.spec import Spec, SpecError, flatten, format_validation_error, from_dict
from dfgan.variants import ABLATIONS_DIR, apply_overrides, read_yaml, variant_dict, variant_path

STUDIES_DIR = ABLATIONS_DIR / "studies"
DEFAULT_STUDY = "claims"  # what `dfgan ablate` runs with no variant: the paper's four claims, 5 seeds each
STUDY_SUBDIR = "studies"  # cell run folders: <train.out_dir>/studies/<study or cell pool>/<label>-<spec hash>


class Claim(BaseModel):
    """One claim a study tests: the row with the paper's choice beats the row without it (``paper`` - ``arm``
    on ``metric``, oriented so that a positive difference is in the paper's favour)."""

    model_config = ConfigDict(extra="forbid")

    statement: str  # the claim in words, with where the paper makes it
    arm: str  # the row without the paper's choice (a single removal or an alternative)
    paper: str | None = None  # the row with it (default: the study's reference)
    metric: str | None = None  # default: the report's primary metric


class StudyDefinition(BaseModel):
    """The validated content of a study file (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    kind: Literal["grid", "cumulative", "fusion", "factorial"] = "grid"
    variants: list[str] = Field(default_factory=list)
    base: str = "full"  # factorial: the variant every crossing overrides
    # factorial: axis -> level -> overrides ({dotted.key: value}); the first level of each axis is DF-GAN's
    axes: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    seeds: int | list[int] = 1
    overrides: list[str] = Field(default_factory=list)
    reference: str | None = "full"  # the row differences are taken against (Table 2: DF-GAN itself)
    metric: str | None = None  # primary metric of tables and figures (None: the first quality metric logged)
    direction: Literal["maximize", "minimize"] = "maximize"
    # studies of one pool (in one Optuna storage) share cells: a cell whose spec hash another study of the pool
    # has finished is reused (its value, run folder and MLflow run), never retrained (dfgan.studies.pool)
    cell_pool: str | None = None
    claims: dict[str, Claim] = Field(default_factory=dict)  # what the report judges (dfgan.reports.claims)

    @model_validator(mode="after")
    def _check(self) -> StudyDefinition:
        if self.kind == "factorial":
            if not self.axes:
                raise ValueError("a factorial study needs 'axes' (axis -> level -> overrides)")
            for axis, levels in self.axes.items():
                if len(levels) < 2:
                    raise ValueError(f"axes.{axis}: needs at least two levels, got {list(levels)}")
            if self.variants:
                raise ValueError("a factorial study takes 'base' and 'axes', not 'variants'")
        elif not self.variants:
            raise ValueError(f"a '{self.kind}' study needs a non-empty 'variants' list")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants listed twice: {self.variants}")
        labels = self.variants or ["-".join(c) for c in itertools.product(*[list(lv) for lv in self.axes.values()])]
        for key, claim in self.claims.items():
            for row in (claim.arm, claim.paper or self.reference):
                if row not in labels:
                    raise ValueError(f"claims.{key}: row '{row}' is not a cell of this study ({labels})")
        return self

    # ---- cells ------------------------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        """The study's rows, in table order (each is crossed with every seed)."""
        if self.kind != "factorial":
            for v in self.variants:
                variant_path(v)  # clear error listing the known variants
            return [Cell(label=v, variant=v) for v in self.variants]
        variant_path(self.base)
        axes = list(self.axes.items())
        out = []
        for combo in itertools.product(*[list(levels.items()) for _, levels in axes]):
            overrides: list[str] = []
            for _, (_, over) in zip(axes, combo, strict=True):
                overrides += [f"{k}={json.dumps(v)}" for k, v in flatten_overrides(over).items()]
            label = "-".join(level for level, _ in combo)
            factors = tuple((axis, level) for (axis, _), (level, _) in zip(axes, combo, strict=True))
            out.append(Cell(label=label, variant=self.base, overrides=tuple(overrides), factors=factors))
        return out

    def reference_label(self) -> str | None:
        labels = [c.label for c in self.cells()]
        if self.kind == "factorial":  # DF-GAN = the first level of every axis
            return labels[0]
        return self.reference if self.reference in labels else None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Cell:
    """One row of a study: ``label`` names it in tables, in MLflow (tag ``variant``) and in its run folder."""

    label: str
    variant: str
    overrides: tuple[str, ...] = ()
    factors: tuple[tuple[str, str], ...] = field(default=())


def flatten_overrides(over: dict[str, Any]) -> dict[str, Any]:
    """``{model.fusion: {name: x}}`` and ``{model.fusion.name: x}`` both become ``{'model.fusion.name': x}``."""
    out: dict[str, Any] = {}
    for k, v in over.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in flatten(v).items()})
        else:
            out[k] = v
    return out


def study_path(name: str) -> Path:
    return STUDIES_DIR / f"{name}.yaml"


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def pool_members(name: str) -> list[str]:
    """The study files that share ``name``'s cells (same ``cell_pool``), ``name`` first; just ``name`` without a
    pool."""
    pool = load_study_definition(name).cell_pool
    if not pool:
        return [name]
    return [name] + [n for n in study_names() if n != name and load_study_definition(n).cell_pool == pool]


def load_study_definition(name_or_path: str | Path) -> StudyDefinition:
    """Read a study file: a name under ``ablations/studies`` or a path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = study_path(str(name_or_path))
    if not path.is_file():
        raise SpecError(f"no study file '{name_or_path}'; defined in {STUDIES_DIR}: {', '.join(study_names())}")
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    try:
        return StudyDefinition.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{path}: " + format_validation_error(e).replace("invalid spec", "invalid study")) from None


def adhoc_definition(name: str, variants: list[str], seeds: int | list[int]) -> StudyDefinition:
    """A study given on the command line (``--variants a,b``): a plain grid, differences against ``full``."""
    return StudyDefinition(name=name, kind="grid", variants=variants, seeds=seeds,
                           reference="full" if "full" in variants else variants[0])


def resolve_seeds(seeds: int | list[int], base_seed: int) -> list[int]:
    """``N`` -> N consecutive seeds starting at the spec's own ``train.seed`` (DF-GAN: 100); a list is kept."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise SpecError(f"seeds: need at least 1, got {seeds}")
        return [base_seed + i for i in range(seeds)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SpecError(f"seeds: need distinct integers, got {seeds}")
    return list(seeds)


def parse_seeds(text: str) -> int | list[int]:
    """Command-line ``--seeds``: ``3`` (three seeds from the spec's) or ``100,101,7`` (exactly these)."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        return int(text)
    except ValueError:
        raise SpecError(f"--seeds: expected a count (3) or a comma list (100,101), got '{text}'") from None


def cell_spec(cell: Cell, seed: int, study: str, common_overrides: list[str], base_out_dir: str | Path,
              folder: str | None = None) -> Spec:
    """The resolved spec of one cell: variant, common overrides, cell overrides, then seed and bookkeeping
    (schema-checked; ``dfgan.studies.runner.plan_study`` checks it against the registries). Its run folder is
    under ``folder`` (a cell pool's name) or the study's; neither is part of the spec hash."""
    d = variant_dict(cell.variant)
    d = apply_overrides(d, [*common_overrides, *cell.overrides])
    d["name"] = cell.label
    d.setdefault("train", {})["seed"] = seed
    d["train"]["out_dir"] = str(Path(base_out_dir) / STUDY_SUBDIR / (folder or study))
    d.setdefault("tracking", {})["experiment"] = study
    d["tracking"]["enabled"] = True
    try:
        return from_dict(d)
    except SpecError as e:
        raise SpecError(f"study '{study}', cell '{cell.label}' (seed {seed}): {e}") from None


def base_spec(variant: str, common_overrides: list[str]) -> Spec:
    """The spec before any cell-specific change: gives the seed base and the default output folder."""
    try:
        return from_dict(apply_overrides(variant_dict(variant), common_overrides))
    except SpecError as e:
        raise SpecError(f"variant '{variant}' with the study's common overrides: {e}") from None


def grid_hash(entries: list[tuple[str, int, str]]) -> str:
    """Identity of one invocation's grid: its cells and their spec hashes (changes when any spec changes)."""
    blob = json.dumps(sorted(entries), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]

