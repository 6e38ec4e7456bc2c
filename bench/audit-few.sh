#!/usr/bin/env bash
# capd audit on a host with 2,000 extra processes holding 10,000 extra fds,
# of which only 20 processes hold the entries' files (the others hold files
# of their own), against a bare walk of /proc/*/fd (stat of every fd) in the
# same run.
#
# Needs root. Usage: bench/audit-few.sh [ROUNDS] [COUNT]
set -euo pipefail
exec "$(dirname "$0")/rounds.sh" '^BenchmarkAuditFewHolders$' "${1:-3}" "${2:-5}"
