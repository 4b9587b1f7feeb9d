"""``dfgan eval`` and periodic evaluation: values with their protocol in metrics.jsonl and in the run's own
MLflow run; evaluation does not disturb training; generation is batch-independent; clear errors."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from dfgan.cli import main
from dfgan.experiment import check_spec, resolve_spec
from dfgan.run_identity import run_hash
from dfgan.spec import SpecError
from dfgan.tracking import Tracker
from dfgan.train.loop import train
from tests.conftest import tiny_overrides

EVAL = {"eval.metrics": "[attr_acc,fd_attr]", "eval.n_images": 16, "eval.batch_size": 8}


def _uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dfgan_train_prints_the_final_evaluation(tmp_path, capsys):
    """The base spec evaluates attr_acc and fd_attr at the end of a run on the built-in data, and `dfgan train`
    prints them with attr_acc's per-attribute parts, equal to the run's metrics.jsonl."""
    assert main(["train", "--variant", "full", "--no-track", "--quiet", *tiny_overrides(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    lines = {r["metric"]: r for r in _lines(tmp_path / "runs" / out["run_dir"].split("/")[-1])}
    assert set(lines) == {"attr_acc", "fd_attr", "memorisation_attr"}
    for name, r in lines.items():
        assert out["metrics"][name] == pytest.approx(r["value"], abs=1e-4)
    for attr, v in lines["attr_acc"]["details"].items():
        assert out["metrics"][f"attr_acc.{attr}"] == pytest.approx(v, abs=1e-4)


def test_dfgan_eval_adds_its_metrics_to_the_same_mlflow_run(tmp_path, capsys):
    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path, **{"eval.metrics": "[]"}))  # eval's alone
    res = train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)))
    rc = main(["eval", "--run", str(res.run_dir), "--metrics", "attr_acc,fd_attr,rprec_damsm", "--n", "24",
               "--batch-size", "10", "--tracking-uri", _uri(tmp_path), "--device", "cpu", "--quiet", "--draws", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and res.run_id in out and "attr_acc" in out and "NoP" in out

    client = mlflow.tracking.MlflowClient(_uri(tmp_path))
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    exp = client.get_experiment(run.info.experiment_id)
    assert len(client.search_runs([exp.experiment_id])) == 1  # no new run
    metrics, tags = run.data.metrics, run.data.tags
    for name in ("attr_acc", "fd_attr", "rprec_damsm", "attr_acc.colour", "attr_acc.count"):
        assert name in metrics, name
    assert "loss_d" in metrics  # the training's own metrics are still there: same run
    proto = json.loads(tags["protocol.attr_acc"])
    assert proto["n_images"] == 24 and proto["split"] == "test" and proto["truncation"] == spec.model.truncation
    assert proto["noise_seeds"] == [0, 1, 2] and "attr_acc.draw2" in metrics  # --draws 3
    assert json.loads(tags["protocol.rprec_damsm"])["candidates"] == 100
    hist = client.get_metric_history(res.run_id, "attr_acc")
    assert [m.step for m in hist] == [spec.train.steps]

    lines = _lines(res.run_dir)
    assert [r["metric"] for r in lines] == ["attr_acc", "fd_attr", "rprec_damsm"]
    for r in lines:
        assert r["step"] == spec.train.steps and r["n_images"] == 24 and r["device"] == "cpu"
        assert r["torch"] == torch.__version__ and r["seconds"] > 0 and r["source"] == "dfgan eval"
        assert r["value"] == pytest.approx(metrics[r["metric"]])
    assert 0.0 <= lines[0]["value"] <= 1.0 and 0.0 <= lines[2]["value"] <= 1.0
    assert lines[0]["protocol"]["extractor"] == lines[1]["protocol"]["extractor"] == "attr_classifier"
    assert lines[1]["protocol"]["reference"]["n"] == spec.data.n_test


def test_periodic_evaluation_is_logged_and_does_not_change_training(tmp_path):
    """Periodic and final evaluations are logged; evaluation does not disturb training. With eval.split=val every
    evaluation uses the val split and logs val names; the periodic one uses one noise draw, the final one
    eval.noise_draws (2) with each draw's seed in the protocol, the mean as the value and each draw's value and
    their SD in the details (and in MLflow)."""
    plain = train(resolve_spec("full", overrides=tiny_overrides(tmp_path / "a")), progress=False,
                  tracker=Tracker(enabled=False))
    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path / "b", **EVAL, **{"eval.interval": 2,
                                                                                  "eval.split": "val"}))
    res = train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=_uri(tmp_path)))
    lines = _lines(res.run_dir)
    assert [(r["metric"], r["step"]) for r in lines] == [("attr_acc_val", 2), ("fd_attr_val", 2),
                                                         ("attr_acc_val", 4), ("fd_attr_val", 4)]
    assert all(r["source"] == "train" and r["n_images"] == 16 and r["protocol"]["split"] == "val" for r in lines)
    assert lines[1]["protocol"]["reference"]["n"] == spec.data.n_val  # the val images are the reference
    client = mlflow.tracking.MlflowClient(_uri(tmp_path))
    assert [m.step for m in client.get_metric_history(res.run_id, "fd_attr_val")] == [2, 4]
    assert "protocol.fd_attr_val" in client.get_run(res.run_id).data.tags
    periodic, final = lines[0], lines[2]
    assert periodic["protocol"]["noise_seeds"] == [0] and "noise_sd" not in periodic["details"]
    assert final["protocol"]["noise_draws"] == 2 and final["protocol"]["noise_seeds"] == [0, 1]
    for r in lines[2:]:
        d = r["details"]
        draws = [d["draw0"], d["draw1"]]
        assert r["value"] == pytest.approx(np.mean(draws)) and d["noise_sd"] == pytest.approx(np.std(draws, ddof=1))
    assert 0 <= final["details"]["colour"] <= 1  # per-attribute parts: their mean over the draws
    metrics = client.get_run(res.run_id).data.metrics
    assert metrics["attr_acc_val.noise_sd"] == pytest.approx(final["details"]["noise_sd"])
    assert "attr_acc" not in metrics and res.evaluation["fd_attr_val"] == pytest.approx(lines[3]["value"])
    # evaluation draws from its own generators: the trained weights are bit-identical to a run without it
    wa = torch.load(plain.run_dir / "final_weights.pt", weights_only=True)["models"]
    wb = torch.load(res.run_dir / "final_weights.pt", weights_only=True)["models"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_metric_names_carry_their_split():
    from dfgan.metrics.registry import for_split, metric, on_split
    from dfgan.registry import RegistryError

    for test_name, val_name in [("attr_acc", "attr_acc_val"), ("fd_attr", "fd_attr_val"),
                                ("fid1k_test_clean", "fid1k_val_clean"), ("kid_test_clean", "kid_val_clean"),
                                ("fid2k_test_legacy_pytorch", "fid2k_val_legacy_pytorch")]:
        assert on_split(test_name, "val") == val_name and on_split(val_name, "test") == test_name
        v, t = metric(val_name), metric(test_name)
        assert (v.split, t.split) == ("val", "test")
        assert (v.kind, v.extractor, v.count) == (t.kind, t.extractor, t.count)
    assert for_split("attr_acc,fd_attr", "val") == ["attr_acc_val", "fd_attr_val"]
    for bad in ("nope_val", "attr_acc_val_val"):
        with pytest.raises(RegistryError, match="unknown metric"):
            metric(bad)


def test_generated_images_do_not_depend_on_the_batch_size(tmp_path):
    from dfgan.experiment import build_gan
    from dfgan.metrics.evaluate import generate_images
    from dfgan.nn.text_encoders import DAMSMTextEncoder
    from dfgan.registry import DATASETS
    from dfgan.text.encoders import TextConditioner

    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path))
    test = DATASETS.build("builtin", spec.data, "test")
    torch.manual_seed(0)
    enc = DAMSMTextEncoder(len(test.vocab), nhidden=spec.model.text_encoder.embedding_dim).eval()
    gan = build_gan(spec, cond_dim=enc.output_dim, word_dim=enc.output_dim).eval()
    cond = TextConditioner(enc, torch.device("cpu"), need_words=False, cache=False)

    def run(bs):
        parts = list(generate_images(gan.generator, cond, test, 20, bs, z_dim=spec.model.z_dim,
                                     truncation=spec.model.truncation, device="cpu"))
        return (torch.cat([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]))

    a, ia, ja = run(3)
    b, ib, jb = run(20)
    assert a.dtype == torch.uint8 and a.shape == (20, 3, 32, 32)
    assert (a.int() - b.int()).abs().max() <= 1  # float rounding of batched convs may move a value by one
    assert (ia == ib).all() and (ja == jb).all()
    assert ia.tolist() == [i % 16 for i in range(20)] and ja.tolist() == [0] * 16 + [1] * 4


def test_eval_errors_name_what_is_wrong(tmp_path, capsys):
    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path, **{"train.steps": 2}))
    res = train(spec, progress=False, tracker=Tracker(enabled=False))
    assert main(["eval", "--run", str(res.run_dir), "--metrics", "fid_birds", "--no-track"]) == 1
    assert "unknown metric 'fid_birds'" in capsys.readouterr().err
    rc = main(["eval", "--run", str(res.run_dir), "--metrics", "kid_test_clean", "--n", "8", "--no-track",
               "--inception", str(tmp_path / "missing.pt"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "inception-2015-12-05.pt" in err and "missing.pt" in err
    assert main(["eval", "--run", str(tmp_path / "nope"), "--no-track"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["eval", "--list"]) == 0
    assert "fd_effnet_lite0" in capsys.readouterr().out


def test_final_metrics_are_evaluated_only_at_the_end(tmp_path):
    """eval.final_metrics join the final evaluation only (the periodic ones skip them); an empty list leaves the
    run's identity as it was, a used one changes it; a bad name fails validation naming its field."""
    over = {**EVAL, "eval.metrics": "[attr_acc]", "eval.final_metrics": "[fd_attr,attr_acc]", "eval.interval": 2}
    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path, **over))
    assert spec.end_metrics() == ["attr_acc", "fd_attr"]
    res = train(spec, progress=False, tracker=Tracker(enabled=False))
    assert [(r["metric"], r["step"]) for r in _lines(res.run_dir)] == [("attr_acc", 2), ("attr_acc", 4),
                                                                       ("fd_attr", 4)]
    assert set(res.evaluation) >= {"attr_acc", "fd_attr"}
    plain = resolve_spec("full", overrides=tiny_overrides(tmp_path, **{**over, "eval.final_metrics": "[]"}))
    assert "final_metrics" not in plain.experiment_dict()["eval"] and run_hash(plain) != run_hash(spec)
    with pytest.raises(SpecError, match=r"eval\.final_metrics\[0\]: unknown metric 'fid_x'"):
        check_spec(resolve_spec("full", overrides=tiny_overrides(tmp_path, **{"eval.final_metrics": "[fid_x]"})))
