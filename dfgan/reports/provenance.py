"""Provenance of a report: code commit(s) (as each run imported them, with the sha256 of any uncommitted diff),
spec hashes and the resolved specs, dataset hash(es) and the built-in data's version, the text encoders'
weights, metric protocol, seeds, hardware (threads as each run had them), the commands that ran the study,
where its runs live, and the throughput record the tables read (its commit and machine)."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import pandas as pd
import yaml

from dfgan.reports.collect import StudyData


def _distinct(series: pd.Series | None) -> list[str]:
    if series is None:
        return []
    return sorted({str(v) for v in series.dropna() if str(v) not in ("", "None", "nan")})


def _col(df: pd.DataFrame, name: str) -> pd.Series | None:
    return df[name] if name in df.columns else None


def provenance(data: StudyData, report_commit: str, bench_origin: dict | None = None) -> dict[str, Any]:
    c = data.cells
    protocol = {col[len("tags.protocol."):]: _distinct(c[col])
                for col in sorted(c.columns) if col.startswith("tags.protocol.")}  # sorted: same text every export
    inv = data.invocations
    hw_cols = sorted(col for col in inv.columns if col.startswith("tags.hw.")) if not inv.empty else []
    hardware = {col[len("tags.hw."):]: _distinct(data.invocations[col]) for col in hw_cols}
    for key in ("device", "torch", "host", "world_size"):
        vals = _distinct(_col(c, f"tags.{key}"))
        if vals:
            hardware.setdefault(key, vals)
    threads = _distinct(_col(c, "tags.runtime_threads"))  # torch.get_num_threads() inside each run
    if threads:
        hardware.pop("torch_threads", None)  # the invoking process's, not the runs'
        hardware["torch threads (per run)"] = threads
    used_parents = set(_distinct(_col(c, "tags.mlflow.parentRunId")))
    commands = []
    if not data.invocations.empty and "tags.command" in data.invocations:
        inv = data.invocations[data.invocations["run_id"].isin(used_parents)] if used_parents else data.invocations
        commands = _distinct(inv["tags.command"])
    return {
        "study": data.study,
        "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "report_code_commit": report_commit,
        "run_code_commits": _distinct(_col(c, "tags.git_commit")),
        "run_code_diffs_sha256": _distinct(_col(c, "tags.code_diff_sha256")),
        "mlflow": {"tracking_uri": data.uri, "experiment_id": data.experiment_id, "cell_runs": len(c)},
        "common_overrides": data.overrides_set,
        "seeds": sorted({int(s) for s in c["seed"].dropna()}),
        "dataset": {"name": _distinct(_col(c, "tags.dataset")), "hash": _distinct(_col(c, "tags.dataset_hash")),
                    "imsize": _distinct(_col(c, "params.data.imsize")),
                    "builtin_version": _distinct(_col(c, "tags.data_version"))},
        "text_encoder_source": _distinct(_col(c, "tags.text_encoder_source")),
        "text_encoder_sha256": _distinct(_col(c, "tags.text_encoder_sha256")),
        "resolved_spec": resolved_specs(c),
        "metric_protocol": protocol or "no protocol.* tags on the runs (no evaluation metric was logged)",
        "hardware": hardware,
        "commands": commands,
        "optuna_storage": _distinct(_col(c, "tags.optuna_storage")),
        "benchmarks": bench_origin,  # the throughput record the tables read: its file, commit and machine
        "cells": [{"variant": r["variant"], "seed": int(r["seed"]), "spec_hash": r.get("tags.spec_hash"),
                   "run_id": r["run_id"], "trial": r.get("tags.trial")} for _, r in c.iterrows()],
    }


def _value(text):
    """A param as the spec had it: numbers, booleans, null and lists read back, anything else kept as text."""
    if text == "None":  # MLflow keeps params as str(value)
        return None
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(v, dict) else v


def resolved_specs(cells: pd.DataFrame) -> dict[str, Any]:
    """The resolved spec of the cells (their ``params.*``, every spec field as the run had it): ``common`` =
    the fields every cell shares, ``per_variant`` = each row's fields that differ (seeds and names left out)."""
    cols = [col for col in cells.columns if col.startswith("params.")]
    if not cols:
        return {"common": {}, "per_variant": {}}
    varying = {col for col in cols if cells[col].astype(str).nunique(dropna=False) > 1}
    common = {col[len("params."):]: _value(cells[col].iloc[0]) for col in cols
              if col not in varying and pd.notna(cells[col].iloc[0])}
    skip = {"params.name", "params.description", "params.train.seed", "params.train.out_dir",
            "params.tracking.experiment"}
    per = {}
    for v, g in cells.groupby("variant", sort=False):
        per[str(v)] = {col[len("params."):]: _value(g[col].iloc[0]) for col in sorted(varying - skip)
                       if pd.notna(g[col].iloc[0])}
    return {"common": common, "per_variant": per}


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = v
    return out


