"""``dfgan ablate``, ``dfgan search`` and ``dfgan report``: studies, hyperparameter search, tables and figures."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from dfgan.cli import command


def _storage_args(p) -> None:
    p.add_argument("--storage", help="Optuna storage: sqlite:///x.db (default: sqlite:///<train.out_dir>/studies.db), "
                   "any SQLAlchemy URL (postgresql://... for many hosts) or journal:///path/study.log "
                   "(several processes on one host or a shared file system)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. http://host:5000 (default: "
                   "$MLFLOW_TRACKING_URI or sqlite:///<train.out_dir>/mlflow.db)")


def _progress_flag(p) -> None:
    p.add_argument("--progress", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="progress inside each cell: a bar on a terminal, else (a log file) one status line every "
                   "train.status_every_s seconds (default: on; --no-progress: none)")


def _plan_args(p) -> None:
    """What picks a study's cells: shared by ``ablate`` and ``restore`` (see ``plan_from_args``)."""
    p.add_argument("--study", help="study name: Optuna study, MLflow experiment and report folder; a study file "
                   "ablations/studies/NAME.yaml is used when it exists (default: claims, or the "
                   "variants joined by '+')")
    p.add_argument("--definition", help="study file (name under ablations/studies or a path) when it differs "
                   "from --study")
    p.add_argument("--variants", help="comma list of variants (a grid study); overrides the study file's")
    p.add_argument("--variant", "-v", help="train this one variant once: --variants X --seeds 1 (seed from the spec)")
    p.add_argument("--seeds", help="number of seeds (N: the spec's train.seed, +1, ...) or a comma list")


# ---- ablate -----------------------------------------------------------------------------------------------------
@command("ablate", "run a study: variants x seeds through Optuna (resumable, shareable by several workers)")
def _ablate_args(p):
    _plan_args(p)
    p.add_argument("--max-cells", type=int, help="stop after this many cells in this invocation")
    p.add_argument("--dry-run", action="store_true", help="list the cells, their spec hashes and states (an unfinished "
                   "cell's checkpoint step, its earlier attempts) and the counts per state; run nothing")
    _storage_args(p)
    _progress_flag(p)
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="overrides for every cell, part of each spec hash (e.g. train.steps=300 model.nf=16)")
    return _ablate


def plan_from_args(args):
    from dfgan.spec import SpecError
    from dfgan.studies.definition import (
        DEFAULT_STUDY,
        adhoc_definition,
        load_study_definition,
        parse_seeds,
        study_path,
    )
    from dfgan.studies.runner import plan_study

    if args.variant and args.variants:
        raise SpecError("give --variant or --variants, not both")
    seeds = parse_seeds(args.seeds) if args.seeds else None
    variants = [args.variant] if args.variant else (
        [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None)
    if args.variant and seeds is None:
        seeds = 1
    if variants:
        name = args.study or "+".join(variants)
        definition = adhoc_definition(name, variants, seeds or 1)
        if args.definition:
            raise SpecError("--definition goes with a study file, not with --variants")
    else:
        source = args.definition or args.study or DEFAULT_STUDY
        if not args.definition and args.study and not study_path(args.study).is_file():
            raise SpecError(f"study '{args.study}' has no file ablations/studies/{args.study}.yaml: give "
                            "--variants a,b (or --definition NAME)")
        definition = load_study_definition(source)
        name = args.study or definition.name
    return plan_study(definition, name=name, seeds=seeds, overrides=args.overrides)


def _status_text(row: dict) -> str:
    """``queued (checkpoint at step 500/6000; 1 earlier attempt, the last: worker ... stopped ...)``."""
    notes = []
    if row["checkpoint_step"] is not None:
        notes.append(f"checkpoint at step {row['checkpoint_step']}/{row['steps']}")
    if row["attempts"]:
        n = row["attempts"]
        notes.append(f"{n} earlier attempt{'s' if n > 1 else ''}"
                     + (f", the last: {row['error'].splitlines()[0][:100]}" if row["error"] else ""))
    return row["status"] + (f"  ({'; '.join(notes)})" if notes else "")


def _ablate(args) -> int:
    from dfgan.studies.runner import run_study, study_status

    plan = plan_from_args(args)
    if args.dry_run:
        rows = study_status(plan, args.storage)
        print(f"study '{plan.name}' ({plan.definition.kind}): {len(rows)} cells, grid {plan.grid}, "
              f"overrides: {' '.join(plan.overrides) or '(none)'}")
        for r in rows:
            print(f"  {r['cell']:40s} seed={r['seed']:<5d} {r['spec_hash']}  {_status_text(r)}")
        counts = Counter(r["status"].split(" ")[0] for r in rows)
        print("  " + ", ".join(f"{n} {s}" for s, n in counts.most_common()))
        return 0
    out = run_study(plan, storage_url=args.storage, tracking_uri=args.tracking_uri, max_cells=args.max_cells,
                    progress=args.progress)
    print(f"report: dfgan report --study {plan.name}"
          + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""))
    return 1 if out.failed else 0


