#!/usr/bin/env bash
# What idle client connections cost the agent: BenchmarkIdleConnections
# starts a capd agent process per iteration, opens 100 or 400 clients that
# each ask WHOAMI once and then stay idle, and reports the agent's threads
# (/proc/PID/status Threads) with one served connection and with the N idle
# ones, and the threads and resident kB (VmRSS) added per idle connection.
#
# Needs root. Usage: bench/idle.sh [ROUNDS] [COUNT]
set -euo pipefail
exec "$(dirname "$0")/rounds.sh" '^BenchmarkIdleConnections$' "${1:-3}" "${2:-3}"
