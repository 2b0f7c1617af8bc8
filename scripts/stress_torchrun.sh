#!/usr/bin/env bash
# Stress the end of a two-rank torchrun job (not in CI): run the job of
# tests/test_corpus.py::test_two_gloo_ranks_score_any_corpus_size_like_one_process (tests/score_many.py, two gloo
# ranks scoring small corpora with the tiny test model) RUNS times on an idle machine, then RUNS times with busy
# loops on every core, and count the jobs that did not exit 0 (before the process group was destroyed at the end
# of every command, rank 1 sometimes died in SIGABRT, "terminate called without an active exception", after all
# its work was done, and torchrun exited 1).
#
#   scripts/stress_torchrun.sh [RUNS] [LOADED_RUNS]      # defaults 30 30
#
# On a shared machine run it under the CPU lock: flock /tmp/emofast-cpu.lock scripts/stress_torchrun.sh
# Environment: PYTHON (default .venv/bin/python, or python3), LOAD_PROCS (busy loops in the loaded part; default
# the number of cores), CORPORA (text counts of the corpora each job scores; default "1 7 50"), KEEP=1 keeps the
# work folder. Each failure's log is kept and its last lines printed. Exit status: 1 if any job failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-30}
LOADED_RUNS=${2:-30}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
LOAD_PROCS=${LOAD_PROCS:-$(nproc)}
CORPORA=${CORPORA:-"1 7 50"}
WORK=$(mktemp -d /tmp/emofast-stress.XXXXXX)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
BUSY=()

cleanup() {
  for pid in "${BUSY[@]}"; do kill "$pid" 2>/dev/null; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

# The tiny model, a fitted probe and the corpora, once (the same builders as the tests).
"$PY" - "$WORK" "$CORPORA" <<'EOF' || exit 2
import sys
from pathlib import Path

sys.path.insert(0, "tests")
import tiny
from test_corpus import corpus_texts, run_args, write_jsonl
from test_workflow import write_pairs

from emofast.cli import main

base, sizes = Path(sys.argv[1]), [int(n) for n in sys.argv[2].split()]
tiny.model("llama").save_pretrained(base / "model")
tiny.tokenizer().save_pretrained(base / "model")
write_pairs(base / "data")
assert main(["run", *run_args(base), "--out", str(base / "run")]) == 0
for n in sizes:
    write_jsonl(base / f"c{n}.jsonl", corpus_texts(n, seed=n))
EOF

job() {  # one two-rank job; its log in $WORK/log-$1
  local out=$WORK/out-$1 args=()
  rm -rf "$out" && mkdir -p "$out"
  for n in $CORPORA; do args+=("$WORK/c$n.jsonl" "$out/$n.parquet"); done
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 tests/score_many.py "$WORK/run" "${args[@]}" \
    -- --no-progress >"$WORK/log-$1" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "  job $1: exit $rc; log kept in $WORK/log-$1 (KEEP=1 keeps the folder):" >&2
    grep -E "terminate|Signal|SIGABRT|Error|exitcode" "$WORK/log-$1" | tail -5 | sed 's/^/    /' >&2
    KEEP=1
  else
    for n in $CORPORA; do
      [ -f "$out/$n.parquet" ] || { echo "  job $1: exit 0 but $out/$n.parquet is missing" >&2; rc=3; KEEP=1; }
    done
  fi
  rm -rf "$out"
  return $rc
}

phase() {  # phase TAG COUNT LABEL
  local fails=0 t0=$SECONDS
  for i in $(seq 1 "$2"); do job "$1-$i" || fails=$((fails + 1)); done
  echo "$3: $fails failed of $2 jobs in $((SECONDS - t0)) s; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
  FAILS=$((FAILS + fails))
}

FAILS=0
echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
phase idle "$RUNS" "idle"
for _ in $(seq 1 "$LOAD_PROCS"); do "$PY" -c "while True: pass" & BUSY+=($!); done
phase loaded "$LOADED_RUNS" "loaded ($LOAD_PROCS busy loops)"
for pid in "${BUSY[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
BUSY=()
echo "total: $FAILS failed of $((RUNS + LOADED_RUNS))"
[ "$FAILS" -eq 0 ]
