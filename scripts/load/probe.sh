#!/usr/bin/env bash
# One short run of starts, measured from the inside: for comparing two builds or two
# settings back to back, where the load script (run.sh) measures the targets.
#
#   scripts/load/probe.sh [SECONDS]                    (default 12)
#
# Starts `ringfence serve` as run.sh does (a fresh data dir, the file sink, every rate
# limit raised out of reach), probes the ceiling (GET /healthz) for 4 s, then runs
# SECONDS of starts with wrk at $CONNS connections (32), early in a two-minute window.
# Prints starts/s, their p99 and share of the ceiling; the server's CPU per start by
# thread (the SQLite threads, the async threads), and that of PostgreSQL and Redis;
# how busy the machine was (/proc/stat); and the bytes the SQLite writer thread wrote
# per start (/proc/PID/task/TID/io).
#
# Environment:
#   RINGFENCE_BIN=path   the binary to run (default: target/release/ringfence, unbuilt)
#   POSTGRES_URL=url     store on PostgreSQL, in a fresh database on that server
#   REDIS_URL=url        counters in Redis; its database is emptied first, and what the
#                        load leaves there (closed prefixes, a day's spend) would
#                        change what a test sees: use one nothing else uses, such as
#                        redis://127.0.0.1:6379/9 (run.sh's), never the tests'
#   SQL='…'              statements run on the SQLite database before the load, with
#                        the sqlite3 shell (an experiment on the schema, say)
#   WRITER_STATE=1       samples the SQLite writer's state during the load
#                        (scripts/load/writer-state.py)
#   WAL_FRAMES=1         copies the WAL 6 s into the load and counts its frames per
#                        commit by B-tree (scripts/load/wal-frames.py)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-12}"
CONNS="${CONNS:-32}"
PORT="${PORT:-18199}"
BIN="${RINGFENCE_BIN:-target/release/ringfence}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release, or set RINGFENCE_BIN" >&2; exit 1; }
. scripts/load/serve.sh

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
  psql "$POSTGRES_URL" -qc "CREATE DATABASE $DB"
  STORE=(--database-url "${POSTGRES_URL%/*}/$DB?sslmode=disable")
fi
if [ -n "${REDIS_URL:-}" ]; then
  redis-cli -u "$REDIS_URL" FLUSHDB >/dev/null
  STORE+=(--counters-url "$REDIS_URL")
fi
start_server "$BIN" "$WORK" "$PORT" "${STORE[@]}"
[ -n "${SQL:-}" ] && sqlite3 "$WORK/data/ringfence.db" "$SQL"

CEILING=$(wrk -t2 -c"$CONNS" -d4s "http://127.0.0.1:$PORT/healthz" | awk '/Requests\/sec/ {print $2}')
# As in run.sh: starts that cross a two-minute window of the pumping detector would see
# their prefixes judged part of the way.
left=$((120 - $(date +%s) % 120))
[ "$left" -lt $((SECS + 5)) ] && sleep "$left"

# CPU ticks by thread group of the server, and of the processes beside it.
server_ticks() {
  for t in /proc/"$PID"/task/*; do
    echo "$(cat "$t/comm") $(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')"
  done | awk '{k = ($1 ~ /^rf-sqlite/) ? "sqlite_threads" : (($1 ~ /^tokio/) ? "async_threads" : "other_threads"); a[k] += $2}
              END {for (k in a) printf "%s=%d ", k, a[k]}'
}
other_ticks() {
  cat /proc/[0-9]*/stat 2>/dev/null | awk '$2 ~ /^\((postgres|redis-server)\)$/ {n = $2; gsub(/[()]/, "", n); a[n] += $14 + $15}
                                          END {for (k in a) printf "%s=%d ", k, a[k]}'
}
WRITER=$( (grep -l '^rf-sqlite-write' /proc/"$PID"/task/*/comm || true) | head -1 | xargs -r dirname)
written() { [ -n "$WRITER" ] && awk '/^wchar/ {print $2}' "$WRITER/io" || echo 0; }

S0=$(server_ticks); O0=$(other_ticks); M0=$(head -1 /proc/stat); W0=$(written)
HELPERS=()
if [ -n "${WRITER_STATE:-}" ] && [ -n "$WRITER" ]; then
  (sleep 2; python3 scripts/load/writer-state.py "$WRITER" $((SECS - 4)) >"$WORK/state.out") &
  HELPERS+=($!)
fi
if [ -n "${WAL_FRAMES:-}" ]; then
  (sleep 6; cp "$WORK/data/ringfence.db-wal" "$WORK/wal.copy") &
  HELPERS+=($!)
fi
OUT=$(wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s scripts/load/start.lua "http://127.0.0.1:$PORT")
S1=$(server_ticks); O1=$(other_ticks); M1=$(head -1 /proc/stat); W1=$(written)
[ ${#HELPERS[@]} -gt 0 ] && wait "${HELPERS[@]}"

N=$(echo "$OUT" | awk '/requests in/ {print $1}')
python3 - "$CEILING" "$OUT" "$N" "$S0" "$S1" "$O0" "$O1" "$M0" "$M1" "$W0" "$W1" <<'PY'
import sys
ceiling, out, n = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rate = float(next(l.split()[1] for l in out.splitlines() if "Requests/sec" in l))
p99 = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("99%"))
print(f"ceiling {ceiling:,.0f} req/s; starts {rate:,.0f}/s ({100 * rate / ceiling:.1f} % of the ceiling), p99 {p99}")
hz = 100  # clock ticks per second (USER_HZ)
def per_start(a, b):
    a = dict(x.split("=") for x in a.split()); b = dict(x.split("=") for x in b.split())
    return " ".join(f"{k} {(int(b[k]) - int(a.get(k, 0))) * 1e6 / hz / n:.0f}" for k in sorted(b))
print("CPU µs per start: server:", per_start(sys.argv[4], sys.argv[5]), "| beside it:", per_start(sys.argv[6], sys.argv[7]))
m0 = [int(x) for x in sys.argv[8].split()[1:]]; m1 = [int(x) for x in sys.argv[9].split()[1:]]
d = [b - a for a, b in zip(m0, m1)]; total = sum(d); idle = d[3] + d[4]
print(f"machine: {100 * (total - idle) / total:.0f} % busy (user {100 * d[0] / total:.0f}, system {100 * d[2] / total:.0f}, "
      f"softirq {100 * d[6] / total:.0f}, iowait {100 * d[4] / total:.0f}), {(total - idle) * 1e6 / hz / n:.0f} µs busy per start")
w = int(sys.argv[11]) - int(sys.argv[10])
if w: print(f"the SQLite writer wrote {w / n:,.0f} bytes per start")
PY
echo "messages in the sink: $(wc -l <"$WORK/sms.jsonl"), requests: $N"
[ -s "$WORK/state.out" ] && { echo "the SQLite writer's state:"; cat "$WORK/state.out"; }
if [ -s "$WORK/wal.copy" ]; then
  sqlite3 "$WORK/data/ringfence.db" "SELECT name, pageno FROM dbstat" >"$WORK/pages.txt"
  python3 scripts/load/wal-frames.py "$WORK/wal.copy" "$WORK/pages.txt"
fi
