#!/usr/bin/env bash
# Fails when generated files differ from what the generators produce, or when
# generated files are not committed. Run after `make generate manifests`.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(api config charts dist)
# Against HEAD, not the index: a drift that is staged but not committed fails too.
if ! git diff --quiet HEAD -- "${paths[@]}"; then
  git --no-pager diff --stat HEAD -- "${paths[@]}" >&2
  echo "verify: generated files drifted from their sources; run 'make generate manifests' and commit the result" >&2
  exit 1
fi
untracked=$(git ls-files --others --exclude-standard -- "${paths[@]}")
if [ -n "$untracked" ]; then
  echo "verify: generated files are not committed:" >&2
  echo "$untracked" >&2
  exit 1
fi
if [ -n "$(gofmt -l $(git ls-files '*.go'))" ]; then
  gofmt -l $(git ls-files '*.go') >&2
  echo "verify: files above are not gofmt'ed" >&2
  exit 1
fi
echo "verify: generated files and formatting are up to date"
