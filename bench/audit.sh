#!/usr/bin/env bash
# capd audit on a host with 2,000 extra processes holding 10,000 extra fds,
# against a bare walk of /proc/*/fd (stat of every fd) in the same run.
#
# Needs root. Usage: bench/audit.sh [ROUNDS] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
count=${2:-5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/tests.test" ./tests/
for i in $(seq "$rounds"); do
  (cd tests && "$tmp/tests.test" -test.run '^$' -test.bench '^BenchmarkAudit$' -test.benchtime "${count}x") | grep '^Benchmark'
done