def provenance_markdown(p: dict[str, Any]) -> str:
    lines = ["## Provenance", ""]
    lines.append(f"- study: `{p['study']}`; generated {p['generated']} by code at commit `{p['report_code_commit']}`")
    lines.append(f"- runs' code commit(s), as each run imported its code: "
                 f"{', '.join(f'`{x}`' for x in p['run_code_commits']) or 'unknown'}")
    if p.get("run_code_diffs_sha256"):
        lines.append("- uncommitted diffs of those runs (artifact `code/<sha256>.diff` of each run): "
                     + ", ".join(f"`{x[:16]}`" for x in p["run_code_diffs_sha256"]))
    m = p["mlflow"]
    lines.append(f"- MLflow: `{m['tracking_uri']}`, experiment id {m['experiment_id']}, {m['cell_runs']} cell runs")
    lines.append(f"- common overrides: `{p['common_overrides'] or '(none)'}`")
    lines.append(f"- seeds: {p['seeds']}")
    d = p["dataset"]
    hashes = ", ".join(f"`{h}`" for h in d["hash"]) or "?"
    names, sizes = ", ".join(d["name"]) or "?", ", ".join(d["imsize"]) or "?"
    version = ", ".join(v for v in d.get("builtin_version", []) if v != "-") or "not recorded"
    lines.append(f"- dataset: {names}; content hash {hashes}; imsize {sizes}"
                 + (f"; built-in data version {version}" if "builtin" in d["name"] else ""))
    if p["text_encoder_source"]:
        lines.append(f"- text encoder: {', '.join(p['text_encoder_source'])}")
    if p.get("text_encoder_sha256"):
        lines.append("- text encoder weights (sha256 of the state dict): "
                     + ", ".join(f"`{x[:16]}`" for x in p["text_encoder_sha256"]))
    proto = p["metric_protocol"]
    if isinstance(proto, dict):
        lines.append("- metric protocol: " + "; ".join(f"{k} = {', '.join(v)}" for k, v in proto.items()))
    else:
        lines.append(f"- metric protocol: {proto}")
    hw = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["hardware"].items())
    lines.append(f"- hardware: {hw or 'unknown'}")
    if p["optuna_storage"]:
        lines.append(f"- Optuna storage: {', '.join(p['optuna_storage'])}")
    for cmd in p["commands"]:
        lines.append(f"- command: `{cmd}`")
    b = p.get("benchmarks")
    if b:
        lines.append(f"- throughput record: `{b['file']}`, measured at commit `{b.get('commit') or 'unknown'}`"
                     + (" with uncommitted changes" if b.get("dirty") else "")
                     + f" on {b.get('cpu') or 'an unrecorded machine'} ({b.get('datetime') or 'time not recorded'})")
    lines += ["", "| variant | seed | spec hash | MLflow run | trial |", "|---|---|---|---|---|"]
    for cell in p["cells"]:
        lines.append(f"| {cell['variant']} | {cell['seed']} | `{cell['spec_hash']}` | `{cell['run_id']}` | "
                     f"{cell['trial']} |")
    spec = p.get("resolved_spec") or {}
    if spec.get("common"):
        lines += ["", "Resolved spec (every field as the runs had it; fields that differ between rows below):", "",
                  "```yaml", yaml.safe_dump(_nest(spec["common"]), sort_keys=True).rstrip(), "```"]
        for v, diff in spec.get("per_variant", {}).items():
            if diff:
                lines.append(f"- {v}: " + "; ".join(f"`{k}={val}`" for k, val in diff.items()))
    return "\n".join(lines) + "\n"
