"""``build_report``: a study's tables, figures, runs and provenance, written to ``reports/<study>/``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dfgan.metrics.names import FALLBACK_METRICS, choose_metric, is_memorisation, quality_columns, split_of
from dfgan.reports import figures as figs
from dfgan.reports.benchmarks import choose_bench_file, load_records, origin_note, record_origin, throughput_for_rows
from dfgan.reports.claims import claims_report
from dfgan.reports.collect import NoRunsError, StudyData, collect, metric_history
from dfgan.reports.export import write_cells
from dfgan.reports.provenance import provenance, provenance_markdown
from dfgan.reports.reruns import earlier_exports, table_reruns
from dfgan.reports.stats import factorial_effects, summarise
from dfgan.reports.tables import (
    MEMORISATION_FLAG,
    Table,
    search_roles,
    table_differences,
    table_effects,
    table_memorisation,
    table_published,
    table_retrained,
    table_search,
    table_variants,
    to_latex,
    to_markdown,
)
from dfgan.spec import SpecError
from dfgan.studies.definition import load_study_definition, pool_members, study_path
from dfgan.studies.search import split_name
from dfgan.tracking import git_commit, resolve_uri

MAX_DIFF_METRICS = 3  # quality metrics given a difference column in the Table 2/3 style tables

@dataclass
class Report:
    folder: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=dict)
    metric: str | None = None


def _definition_for(data: StudyData):
    """The study file when it describes these runs (same kind), else None."""
    kinds = data.tag("study_kind").dropna()
    kind = kinds.mode().iloc[0] if len(kinds) else "grid"
    if study_path(data.study).is_file():
        try:
            d = load_study_definition(data.study)
        except SpecError:
            return kind, None
        if d.kind == kind:
            return kind, d
    return kind, None


def _row_order(data: StudyData, definition) -> list[str]:
    present = data.variants
    order: list[str] = []
    if definition is not None:
        order = [c.label for c in definition.cells()]
    elif not data.invocations.empty and "tags.cells" in data.invocations:
        inv = data.invocations.sort_values("start_time")["tags.cells"].dropna()
        if len(inv):
            order = inv.iloc[-1].split(",")
    order = [o for o in order if o in present]
    return order + sorted(v for v in present if v not in order)


def build_report(study: str, *, tracking_uri: str | None = None, out_dir: str | Path = "reports",
                 metric: str | None = None, reference: str | None = None, overrides_set: str | None = None,
                 benchmarks: str | None = None, n_boot: int = 10000) -> Report:
    uri = resolve_uri(tracking_uri, "runs")
    data = collect(study, uri, overrides_set)
    kind, definition = _definition_for(data)
    order = _row_order(data, definition)
    folder = Path(out_dir) / study
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    rep = Report(folder, notes=list(data.notes))

    available = data.metric_names()
    preferred = metric or (definition.metric if definition else None)
    if preferred is None and kind == "search" and "tags.metric" in data.invocations:
        searched = data.invocations.sort_values("start_time")["tags.metric"].dropna()
        preferred = searched.iloc[-1] if len(searched) else None  # the search's own objective
    primary, why = choose_metric(available, preferred)
    if primary is None:
        raise NoRunsError(f"the runs of '{study}' logged no usable metric; logged: {available}")
    rep.metric = primary
    quality = quality_columns(available)
    metric_note = f"{primary} ({why})"
    table1_metrics = quality or [m for m in FALLBACK_METRICS if m in available]
    diff_metrics = ([primary] + [q for q in quality if q != primary])[:MAX_DIFF_METRICS] if quality else [primary]
    if not quality:
        rep.notes.append(f"no quality metric was logged by these runs; tables show the final {primary}, "
                         "which does not measure image quality")

    ref = reference or (definition.reference_label() if definition else None)
    if ref is None and kind not in ("factorial", "search"):
        ref = "full" if "full" in order else (order[0] if kind == "grid" else None)
    if ref is not None and ref not in order:
        rep.notes.append(f"reference '{ref}' has no finished runs: no differences shown")
        ref = None

    # throughput, at the study's size
    pool = pool_members(definition.name)[1:] if definition is not None and definition.cell_pool else []
    records, bench_file = load_records(choose_bench_file(benchmarks, folder, [folder.parent / n for n in pool]))
    bench_origin = record_origin(bench_file)
    prov = provenance(data, git_commit(), bench_origin)
    bench_note = origin_note(bench_origin, prov["run_code_commits"])
    imsize = pd.to_numeric(data.cells.get("params.data.imsize"), errors="coerce").dropna()
    nf = pd.to_numeric(data.cells.get("params.model.nf"), errors="coerce").dropna()
    imsize_v = int(imsize.iloc[0]) if len(imsize) else None
    nf_v = int(nf.iloc[0]) if len(nf) else None
    gens = {v: {"backbone": data.cells.loc[data.cells["variant"] == v, "tags.backbone"].iloc[0]
                if "tags.backbone" in data.cells else None,
                "fusion": data.cells.loc[data.cells["variant"] == v, "tags.fusion"].iloc[0]
                if "tags.fusion" in data.cells else None} for v in order}
    # the precision the cells ran in: the resolved one (tag; "auto" resolves per machine), else the spec's
    precision = data.cells.get("tags.speed_precision", data.cells.get("params.train.precision"))
    dtype = "bfloat16" if precision is not None and (precision == "bf16").all() else "float32"
    speed = throughput_for_rows(records, gens, imsize_v, nf_v, dtype)
    if not bench_file:
        speed_note = ("Sampling throughput: omitted, no benchmark record (reports/<study>/benchmarks.json or "
                      "reports/benchmarks.json; `nox -s benchmark` writes it).")
    elif not speed:
        speed_note = (f"Sampling throughput: omitted, {bench_file} has no sampling record at {imsize_v} px, "
                      f"nf={nf_v} for these generators.")
    else:
        speed_note = (f"Sampling throughput from {bench_file}: generator forward passes of the same backbone and "
                      f"fusion at {imsize_v} px, nf={nf_v}, in {dtype} (the runs' precision) where a record has it, "
                      "else another (the fastest record; device, dtype and batch "
                      "beside each number; other fusion settings, e.g. attention resolutions, may differ); measured "
                      "by the benchmarks, not in these runs. " + bench_note)

    tables: list[Table] = []
    if kind == "search":
        tables.append(table_search(data.cells, primary))
        retrained = search_roles(data.cells)[1]
        if len(retrained):
            tables.append(table_retrained(retrained, split_name(primary, "test")))
    else:
        tables.append(table_variants(data.cells, order, table1_metrics,
                                     f"final values of {', '.join(table1_metrics)}", speed, speed_note))
        if kind in ("cumulative", "grid") and ref and len(order) > 1:
            title = ("Table 2 style: cumulative component table" if kind == "cumulative"
                     else f"Differences to {ref}")
            tables.append(table_differences(data.cells, order, diff_metrics, ref, metric_note,
                                            key="table2_components" if kind == "cumulative" else "table2_differences",
                                            title=title, n_boot=n_boot, previous=kind == "cumulative"))
        if kind == "fusion" and ref and len(order) > 1:
            extra = {}
            for v in order:
                sub = data.cells[data.cells["variant"] == v]
                name = sub["tags.fusion"].iloc[0] if "tags.fusion" in sub else "?"
                depth = sub["params.model.fusion.depth"].iloc[0] if "params.model.fusion.depth" in sub else ""
                extra[v] = {"fusion": f"{name} (depth {depth})" if name in ("dfblock", "dfblock_deep", "cbn") else name}
            tables.append(table_differences(data.cells, order, diff_metrics, ref, metric_note,
                                            key="table3_fusion", title="Table 3 style: fusion blocks",
                                            n_boot=n_boot, extra=extra))
        if kind == "factorial":
            axes = _factorial_axes(data, definition)
            if axes:
                eff = factorial_effects(data.cells, f"metrics.{primary}", axes)
                tables.append(table_effects(eff, primary, metric_note))
                rep.files.append(figs.effects(eff.table, primary, folder / "figures" / "factorial_effects.png"))
            else:
                rep.notes.append("factorial effects need two levels per axis in the runs' factor.* tags: skipped")
        for m in [m for m in available if is_memorisation(m) and split_of(m) == "test"]:
            memo = table_memorisation(data.cells, order, m)
            tables.append(memo)
            flagged = [r["variant"] for _, r in memo.frame.iterrows() if r["reading"] == MEMORISATION_FLAG]
            if flagged:
                rep.notes.append(f"memorisation check {m} flagged {', '.join(flagged)}: generated images sit nearer "
                                 f"training images than unseen real images (table {memo.key})")
        if definition is not None and definition.claims:  # the study file's claims: verdicts, cost, budgets
            part = claims_report(data, definition, primary, folder, bench_file, dtype, bench_note)
            tables, rep.files, rep.notes = tables + part.tables, rep.files + part.files, rep.notes + part.notes
        for export in earlier_exports(folder):  # superseded cells kept beside the report: next to their reruns
            tables += filter(None, [table_reruns(export, data.cells, table1_metrics)])
        tables.append(table_published())
    for t in tables:
        rep.tables[t.key] = t
        for ext, render in (("md", to_markdown), ("tex", to_latex)):
            path = folder / f"{t.key}.{ext}"
            path.write_text(render(t))
            rep.files.append(path)

    # figures
    if kind != "search":
        hist_metric = primary
        hist = metric_history(data, [primary])
        if hist.groupby("run_id")["step"].nunique().max() < 2 if len(hist) else True:
            hist_metric = "loss_g"
            hist = metric_history(data, ["loss_g"])
            if primary != "loss_g":
                rep.notes.append(f"{primary} has no periodic values: the curves figure shows loss_g")
        if len(hist):
            rep.files.append(figs.curves(hist, hist_metric, order, folder / "figures" / f"curves_{hist_metric}.png"))
        rep.files.append(figs.final_points(data.cells, primary, order, folder / "figures" / f"final_{primary}.png"))
        summ = summarise(data.cells, f"metrics.{primary}", order=order).reset_index()
        summ["nop"] = [pd.to_numeric(data.cells.loc[data.cells["variant"] == v, "tags.nop_trainable"],
                                     errors="coerce").max() if "tags.nop_trainable" in data.cells else float("nan")
                       for v in summ["variant"]]
        summ["images_per_sec"] = [speed.get(v, {}).get("images_per_sec") for v in summ["variant"]]
        rep.files.append(figs.tradeoff(summ, primary, folder / "figures" / "quality_nop_speed.png"))

    # runs, provenance, README
    keep = ["run_id", "variant", "seed", "status", "start_time", "end_time"] + \
        sorted(c for c in data.cells.columns if c.startswith(("metrics.", "tags.")))  # same order every export
    runs_csv = folder / "runs.csv"
    data.cells[[c for c in keep if c in data.cells]].to_csv(runs_csv, index=False)
    cells_jsonl = write_cells(data, folder)  # what `dfgan restore` puts back when the stores are lost
    prov_json = folder / "provenance.json"
    prov_json.write_text(json.dumps(prov, indent=2, default=str))
    readme = folder / "README.md"
    readme.write_text(_readme(study, kind, definition, tables, rep, prov, primary))
    rep.files += [runs_csv, cells_jsonl, prov_json, readme]
    return rep


def _factorial_axes(data: StudyData, definition) -> dict[str, list[str]]:
    if definition is not None and definition.kind == "factorial":
        axes = {a: list(levels) for a, levels in definition.axes.items()}
    else:
        axes = {c[len("tags.factor."):]: sorted(data.cells[c].dropna().unique())
                for c in data.cells.columns if c.startswith("tags.factor.")}
    return {a: lv for a, lv in axes.items() if len(lv) == 2 and f"tags.factor.{a}" in data.cells}


def _readme(study, kind, definition, tables, rep: Report, prov, primary) -> str:
    lines = [f"# Study `{study}`", ""]
    if definition is not None and definition.description:
        lines += [definition.description, ""]
    lines += [f"Kind: {kind}. Primary metric: `{primary}`. Generated by `dfgan report --study {study}` from MLflow "
              f"(`{prov['mlflow']['tracking_uri']}`).", ""]
    if rep.notes:
        lines += ["Notes:", *[f"- {n}" for n in rep.notes], ""]
    for t in tables:
        lines += [to_markdown(t), f"(also as [{t.key}.md]({t.key}.md) and LaTeX [{t.key}.tex]({t.key}.tex))", ""]
    pngs = [p for p in rep.files if p.suffix == ".png"]
    if pngs:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in pngs]
        lines.append("")
    lines.append(provenance_markdown(prov))
    return "\n".join(lines)
