#!/usr/bin/env bash
# Instructions the server executes per start, by part: a count that does not depend on
# how busy or fast the machine is, for comparing two builds on a noisy machine.
#
#   scripts/load/instructions.sh [SECONDS]            (default 20)
#
# Starts `ringfence serve` under valgrind's callgrind as run.sh starts it (a fresh data
# dir, the file sink, every rate limit raised out of reach), warms it up with 5 s of
# starts early in a two-minute window (see run.sh), zeroes the counts, runs SECONDS of
# starts with wrk at 8 connections, and
# prints the instructions per completed start of the whole process and of its main
# parts (inclusive: a part's callees count in it; the async threads' tasks are the
# requests and the outbox worker; parts within one request's future,
# such as its handler, are left out: callgrind does not attribute the polls of nested
# futures reliably; cargo bench --bench decision times the decision). Under valgrind the threads take
# turns on one core and the server runs ~50 times slower, so a batch of the SQLite
# writer holds a few starts instead of a dozen, and work done on a timer (the
# checkpointer's) weighs more per start than at full speed: compare builds with each
# other, not with the load script's figures. SHA-256 runs its portable code here
# (valgrind does not offer the CPU's SHA instructions), so it weighs more than natively.
#
# Environment: RINGFENCE_BIN=path (default target/release/ringfence, unbuilt);
# CHECKS=1 then checks the codes those starts sent for SECONDS / 2, and reports the
# same parts per check; OUT=path keeps the callgrind profile of the starts
# (callgrind_annotate reads it), and with CHECKS=1 that of the checks as path.checks.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-20}"
PORT="${PORT:-18377}"
BIN="${RINGFENCE_BIN:-target/release/ringfence}"
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install -y valgrind" >&2; exit 1; }
. scripts/load/serve.sh
need_wrk_and "$BIN"

one_server_work_dir

RUNNER="valgrind --tool=callgrind --callgrind-out-file=$WORK/callgrind.out" \
  start_server "$BIN" "$WORK" "$PORT"
# The warm-up and the run in one window (shadow-blocked starts would do less work).
wait_for_fresh_window $((SECS + 10))
RUN_SALT=1 wrk -t1 -c8 -d5s -s scripts/load/start.lua "http://127.0.0.1:$PORT" >/dev/null
callgrind_control -z "$PID" >/dev/null 2>&1
OUT_WRK=$(RUN_SALT=2 wrk -t1 -c8 -d"${SECS}s" -s scripts/load/start.lua "http://127.0.0.1:$PORT")
N=$(echo "$OUT_WRK" | awk '/requests in/ {print $1}')
echo "$OUT_WRK" | grep -E "non-2xx" || true
sleep 2
echo "messages in the sink: $(wc -l <"$WORK/sms.jsonl") (every start of the warm-up and the run sends one)"
callgrind_control -d "$PID" >/dev/null 2>&1
if [ -n "${CHECKS:-}" ]; then
  # The codes the starts sent, each checked once (wrk stops before it runs out of them).
  pairs_from_sink "$WORK/sms.jsonl" "$WORK/pairs.txt"
  callgrind_control -z "$PID" >/dev/null 2>&1
  OUT_WRK=$(PAIRS="$WORK/pairs.txt" WRK_THREADS=1 wrk -t1 -c8 -d"$((SECS / 2))s" -s scripts/load/check.lua "http://127.0.0.1:$PORT")
  N_CHECKS=$(echo "$OUT_WRK" | awk '/requests in/ {print $1}')
  echo "$OUT_WRK" | grep -E "non-2xx" || true
  sleep 2
  callgrind_control -d "$PID" >/dev/null 2>&1
fi
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
[ -n "${OUT:-}" ] && cp "$WORK/callgrind.out.1" "$OUT"
[ -n "${OUT:-}" ] && [ -n "${CHECKS:-}" ] && cp "$WORK/callgrind.out.2" "$OUT.checks"
report() { # requests, their name, the profile of their run
  python3 - "$@" <<'PY'
import re, subprocess, sys
n, what = int(sys.argv[1]), sys.argv[2]
annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", sys.argv[3]],
                           capture_output=True, text=True, check=True).stdout
rows = {}
# The table of functions only: the annotated source after it has lines of the same form.
for line in annotated.split("\n-- Auto-annotated source")[0].splitlines():
    m = re.match(r"^\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$", line)
    if m and "=>" not in line:
        rows.setdefault(m.group(2), int(m.group(1).replace(",", "")))
parts = [
    ("the whole process", r"^PROGRAM TOTALS"),
    ("the async threads' tasks", r"multi_thread::worker::Context::run_task \["),
    ("  tracing spans", r"tracing_core::subscriber::Subscriber>::new_span \["),
    ("  the outbox worker", r"OutboxWorker::run::\{\{closure\}\} \["),
    ("the SQLite writer thread", r"writer.rs:std::sys::backtrace::__rust_begin_short_backtrace"),
    ("  its jobs", r"writer.rs:<ringfence::store::sqlite::writer::TypedJob<T,F> as ringfence::store::sqlite::writer::Job>::run \["),
    ("checkpoints (both threads)", r"sqlite3.c:sqlite3Checkpoint \["),
    ("SHA-256 (portable code here)", r"sha2::sha256::compress256 \["),
]
print(f"{n} {what}s; instructions per {what}:")
for label, pattern in parts:
    v = next((v for k, v in rows.items() if re.search(pattern, k)), 0)
    print(f"  {label:36s} {v / n:10,.0f}")
PY
}
report "$N" start "$WORK/callgrind.out.1"  # the dump made after the starts
[ -n "${CHECKS:-}" ] && report "$N_CHECKS" check "$WORK/callgrind.out.2"
true
