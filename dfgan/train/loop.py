"""The training loop: seeded, resumable, checkpointed, logged to MLflow, NaN-safe, torchrun-ready."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dfgan import runs
from dfgan.data.errors import DataError
from dfgan.data.identity import data_summary
from dfgan.data.identity import forget as forget_data
from dfgan.experiment import build_conditioning, build_dataset, build_gan, build_regulariser, check_data, cond_dim_of
from dfgan.fingerprint import weights_sha256
from dfgan.metrics.evaluate import evaluate_during_training, record_values
from dfgan.metrics.nop import nop_report
from dfgan.noise import step_noise
from dfgan.profile import Profile, log_profile
from dfgan.progress import progress_bar, set_interval
from dfgan.run_identity import check_same_data, run_folder, run_hash, run_identity
from dfgan.runs import CHECKPOINT, FINAL_RECORD, FINAL_WEIGHTS, RUN_RECORD, RunExistsError
from dfgan.runtime import pick_device, resolve_precision, runtime_info
from dfgan.tracking import Tracker
from dfgan.tracking_buffer import replay_leftover
from dfgan.train import distributed as dist
from dfgan.train.batches import BatchPlan, step_loader
from dfgan.train.samples import SampleGrid
from dfgan.train.step import NonFiniteLossError, Stepper, apply_speed_options

MLFLOW_CALLS = ("start", "metrics", "params", "tags", "artifact", "text")  # Tracker calls the profile times as mlflow
RUNTIME_TAGS = ("threads", "device_name", "cpu_capability", "allocator", "allocator_env", "glibc_thresholds_raised")


@dataclass
class TrainResult:
    """What a training run ends with: its folder and MLflow run, the steps done, the last losses, and the final
    evaluation (metric name -> value, per-part values too, e.g. ``attr_acc.colour``; empty without metrics)."""

    run_dir: Path
    run_id: str | None
    steps: int
    last_losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)


def train(spec, *, resume: bool = False, restart: bool = False, progress: bool = True,
          tracker: Tracker | None = None, stop_at: int | None = None, on_eval=None) -> TrainResult:
    """Train ``spec`` (a checked spec: ``dfgan.experiment.resolve_spec``) into its run folder, logged through
    ``tracker`` (default: ``Tracker.for_spec(spec)``), and evaluate it at the end (``spec.eval.metrics``); the
    result carries the final evaluation. ``stop_at`` ends early after that many steps (a checkpoint is written,
    the MLflow run is ended KILLED: it is not complete): for tests. ``on_eval(step, values)`` is called after
    each periodic evaluation (not the final one) with the metric values; an exception it raises (e.g.
    ``optuna.TrialPruned``) ends the run like any error.

    Killed at any moment (SIGKILL included), ``resume=True`` continues to the same result bit for bit: the same
    weights, each metric logged once per step (``Tracker``), the final evaluation done if it was not recorded
    (``final.json``), and ``train_seconds`` summed over the sessions. The run folder is locked while it trains
    (``runs.run_lock``); an MLflow run a killed process left RUNNING is marked KILLED when the folder is next
    trained, or reopened by ``resume`` (killed before its first checkpoint: it restarts at step 0, logging only
    the steps it did not log before)."""
    device = pick_device(spec.train.device)
    profile = Profile(device)  # where the run's time goes: printed and logged at its end (dfgan.profile)
    dinfo = dist.init(device.type)
    if dinfo.enabled and device.type == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
        torch.cuda.set_device(device)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    interval = set_interval(spec.train.status_every_s)  # status lines of this run's pretraining, training, eval
    run, created = None, False
    try:
        check_data(spec, world_size=dinfo.world_size)  # before any work: data vs batch size, vocabulary, metrics
        run = _Run(spec, run_hash(spec), run_identity(spec), run_folder(spec), device, dinfo, profile=profile)
        with runs.run_lock(run.dir) if dinfo.is_main else contextlib.nullcontext():
            record: dict = {}
            if dinfo.is_main:
                if run.ckpt_path.exists() and not (resume or restart):
                    raise RunExistsError(
                        f"{run.dir} already holds a checkpoint of this spec; pass --resume to continue it or "
                        "--restart to start over"
                    )
                if run.ckpt_path.exists():  # never resume, nor delete, a checkpoint written on other data
                    check_same_data(runs.load_checkpoint(run.ckpt_path), spec, run.ckpt_path,
                                    "resume it" if resume else "delete it (--restart)")
                record = runs.read_json(run.dir / RUN_RECORD) or {}
                if restart and run.dir.exists():
                    if (spool := run.dir / runs.SPOOL).exists():  # never delete metrics not yet sent
                        raise RunExistsError(
                            f"{run.dir} holds {spool.name}: metrics of its MLflow run that never reached the "
                            f"tracking store; send them first (dfgan tracking replay {spool}) or move the file "
                            "away, then --restart"
                        )
                    shutil.rmtree(run.dir)
                created = not run.dir.exists()
                run.dir.mkdir(parents=True, exist_ok=True)
                runs.clean_orphans(run.dir)  # temporaries of writes a killed process never finished
            dist.barrier(dinfo)
            saved = None
            if resume and run.ckpt_path.exists():
                saved = runs.load_checkpoint(run.ckpt_path, map_location="cpu")
                runs.check_same_experiment(saved, run.hash, run.identity, run.ckpt_path)
            run.last_good = saved["step"] if saved else None
            tracker = tracker or Tracker.for_spec(spec)
            tracker.enabled = tracker.enabled and dinfo.is_main
            same_store = record.get("uri") == tracker.uri
            reopen = saved.get("mlflow_run_id") if saved else (record.get("run_id") if resume and same_store
                                                                  else None)
            tracker.spool_path = tracker.spool_path or run.dir / runs.SPOOL
            profile.instrument(tracker, MLFLOW_CALLS, "mlflow")
            profile.add("setup", profile.elapsed())
            with tracker:
                tracker.start(spec, run.hash, {"stage": "setup"}, run_id=reopen)
                if tracker.enabled and tracker.spool_path.exists():  # an earlier session's log, not yet sent
                    replay_leftover(tracker.spool_path, tracker.uri)
                if same_store and record.get("run_id") not in (None, tracker.run_id):
                    tracker.end_stale(record["run_id"], "its process ended before the run was complete; this "
                                                        f"run folder is now logged to run {tracker.run_id}")
                if tracker.enabled:
                    runs.write_json(run.dir / RUN_RECORD, {"run_id": tracker.run_id, "uri": tracker.uri,
                                                           "experiment": tracker.experiment})
                try:
                    return _train(run, saved, tracker, progress, stop_at, on_eval)
                except NonFiniteLossError as e:
                    if run.last_good is None:
                        where = (f"no checkpoint was written yet (the first is due at step "
                                 f"{spec.train.checkpoint_every})")
                    else:
                        where = f"the last good checkpoint (step {run.last_good}) is kept at {run.ckpt_path}"
                    e.args = (f"{e}; training stopped; {where}",)
                    raise e from None
    except BaseException:
        if created and run is not None and not any(f for _, _, f in os.walk(run.dir)):  # failed before writing
            shutil.rmtree(run.dir, ignore_errors=True)
        raise
    finally:
        set_interval(interval)
        dist.shutdown(dinfo)


class NonFiniteWeightsError(NonFiniteLossError):
    """A checkpoint step whose weights or optimiser state hold NaN or Inf: nothing is saved."""

    def __init__(self, step: int, name: str):
        self.step, self.name, self.value = step, name, float("nan")
        FloatingPointError.__init__(self, f"non-finite weights at step {step}: {name} holds NaN or Inf, not saved")


def first_non_finite(state, prefix: str = "") -> str | None:
    """The first floating tensor of a (nested) state dict holding NaN or Inf, by its dotted key; else None."""
    if isinstance(state, torch.Tensor):
        return prefix or "tensor" if state.is_floating_point() and not torch.isfinite(state).all() else None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list | tuple) else ()
    for k, v in items:
        bad = first_non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        if bad:
            return bad
    return None


@dataclass
class _Run:
    spec: object
    hash: str
    identity: dict
    dir: Path
    device: torch.device
    dinfo: dist.DistInfo
    last_good: int | None = None  # step of the last checkpoint written (None: none yet)
    profile: Profile = field(default_factory=Profile)

    @property
    def ckpt_path(self) -> Path:
        return self.dir / CHECKPOINT


def _train(run: _Run, saved, tracker: Tracker, progress: bool, stop_at, on_eval) -> TrainResult:
    spec, device, dinfo, run_dir, prof = run.spec, run.device, run.dinfo, run.dir, run.profile
    t_start = time.time()
    # main process builds caches (dataset, text encoder) first; the others then read them
    if not dinfo.is_main:
        dist.barrier(dinfo)
    with prof.section("data"):  # generated into the cache the first time (built-in data)
        dataset = build_dataset(spec, "train")
    expected = run.identity["data"].get("content_hash")
    if expected and dataset.content_hash != expected:  # the data changed after this process hashed it
        forget_data(spec.data)
        raise DataError(f"the {spec.data.name} data at {spec.data.root} changed since this process hashed it (content "
                        f"hash {expected}, now {dataset.content_hash}): start it again", spec.data.root)
    log_pre = (lambda s, m: tracker.metrics({f"text_{k}": v for k, v in m.items()}, s)) if tracker.enabled else None
    with prof.section("text_encoder"):  # DAMSM pretraining the first time, else the cache
        encoder, enc_info, conditioner = build_conditioning(spec, dataset, device,
                                                            progress=progress and dinfo.is_main, log_fn=log_pre)
    conditioner.bind(dataset)  # cached sentence vectors encoded canonically: a resume sees the same bits
    if dinfo.is_main:
        dist.barrier(dinfo)
    prof.begin("build")  # the networks, optimisers, sample grid, batch plan, run tags

    torch.manual_seed(spec.train.seed)
    cond_dim = cond_dim_of(encoder, spec)
    gan = build_gan(spec, cond_dim=cond_dim, word_dim=cond_dim).to(device)
    speed = apply_speed_options(gan, spec.train)  # fused affine, channels_last
    if dinfo.enabled:
        dist.broadcast_module(gan)
    reg = build_regulariser(spec)
    t = spec.train
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=t.lr_g, betas=tuple(t.betas))
    opt_d = torch.optim.Adam(list(gan.d_parameters()), lr=t.lr_d, betas=tuple(t.betas))
    start, prior_seconds = 0, 0.0
    if saved:
        prior_seconds = float(saved.get("train_seconds", 0.0))
        gan.load_state_dict(saved["models"])
        opt_g.load_state_dict(saved["optimizers"]["g"])
        opt_d.load_state_dict(saved["optimizers"]["d"])
        torch.set_rng_state(saved["rng"]["torch"])
        start = int(saved["step"])
    precision = resolve_precision(t.precision, device)  # "auto": bf16 where it is native, else fp32
    speed["precision"] = precision
    stepper = Stepper(gan, reg, opt_g, opt_d, precision=precision, device=device,
                      channels_last=t.channels_last,
                      grad_sync=dist.average_gradients if dinfo.enabled else None, profile=prof)
    if t.compile:  # in place (keeps the state-dict keys); the generator only: MA-GP's double backward
        gan.generator.compile()  # through D is not supported by torch.compile

    grid = SampleGrid(dataset, conditioner, spec.model.z_dim, spec.model.truncation, device)
    pairs = t.sampler == "attribute_pairs"
    plan = BatchPlan(len(dataset), dataset.captions_per_image, t.batch_size, t.seed,
                     dinfo.world_size, dinfo.rank, pairs=dataset.attribute_array() if pairs else None,
                     vary=t.pair_attributes if pairs else ())
    nop = nop_report(gan, encoder)
    if dinfo.is_main:
        tracker.tags({
            "stage": "train", "backbone": spec.model.backbone, "discriminator": spec.model.discriminator,
            "head": spec.model.head, "fusion": spec.model.fusion.name,
            "regulariser": spec.model.regulariser.name, "text_encoder": spec.model.text_encoder.name,
            "dataset": spec.data.name, "dataset_hash": dataset.content_hash,
            "text_encoder_source": enc_info.get("source"), "text_encoder_sha256": weights_sha256(encoder),
            "data_version": run.identity["data"].get("generator_version", "-"),  # the built-in data's version
            "nop_paper": nop["totals"]["paper"]["count"],
            "nop_trainable": nop["totals"]["trainable"]["count"], "world_size": dinfo.world_size,
            "device": str(device), "torch": torch.__version__,
            **{f"speed_{k}": v for k, v in speed.items()},
            **{f"runtime_{k}": v for k, v in runtime_info(device).items() if k in RUNTIME_TAGS},
        })
        if spec.data.name != "builtin":  # the real data's counts (the spec's data.n_train etc. are the built-in's)
            n_test = data_summary(spec.data).splits.get("test", 0)
            tracker.params({"data.n_train_images": len(dataset), "data.n_test_images": n_test,
                            "data.captions_per_image": dataset.captions_per_image,
                            "data.vocab_size": len(dataset.vocab)})
        if enc_info.get("attribute_probe"):  # how well the condition encodes each attribute
            tracker.metrics({f"text_probe_{k}": v for k, v in enc_info["attribute_probe"].items()}, 0)
        runs.atomic_write_text(run_dir / "spec.yaml", spec.to_yaml())
        runs.atomic_write_text(run_dir / "nop.json", json.dumps(nop, indent=2))
        tracker.text(json.dumps(nop, indent=2), "nop.json")

    end = t.steps if stop_at is None else min(t.steps, stop_at)
    losses: dict[str, float] = {}

    def save(step: int) -> None:
        """A checkpoint, only of finite weights and optimiser state ("last good" means it)."""
        if not dinfo.is_main:
            return
        models, optimizers = gan.state_dict(), {"g": opt_g.state_dict(), "d": opt_d.state_dict()}
        bad = first_non_finite(models, "models") or first_non_finite(optimizers, "optimizers")
        if bad:
            raise NonFiniteWeightsError(step, bad)
        runs.atomic_torch_save({
            "format": runs.FORMAT, "step": step, "spec": spec.to_dict(), "spec_hash": run.hash,
            "experiment": run.identity, "models": models, "optimizers": optimizers,
            "rng": {"torch": torch.get_rng_state()}, "mlflow_run_id": tracker.run_id,
            "mlflow_tracking_uri": tracker.uri if tracker.enabled else None,
            "dataset_hash": dataset.content_hash, "text_encoder": {k: str(v) for k, v in enc_info.items()},
            "train_seconds": prior_seconds + time.time() - t_start,
        }, run.ckpt_path)

    def evaluate(step: int) -> dict[str, float]:
        if not dinfo.is_main:
            return {}
        records = evaluate_during_training(spec, run.hash, gan, conditioner, dataset, device, tracker, step, run_dir,
                                           profile=prof, progress=progress)
        return record_values(records)

    # a bar on a terminal, else a status line every train.status_every_s (dfgan.progress)
    bar = progress_bar(t.steps, f"train {spec.name}", unit="step", initial=start, enabled=progress and dinfo.is_main)
    window_t, window_n = time.time(), 0
    loader = step_loader(dataset, plan, start, end, t.num_workers)
    prof.end("build")
    prof.begin("train")
    try:
        for batch in prof.iterate("data", loader):
            step = int(batch["step"])
            with prof.repeat("step", step):
                with prof.detail("inputs"):  # the batch's sentence vectors (cached), noise
                    images = batch["image"].to(device, non_blocking=True)
                    sent, words, mask = conditioner(batch)
                    noise = step_noise(t.seed, step, images.size(0), spec.model.z_dim, dinfo.rank).to(device)
                losses = stepper(step, images, sent, words, mask, noise)
            done = step + 1
            window_n += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss_d=f"{losses['loss_d']:.3f}", loss_g=f"{losses['loss_g']:.3f}", refresh=False)
            if done % t.log_every == 0 or done == end:
                dt = time.time() - window_t
                rate = window_n / dt if dt > 0 else float("nan")
                with prof.section("log"):
                    tracker.metrics({**losses, "steps_per_sec": rate,
                                     "images_per_sec": rate * t.batch_size * dinfo.world_size}, done)
                window_t, window_n = time.time(), 0
            runs.kill_point(f"step:{done}")
            if dinfo.is_main and (done % t.sample_every == 0 or done == end):
                with prof.section("samples"):
                    path = grid.render(gan.generator, run_dir / "samples" / f"step_{done:07d}.png")
                    tracker.artifact(path, "samples")
            # a periodic evaluation comes before the checkpoint of its step: a resume from that checkpoint
            # must not skip it
            if spec.eval.interval and spec.eval.metrics and done % spec.eval.interval == 0 and done != end:
                with prof.section("eval"):
                    values = evaluate(done)
                if on_eval is not None and values:
                    on_eval(done, values)
            if done % t.checkpoint_every == 0 or done == end:
                with prof.section("checkpoint"):
                    save(done)
                run.last_good = done
    finally:
        if bar is not None:
            bar.close()
    prof.end("train")
    evaluation: dict[str, float] = {}
    seconds = prior_seconds + time.time() - t_start
    if end < t.steps:
        tracker.incomplete = f"stopped at step {end} of {t.steps} (stop_at)"
    elif dinfo.is_main:
        evaluation, seconds = _complete(run, gan, tracker, evaluate, prior_seconds + time.time() - t_start)
    report = log_profile(prof, tracker, run_dir, end) if dinfo.is_main else None
    return TrainResult(run_dir, tracker.run_id, end, losses, seconds,
                       {"text_encoder": enc_info, "nop": nop, "speed": speed, "runtime": runtime_info(device),
                        "profile": report},
                       evaluation)


def _complete(run: _Run, gan, tracker: Tracker, evaluate, seconds: float) -> tuple[dict[str, float], float]:
    """Make the finished run complete, once: final weights (atomic), the final evaluation, ``train_seconds``, then
    ``final.json``, which says all of these are done. A run killed on the way is completed by its resume (the
    metrics already logged are not logged again); a complete run's resume reads ``final.json`` and changes
    nothing. Returns (final evaluation, train_seconds)."""
    spec, run_dir, end = run.spec, run.dir, run.spec.train.steps
    weights = run_dir / FINAL_WEIGHTS
    final = runs.read_json(run_dir / FINAL_RECORD)
    if final and final.get("step") == end and final.get("spec_hash") == run.hash:
        if not _readable(weights):  # deleted or damaged since: the same weights, from the last checkpoint
            _save_final_weights(spec, gan, tracker, weights, end)
        return dict(final.get("evaluation") or {}), float(final.get("train_seconds", seconds))
    with run.profile.section("final_weights"):
        _save_final_weights(spec, gan, tracker, weights, end)
    with run.profile.section("evaluation"):
        evaluation = evaluate(end) if spec.end_metrics() else {}
    runs.kill_point("final-eval")
    tracker.metrics({"train_seconds": seconds}, end)
    runs.write_json(run_dir / FINAL_RECORD, {"step": end, "spec_hash": run.hash, "evaluation": evaluation,
                                             "train_seconds": seconds, "mlflow_run_id": tracker.run_id})
    return evaluation, seconds


def _save_final_weights(spec, gan, tracker: Tracker, path: Path, end: int) -> None:
    logged_to = tracker.uri if tracker.enabled else None
    runs.atomic_torch_save({"spec": spec.to_dict(), "models": gan.state_dict(), "step": end,
                            "mlflow_run_id": tracker.run_id, "mlflow_tracking_uri": logged_to}, path)
    tracker.artifact(path, "checkpoint")


def _readable(path: Path) -> bool:
    try:
        return isinstance(runs.torch_load(path), dict)
    except (OSError, ValueError):
        return False
