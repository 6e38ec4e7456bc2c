#!/usr/bin/env bash
# capd audit on a host with 2,000 extra processes holding 10,000 extra fds,
# against a bare walk of /proc/*/fd (stat of every fd) in the same run.
#
# Needs root. Usage: bench/audit.sh [ROUNDS] [COUNT]
exec "$(dirname "$0")/rounds.sh" '^BenchmarkAudit$' "${1:-3}" "${2:-5}"
