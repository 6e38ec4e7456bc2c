#!/usr/bin/env bash
# Runs the tests package's benchmarks matching PATTERN (a -test.bench
# regular expression) COUNT iterations at a time, ROUNDS times, from one
# build, printing the result lines. The scripts beside it call it.
#
# Usage: bench/rounds.sh PATTERN ROUNDS COUNT
set -euo pipefail
cd "$(dirname "$0")/.."
pattern=$1 rounds=$2 count=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/tests.test" ./tests/
for i in $(seq "$rounds"); do
  (cd tests && "$tmp/tests.test" -test.run '^$' -test.bench "$pattern" -test.benchtime "${count}x") | grep '^Benchmark'
done
