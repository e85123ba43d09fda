#!/usr/bin/env bash
# Load test of the verification service on its embedded SQLite default.
#
#   scripts/load/run.sh [DURATION_SECONDS]
#
# Builds the release binary, starts `ringfence serve` on a fresh data dir with the file
# sink, and measures with wrk at 32 connections, in one run:
#   1. the machine's ceiling: GET /healthz (no work);
#   2. starts: POST /v1/verifications, a fresh valid number per request;
#   3. checks: POST /v1/verifications/{id}/check with the right code, each verification
#      once (ids and codes taken from the sink file of step 2).
# Prints requests/s and latency percentiles of each, and the server's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-10}"
CONNS="${CONNS:-32}"
THREADS="${WRK_THREADS:-4}"
PORT="${PORT:-18181}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }

cargo build --release --quiet
BIN=target/release/ringfence
WORK="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

export RINGFENCE_KEY
RINGFENCE_KEY="$("$BIN" keys create --data-dir "$WORK/data" --name load | tail -1)"
RUST_LOG=warn "$BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
  --sms-sink "file:$WORK/sms.jsonl" --log-format json >"$WORK/serve.out" 2>"$WORK/serve.err" &
PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

echo "== machine: $(nproc) cores, $(date -u +%Y-%m-%d), wrk -t$THREADS -c$CONNS -d${DURATION}s"
echo "== 1. ceiling: GET /healthz"
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/healthz" | grep -E "Requests/sec|Latency|50%|90%|99%|Non-2xx"

echo "== 2. starts: POST /v1/verifications (fresh numbers)"
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s scripts/load/start.lua "http://127.0.0.1:$PORT" \
  | grep -E "Requests/sec|Latency|50%|90%|99%|non-2xx|Non-2xx"

# Let the outbox drain, then pair each verification id with its code.
for _ in $(seq 300); do
  queued=$(python3 - "$WORK/data/ringfence.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(c.execute("select count(*) from outbox where status in ('queued','sending','retry')").fetchone()[0])
PY
)
  [ "$queued" = 0 ] && break
  sleep 0.2
done
python3 - "$WORK/sms.jsonl" "$WORK/pairs.txt" <<'PY'
import json, re, sys
n = 0
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
    for line in f:
        m = json.loads(line)
        code = re.search(r"\d{4,10}", m["body"]).group()
        out.write(f'{m["verification_id"]} {code}\n')
        n += 1
print(f"messages delivered to the sink: {n}")
PY

echo "== 3. checks: POST /v1/verifications/{id}/check (right code, each once)"
PAIRS="$WORK/pairs.txt" WRK_THREADS="$THREADS" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
  -s scripts/load/check.lua "http://127.0.0.1:$PORT" | grep -E "Requests/sec|Latency|50%|90%|99%|non-2xx|Non-2xx"

echo "== server peak RSS: $(grep VmHWM /proc/$PID/status | awk '{print $2/1024 " MiB"}')"
echo "== database: $(du -sh "$WORK/data" | cut -f1) on disk"
