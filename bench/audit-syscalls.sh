#!/usr/bin/env bash
# The system calls the agent makes for one capd audit of BenchmarkAudit's
# host (2,000 extra processes, 10,000 extra fds), counted by strace -c -f
# attached to the agent from its start to its end: the benchmark runs one
# audit (-test.benchtime 1x), and the agent does little else (a few
# publishes). The Go runtime's own calls (futex, nanosleep, epoll_pwait,
# sched_yield, tgkill and getpid for preemption signals, ...) grow with the
# time strace makes the audit take; the rest is the audit's.
#
# Needs root and strace. Usage: bench/audit-syscalls.sh [PATTERN]
# (PATTERN defaults to ^BenchmarkAudit$; ^BenchmarkAuditFewHolders$ is the
# other.)
set -euo pipefail
cd "$(dirname "$0")/.."
pattern=${1:-'^BenchmarkAudit$'}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/tests.test" ./tests/
(cd tests && exec "$tmp/tests.test" -test.run '^$' -test.bench "$pattern" -test.benchtime 1x) >"$tmp/bench" 2>&1 &
bench=$!
agent=
for _ in $(seq 3000); do
  agent=$(pgrep -P "$bench" -f 'capd agent' || true)
  [ -n "$agent" ] && break
  sleep 0.01
done
if [ -z "$agent" ]; then
  wait "$bench" || true
  cat "$tmp/bench" >&2
  echo "audit-syscalls: no agent appeared" >&2
  exit 1
fi
strace -c -f -o "$tmp/strace" -p "$agent" 2>/dev/null &
strace=$!
status=0
wait "$bench" || status=$?
wait "$strace" || true
grep "^Benchmark" "$tmp/bench" || { cat "$tmp/bench" >&2; exit 1; }
cat "$tmp/strace"
exit "$status"
