# Sourced by the load scripts (run.sh, probe.sh, ab.sh, memory.sh, instructions.sh): starts
# the server for a load, and pairs what it sent.
#
#   start_server BIN WORK PORT STORE_ARGS...
#   fresh_pg_database NAME
#   empty_redis URL
#   wait_for_fresh_window SECONDS
#   pairs_from_sink SINK PAIRS
#   need_wrk_and [BIN]
#   one_server_work_dir

# Exits unless wrk is installed and, when given, BIN is an executable.
need_wrk_and() { # [bin]
  command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
  [ -z "${1:-}" ] || [ -x "$1" ] ||
    { echo "no binary at $1: cargo build --release, or set RINGFENCE_BIN" >&2; exit 1; }
}

# Makes WORK, a temporary directory for one server's data and sink, and on exit stops
# that server (PID, once start_server set it) and removes the directory.
one_server_work_dir() {
  WORK="$(mktemp -d)"
  PID=
  trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; true' EXIT
}

# creates an API key (exported as RINGFENCE_KEY), starts `BIN serve` (under $RUNNER
# when set, such as valgrind) on a data dir in WORK with the file sink WORK/sms.jsonl,
# sets PID, waits until it answers (up to 60 s), and raises
# every rate limit of the default service out of reach: the load's numbers are
# sequential, so they share prefixes, and every limit stays on (its cost is part of the
# figures) without ever refusing.
start_server() {
  local bin=$1 work=$2 port=$3
  shift 3
  export RINGFENCE_KEY
  RINGFENCE_KEY="$("$bin" keys create --data-dir "$work/data" "$@" --name load --scope verify --scope admin | tail -1)"
  # shellcheck disable=SC2086 # RUNNER is a command and its arguments
  ${RUNNER:-} "$bin" serve --data-dir "$work/data" --listen "127.0.0.1:$port" "$@" \
    --sms-sink "file:$work/sms.jsonl" --log-format json >"$work/serve.out" 2>"$work/serve.err" &
  PID=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local high='{"limit": 1000000000, "period_seconds": 3600}'
  curl -sf -X PATCH "http://127.0.0.1:$port/v1/services/default" \
    -H "Authorization: Bearer $RINGFENCE_KEY" -H 'Content-Type: application/json' \
    -d "{\"abuse\": {\"limits\": {\"sends_per_number\": $high, \"sends_per_ip\": $high,
         \"sends_per_account\": $high, \"sends_per_device\": $high, \"sends_per_prefix\": $high,
         \"sends_per_country\": $high, \"sends_per_service\": $high, \"wrong_codes_per_number\": $high}}}" >/dev/null
  sleep 2.5 # the service cache's time to live
}

# Waits until the outbox has drained (the sink file has had no new line for 2 s: a
# worker between rounds can pause for more than half a second), then writes one
# "verification_id code number" line per message of the sink to PAIRS, for check.lua.
pairs_from_sink() {
  local sink=$1 pairs=$2 last=-1 still=0 now
  for _ in $(seq 600); do
    now=$(wc -l <"$sink")
    if [ "$now" = "$last" ]; then still=$((still + 1)); else still=0; fi
    [ "$still" -ge 4 ] && break
    last=$now
    sleep 0.5
  done
  python3 - "$sink" "$pairs" <<'PY'
import json, re, sys
n = 0
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
    for line in f:
        m = json.loads(line)
        code = re.search(r"\d{4,10}", m["body"]).group()
        out.write(f'{m["verification_id"]} {code} {m["to"]}\n')
        n += 1
print(f"messages delivered to the sink: {n}")
PY
}

# The pumping detector judges a prefix's sends once they are older than its approval
# lag (two minutes, counted in two-minute windows of the epoch), and this load approves
# nothing while it starts: a run of starts across a window boundary would see its
# prefixes shadow-blocked part of the way (starts without a message, fewer delivered
# than started). So the starts begin early in a two-minute window, and end in it.
wait_for_fresh_window() { # seconds the run needs
  local left=$((120 - $(date +%s) % 120))
  if [ "$1" -gt 110 ]; then
    echo "   (starts of $1 s cannot fit in a two-minute window: expect shadow-blocked starts)"
  elif [ "$left" -lt "$(($1 + 5))" ]; then
    sleep "$left"
  fi
}

# Creates the database NAME anew on the server of $POSTGRES_URL (with $PG_CREATE_OPTS,
# if set) and prints its URL for `--database-url`. PostgreSQL is on this machine: no TLS
# on the loopback (sqlx's default, `prefer`, negotiates it when the server offers it);
# PG_SSLMODE=prefer measures with it.
fresh_pg_database() { # name
  PGOPTIONS='-c client_min_messages=warning' \
    psql "$POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1 ${PG_CREATE_OPTS:-}"
  echo "${POSTGRES_URL%/*}/$1?sslmode=${PG_SSLMODE:-disable}"
}

# Empties the Redis database of URL, for counters that start from nothing (what a load
# leaves there, closed prefixes and a day's spend, would change what the next one sees).
empty_redis() { # url
  redis-cli -u "$1" FLUSHDB >/dev/null
}
