#!/usr/bin/env bash
# Run a long study in the background: N one-thread `dfgan ablate` workers sharing one Optuna storage and one
# MLflow store, on a frozen checkout of one commit, so that every cell records the same code while the work tree
# goes on changing. Storage, cache, logs and runs live outside the work tree ($DFGAN_WORK, default ~/dfgan-work),
# so a machine that is kept resumes the study: run the same command again (finished cells are never rerun,
# killed ones are). Before any worker starts, the trained footing the study's cells share (reports/footing/: the
# DAMSM text encoder and the attribute classifier, see its README) is copied into the cache where missing; a
# cache file that differs from it stops the script (another machine's rebuild would mix two footings).
#
#   scripts/study_workers.sh claims                 # 2 workers on HEAD's code
#   scripts/study_workers.sh claims --commit 6d73a9f --workers 2
#   scripts/study_workers.sh claims --dry-run       # print what would run
#       # each start first runs `dfgan restore --study claims` on the stores (when reports/claims/cells.jsonl
#       # exists): a machine that was not kept gets the finished cells back from it, the rest queued; a kept one
#       # gets its queue back in plan order, a killed half-trained cell first (and, first of all, the finished
#       # cells of the studies sharing its cell_pool, from their exports); then `dfgan commits --expect`
#       # stops it if a cell of the study's pool ran another commit (one study, one commit), or if this machine
#       # would train in another precision than most of the pool's finished cells (train.precision=auto: bf16
#       # where bf16 is native, fp32 elsewhere; a pair of two precisions is left out of every report)
#   scripts/study_workers.sh cumulative --commit 6d73a9f --allow-precision-mix   # go on all the same
#   tail -f ~/dfgan-work/logs/claims-worker1.log    # a status line every 30 s, one line per cell
#   .venv/bin/dfgan report --study claims --tracking-uri sqlite:///$HOME/dfgan-work/runs/mlflow.db
#   scripts/study_workers.sh claims --commit 6d73a9f --benchmarks
#       # no workers: the cost side instead, in the foreground (~10 min on 2 cores; pause the workers first,
#       # kill -STOP / -CONT): the training-step and sampling benchmarks of every named variant, fp32, on the
#       # same frozen checkout -> reports/<study>/benchmarks.json, which `dfgan report` reads for that study and
#       # for the studies sharing its cell_pool that have none of their own, before the project's
#       # reports/benchmarks.json (so one run serves claims, cumulative, questions and budget)
set -euo pipefail
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
[[ $# -ge 1 && $1 != -* ]] || usage 2
study=$1; shift
commit=HEAD workers=2 dry=0 bench=0 mix=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --commit) commit=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --benchmarks) bench=1; shift ;;
    --allow-precision-mix) mix=(--allow-precision-mix); shift ;;
    -h|--help) usage 0 ;;
    *) echo "study_workers.sh: unknown argument '$1'" >&2; usage 2 ;;
  esac
