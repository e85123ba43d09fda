#!/usr/bin/env bash
# Where the server's resident memory grows: SECONDS of starts, then half as long of
# checks of the codes they sent, as in run.sh, printing after each phase the server's
# resident set (now and peak, its anonymous and file-backed parts) and its thread count.
#
#   scripts/load/memory.sh [SECONDS]                    (default 20)
#
# Environment: RINGFENCE_BIN=path (default target/release/ringfence, unbuilt), CONNS=n
# (wrk's connections, 32), PORT.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-20}"
CONNS="${CONNS:-32}"
PORT="${PORT:-18198}"
BIN="${RINGFENCE_BIN:-target/release/ringfence}"
. scripts/load/serve.sh
need_wrk_and "$BIN"

one_server_work_dir

memory() { # label
  awk -v label="$1" -v threads="$(ls "/proc/$PID/task" | wc -l)" '
    /^(VmHWM|VmRSS|RssAnon|RssFile):/ { v[$1] = sprintf("%.1f", $2 / 1024) }
    END { printf "%-14s RSS %s MiB (peak %s; anonymous %s, files %s), %d threads\n",
          label, v["VmRSS:"], v["VmHWM:"], v["RssAnon:"], v["RssFile:"], threads }
  ' "/proc/$PID/status"
}

start_server "$BIN" "$WORK" "$PORT"
memory "started"
wait_for_fresh_window "$SECS"
wrk -t"$(nproc)" -c"$CONNS" -d"${SECS}s" -s scripts/load/start.lua "http://127.0.0.1:$PORT" \
  | grep -E "Requests/sec" | sed 's/^ */starts: /'
memory "after starts"
pairs_from_sink "$WORK/sms.jsonl" "$WORK/pairs.txt"
PAIRS="$WORK/pairs.txt" wrk -t"$(nproc)" -c"$CONNS" -d"$((SECS / 2))s" -s scripts/load/check.lua \
  "http://127.0.0.1:$PORT" | grep -E "Requests/sec" | sed 's/^ */checks: /'
memory "after checks"
