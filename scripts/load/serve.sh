# Sourced by run.sh and probe.sh: starts the server for a load.
#
#   start_server BIN WORK PORT STORE_ARGS...
#
# creates an API key (exported as RINGFENCE_KEY), starts `BIN serve` on a data dir in
# WORK with the file sink WORK/sms.jsonl, sets PID, waits until it answers, and raises
# every rate limit of the default service out of reach: the load's numbers are
# sequential, so they share prefixes, and every limit stays on (its cost is part of the
# figures) without ever refusing.
start_server() {
  local bin=$1 work=$2 port=$3
  shift 3
  export RINGFENCE_KEY
  RINGFENCE_KEY="$("$bin" keys create --data-dir "$work/data" "$@" --name load --scope verify --scope admin | tail -1)"
  "$bin" serve --data-dir "$work/data" --listen "127.0.0.1:$port" "$@" \
    --sms-sink "file:$work/sms.jsonl" --log-format json >"$work/serve.out" 2>"$work/serve.err" &
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local high='{"limit": 1000000000, "period_seconds": 3600}'
  curl -sf -X PATCH "http://127.0.0.1:$port/v1/services/default" \
    -H "Authorization: Bearer $RINGFENCE_KEY" -H 'Content-Type: application/json' \
    -d "{\"abuse\": {\"limits\": {\"sends_per_number\": $high, \"sends_per_ip\": $high,
         \"sends_per_account\": $high, \"sends_per_device\": $high, \"sends_per_prefix\": $high,
         \"sends_per_country\": $high, \"sends_per_service\": $high, \"wrong_codes_per_number\": $high}}}" >/dev/null
  sleep 2.5 # the service cache's time to live
}
