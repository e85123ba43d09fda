#!/usr/bin/env bash
# Replays the synthetic SMS-pumping trace against the detector and prints the figures
# quoted in docs/abuse.md. The trace is generated in-process from a fixed seed
# (src/abuse/pumping/trace.rs), so every run prints the same numbers.
#
#   scripts/abuse/replay.sh                 # memory counters
#   RINGFENCE_TEST_REDIS_URL=redis://127.0.0.1:6379 scripts/abuse/replay.sh
#                                           # also two instances sharing Redis
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo test --test pumping_replay -- --nocapture --test-threads 1 replay
