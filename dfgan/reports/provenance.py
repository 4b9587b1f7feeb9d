"""Provenance of a report: code commit(s), spec hashes, dataset hash(es), metric protocol, seeds, hardware,
the commands that ran the study and where its runs live."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import pandas as pd

from dfgan.reports.collect import StudyData


def _distinct(series: pd.Series | None) -> list[str]:
    if series is None:
        return []
    return sorted({str(v) for v in series.dropna() if str(v) not in ("", "None", "nan")})


def _col(df: pd.DataFrame, name: str) -> pd.Series | None:
    return df[name] if name in df.columns else None


def provenance(data: StudyData, report_commit: str) -> dict[str, Any]:
    c = data.cells
    protocol = {col[len("tags.protocol."):]: _distinct(c[col])
                for col in c.columns if col.startswith("tags.protocol.")}
    inv = data.invocations
    hw_cols = [col for col in inv.columns if col.startswith("tags.hw.")] if not inv.empty else []
    hardware = {col[len("tags.hw."):]: _distinct(data.invocations[col]) for col in hw_cols}
    for key in ("device", "torch", "host", "world_size"):
        vals = _distinct(_col(c, f"tags.{key}"))
        if vals:
            hardware.setdefault(key, vals)
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
        "mlflow": {"tracking_uri": data.uri, "experiment_id": data.experiment_id, "cell_runs": len(c)},
        "common_overrides": data.overrides_set,
        "seeds": sorted({int(s) for s in c["seed"].dropna()}),
        "dataset": {"name": _distinct(_col(c, "tags.dataset")), "hash": _distinct(_col(c, "tags.dataset_hash")),
                    "imsize": _distinct(_col(c, "params.data.imsize"))},
        "text_encoder_source": _distinct(_col(c, "tags.text_encoder_source")),
        "metric_protocol": protocol or "no protocol.* tags on the runs (no evaluation metric was logged)",
        "hardware": hardware,
        "commands": commands,
        "optuna_storage": _distinct(_col(c, "tags.optuna_storage")),
        "cells": [{"variant": r["variant"], "seed": int(r["seed"]), "spec_hash": r.get("tags.spec_hash"),
                   "run_id": r["run_id"], "trial": r.get("tags.trial")} for _, r in c.iterrows()],
    }


def provenance_markdown(p: dict[str, Any]) -> str:
    lines = ["## Provenance", ""]
    lines.append(f"- study: `{p['study']}`; generated {p['generated']} by code at commit `{p['report_code_commit']}`")
    lines.append(f"- runs' code commit(s): {', '.join(f'`{x}`' for x in p['run_code_commits']) or 'unknown'}")
    m = p["mlflow"]
    lines.append(f"- MLflow: `{m['tracking_uri']}`, experiment id {m['experiment_id']}, {m['cell_runs']} cell runs")
    lines.append(f"- common overrides: `{p['common_overrides'] or '(none)'}`")
    lines.append(f"- seeds: {p['seeds']}")
    d = p["dataset"]
    hashes = ", ".join(f"`{h}`" for h in d["hash"]) or "?"
    names, sizes = ", ".join(d["name"]) or "?", ", ".join(d["imsize"]) or "?"
    lines.append(f"- dataset: {names}; content hash {hashes}; imsize {sizes}")
    if p["text_encoder_source"]:
        lines.append(f"- text encoder: {', '.join(p['text_encoder_source'])}")
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
    lines += ["", "| variant | seed | spec hash | MLflow run | trial |", "|---|---|---|---|---|"]
    for cell in p["cells"]:
        lines.append(f"| {cell['variant']} | {cell['seed']} | `{cell['spec_hash']}` | `{cell['run_id']}` | "
                     f"{cell['trial']} |")
    return "\n".join(lines) + "\n"
