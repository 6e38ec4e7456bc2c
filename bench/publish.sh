#!/usr/bin/env bash
# Publish round trips (pinned and unpinned) against acquire round trips,
# through the client on one persistent connection, measured in one run:
# BenchmarkPublishVsAcquire alternates chunks of 100 of each kind (each
# kind first in turn) inside one benchmark, from a process in a real
# service cgroup whose owner cgroup is watched throughout, and reports
# pinned/acquire, unpinned/acquire and unpinned/pinned.
#
# Needs root (real cgroups). Usage: bench/publish.sh [ROUNDS] [COUNT]
set -euo pipefail
cd "$(dirname "$0")"
rounds=${1:-5} count=${2:-30000}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
./rounds.sh '^BenchmarkPublishVsAcquire$' "$rounds" "$count" | tee "$out"
# median of the value preceding unit $1
median() {
  awk -v u="$1" '{ for (i = 2; i <= NF; i++) if ($i == u) print $(i - 1) }' "$out" | sort -g |
    awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%s (min %s, max %s, n=%d)", m, a[1], a[NR], NR }'
}
echo "median of $rounds runs of $count round trips of each kind:"
for u in acquire-ns/op pinned-ns/op unpinned-ns/op pinned/acquire unpinned/acquire unpinned/pinned; do
  printf '  %-17s %s\n' "$u" "$(median "$u")"
done
