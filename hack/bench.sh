#!/usr/bin/env bash
# Benchmarks the lbpair proxy against nginx stream and HAProxy (mode tcp), one worker
# each, in a network-namespace lab: wrk on a client host, the three proxies side by side,
# two nginx backends. Prints requests/s, requests per CPU-second of the proxy process,
# p50/p99 latency, bulk throughput, ratios, memory per idle connection, and memory per
# stalled download (resident and in the kernel's socket buffers).
#
# Needs root (namespaces). Installs its Debian packages with hack/install-lab-deps.sh.
# Usage: hack/bench.sh [-rounds N] [-duration 4s] [-scenarios small50,...] [-skip-memory]
#   [-idle-conns N] [-stalled-conns N] [-gomaxprocs N] [-compare BIN] [-pin] [-peer-bufsize N] [-v]
# (bin/proxybench run -h describes each.)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ "$(id -u)" -ne 0 ]; then
	echo "bench: needs root to build network namespaces" >&2
	exit 1
fi
hack/install-lab-deps.sh
export GOTOOLCHAIN=local
mkdir -p bin
go build -o bin/proxybench ./agent/proxy/internal/cmd/proxybench
exec bin/proxybench run "$@"
