#!/usr/bin/env bash
# Delay from cgroup.kill of an owner's cgroup to its unpinned entry being
# gone from the agent, with the kernel's own cgroup.events notification to a
# plain inotify watcher measured in the same rounds as the floor.
#
# Needs root (real cgroups). Usage: bench/drop-delay.sh [ROUNDS] [COUNT]
exec "$(dirname "$0")/rounds.sh" '^BenchmarkDropDelay$' "${1:-3}" "${2:-50}"
