#!/usr/bin/env bash
# Delay from cgroup.kill of an owner's cgroup to its unpinned entry being
# gone from the agent, with the kernel's own cgroup.events notification to a
# plain inotify watcher measured in the same rounds as the floor.
#
# Needs root (real cgroups). Usage: bench/drop-delay.sh [ROUNDS] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
count=${2:-50}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/tests.test" ./tests/
for i in $(seq "$rounds"); do
  (cd tests && "$tmp/tests.test" -test.run '^$' -test.bench '^BenchmarkDropDelay$' -test.benchtime "${count}x") | grep '^Benchmark'
done
