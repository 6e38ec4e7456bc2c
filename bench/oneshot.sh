#!/usr/bin/env bash
# One-shot capd acquire -- /bin/true against s6-fdholder-retrieve, a Go
# program that only execs, and /bin/true alone, alternating in every round
# (tests/oneshot_bench_test.go). Installs s6 when it is missing.
#
# Needs root. Usage: bench/oneshot.sh [ROUNDS] [COUNT]
set -euo pipefail
command -v s6-fdholder-retrieve >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends s6 >/dev/null
exec "$(dirname "$0")/rounds.sh" '^BenchmarkOneShot$' "${1:-3}" "${2:-200}"
