#!/usr/bin/env bash
# Two builds (or two settings) side by side: short runs taking turns, for comparing
# on a machine whose speed drifts within minutes.
#
#   scripts/load/ab.sh BIN_A BIN_B [ROUNDS] [SECONDS]      (default 6 rounds of 5 s)
#
# Starts `BIN_A serve` and `BIN_B serve` as run.sh starts one (a fresh data dir each,
# the file sink, every rate limit raised out of reach), both at once on two ports, and
# runs ROUNDS rounds of SECONDS of starts with wrk at $CONNS connections (32) against
# each in turn — A then B, then B then A, and so on, so that a drift of the machine
# weighs on both alike — all within one two-minute window (see wait_for_fresh_window in
# serve.sh; ROUNDS × 2 × SECONDS must stay under 110 s). With CHECKS=1 it then checks
# the codes each server sent, in as many turns of SECONDS / 2, each turn on its own
# share of them.
# Prints every run's rate and p99, each side's median, and the ratio of the medians.
#
# Environment:
#   POSTGRES_URL=url  both stores on PostgreSQL, each in a fresh database on that server
#   REDIS_URL=url     counters in Redis: A in that database (default 9), B in the next;
#                     both are emptied first (use databases nothing else uses)
#   A_ARGS='…' B_ARGS='…'  more arguments of each `serve` (with BIN_B = BIN_A, the
#                     two settings compared)
#   CHECKS=1          the checks too; CHECKS=number checks by number
#                     (/v1/verification-checks)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
BIN_A=$1 BIN_B=$2
ROUNDS="${3:-6}"
SECS="${4:-5}"
CONNS="${CONNS:-32}"
PORT="${PORT:-18211}"
[ "$ROUNDS" -le 10 ] || { echo "at most 10 rounds (start.lua's RUN_SALT)" >&2; exit 2; }
. scripts/load/serve.sh
need_wrk_and

WORK="$(mktemp -d)"
PIDS=()
DBS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "${DBS[@]}"; do psql "$POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $d WITH (FORCE)" 2>/dev/null || true; done
  rm -rf "$WORK"
  true
}
trap cleanup EXIT

# Starts one side: its name (A or B), binary, port, redis database offset, extra args.
declare -A KEY
start_side() {
  local side=$1 bin=$2 port=$3 offset=$4 extra=$5 store=()
  if [ -n "${POSTGRES_URL:-}" ]; then
    local db="rf_ab_${side,,}_$$"
    DBS+=("$db")
    store=(--database-url "$(fresh_pg_database "$db")")
  fi
  if [ -n "${REDIS_URL:-}" ]; then
    local base="${REDIS_URL%/*}" n="${REDIS_URL##*/}"
    [[ "$n" =~ ^[0-9]+$ ]] || { base="$REDIS_URL"; n=9; }
    local url="$base/$((n + offset))"
    empty_redis "$url"
    store+=(--counters-url "$url")
  fi
  mkdir -p "$WORK/$side"
  # shellcheck disable=SC2086 # the extra arguments are words
  start_server "$bin" "$WORK/$side" "$port" "${store[@]}" $extra
  PIDS+=("$PID")
  KEY[$side]=$RINGFENCE_KEY
}
start_side A "$BIN_A" "$PORT" 0 "${A_ARGS:-}"
start_side B "$BIN_B" $((PORT + 1)) 1 "${B_ARGS:-}"
declare -A PORT_OF=([A]=$PORT [B]=$((PORT + 1)))

# One run against one side: prints "rate p99_ms". The kind of request (start or check)
# and the round choose the numbers (RUN_SALT) or the share of the codes (PAIRS).
run() { # side, kind, round
  local side=$1 kind=$2 r=$3 secs=$SECS out
  # Checks outrun starts (up to 1.7 times on SQLite): half as long, on a share of codes
  # that a whole turn of starts sent.
  [ "$kind" = check ] && secs=$(((SECS + 1) / 2))
  out=$(RINGFENCE_KEY=${KEY[$side]} RUN_SALT=$r PAIRS="$WORK/$side/pairs.$r" WRK_THREADS=2 \
    BY_NUMBER=$([ "${CHECKS:-}" = number ] && echo 1 || echo 0) \
    wrk -t2 -c"$CONNS" -d"${secs}s" --latency -s "scripts/load/$kind.lua" "http://127.0.0.1:${PORT_OF[$side]}")
  if echo "$out" | grep -q "non-2xx responses: [1-9]"; then
    echo "   $side, round $((r + 1)): $(echo "$out" | grep non-2xx) (its rate counts them)" >&2
  fi
  echo "$out" | awk '/Requests\/sec/ {r = $2} $1 == "99%" {p = $2} END {
      v = p + 0; if (p ~ /us$/) v /= 1000; else if (p !~ /ms$/) v *= 1000
      printf "%.0f %.2f\n", r, v }'
}

# ROUNDS turns of one kind of request; prints each run and the medians.
turns() { # kind (start or check)
  local kind=$1 r side order res a=() b=()
  echo "== ${kind}s: $ROUNDS rounds, each side in turn (requests/s, p99)"
  for r in $(seq 0 $((ROUNDS - 1))); do
    if [ $((r % 2)) -eq 0 ]; then order="A B"; else order="B A"; fi
    local line="   round $((r + 1)):"
    for side in $order; do
      res=$(run "$side" "$kind" "$r")
      line+="  $side ${res% *}/s ${res#* } ms"
      if [ "$side" = A ]; then a+=("${res% *}"); else b+=("${res% *}"); fi
    done
    echo "$line"
  done
  python3 - "${a[*]}" "${b[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
ratios = [y / x for x, y in zip(a, b)]
print(f"   median A {ma:,.0f}/s, B {mb:,.0f}/s: B/A {mb / ma:.3f} (per round "
      f"{min(ratios):.3f}–{max(ratios):.3f}, B ahead in {sum(q > 1 for q in ratios)} of {len(ratios)})")
PY
}

wait_for_fresh_window $((ROUNDS * 2 * (SECS + 1)))
turns start
if [ -n "${CHECKS:-}" ]; then
  # Each side's codes, in ROUNDS shares: a round checks codes no other round checks.
  for side in A B; do
    pairs_from_sink "$WORK/$side/sms.jsonl" "$WORK/$side/pairs.txt" >/dev/null
    split -n "l/$ROUNDS" -d -a 1 "$WORK/$side/pairs.txt" "$WORK/$side/pairs."
  done
  turns check
fi
