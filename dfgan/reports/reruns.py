"""Cells trained twice: a study's earlier export of cells it superseded, beside the cells that replaced them.

A cell is superseded when it has to be trained again under the same spec hash, e.g. on another footing (the
claims study's fp32 cells, trained again in bf16 once the reports paired only cells of one precision:
``dfgan.reports.stats.one_footing``). Its earlier export is kept in a sub-folder of the study's report folder,
``reports/<study>/<name>/cells.jsonl`` (the format ``dfgan report`` writes and ``dfgan restore`` reads). Once its
rerun has finished, each (variant, seed) is a pair: the same spec, commit, data order and noise, trained once per
footing. Their difference is what the footing changed plus the divergence any change of numerics causes in GAN
training; the mean over the pairs, with its paired t interval, estimates a systematic change, and its MDE says
how large a change these pairs could have missed.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dfgan.metrics.names import arrow
from dfgan.reports.stats import FOOTING, compare, holm_adjust
from dfgan.reports.tables import Table, fmt, fmt_diff, fmt_test
from dfgan.studies.restore import CELLS_FILE, read_export


def earlier_exports(folder: Path) -> list[Path]:
    """The superseded cells kept under a study's report folder: ``<folder>/<name>/cells.jsonl``."""
    return sorted(folder.glob(f"*/{CELLS_FILE}"))


def table_reruns(export: Path, cells: pd.DataFrame, metrics: list[str]) -> Table | None:
    """Each superseded cell beside its rerun (same variant and seed) per metric, and the mean difference over the
    pairs; None when the export holds no cell."""
    earlier = {(c.label, c.seed): c for c in read_export(export)}
    now = {(str(r["variant"]), int(r["seed"])): r for _, r in cells.iterrows()}
    if not earlier:
        return None
    foot_tag = FOOTING[len("tags."):]
    rows, pairs, n_pairs = [], {m: ({}, {}) for m in metrics}, 0
    for i, key in enumerate(sorted(earlier)):
        old, new = earlier[key], now.get(key)
        n_pairs += new is not None
        row = {"variant": key[0], "seed": key[1], "footing (earlier → rerun)":
               f"{old.tags.get(foot_tag, '?')} → " + ("not trained again yet" if new is None else
                                                      str(new.get(FOOTING, "?")))}
        for m in metrics:
            a = old.metrics.get(m)
            b = None if new is None else pd.to_numeric(new.get(f"metrics.{m}"), errors="coerce")
            if b is not None and math.isfinite(b) and a is not None:
                pairs[m][0][i], pairs[m][1][i] = float(b), a
            row[f"{m}{arrow(m)} earlier → rerun"] = f"{fmt(a)} → {'–' if b is None else fmt(float(b))}"
        rows.append(row)
    if n_pairs:
        summary = {"variant": f"{n_pairs} pair(s)", "seed": "", "footing (earlier → rerun)": ""}
        diffs = {m: compare(*pairs[m]) for m in metrics if pairs[m][0]}
        holm_adjust(list(diffs.values()))  # one family: the metrics of this table
        for m in metrics:
            d = diffs.get(m)
            summary[f"{m}{arrow(m)} earlier → rerun"] = "–" if d is None else f"Δ {fmt_diff(d)}; {fmt_test(d)}"
        rows.append(summary)
    name = export.parent.name
    notes = [f"The cells of {name}/{CELLS_FILE} (superseded: the study trained them again under the same spec "
             "hash, commit, data order and noise) "
             "beside their reruns. Δ = rerun - earlier over the pairs: paired 95% Student-t interval, exact "
             "sign-flip p (Holm over the table's metrics), MDE at 80% power; a pair differs by what changed (the "
             "footing column) and by the "
             "divergence any change of numerics causes in GAN training, so one pair says little, their mean more. "
             "Pairs of different rows are pooled: a change that depends on the row is averaged over."]
    return Table(f"reruns_{name}", f"Superseded cells beside their reruns ({name})", pd.DataFrame(rows), notes)
