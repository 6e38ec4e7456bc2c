#!/usr/bin/env bash
# runc run of a busybox bundle with the capd OCI hook, without hooks, and
# with a no-op hook (the cost of any hook), alternating in every round; and
# the start-up cost of capd hook for unannotated containers.
#
# Needs root, runc and busybox-static. Usage: bench/hook.sh [ROUNDS] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
count=${2:-30}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/tests.test" ./tests/
for i in $(seq "$rounds"); do
  (cd tests && "$tmp/tests.test" -test.run '^$' -test.bench '^Benchmark(RuncHook|HookStartup)$' -test.benchtime "${count}x") | grep '^Benchmark'
done
