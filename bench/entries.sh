#!/usr/bin/env bash
# Memory per stored entry: a capd agent process holding 0, 1,000, 10,000
# and 19,000 unpinned memfd entries published by one owner, against
# s6-fdholderd (Debian's s6) holding as many memfds, measured in the same
# rounds (BenchmarkEntryMemory). Reports the resident set (VmRSS) of both
# per entry over each step, and the Go live heap and heap objects per entry
# of an agent in the benchmark's own process. The agent's resident set
# grows with its heap as the garbage collector lets it: up to the Go
# runtime's 4 MB minimum heap first, whatever the entries, then to twice
# the live heap (GOGC=100), which the 10,000-19,000 step shows.
#
# Needs root (real cgroups); installs s6 when it is missing.
# Usage: bench/entries.sh [ROUNDS]
set -euo pipefail
command -v s6-fdholder-daemon >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends s6 >/dev/null
cd "$(dirname "$0")"
rounds=${1:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
./rounds.sh '^BenchmarkEntryMemory$' "$rounds" 1 | tee "$out"
# median of the value preceding unit $1
median() {
  awk -v u="$1" '{ for (i = 2; i <= NF; i++) if ($i == u) print $(i - 1) }' "$out" | sort -g |
    awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%s (min %s, max %s, n=%d)", m, a[1], a[NR], NR }'
}
echo "median of $rounds rounds:"
for u in heap-B/entry@10000-19000 objs/entry@10000-19000 alloc-B/publish@10000-19000 \
  agent-B/entry@10000-19000 s6-B/entry@10000-19000 agent-B/entry@1000-10000 s6-B/entry@1000-10000 \
  agent-B/entry@0-1000 s6-B/entry@0-1000 agent-kB@0 agent-kB@10000 agent-kB@19000 s6-kB@0 s6-kB@10000 s6-kB@19000; do
  printf '  %-26s %s\n' "$u" "$(median "$u")"
done
