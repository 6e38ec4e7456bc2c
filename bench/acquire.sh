#!/usr/bin/env bash
# Acquire round trip through the client vs the raw SCM_RIGHTS floor,
# alternating the benchmarks ROUNDS times in one run and reporting medians
# and ratios. Needs root (the agent resolves cgroups). Usage:
#   bench/acquire.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/tests.test" ./tests/
for i in $(seq "$rounds"); do
  for b in RawRoundTrip Acquire RawRoundTripParallel2 AcquireParallel2; do
    (cd tests && "$tmp/tests.test" -test.run '^$' -test.bench "^Benchmark$b\$" -test.benchtime 1s) |
      awk '/^Benchmark/ {print $1, $3}' >>"$tmp/results"
  done
done
median() { # median, min and max of the ns/op of benchmark $1
  awk -v b="$1" '{ sub(/-[0-9]+$/, "", $1) } $1 == "Benchmark" b { print $2 }' "$tmp/results" | sort -n |
    awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print m, a[1], a[NR], NR }'
}
for b in RawRoundTrip Acquire RawRoundTripParallel2 AcquireParallel2; do
  read -r m lo hi n < <(median "$b")
  printf '%-24s median %6.0f ns/op  (min %.0f, max %.0f, n=%d)\n' "$b" "$m" "$lo" "$hi" "$n"
  declare "med_$b=$m"
done
awk -v a="$med_Acquire" -v r="$med_RawRoundTrip" -v a2="$med_AcquireParallel2" -v r2="$med_RawRoundTripParallel2" 'BEGIN {
  printf "acquire / raw, one client:       %.3f\n", a / r
  printf "acquire / raw, two clients:      %.3f\n", a2 / r2
  printf "acquire throughput, two clients: %.0f ops/s (raw: %.0f)\n", 1e9 / a2, 1e9 / r2
}'
