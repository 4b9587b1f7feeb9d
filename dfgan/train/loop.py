"""The training loop: seeded, resumable, checkpointed, logged to MLflow, NaN-safe, torchrun-ready."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dfgan.conditioning import TextConditioner, load_text_encoder
from dfgan.model import build_gan, build_regulariser
from dfgan.paths import cache_dir
from dfgan.registry import DATASETS, FUSIONS
from dfgan.runtime import resolve_precision, runtime_info
from dfgan.sampling import truncated_noise
from dfgan.tracking import Tracker
from dfgan.train import checkpoint as ckpt_io
from dfgan.train import distributed as dist
from dfgan.train.batches import BatchPlan, step_loader
from dfgan.train.step import NonFiniteLossError, Stepper, apply_speed_options

CHECKPOINT = "checkpoint.pt"
RUNTIME_TAGS = ("threads", "device_name", "cpu_capability", "allocator", "allocator_env", "glibc_thresholds_raised")
FINAL_WEIGHTS = "final_weights.pt"


class RunExistsError(RuntimeError):
    """A run folder with a checkpoint exists and neither resume nor restart was asked for."""


@dataclass
class TrainResult:
    run_dir: Path
    run_id: str | None
    steps: int
    last_losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available (use train.device=auto or cpu)")
    return torch.device(name)


def run_dir_for(spec) -> Path:
    return Path(spec.train.out_dir) / f"{spec.name}-{spec.hash()}"


def step_noise(seed: int, step: int, n: int, z_dim: int, rank: int = 0) -> torch.Tensor:
    """Training noise z ~ N(0, I), a pure function of (seed, step, rank): exact resumes."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + rank) % (2**63))
    return torch.randn(n, z_dim, generator=g)


def sample_captions(dataset, n: int = 8) -> list[str]:
    """Fixed captions for sample grids: the dataset's demo captions, else the first caption of n images."""
    if hasattr(dataset, "demo_captions"):
        return list(dataset.demo_captions(n))
    return [dataset.caption_text(i, 0) for i in range(min(n, len(dataset)))]


class SampleGrid:
    """Generates the same captions x the same truncated noise at every call, saves a labelled PNG."""

    def __init__(self, dataset, conditioner, z_dim: int, truncation: float, device, n_captions=8, n_noise=4):
        from dfgan.data.vocab import pad_caption

        self.captions = sample_captions(dataset, n_captions)
        ids = [pad_caption(dataset.vocab.encode(c)[0]) for c in self.captions]
        self.caps = torch.stack([c for c, _ in ids])
        self.lens = torch.tensor([max(n, 1) for _, n in ids])
        self.conditioner, self.device, self.n_noise = conditioner, device, n_noise
        g = torch.Generator().manual_seed(1234)
        self.noise = truncated_noise(n_noise, z_dim, truncation, g)

    @torch.no_grad()
    def render(self, generator, path: Path) -> Path:
        from dfgan.sampling import last_stage
        from dfgan.viz import save_caption_grid

        words, sent = self.conditioner.encode(self.caps, self.lens)
        mask = (self.caps == 0).to(self.device)
        rows = []
        was_training = generator.training
        generator.eval()  # batch-norm fusions (cbn) use running statistics when sampling
        try:
            for z in self.noise:
                zz = z[None].expand(len(self.captions), -1).to(self.device)
                rows.append(last_stage(generator(zz, sent, words, mask)).float().cpu())
        finally:
            generator.train(was_training)
        save_caption_grid(torch.cat(rows), self.captions, path, nrow=len(self.captions))
        return path


