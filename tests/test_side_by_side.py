"""The default run side by side (benchmarks/default_run_side_by_side.py): the phases read from a commit that
writes profile.json and from one that does not, the ratio and its extrapolation to the full budget, and the
section benchmarks/report.py builds from the JSON files."""

from __future__ import annotations

import json

import pytest

from benchmarks.default_run_side_by_side import phases, section
from benchmarks.report import default_run_section

OLD = {"label": "old", "wall_seconds": 1000.0, "command": ["python", "-m", "dfgan", "train.steps=600"],
       "profile": {"source": "the run's own records", "text_encoder": {"seconds": "300.5"},
                   "steps_per_sec": {"median": 1.25, "n": 60},
                   "evaluation": {"attr_acc": {"setup_seconds": 60.0, "pass_seconds": 5.0, "seconds": 5.0},
                                  "fd_attr": {"setup_seconds": 60.0, "pass_seconds": 5.0, "seconds": 6.0}}}}
NEW = {"label": "new", "wall_seconds": 1100.0, "command": ["python", "-m", "dfgan", "train.steps=600"],
       "profile": {"sections": {"text_encoder": {"seconds": 330.0, "calls": 1},
                                "train.step": {"seconds": 540.0, "calls": 600},
                                "evaluation": {"seconds": 70.0, "calls": 1}}}}
RESULT = {"variant": "full", "mode": "parallel", "threads": 1, "overrides": ["train.steps=600", "train.threads=1"],
          "machine": {"cpu_count": 2, "load_average_before": [2.0, 2, 2], "load_average_after": [4.5, 4, 4]},
          "summary": {"old": {"commit": "a" * 40}, "new": {"commit": "b" * 40}}, "jobs": [OLD, NEW]}


def test_phases_from_either_kind_of_commit():
    old, new = phases(OLD), phases(NEW)
    assert old == {"wall": 1000.0, "text_encoder": 300.5, "step": 0.8, "steps": 600, "evaluation": 71.0}
    assert new == {"wall": 1100.0, "text_encoder": 330.0, "step": 0.9, "steps": 600, "evaluation": 70.0}
    assert phases({"label": "x", "wall_seconds": 5.0})["step"] is None  # a failed job: nothing to read


def test_section_ratio_and_extrapolation():
    text = section(RESULT, full_steps=6000)
    assert "--old aaaaaaa --new bbbbbbb --mode parallel --threads 1 train.steps=600`" in text
    assert "| whole job (wall) | 1,000.0 s | 1,100.0 s | 1.100 |" in text
    assert "| one training step | 0.800 s | 0.900 s | 1.125 |" in text
    old_full, new_full = 1000 + 5400 * 0.8, 1100 + 5400 * 0.9
    assert f"new / old = {new_full / old_full:.3f}" in text
    assert "Extrapolated" not in section(RESULT, full_steps=600)  # a full-length run is not extrapolated


def test_report_section_reads_every_json(tmp_path):
    assert "Not measured yet" in default_run_section(tmp_path)
    (tmp_path / "default_run_side_by_side_600steps.json").write_text(json.dumps(RESULT))
    text = default_run_section(tmp_path)
    assert "From `default_run_side_by_side_600steps.json`" in text and "| 1.100 |" in text


@pytest.mark.parametrize("missing", ["old", "new"])
def test_section_of_a_result_without_both_jobs_is_empty(missing):
    assert section({**RESULT, "jobs": [j for j in RESULT["jobs"] if j["label"] != missing]}, 6000) == ""
