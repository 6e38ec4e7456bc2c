#!/usr/bin/env bash
# Acquire round trip through the client vs the raw SCM_RIGHTS floor (same
# socket type, same kind of fd, same request size), measured in one run.
#
#  - BenchmarkAcquireVsRaw alternates chunks of 100 raw round trips, 100
#    AcquireFD and 100 Acquire calls inside one benchmark: the main figure.
#  - The Parallel2 pair measures throughput with two concurrent clients,
#    alternating raw and capd runs ROUNDS times.
#
# Needs root (the agent resolves cgroups). Usage: bench/acquire.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/tests.test" ./tests/
run() { (cd tests && "$tmp/tests.test" -test.run '^$' -test.bench "^Benchmark$1\$" "${@:2}") | grep '^Benchmark'; }
for i in $(seq "$rounds"); do
  run AcquireVsRaw -test.benchtime 50000x >>"$tmp/inter"
  run RawRoundTripParallel2 -test.benchtime 1s >>"$tmp/par"
  run AcquireParallel2 -test.benchtime 1s >>"$tmp/par"
done
# median of the value preceding unit $2 in lines matching $1 of file $3
median() {
  grep "$1" "$3" | awk -v u="$2" '{ for (i = 2; i <= NF; i++) if ($i == u) print $(i - 1) }' | sort -g |
    awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%s (min %s, max %s, n=%d)", m, a[1], a[NR], NR }'
}
echo "interleaved, one client, $rounds runs of 50000 round trips each:"
for u in raw-ns/op acquirefd-ns/op acquire-ns/op acquirefd/raw acquire/raw; do
  printf '  %-16s median %s\n' "$u" "$(median AcquireVsRaw "$u" "$tmp/inter")"
done
echo "two concurrent clients, $rounds alternating 1s runs each:"
for b in RawRoundTripParallel2 AcquireParallel2; do
  printf '  %-22s median %s ns/op\n' "$b" "$(median "$b-" ns/op "$tmp/par")"
done
