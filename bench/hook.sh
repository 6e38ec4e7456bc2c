#!/usr/bin/env bash
# runc run of a busybox bundle with the capd OCI hook, without hooks, and
# with a no-op hook (the cost of any hook), alternating in every round; and
# the start-up cost of capd hook for unannotated containers.
#
# Needs root, runc and busybox-static. Usage: bench/hook.sh [ROUNDS] [COUNT]
exec "$(dirname "$0")/rounds.sh" '^Benchmark(RuncHook|HookStartup)$' "${1:-3}" "${2:-30}"
