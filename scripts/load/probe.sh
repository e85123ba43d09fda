#!/usr/bin/env bash
# One short run of starts, measured from the inside: for comparing two builds or two
# settings back to back, where the load script (run.sh) measures the targets.
#
#   scripts/load/probe.sh [SECONDS]                    (default 12)
#
# Starts `ringfence serve` as run.sh does (a fresh data dir, the file sink, every rate
# limit raised out of reach), probes the ceiling (GET /healthz) for 4 s, then runs
# SECONDS of starts with wrk at $CONNS connections (32), early in a two-minute window,
# and with CHECKS=1 half as long of checks of the codes those starts sent. Prints, for
# each: the rate, its p99 and share of the ceiling; the server's CPU per request by
# thread (the SQLite threads, the async threads; each with the part of it spent in the
# kernel), and that of PostgreSQL and Redis;
# how busy the machine was (/proc/stat, steal included); and the bytes the SQLite
# writer thread wrote per request (/proc/PID/task/TID/io).
#
# Environment:
#   RINGFENCE_BIN=path   the binary to run (default: target/release/ringfence, unbuilt)
#   POSTGRES_URL=url     store on PostgreSQL, in a fresh database on that server
#   PG_CREATE_OPTS='…'   options of that database's CREATE DATABASE (an experiment:
#                        "TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'", say)
#   REDIS_URL=url        counters in Redis; its database is emptied first, and what the
#                        load leaves there (closed prefixes, a day's spend) would
#                        change what a test sees: use one nothing else uses, such as
#                        redis://127.0.0.1:6379/9 (run.sh's), never the tests'
#   CHECKS=1             checks each code the starts sent, for SECONDS / 2, after them;
#                        CHECKS=number checks them by number (/v1/verification-checks)
#   CONNS=n              wrk's connections (32)
#   PERCENTILES=1        prints the latency's percentiles from p10 to p99.9, its mean,
#                        standard deviation and maximum
#   SQL='…'              statements run on the SQLite database before the load, with
#                        the sqlite3 shell (an experiment on the schema, say)
#   WRITER_STATE=1       samples the SQLite writer's state during the load
#                        (scripts/load/writer-state.py)
#   PERF=start|check     samples the server's stacks with `perf record` (linux-perf)
#                        during that part of the load and prints the functions that
#                        took the most samples, with their own share and with what
#                        they called; PERF_OUT=dir keeps perf.data there;
#                        PERF_ALL=1 samples the whole machine (PostgreSQL, Redis, wrk)
#                        and prints the processes' shares first
#   WAL_FRAMES=1         copies the WAL 6 s into the load and counts its frames per
#                        commit by B-tree (scripts/load/wal-frames.py)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-12}"
CONNS="${CONNS:-32}"
PORT="${PORT:-18199}"
BIN="${RINGFENCE_BIN:-target/release/ringfence}"
. scripts/load/serve.sh
need_wrk_and "$BIN"

WORK="$(mktemp -d)"
PID=
DB=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  [ -n "$DB" ] && psql "$POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null
  rm -rf "$WORK"
  true
}
trap cleanup EXIT

STORE=()
if [ -n "${POSTGRES_URL:-}" ]; then
  DB="rf_probe_$$"
  STORE=(--database-url "$(fresh_pg_database "$DB")")
fi
if [ -n "${REDIS_URL:-}" ]; then
  empty_redis "$REDIS_URL"
  STORE+=(--counters-url "$REDIS_URL")
fi
start_server "$BIN" "$WORK" "$PORT" "${STORE[@]}"
[ -n "${SQL:-}" ] && sqlite3 "$WORK/data/ringfence.db" "$SQL"

CEILING=$(wrk -t2 -c"$CONNS" -d4s "http://127.0.0.1:$PORT/healthz" | awk '/Requests\/sec/ {print $2}')
wait_for_fresh_window "$SECS"

