#!/usr/bin/env bash
# The failover benchmark (make bench-failover): lbpair vs keepalived, same
# lab, same advertisement intervals; then 20 ms adverts under CPU load.
# BENCH_ROUNDS (default 3) rounds per case, BENCH_STABILITY (default 2m).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-lab-deps.sh
exec go test -tags failoverbench -count=1 -timeout 60m -run 'TestFailoverBench|TestAdvertStabilityUnderLoad' -v ./agent/ 2>&1 |
  grep -Ev ': (lb[0-9]|keepalived [a-z0-9]+): '
