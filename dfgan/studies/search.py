"""Hyperparameter search: TPE over chosen spec fields, pruning on the periodic metric, best spec exported.

``dfgan search --study S --variant full --params "train.lr_g=loguniform(1e-5,1e-3),model.nf=choice(16,32)"
--trials 20 --metric attr_acc --direction maximize``. Each trial is one training run of the variant with the
sampled values as overrides (on top of the common ones), logged as a nested MLflow run like a study cell.
The training loop calls back after every periodic evaluation (``eval.interval``); the value of ``--metric``
is reported to the trial and a median pruner stops runs that are behind. Re-running the command continues the
same Optuna study up to ``--trials`` finished trials. The best trial is written as a variant file that
``extends`` the searched variant with the tuned values only.

Selection never touches the test split: every trial evaluates on the validation split (``eval.split=val``, so
``--metric attr_acc`` is read as ``attr_acc_val``). Only periodic evaluations prune, after a warm-up of
``eval.prune_warmup_steps`` (default a quarter of ``train.steps``); a trial that reached its final evaluation is
always COMPLETE. The best trial is then retrained on ``--retrain-seeds`` fresh seeds and evaluated on test
(``dfgan.studies.retrain``): that, with its interval, is the number to report, not the best trial's own value.
"""

from __future__ import annotations

import json
import math
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfgan.experiment import check_spec, resolve_spec
from dfgan.metrics.registry import on_split
from dfgan.registry import RegistryError
from dfgan.run_identity import run_hash
from dfgan.spec import SpecError, flatten
from dfgan.studies.definition import Cell, base_spec, cell_spec
from dfgan.studies.ledger import Heartbeat, cell_states, fail_stale_trials, set_error, worker_identity
from dfgan.studies.mlflow_glue import InvocationRun, cell_metrics, cell_tags, mark_runs
from dfgan.studies.retrain import RETRAIN_SEEDS, RetrainOutcome, fresh_seeds, retrain_best
from dfgan.studies.runner import TRACEBACK_LINES, echo_line, load_or_create_study
from dfgan.studies.storage import default_storage_url, describe_storage, open_storage
from dfgan.tracking import Tracker, resolve_uri
from dfgan.train import loop
from dfgan.variants import VARIANTS_DIR, apply_overrides

DISTRIBUTIONS = {
    "uniform": "uniform(low, high): a float",
    "loguniform": "loguniform(low, high): a float, log scale",
    "int": "int(low, high[, step]): an integer",
    "logint": "logint(low, high): an integer, log scale",
    "choice": "choice(a, b, ...): one of the values",
}
PRUNERS = ("median", "none")
MEDIAN_STARTUP_TRIALS = 2  # trials that always run to the end before the median pruner may stop others
_PARAM_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*=\s*([a-z]+)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class SearchParam:
    """One searched spec field: dotted key, distribution and its arguments."""

    key: str
    kind: str
    args: tuple

    def suggest(self, trial) -> Any:
        a = self.args
        if self.kind == "uniform":
            return trial.suggest_float(self.key, float(a[0]), float(a[1]))
        if self.kind == "loguniform":
            return trial.suggest_float(self.key, float(a[0]), float(a[1]), log=True)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(a[0]), int(a[1]), step=int(a[2]) if len(a) > 2 else 1)
        if self.kind == "logint":
            return trial.suggest_int(self.key, int(a[0]), int(a[1]), log=True)
        return trial.suggest_categorical(self.key, list(a))


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (p.strip() for p in parts) if p]