# ---- restore ----------------------------------------------------------------------------------------------------
@command("restore", "put a study's finished cells back from its committed export (reports/<study>/cells.jsonl) "
         "onto a fresh storage, and queue the rest")
def _restore_args(p):
    _plan_args(p)
    p.add_argument("--from", dest="source", help="the export: reports/<study>/cells.jsonl (default), or an older "
                   "report's runs.csv (final values only: the periodic evaluations are not in it)")
    p.add_argument("--samples", help="folder of the report's sample grids, figures/samples_<row>_seed<seed>.png, "
                   "logged as the restored runs' last sample grid (default: the export's figures/)")
    p.add_argument("--no-queue", dest="queue", action="store_false", help="do not queue the cells left to run "
                   "(default: queue them in plan order, seed-major, so that a runner of any commit takes them in "
                   "that order and a half-trained cell goes before new ones; with no live worker the earlier "
                   "queue is superseded, else only missing cells are appended)")
    p.add_argument("--dry-run", action="store_true", help="say what would be restored and queued; write nothing")
    _storage_args(p)
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="the study's extra overrides, as given to `dfgan ablate` (part of each spec hash)")
    return _restore


def _restore(args) -> int:
    from dfgan.studies.restore import CELLS_FILE, read_export, restore_study

    plan = plan_from_args(args)
    source = Path(args.source or Path("reports") / plan.name / CELLS_FILE)
    cells = read_export(source)
    samples = Path(args.samples) if args.samples else source.parent / "figures"
    label = _source_label(source)
    out = restore_study(plan, cells, source=label, storage_url=args.storage, tracking_uri=args.tracking_uri,
                        samples=samples, queue=args.queue, dry_run=args.dry_run)
    verb = "would restore" if args.dry_run else "restored"
    print(f"study '{plan.name}' from {label}: {verb} {len(out.restored)} cell(s), {len(out.already_done)} already "
          f"done, {len(out.skipped)} exported run(s) not FINISHED (left out)")
    for key in out.restored:
        print(f"  {verb}: {key}" + ("  (final values only: no periodic evaluations in the export)"
                                     if key in out.history_lost else ""))
    if not args.dry_run and args.queue:
        print(f"queued in plan order: {len(out.queued)} cell(s)" + (f": {', '.join(out.queued)}" if out.queued else "")
              + (f" ({out.superseded} earlier queue entries superseded)" if out.superseded else ""))
    return 0


def _source_label(path) -> str:
    """``path@<commit>`` when the file is committed in this checkout (`` (modified since)`` if it changed), else
    the path."""
    from dfgan.fingerprint import file_commit

    commit, modified = file_commit(path, Path.cwd())
    return f"{path}@{commit}" + (" (modified since)" if modified else "") if commit else str(path)