# CPU ticks by thread group of the server, and of the processes beside it.
server_ticks() {
  for t in /proc/"$PID"/task/*; do
    echo "$(cat "$t/comm") $(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13, $13}')"
  done | awk '{k = ($1 ~ /^rf-sqlite/) ? "sqlite_threads" : (($1 ~ /^tokio/) ? "async_threads" : "other_threads"); a[k] += $2; a[k ".sys"] += $3}
              END {for (k in a) printf "%s=%d ", k, a[k]}'
}
other_ticks() {
  cat /proc/[0-9]*/stat 2>/dev/null | awk '$2 ~ /^\((postgres|redis-server)\)$/ {n = $2; gsub(/[()]/, "", n); a[n] += $14 + $15}
                                          END {for (k in a) printf "%s=%d ", k, a[k]}'
}
WRITER=$( (grep -l '^rf-sqlite-write' /proc/"$PID"/task/*/comm || true) | head -1 | xargs -r dirname)
written() { [ -n "$WRITER" ] && awk '/^wchar/ {print $2}' "$WRITER/io" || echo 0; }

# Runs wrk with the given arguments for SECONDS and reports per request of the run:
# the rate, its p99 and share of the ceiling, CPU by thread group and beside the
# server, how busy the machine was, and the writer's bytes.
measure() { # what (a request's name, for the report), seconds, wrk args...
  local what=$1 secs=$2; shift 2
  local s0 o0 m0 w0 s1 o1 m1 w1 out n
  s0=$(server_ticks); o0=$(other_ticks); m0=$(head -1 /proc/stat); w0=$(written)
  local perf_pid=
  if [ "${PERF:-}" = "$what" ]; then
    local scope=(-p "$PID")
    [ -n "${PERF_ALL:-}" ] && scope=(-a)
    perf record -q -F 499 ${PERF_CALLGRAPH:--g} "${scope[@]}" -o "$WORK/perf.data" -- sleep "$((secs - 1))" 2>/dev/null &
    perf_pid=$!
  fi
  out=$(wrk -t2 -c"$CONNS" -d"${secs}s" --latency "$@" "http://127.0.0.1:$PORT")
  s1=$(server_ticks); o1=$(other_ticks); m1=$(head -1 /proc/stat); w1=$(written)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$out" | grep -E "non-2xx|^latency" || true
  python3 - "$what" "$CEILING" "$out" "$n" "$s0" "$s1" "$o0" "$o1" "$m0" "$m1" "$w0" "$w1" <<'PY'
import sys
what, ceiling, out, n = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rate = float(next(l.split()[1] for l in out.splitlines() if "Requests/sec" in l))
p99 = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("99%"))
print(f"ceiling {ceiling:,.0f} req/s; {what}s {rate:,.0f}/s ({100 * rate / ceiling:.1f} % of the ceiling), p99 {p99}")
hz = 100  # clock ticks per second (USER_HZ)
def per_op(a, b):
    a = dict(x.split("=") for x in a.split()); b = dict(x.split("=") for x in b.split())
    us = lambda k: (int(b[k]) - int(a.get(k, 0))) * 1e6 / hz / n
    # A group's total, then the part of it spent in the kernel (".sys", the server's).
    return " ".join(f"{k} {us(k):.0f}" + (f" (system {us(k + '.sys'):.0f})" if k + ".sys" in b else "")
                    for k in sorted(b) if not k.endswith(".sys"))
print(f"CPU µs per {what}: server:", per_op(sys.argv[5], sys.argv[6]), "| beside it:", per_op(sys.argv[7], sys.argv[8]))
m0 = [int(x) for x in sys.argv[9].split()[1:]]; m1 = [int(x) for x in sys.argv[10].split()[1:]]
d = [b - a for a, b in zip(m0, m1)]; total = sum(d); idle = d[3] + d[4]
print(f"machine: {100 * (total - idle) / total:.0f} % busy (user {100 * d[0] / total:.0f}, system {100 * d[2] / total:.0f}, "
      f"softirq {100 * d[6] / total:.0f}, iowait {100 * d[4] / total:.0f}, steal {100 * d[7] / total:.0f}), "
      f"{(total - idle) * 1e6 / hz / n:.0f} µs busy per {what}")
w = int(sys.argv[12]) - int(sys.argv[11])
if w: print(f"the SQLite writer wrote {w / n:,.0f} bytes per {what}")
PY
  echo "requests: $n"
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    echo "the server's functions by samples (own, then with what they called), ${what}s:"
    if [ -n "${PERF_ALL:-}" ]; then
      perf report -i "$WORK/perf.data" --no-children --sort comm --stdio -g none >"$WORK/perf.txt" 2>/dev/null || true
      grep -E '^ +[0-9]' "$WORK/perf.txt" | cut -c1-160 | sed 's/ *$//' | head -10 || true
    fi
    for c in --no-children --children; do
      perf report -i "$WORK/perf.data" $c --sort symbol --stdio -g none >"$WORK/perf.txt" 2>/dev/null || true
      grep -E '^ +[0-9]' "$WORK/perf.txt" | cut -c1-160 | sed 's/ *$//' | head -40 || true
    done
    [ -n "${PERF_OUT:-}" ] && mkdir -p "$PERF_OUT" && cp "$WORK/perf.data" "$PERF_OUT/"
  fi
}

HELPERS=()
if [ -n "${WRITER_STATE:-}" ] && [ -n "$WRITER" ]; then
  (sleep 2; python3 scripts/load/writer-state.py "$WRITER" $((SECS - 4)) >"$WORK/state.out") &
  HELPERS+=($!)
fi
if [ -n "${WAL_FRAMES:-}" ]; then
  (sleep 6; cp "$WORK/data/ringfence.db-wal" "$WORK/wal.copy") &
  HELPERS+=($!)
fi
measure start "$SECS" -s scripts/load/start.lua
[ ${#HELPERS[@]} -gt 0 ] && wait "${HELPERS[@]}"
if [ -n "${CHECKS:-}" ]; then
  pairs_from_sink "$WORK/sms.jsonl" "$WORK/pairs.txt"
  BY_NUMBER=$([ "$CHECKS" = number ] && echo 1 || echo 0) PAIRS="$WORK/pairs.txt" WRK_THREADS=2 \
    measure check $((SECS / 2)) -s scripts/load/check.lua
else
  echo "messages in the sink: $(wc -l <"$WORK/sms.jsonl")"
fi
[ -s "$WORK/state.out" ] && { echo "the SQLite writer's state:"; cat "$WORK/state.out"; }
if [ -s "$WORK/wal.copy" ]; then
  sqlite3 "$WORK/data/ringfence.db" "SELECT name, pageno FROM dbstat" >"$WORK/pages.txt"
  python3 scripts/load/wal-frames.py "$WORK/wal.copy" "$WORK/pages.txt"
fi