def train(spec, *, resume: bool = False, restart: bool = False, progress: bool = True,
          tracking: bool | None = None, tracking_uri: str | None = None, parent_run_id: str | None = None,
          extra_tags: dict | None = None, stop_at: int | None = None, on_eval=None) -> TrainResult:
    """Train ``spec``. ``stop_at`` ends early after that many steps (a checkpoint is written): for tests.
    ``on_eval(step, values)`` is called after each evaluation (periodic and final) with the metric values
    (name -> float; parts too, e.g. ``attr_acc.colour``); an exception it raises (e.g. ``optuna.TrialPruned``)
    ends the run like any error."""
    import dfgan.components  # noqa: F401

    device = pick_device(spec.train.device)
    dinfo = dist.init(device.type)
    if dinfo.enabled and device.type == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
        torch.cuda.set_device(device)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    run_dir = run_dir_for(spec)
    ckpt_path = run_dir / CHECKPOINT
    if dinfo.is_main:
        if ckpt_path.exists() and not (resume or restart):
            raise RunExistsError(
                f"{run_dir} already holds a checkpoint of this spec; pass --resume to continue it or "
                "--restart to start over"
            )
        if restart and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier(dinfo)

    saved = None
    if resume and ckpt_path.exists():
        saved = ckpt_io.load(ckpt_path, map_location="cpu")
        ckpt_io.check_same_spec(saved, spec, ckpt_path)

    enabled = spec.tracking.enabled if tracking is None else tracking
    tracker = Tracker(spec, enabled=enabled and dinfo.is_main, uri=tracking_uri,
                      run_id=saved.get("mlflow_run_id") if saved else None, parent_run_id=parent_run_id,
                      extra_tags=extra_tags)
    t_start = time.time()
    progress_state = {"last_good": saved["step"] if saved else 0}
    try:
        # main process builds caches (dataset, text encoder) first; the others then read them
        if not dinfo.is_main:
            dist.barrier(dinfo)
        dataset = DATASETS.build(spec.data.name, spec.data, "train")
        if dinfo.is_main:
            tracker.start({"stage": "setup"})
        log_pre = (lambda s, m: tracker.metrics({f"text_{k}": v for k, v in m.items()}, s)) if enabled else None
        encoder, enc_info = load_text_encoder(spec, dataset, device=device, cache_dir=cache_dir(),
                                              progress=progress and dinfo.is_main, log_fn=log_pre)
        if dinfo.is_main:
            dist.barrier(dinfo)

        torch.manual_seed(spec.train.seed)
        cond_dim = getattr(encoder, "output_dim", spec.model.text_encoder.embedding_dim)
        gan = build_gan(spec, cond_dim=cond_dim, word_dim=cond_dim).to(device)
        speed = apply_speed_options(gan, spec.train)  # fused affine, channels_last
        if dinfo.enabled:
            dist.broadcast_module(gan)
        reg = build_regulariser(spec)
        t = spec.train
        opt_g = torch.optim.Adam(gan.generator.parameters(), lr=t.lr_g, betas=tuple(t.betas))
        opt_d = torch.optim.Adam(list(gan.d_parameters()), lr=t.lr_d, betas=tuple(t.betas))
        start = 0
        if saved:
            gan.load_state_dict(saved["models"])
            opt_g.load_state_dict(saved["optimizers"]["g"])
            opt_d.load_state_dict(saved["optimizers"]["d"])
            torch.set_rng_state(saved["rng"]["torch"])
            start = int(saved["step"])
        precision = resolve_precision(t.precision, device)  # "auto": bf16 where it is native, else fp32
        speed["precision"] = precision
        stepper = Stepper(gan, reg, opt_g, opt_d, precision=precision, device=device,
                          channels_last=t.channels_last,
                          grad_sync=dist.average_gradients if dinfo.enabled else None)
        if t.compile:  # in place (keeps the state-dict keys); the generator only: MA-GP's double backward
            gan.generator.compile()  # through D is not supported by torch.compile

        need_words = "words" in FUSIONS.entry(spec.model.fusion.name).requires
        conditioner = TextConditioner(encoder, device, need_words)
        grid = SampleGrid(dataset, conditioner, spec.model.z_dim, spec.model.truncation, device)
        pairs = t.sampler == "attribute_pairs"
        plan = BatchPlan(len(dataset), dataset.captions_per_image, t.batch_size, t.seed,
                         dinfo.world_size, dinfo.rank, pairs=dataset.attribute_array() if pairs else None,
                         vary=t.pair_attributes if pairs else ())
        from dfgan.metrics.nop import nop_report

        nop = nop_report(gan, encoder)
        if dinfo.is_main:
            tracker.tags({
                "stage": "train", "backbone": spec.model.backbone, "discriminator": spec.model.discriminator,
                "head": spec.model.head, "fusion": spec.model.fusion.name,
                "regulariser": spec.model.regulariser.name, "text_encoder": spec.model.text_encoder.name,
                "dataset": spec.data.name, "dataset_hash": dataset.content_hash,
                "text_encoder_source": enc_info.get("source"), "nop_paper": nop["totals"]["paper"]["count"],
                "nop_trainable": nop["totals"]["trainable"]["count"], "world_size": dinfo.world_size,
                "device": str(device), "torch": torch.__version__,
                **{f"speed_{k}": v for k, v in speed.items()},
                **{f"runtime_{k}": v for k, v in runtime_info(device).items() if k in RUNTIME_TAGS},
            })
            if enc_info.get("attribute_probe"):  # how well the condition encodes each attribute
                tracker.metrics({f"text_probe_{k}": v for k, v in enc_info["attribute_probe"].items()}, 0)
            (run_dir / "spec.yaml").write_text(spec.to_yaml())
            (run_dir / "nop.json").write_text(json.dumps(nop, indent=2))
            tracker.text(json.dumps(nop, indent=2), "nop.json")

        end = t.steps if stop_at is None else min(t.steps, stop_at)
        losses: dict[str, float] = {}

        def save(step: int) -> None:
            if not dinfo.is_main:
                return
            ckpt_io.atomic_torch_save({
                "format": ckpt_io.FORMAT, "step": step, "spec": spec.to_dict(), "spec_hash": spec.hash(),
                "experiment": spec.experiment_dict(), "models": gan.state_dict(),
                "optimizers": {"g": opt_g.state_dict(), "d": opt_d.state_dict()},
                "rng": {"torch": torch.get_rng_state()}, "mlflow_run_id": tracker.run_id,
                "mlflow_tracking_uri": tracker.uri if tracker.enabled else None,
                "dataset_hash": dataset.content_hash, "text_encoder": {k: str(v) for k, v in enc_info.items()},
            }, ckpt_path)

        bar = None
        if progress and dinfo.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.steps, initial=start, desc=f"train {spec.name}", unit="step", dynamic_ncols=True)
        window_t, window_n = time.time(), 0
        loader = step_loader(dataset, plan, start, end, t.num_workers)
        step = start
        try:
            for batch in loader:
                step = int(batch["step"])
                images = batch["image"].to(device, non_blocking=True)
                sent, words, mask = conditioner(batch)
                noise = step_noise(t.seed, step, images.size(0), spec.model.z_dim, dinfo.rank).to(device)
                losses = stepper(step, images, sent, words, mask, noise)
                done = step + 1
                window_n += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(d=f"{losses['loss_d']:.3f}", g=f"{losses['loss_g']:.3f}")
                if done % t.log_every == 0 or done == end:
                    dt = time.time() - window_t
                    rate = window_n / dt if dt > 0 else float("nan")
                    tracker.metrics({**losses, "steps_per_sec": rate,
                                     "images_per_sec": rate * t.batch_size * dinfo.world_size}, done)
                    window_t, window_n = time.time(), 0
                if dinfo.is_main and (done % t.sample_every == 0 or done == end):
                    path = grid.render(gan.generator, run_dir / "samples" / f"step_{done:07d}.png")
                    tracker.artifact(path, "samples")
                if done % t.checkpoint_every == 0 or done == end:
                    save(done)
                    progress_state["last_good"] = done
                if spec.eval.interval and spec.eval.metrics and done % spec.eval.interval == 0 and done != end:
                    _evaluate(spec, gan, conditioner, dataset, device, tracker, done, run_dir, dinfo, on_eval)
        finally:
            if bar is not None:
                bar.close()
        if dinfo.is_main and end == t.steps and t.steps > start:
            logged_to = tracker.uri if tracker.enabled else None
            torch.save({"spec": spec.to_dict(), "models": gan.state_dict(), "step": end,
                        "mlflow_run_id": tracker.run_id, "mlflow_tracking_uri": logged_to},
                       run_dir / FINAL_WEIGHTS)
            tracker.artifact(run_dir / FINAL_WEIGHTS, "checkpoint")
            if spec.eval.metrics:
                _evaluate(spec, gan, conditioner, dataset, device, tracker, end, run_dir, dinfo, on_eval)
        seconds = time.time() - t_start
        tracker.metrics({"train_seconds": seconds}, end)
        tracker.finish()
        return TrainResult(run_dir, tracker.run_id, end, losses, seconds, {"text_encoder": enc_info, "nop": nop,
                                                                 "speed": speed, "runtime": runtime_info(device)})
    except NonFiniteLossError as e:
        err = NonFiniteLossError(e.step, e.name, e.value,
                                 f"training stopped; the last good checkpoint (step {progress_state['last_good']}) "
                                 f"is kept at {ckpt_path}")
        tracker.fail(err)
        raise err from None
    except KeyboardInterrupt:
        tracker.kill()
        raise
    except BaseException as e:
        tracker.fail(e)
        raise
    finally:
        dist.shutdown(dinfo)


def _evaluate(spec, gan, conditioner, dataset, device, tracker, step, run_dir, dinfo, on_eval=None):
    if not dinfo.is_main:
        return
    from dfgan.metrics import evaluate_during_training

    records = evaluate_during_training(spec, gan, conditioner, dataset, device, tracker, step, run_dir)
    if on_eval is not None:  # records: [{"metric": name, "value": v, "details": {...}}] (or already {name: v})
        values = dict(records) if isinstance(records, dict) else \
            {r["metric"]: float(r["value"]) for r in records or () if "metric" in r and "value" in r}
        for r in records if isinstance(records, list) else ():  # per-part values, named as in MLflow
            values.update({f"{r['metric']}.{k}": float(v) for k, v in (r.get("details") or {}).items()
                           if isinstance(v, (int, float))})
        on_eval(step, values)