def _value(text: str) -> Any:
    """A number if it reads as one (YAML 1.1 would keep '1e-5' a string), else YAML (strings, bools, null)."""
    import yaml

    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_params(texts: str | list[str]) -> list[SearchParam]:
    """``"train.lr_g=loguniform(1e-5,1e-3),model.nf=choice(16,32)"`` (or several such strings)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    out: list[SearchParam] = []
    for text in texts:
        for part in _split_top_level(text):
            m = _PARAM_RE.match(part)
            if not m:
                raise SpecError(f"--params: cannot read '{part}'; expected key.path=dist(args) with dist one of: "
                                + "; ".join(DISTRIBUTIONS.values()))
            key, kind, raw = m.groups()
            if kind not in DISTRIBUTIONS:
                raise SpecError(f"--params: '{part}': unknown distribution '{kind}'; allowed: "
                                + ", ".join(DISTRIBUTIONS))
            args = tuple(_value(a) for a in raw.split(",") if a.strip())
            need = {"uniform": 2, "loguniform": 2, "logint": 2}.get(kind)
            if (need and len(args) != need) or (kind == "int" and len(args) not in (2, 3)) or not args:
                raise SpecError(f"--params: '{part}': {DISTRIBUTIONS[kind]}")
            if kind != "choice" and not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise SpecError(f"--params: '{part}': bounds must be numbers")
            if kind in ("uniform", "loguniform", "int", "logint") and not float(args[0]) < float(args[1]):
                raise SpecError(f"--params: '{part}': low must be below high")
            if kind in ("loguniform", "logint") and float(args[0]) <= 0:
                raise SpecError(f"--params: '{part}': a log scale needs low > 0")
            out.append(SearchParam(key, kind, args))
    keys = [p.key for p in out]
    if len(set(keys)) != len(keys):
        raise SpecError(f"--params: a field is searched twice: {keys}")
    if not out:
        raise SpecError("--params: give at least one field to search")
    return out


def check_params(params: list[SearchParam], variant: str, overrides: list[str]) -> None:
    """Every searched key must be a field of the spec (the error lists near names)."""
    import difflib

    known = flatten(base_spec(variant, overrides).to_dict())
    for p in params:
        if p.key not in known:
            near = difflib.get_close_matches(p.key, list(known), n=4)
            raise SpecError(f"--params: '{p.key}' is not a spec field" + (f"; did you mean {near}?" if near else ""))


def split_name(metric: str, split: str) -> str:
    """``metric`` on ``split`` (``attr_acc`` -> ``attr_acc_val``); names that are no registered metric (a loss)
    are kept."""
    try:
        return on_split(metric, split)
    except RegistryError:
        return metric


def prune_warmup(spec) -> int:
    """Steps before which no trial is pruned: ``eval.prune_warmup_steps``, default a quarter of the steps."""
    w = spec.eval.prune_warmup_steps
    return int(spec.train.steps // 4 if w is None else w)


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """``{'model.regulariser.k': 2}`` -> ``{'model': {'regulariser': {'k': 2}}}``."""
    return apply_overrides({}, [f"{k}={json.dumps(v)}" for k, v in values.items()])


@dataclass
class SearchOutcome:
    study: str
    storage: str
    tracking_uri: str
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best_value: float | None = None
    best_values: dict[str, Any] = field(default_factory=dict)
    best_trial: int | None = None
    exported: Path | None = None
    parent_run_id: str | None = None
    metric: str = ""  # the objective as the trials log it (validation split)
    retrain: RetrainOutcome | None = None  # the best trial on fresh seeds, on test


def run_search(*, study: str, variant: str, params: list[SearchParam], n_trials: int, metric: str,
               direction: str = "maximize", overrides: list[str] | tuple[str, ...] = (),
               storage_url: str | None = None, tracking_uri: str | None = None, pruner: str = "median",
               export: str | Path | None = None, sampler_seed: int | None = None, progress: bool = False,
               retrain_seeds: int = RETRAIN_SEEDS, echo: Callable[[str], None] = echo_line) -> SearchOutcome:
    import optuna
    from optuna.trial import TrialState

    if direction not in ("maximize", "minimize"):
        raise SpecError(f"--direction: 'maximize' or 'minimize', got '{direction}'")
    if pruner not in PRUNERS:
        raise SpecError(f"--pruner: one of {PRUNERS}, got '{pruner}'")
    overrides = list(overrides)
    check_params(params, variant, overrides)
    trial_overrides = [*overrides, "eval.split=val"]  # selection on the validation split, never on test
    base = base_spec(variant, trial_overrides)
    objective_metric, report_metric = split_name(metric, "val"), split_name(metric, "test")
    if base.data.name != "builtin" and not base.data.val_fraction:
        raise SpecError(f"a search selects on the validation split, and data.name={base.data.name} has none: hold "
                        "out part of its train images with data.val_fraction (e.g. data.val_fraction=0.1)")
    # every error before the first trial
    check_spec(cell_spec(Cell(variant, variant), base.train.seed, study, trial_overrides, base.train.out_dir))
    storage_url = storage_url or default_storage_url(base.train.out_dir)
    uri = resolve_uri(tracking_uri, base.train.out_dir)
    storage_label = describe_storage(storage_url)
    out = SearchOutcome(study, storage_label, uri, metric=objective_metric)
    metric = objective_metric

    def say(what: str, text: str) -> None:
        echo(f"[{study} {time.strftime('%H:%M:%S')}] {what:<8s} {text}")

    periodic = bool(base.eval.interval and base.eval.metrics)
    if pruner != "none" and not periodic:
        say("note", "no periodic evaluation (eval.interval=0 or eval.metrics empty): nothing to prune on; "
                    "set e.g. eval.interval=100 eval.metrics=[attr_acc]")
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    opt_pruner = (optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                              n_warmup_steps=prune_warmup(base)) if pruner == "median"
                  else optuna.pruners.NopPruner())
    ostudy = load_or_create_study(study, open_storage(storage_url), kind="search", sampler=sampler,
                                  direction=direction, pruner=opt_pruner)
    want = optuna.study.StudyDirection.MAXIMIZE if direction == "maximize" else optuna.study.StudyDirection.MINIMIZE
    if ostudy.direction != want:
        raise SpecError(f"Optuna study '{study}' exists with direction {ostudy.direction.name.lower()}, "
                        f"not {direction}")
    for t in fail_stale_trials(ostudy):
        say("stale", f"trial #{t.number}: worker gone, marked failed")
        try:
            mark_runs(uri, study, t.number, "KILLED", {"stopped": "worker process gone"}, only_status="RUNNING",
                      parents=True)
        except Exception:  # MLflow unreachable: the run stays RUNNING
            pass
    parent = InvocationRun(uri, study, base.train.out_dir, {
        "study_kind": "search", "base_variant": variant, "overrides": " ".join(overrides), "metric": metric,
        "report_metric": report_metric, "prune_warmup_steps": prune_warmup(base), "direction": direction,
        "params": "; ".join(f"{p.key}={p.kind}{p.args}" for p in params), "optuna_storage": storage_label})

    def objective(trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in params}
        ov = [*trial_overrides, *(f"{k}={json.dumps(v)}" for k, v in values.items())]
        cell = Cell(label=f"{variant}-t{trial.number:03d}", variant=variant)
        spec = cell_spec(cell, base.train.seed, study, ov, base.train.out_dir)
        check_spec(spec)
        for k, v in {"cell": cell.label, "seed": base.train.seed, "spec_hash": run_hash(spec), "search_values": values,
                     "worker": worker_identity(), "outcome": "running"}.items():
            trial.set_user_attr(k, v)
        st = cell_states(ostudy).get(run_hash(spec))
        done = [t for t in (st.done if st else []) if t.number != trial.number]
        if done:  # TPE proposed a spec that was already trained (e.g. the same choice values)
            trial.set_user_attr("outcome", "reused")
            trial.set_user_attr("reused_from", done[0].number)
            return float(done[0].value)

        def on_eval(step: int, evals: dict) -> None:
            if step >= spec.train.steps:  # the final evaluation never prunes: a trained trial is COMPLETE
                return
            if metric in evals:
                v = float(evals[metric])
                trial.report(v, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}: {metric}={v:.4g}")

        out.parent_run_id = parent.start()
        say("start", f"trial #{trial.number}  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                            for k, v in values.items()))
        t0 = time.time()
        tags = cell_tags(study=study, cell=cell, seed=base.train.seed, trial_number=trial.number, grid=None,
                         overrides=overrides, kind="search", storage=storage_label)
        tags.update({"search_role": "trial", **{f"search.{k}": v for k, v in values.items()}})
        try:
            with Heartbeat(ostudy, trial):
                tracker = Tracker.for_spec(spec, enabled=True, uri=uri, parent_run_id=out.parent_run_id,
                                           extra_tags=tags)
                res = loop.train(spec, resume=True, progress=progress, tracker=tracker, on_eval=on_eval)
            metrics = cell_metrics(res, uri)
            if metric not in metrics:
                raise SpecError(f"--metric '{metric}' was not logged by the run; logged: {sorted(metrics)}")
        except optuna.TrialPruned as e:
            trial.set_user_attr("outcome", "pruned")
            mark_runs(uri, study, trial.number, "KILLED", {"pruned": "true", "error": str(e)})
            say("pruned", f"trial #{trial.number}  {time.time() - t0:.1f}s  {e}")
            raise
        except Exception as e:
            tb = "".join(traceback.format_exception(e)).splitlines()[-TRACEBACK_LINES:]
            text = set_error(trial, f"{type(e).__name__}: {e}\n" + "\n".join(tb))
            trial.set_user_attr("outcome", "failed")
            say("FAILED", f"trial #{trial.number}  {text.splitlines()[0][:300]}")
            raise
        value = float(metrics[metric])
        if not math.isfinite(value):
            raise ValueError(f"{metric} is {value}")
        trial.set_user_attr("outcome", "trained")
        trial.set_user_attr("mlflow_run_id", res.run_id)
        say("done", f"trial #{trial.number}  {time.time() - t0:.1f}s  {metric}={value:.4g}")
        return value

    finished = [t for t in ostudy.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    remaining = max(0, n_trials - len(finished))
    status = "FINISHED"
    try:
        if remaining:
            ostudy.optimize(objective, n_trials=remaining, catch=(Exception,))
        trials = ostudy.get_trials(deepcopy=False)
        out.complete = sum(t.state == TrialState.COMPLETE for t in trials)
        out.pruned = sum(t.state == TrialState.PRUNED for t in trials)
        out.failed = sum(t.state == TrialState.FAIL for t in trials)
        if out.complete:
            best = ostudy.best_trial
            out.best_value, out.best_trial = best.value, best.number
            out.best_values = dict(best.user_attrs.get("search_values") or best.params)
            say("best", f"trial #{best.number} {metric}={best.value:.4g} (val): {out.best_values}")
            if retrain_seeds > 0:
                out.parent_run_id = parent.start()
                out.retrain = retrain_best(
                    study=study, variant=variant, values=out.best_values, trial_number=best.number,
                    metric=report_metric, overrides=overrides, seeds=fresh_seeds(base.train.seed, retrain_seeds),
                    out_dir=base.train.out_dir, uri=uri, parent_run_id=out.parent_run_id,
                    storage_label=storage_label, progress=progress, say=say)
                parent.set_tags({"retrain": out.retrain.summary()})
                say("retrained", out.retrain.summary())
            out.exported = export_best(study, variant, best, metric, direction, overrides, export, out.retrain)
            say("exported", str(out.exported))
        else:
            say("best", "no trial completed: nothing exported")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        parent.end(status)
    return out


def variant_name_for(study: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", study).strip("_") + "_best"


def export_best(study: str, variant: str, best, metric: str, direction: str, overrides: list[str],
                path: str | Path | None = None, retrain: RetrainOutcome | None = None) -> Path:
    """Write the best trial as a variant file (``extends`` the searched variant; only the tuned values), with
    its value on val and, when it was retrained, its value on test over fresh seeds."""
    import yaml

    path = Path(path) if path else VARIANTS_DIR / f"{variant_name_for(study)}.yaml"
    values = dict(best.user_attrs.get("search_values") or best.params)
    header = [
        f"# Best trial of the Optuna search '{study}' (TPE): trial #{best.number}, {metric} = {best.value:.6g} "
        f"({direction}).",
        f"# Searched on top of variant '{variant}' with overrides: {' '.join(overrides) or '(none)'}",
        "# (those overrides size the search and are not part of this variant).",
        f"# Spec hash of that trial: {best.user_attrs.get('spec_hash')}; MLflow run: "
        f"{best.user_attrs.get('mlflow_run_id')}.",
        "# Selected on the validation split; " + (f"retrained on fresh seeds: {retrain.summary()}." if retrain
                                                  else "not retrained (its test value is unmeasured)."),
    ]
    body = {"extends": variant,
            "description": f"{variant} with hyperparameters tuned by the search '{study}' ({metric}, {direction})",
            **nested(values)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False))
    resolve_spec(spec_file=path)  # the exported file must validate like any variant
    return path