done
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${DFGAN_WORK:-$HOME/dfgan-work}
py=$repo/.venv/bin/python
sha=$(git -C "$repo" rev-parse --verify "$commit^{commit}")
code=$work/code-${sha:0:12}
run() { if [[ $dry == 1 ]]; then echo "+ $*"; else "$@"; fi; }
[[ -x $py || $dry == 1 ]] || { echo "study_workers.sh: $py is missing: build it first (python3.11 -m nox -s tests, or -s ablation)" >&2; exit 1; }
# the other studies of this one's cell_pool (dfgan.studies.definition.pool_members reads the study files)
others=()
if [[ -x $py && $bench == 0 ]]; then  # an unknown study stops the script here, with the study files it could have named
  line=$(env -C "$repo" "$py" -c 'import sys
from dfgan.spec import SpecError
from dfgan.studies.definition import pool_members
try:
    print(*pool_members(sys.argv[1])[1:])
except SpecError as e:
    sys.exit(f"study_workers.sh: {e}")' "$study")
  read -ra others <<< "$line"
fi
run mkdir -p "$work/runs" "$work/cache" "$work/logs"
footing=$repo/reports/footing  # the trained networks every cell of the claims pool shares (its README)
if [[ -f $footing/SHA256SUMS ]]; then
  while read -r sum rel; do
    dst=$work/cache/$rel
    if [[ -f $dst ]]; then
      have=$(sha256sum "$dst" | cut -d' ' -f1)
      if [[ $have != "$sum" ]]; then
        echo "study_workers.sh: $dst (sha256 $have) is not the study's $rel ($sum): move it away; the study's" \
             "copy, $footing/$rel, then takes its place" >&2
        exit 1
      fi
    else
      run mkdir -p "$(dirname "$dst")"
      run cp "$footing/$rel" "$dst"
    fi
  done < "$footing/SHA256SUMS"
fi
if [[ ! -d $code ]]; then
  run git -C "$repo" worktree add --detach "$code" "$sha"
fi
run ln -sfn "$work/runs" "$code/runs"   # train.out_dir "runs": the cells, studies.db and mlflow.db under $work/runs
if [[ $bench == 1 ]]; then  # pytest-benchmark records the checkout's commit: the report compares it with the runs'
  out=$repo/reports/$study/benchmarks.json
  run mkdir -p "$(dirname "$out")"
  run env -C "$code" PYTHONPATH="$code" DFGAN_CACHE="$work/cache" \
      MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \
      "$py" -m pytest benchmarks/test_train_variants.py benchmarks/test_sampling.py -p no:xdist -p no:cacheprovider \
      -q -k "(test_train_step or test_sampling_variant) and fp32" --benchmark-json="$out"
  echo "cost side of '$study' (commit $sha): $out"
  exit 0
fi
# the finished cells of the studies sharing this one's cells (same cell_pool) first, without queueing theirs, so
# that a cell they have is reused, not trained again, on a machine that was not kept
for other in "${others[@]}"; do
  if [[ -f $repo/reports/$other/cells.jsonl ]]; then
    run env -C "$repo" "$py" -m dfgan restore --study "$other" --no-queue --storage "sqlite:///$work/runs/studies.db" \
        --tracking-uri "sqlite:///$work/runs/mlflow.db"
  fi
done
if [[ -f $repo/reports/$study/cells.jsonl ]]; then
  # the study's finished cells back from its committed export when the stores are new (a machine that was not
  # kept), and the queue in plan order (a killed half-trained cell first): nothing is restored twice, and the
  # spec hashes must be the study's (dfgan.studies.restore)
  run env -C "$repo" "$py" -m dfgan restore --study "$study" --storage "sqlite:///$work/runs/studies.db" \
      --tracking-uri "sqlite:///$work/runs/mlflow.db"
fi
# one study, one commit: stop if a cell run of the study or of a study sharing its cells ran other code
run env -C "$repo" "$py" -m dfgan commits --study "$study" --tracking-uri "sqlite:///$work/runs/mlflow.db" \
    --expect "$sha" "${mix[@]}"
for w in $(seq 1 "$workers"); do
  log=$work/logs/$study-worker$w.log
  cmd=(env -C "$code" PYTHONPATH="$code" DFGAN_CACHE="$work/cache" OMP_NUM_THREADS=1
       MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
       nice -n 5 "$py" -m dfgan ablate --study "$study" --progress train.threads=1)  # --progress: commits before
  # the default became on print nothing per step to a log file
  if [[ $dry == 1 ]]; then
    echo "+ nohup ${cmd[*]} >> $log 2>&1 &"
  else
    nohup "${cmd[@]}" >> "$log" 2>&1 &
    echo "worker $w: pid $!, log $log"
    sleep 20  # the first worker creates the stores; the others find them (creation is also locked)
  fi
done
echo "code: $code (commit $sha); storage: $work/runs/studies.db; MLflow: sqlite:///$work/runs/mlflow.db"