@command("commits", "which code a study's cells ran (the git_commit of every cell run of its cell pool); "
         "--expect fails on any other")
def _commits_args(p):
    p.add_argument("--study", required=True, help="study file name (ablations/studies/NAME.yaml): the cells of "
                   "every study sharing its cell_pool are read")
    p.add_argument("--expect", metavar="SHA", help="the commit the next cells will run (a full or abbreviated "
                   "sha): exit 2, naming the commits found, if a cell run of the pool has another one")
    p.add_argument("--allow-precision-mix", action="store_true", help="with --expect: go on although this "
                   "machine trains in another precision than most finished cells of the pool (train.precision=auto "
                   "is bf16 where bf16 is native, fp32 elsewhere; reports leave a pair of two precisions out)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                   "sqlite:///runs/mlflow.db)")
    return _commits


def _commits(args) -> int:
    from dfgan.studies.definition import pool_members
    from dfgan.studies.mlflow_glue import cell_commits
    from dfgan.tracking import resolve_uri

    studies = pool_members(args.study)
    uri = resolve_uri(args.tracking_uri, "runs")  # $MLFLOW_TRACKING_URI, else runs/mlflow.db
    found = cell_commits(uri, studies)
    where = f"cell runs of {', '.join(studies)} in {uri}"
    if not found:
        print(f"no {where}")
        return 0
    for commit, by_status in sorted(found.items()):
        print(f"{commit}: " + ", ".join(f"{n} {status}" for status, n in sorted(by_status.items())))
    other = sorted(c for c in found if args.expect and (not c.startswith(args.expect) or c.endswith("-dirty")))
    if other:
        print(f"dfgan commits: the {where} ran {', '.join(other)}, not {args.expect}: cells of one study on two "
              f"commits. Run the workers on the study's commit (scripts/study_workers.sh {args.study} --commit "
              f"{other[0][:12]}), or start a new study (another name, or other stores)")
        return 2
    return _check_precision(args, uri, studies) if args.expect else 0


def _check_precision(args, uri: str, studies: list[str]) -> int:
    """One study, one footing: the precision the next cells will train in here (the study's spec, "auto"
    resolved on this machine) against the one most of the pool's finished cells trained in; exit 2 if they
    differ, unless --allow-precision-mix."""
    from dfgan.runtime import pick_device, resolve_precision
    from dfgan.studies.definition import base_spec, load_study_definition
    from dfgan.studies.mlflow_glue import cell_tag_counts

    finished = {k: v.get("FINISHED", 0) for k, v in cell_tag_counts(uri, studies, "speed_precision").items()}
    finished = {k: n for k, n in finished.items() if n and k != "unknown"}
    definition = load_study_definition(args.study)
    variant = definition.variants[0] if definition.variants else definition.base  # precision: study-wide
    train = base_spec(variant, definition.overrides).train
    here = resolve_precision(train.precision, pick_device(train.device))
    print(f"precision: this machine trains in {here} (train.precision={train.precision}); finished cells: "
          + (", ".join(f"{n} {k}" for k, n in sorted(finished.items())) or "none"))
    if not finished or here in finished and finished[here] == max(finished.values()):
        return 0
    most = max(finished, key=finished.get)
    print(f"dfgan commits: {finished[most]} of the pool's finished cells trained in {most}, this machine would train "
          f"in {here}: a cell beside one of theirs at the same seed would not be a pair (reports leave such pairs "
          f"out). Run the workers on a machine that resolves to {most}"
          + (" (a CPU with AVX512-BF16 or AMX, or a GPU)" if most == "bf16" else "")
          + ", or pass --allow-precision-mix (scripts/study_workers.sh ... --allow-precision-mix)")
    return 0 if args.allow_precision_mix else 2


# ---- search -----------------------------------------------------------------------------------------------------
@command("search", "hyperparameter search (TPE, pruned on the periodic metric); exports the best as a variant")
def _search_args(p):
    p.add_argument("--study", required=True, help="Optuna study and MLflow experiment name")
    p.add_argument("--variant", "-v", default="full", help="variant to tune (default: full)")
    p.add_argument("--params", action="append", required=True,
                   help='searched fields, e.g. "train.lr_g=loguniform(1e-5,1e-3),model.regulariser.k=uniform(0.5,4),'
                        'model.nf=choice(16,32)"; distributions: uniform, loguniform, int, logint, choice')
    p.add_argument("--trials", type=int, default=20, help="finished trials wanted in the study (default 20)")
    p.add_argument("--metric", default="attr_acc", help="objective: a metric the runs log (default attr_acc)")
    p.add_argument("--direction", default="maximize", choices=["maximize", "minimize"])
    p.add_argument("--pruner", default="median", choices=["median", "none"])
    p.add_argument("--seed", type=int, help="TPE sampler seed (default: random)")
    p.add_argument("--retrain-seeds", type=int, default=3, help="retrain the best trial on this many fresh seeds "
                   "and report it on the test split with its interval (default 3; 0: skip)")
    p.add_argument("--export", help="where to write the best spec (default ablations/variants/<study>_best.yaml)")
    _storage_args(p)
    _progress_flag(p)
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides for every trial")
    return _search


def _search(args) -> int:
    from dfgan.studies.search import parse_params, run_search

    out = run_search(study=args.study, variant=args.variant, params=parse_params(args.params),
                     n_trials=args.trials, metric=args.metric, direction=args.direction, overrides=args.overrides,
                     storage_url=args.storage, tracking_uri=args.tracking_uri, pruner=args.pruner,
                     export=args.export, sampler_seed=args.seed, progress=args.progress,
                     retrain_seeds=args.retrain_seeds)
    print(json.dumps({"study": out.study, "complete": out.complete, "pruned": out.pruned, "failed": out.failed,
                      "best_trial": out.best_trial, "best_value": out.best_value, "metric": out.metric,
                      "best": out.best_values, "retrain": out.retrain.to_dict() if out.retrain else None,
                      "exported": str(out.exported) if out.exported else None}, indent=2))
    return 0 if out.complete else 1


# ---- report -----------------------------------------------------------------------------------------------------
@command("report", "tables (Markdown + LaTeX) and figures of a study, read from MLflow, into reports/<study>/")
def _report_args(p):
    p.add_argument("--study", required=True, help="study (= MLflow experiment) name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                   "sqlite:///runs/mlflow.db)")
    p.add_argument("--out", default="reports", help="output folder; the report goes to OUT/<study>/")
    p.add_argument("--metric", help="primary metric (default: the study file's, else the first quality metric)")
    p.add_argument("--reference", help="row that differences are taken against (default: the study's, else full)")
    p.add_argument("--overrides-set", help="which set of common overrides to report when the study ran under "
                   "several (default: the most recent); 'all' mixes them (not advised)")
    p.add_argument("--benchmarks", help="throughput records, pytest-benchmark JSON (default: OUT/<study>/"
                   "benchmarks.json, the benchmarks run on the study's own commit, else that of a study sharing its "
                   "cell_pool, else reports/benchmarks.json); "
                   "the report says which commit measured them and warns when it is not the runs' commit")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples (default 10000)")
    return _report


def _report(args) -> int:
    from dfgan.reports.build import build_report

    rep = build_report(args.study, tracking_uri=args.tracking_uri, out_dir=args.out, metric=args.metric,
                       reference=args.reference, overrides_set=args.overrides_set, benchmarks=args.benchmarks,
                       n_boot=args.bootstrap)
    print(f"report written to {rep.folder}")
    for f in rep.files:
        print(f"  {f}")
    for n in rep.notes:
        print(f"note: {n}")
    return 0
