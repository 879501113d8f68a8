#!/usr/bin/env bash
# The local demo (make demo): builds what it needs, then runs the demo lab.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/tools.sh kube-apiserver etcd kubectl >/dev/null
exec go run ./agent/internal/demo "$@"
