#!/usr/bin/env bash
# Publish round trip under a real systemd with the fd store (the shipped
# capd.service, booted in systemd-nspawn), at 10 and at 8,000 entries:
# BenchmarkPersistPublish runs two agents in one machine and alternates
# chunks of 50 publishes (a new pinned memfd replacing one name) between
# them, reporting µs per publish at each size and the ratio 8000/10. Each
# round boots its own machine and fills the agents (twice: go test runs a
# benchmark once with N=1 first).
#
# Needs root and systemd-nspawn. Usage: bench/persist.sh [ROUNDS] [COUNT]
set -euo pipefail
exec "$(dirname "$0")/rounds.sh" '^BenchmarkPersistPublish$' "${1:-3}" "${2:-2000}"
