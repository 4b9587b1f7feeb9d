"""The per-phase profile: nested sections, sampled step details, and a tiny run whose profile covers its wall time."""

from __future__ import annotations

import functools
import json
import time

import mlflow
import pytest

from dfgan.experiment import resolve_spec
from dfgan.profile import Profile, format_report
from dfgan.tracking import Tracker
from dfgan.train import loop
from dfgan.train.loop import train
from tests.conftest import tiny_overrides


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def tick(self, s: float) -> None:
        self.t += s


def test_nested_sections_self_time_and_leaf_totals():
    clock = FakeClock()
    p = Profile(sample_every=1, clock=clock)
    with p.section("a"):
        clock.tick(1)
        with p.section("b"):
            clock.tick(2)
            with p.section("mlflow"):
                clock.tick(0.5)
    with p.section("mlflow"):
        clock.tick(0.25)
    p.begin("c")
    p.add("d", 3.0)  # measured elsewhere, nested under c
    clock.tick(4)
    p.end("c")
    clock.tick(0.25)  # outside every section
    rep = p.report()
    assert rep["wall_seconds"] == 8.0
    assert rep["phases"] == {"a": 3.5, "c": 4.0, "mlflow": 0.25}
    assert rep["coverage"] == pytest.approx(7.75 / 8, abs=1e-4)
    s = rep["sections"]
    assert s["a"]["self_seconds"] == 1.0 and s["a.b"]["self_seconds"] == 2.0 and s["c"]["self_seconds"] == 1.0
    assert s["a.b.mlflow"]["seconds"] == 0.5 and s["c.d"]["calls"] == 1
    assert rep["by_leaf"]["mlflow"] == 0.75
    assert "a" in format_report(rep) and "mlflow" in format_report(rep)
    with pytest.raises(RuntimeError, match="innermost"):
        p.begin("x"), p.begin("y"), p.end("x")


def test_details_are_timed_on_sampled_repetitions_only_and_scaled_up():
    clock = FakeClock()
    p = Profile(sample_every=4, clock=clock)
    for i in range(13):  # the first is the warm-up; 4, 8, 12 are sampled
        with p.repeat("step", i):
            with p.detail("fwd"):
                clock.tick(1)
            clock.tick(2 if i else 10)
    rep = p.report()
    assert p.calls["step.fwd"] == 3
    assert rep["sections"]["step"]["seconds"] == 12 * 3 + 11
    assert rep["sections"]["step.fwd"]["estimated_seconds"] == pytest.approx(13.0)  # 3 s x 13/3
    assert rep["sections"]["step"]["self_seconds"] == pytest.approx(47 - 13)
    r = rep["repeats"]["step"]
    assert (r["sampled"], r["unsampled"], r["first_ms"]) == (3, 9, 11000.0)
    assert r["sampled_mean_ms"] == r["unsampled_mean_ms"] == 3000.0
    assert p.metrics()["phase_seconds.step.fwd"] == pytest.approx(13.0)


def test_iterate_and_instrument_time_what_they_wrap():
    clock = FakeClock()
    p = Profile(clock=clock)

    def items():
        for k in range(3):
            clock.tick(1)
            yield k

    class Thing:
        def call(self, x):
            clock.tick(0.5)
            return x + 1

    thing = Thing()
    p.instrument(thing, ["call"], "mlflow")
    assert [thing.call(k) for k in p.iterate("data", items())] == [1, 2, 3]
    assert p.seconds["data"] == 3 and p.calls["data"] == 4  # the last call found the end
    assert p.seconds["mlflow"] == 1.5 and p.calls["mlflow"] == 3
    other = Profile(clock=clock)
    other.instrument(thing, ["call"], "mlflow")  # a second run with the same object: timed there only
    thing.call(0)
    assert other.calls["mlflow"] == 1 and p.calls["mlflow"] == 3


def test_tiny_run_profile_covers_the_run_and_is_logged(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "Profile", functools.partial(Profile, sample_every=1))  # every step's parts timed
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path, **{"train.steps": 12}))
    t0 = time.perf_counter()
    res = train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=uri))
    wall = time.perf_counter() - t0
    rep = res.info["profile"]
    phases = rep["phases"]
    assert {"setup", "data", "text_encoder", "build", "train", "final_weights", "evaluation", "mlflow"} <= set(phases)
    assert rep["covered_seconds"] > 0.95 * wall  # the phases account for the run's wall time ...
    assert rep["covered_seconds"] <= rep["wall_seconds"] * 1.001 <= wall * 1.001  # ... without counting twice
    sec = rep["sections"]
    train_children = [n for n in sec if n.startswith("train.") and n.count(".") == 1]
    assert {"train.data", "train.step", "train.log", "train.samples", "train.checkpoint"} <= set(train_children)
    assert sum(sec[n]["seconds"] for n in train_children) <= sec["train"]["seconds"] * 1.001
    parts = ["g_forward", "d_forward", "penalty", "d_backward", "d_optimiser", "g_d_forward", "g_backward",
             "g_optimiser", "inputs"]
    estimated = sum(sec[f"train.step.{k}"]["estimated_seconds"] for k in parts)
    assert 0.7 * sec["train.step"]["seconds"] < estimated < 1.1 * sec["train.step"]["seconds"]
    assert sec["evaluation.setup_attr"]["calls"] == 1  # the attribute classifier, trained on first use
    assert rep["by_leaf"]["mlflow"] >= phases["mlflow"]  # MLflow calls in every phase, totalled
    assert json.loads((res.run_dir / "profile.json").read_text())["phases"] == phases
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(res.run_id)
    assert run.data.metrics["phase_seconds.train"] == pytest.approx(phases["train"], rel=1e-3)
    assert "phase_seconds.train.step.penalty" in run.data.metrics
    assert "profile.json" in {a.path for a in client.list_artifacts(res.run_id)}
