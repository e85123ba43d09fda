#!/usr/bin/env bash
# Load test of the verification service on its embedded SQLite default.
#
#   scripts/load/run.sh [DURATION_SECONDS]        (env: MODES="full normal", CONNS=32, ROUNDS=1)
#   MODES=postgres POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test scripts/load/run.sh
#   MODES="full postgres+redis" POSTGRES_URL=… REDIS_URL=redis://127.0.0.1:6379/9 scripts/load/run.sh
#
# The binary is built and run from $CARGO_TARGET_DIR when it is set (target/ otherwise);
# RINGFENCE_BIN=path runs that binary instead, unbuilt (to compare two builds).
# MODES lists what to measure: `full` and `normal` are the SQLite durability modes;
# `postgres` uses a fresh database created on the server of $POSTGRES_URL, with the
# counters in memory; `postgres+redis` the same with the counters in Redis at
# $REDIS_URL, whose database (default 9) is emptied first: use one nothing else uses.
#
# Builds the release binary and, for each durability mode in $MODES, starts
# `ringfence serve` on a fresh data dir with the file sink and measures with wrk at
# $CONNS connections, in one run:
#   1. the machine's ceiling: GET /healthz (no work);
#   2. starts: POST /v1/verifications, a fresh valid number per request (run twice as
#      long as the others, three times on PostgreSQL, so that step 3 has a pending
#      verification for every check), begun early in a two-minute window (see
#      wait_for_fresh_window in serve.sh); every start sends a message, so `messages delivered`
#      must match the starts' `requests in` (a few more: wrk does not count the
#      requests still open when it stops);
#   3. checks: POST /v1/verifications/{id}/check with the right code, each verification
#      once (ids and codes taken from the sink file of step 2); a run that used up the
#      pairs shows non-2xx responses and must be repeated with a shorter duration.
# Prints requests/s and latency percentiles of each, and the server's peak RSS.
#
# ROUNDS=n measures the modes in turn n times (mode 1, mode 2, …, mode 1, mode 2, …) and
# ends with each mode's median starts/s and checks/s and its share of the first mode's,
# from the medians and, as a range, round by round. This machine's speed drifts within
# minutes: one measurement of each mode can put one backend in a fast minute and the
# other in a slow one, and the turns weigh a drift on every mode alike.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-10}"
CONNS="${CONNS:-32}"
THREADS="${WRK_THREADS:-$(nproc)}"   # wrk convention: one thread per core
PORT="${PORT:-18181}"
MODES="${MODES:-full normal}"
ROUNDS="${ROUNDS:-1}"
. scripts/load/serve.sh
need_wrk_and

# RINGFENCE_BIN measures a binary built elsewhere (another commit, say) instead.
if [ -n "${RINGFENCE_BIN:-}" ]; then
  BIN="$RINGFENCE_BIN"
else
  cargo build --release --quiet
  BIN="${CARGO_TARGET_DIR:-target}/release/ringfence"
fi
PID=
WORK=
# Each measured rate, one line "round mode kind rate", for the summary at the end.
RATES="$(mktemp)"
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; [ -n "$WORK" ] && rm -rf "$WORK"; rm -f "$RATES"; true; }
trap cleanup EXIT

wrk_run() { # kind (ceiling, start or check), label, seconds, wrk args...
  local kind=$1 label=$2 secs=$3 out; shift 3
  echo "-- $label"
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency "$@" \
    | grep -E "Requests/sec|requests in|Latency  |50%|90%|99%|non-2xx|Non-2xx" | sed 's/^/   /')
  echo "$out"
  echo "$out" | awk -v r="$ROUND" -v m="$MODE" -v k="$kind" '/Requests\/sec/ {print r, m, k, $2}' >>"$RATES"
}

echo "== $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), wrk -t$THREADS -c$CONNS -d${DURATION}s"
for ROUND in $(seq "$ROUNDS"); do
  if [ "$ROUNDS" -gt 1 ]; then echo "== round $ROUND of $ROUNDS"; fi
  for MODE in $MODES; do
    WORK="$(mktemp -d)"
    if [ "${MODE%+redis}" = postgres ]; then
      : "${POSTGRES_URL:?set POSTGRES_URL to measure PostgreSQL}"
      DB="rf_load_$$"
      STORE=(--database-url "$(fresh_pg_database "$DB")")
      if [ "$MODE" = postgres+redis ]; then
        REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/9}"
        empty_redis "$REDIS_URL"
        STORE+=(--counters-url "$REDIS_URL")
      fi
    else
      STORE=(--durability "$MODE")
    fi
    start_server "$BIN" "$WORK" "$PORT" "${STORE[@]}"

    echo "== store: $MODE"
    wrk_run ceiling "ceiling: GET /healthz" "$DURATION" "http://127.0.0.1:$PORT/healthz"
    # PostgreSQL checks outrun its starts (by about two to one): three times as long.
    STARTS_FOR=$((DURATION * 2)); [ "$MODE" != "${MODE#postgres}" ] && STARTS_FOR=$((DURATION * 3))
    wait_for_fresh_window "$STARTS_FOR"
    wrk_run start "starts: POST /v1/verifications (fresh numbers)" "$STARTS_FOR" -s scripts/load/start.lua "http://127.0.0.1:$PORT"

    pairs_from_sink "$WORK/sms.jsonl" "$WORK/pairs.txt" | sed 's/^/   /'
    PAIRS="$WORK/pairs.txt" WRK_THREADS="$THREADS" wrk_run check "checks: POST /v1/verifications/{id}/check (right code, each once)" "$DURATION" \
      -s scripts/load/check.lua "http://127.0.0.1:$PORT"
    echo "-- server peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$PID/status)"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    rm -rf "$WORK"; WORK=
    if [ "${MODE%+redis}" = postgres ]; then psql "$POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"; fi
    sleep 1
  done
done

# Each mode's medians, and its share of the first mode's: of the medians, then the
# lowest and highest share one round gave.
python3 - "$RATES" "$MODES" <<'PY'
import statistics, sys
rates = {}
for line in open(sys.argv[1]):
    r, mode, kind, rate = line.split()
    rates.setdefault((mode, kind), {})[int(r)] = float(rate)
modes = sys.argv[2].split()
rounds = max(r for per in rates.values() for r in per)
print(f"== medians of {rounds} round(s), and the share of {modes[0]} (of the medians; lowest–highest of one round)")
for mode in modes:
    cells = []
    for kind in ("start", "check"):
        per = rates.get((mode, kind), {})
        base = rates.get((modes[0], kind), {})
        if not per:
            continue
        med = statistics.median(per.values())
        cell = f"{kind}s {med:,.0f}/s"
        if mode != modes[0] and base:
            shares = [per[r] / base[r] for r in per if r in base]
            cell += f" ({med / statistics.median(base.values()):.1%}; {min(shares):.1%}–{max(shares):.1%})"
        cells.append(cell)
    print(f"   {mode}: " + ", ".join(cells))
PY
