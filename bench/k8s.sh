#!/usr/bin/env bash
# crictl create + start of a container on a containerd node with capd-nri
# connected (annotated and unannotated containers) against a node without
# any NRI plugin, rotating in every round.
#
# Needs root and what scripts/install-k8s-deps.sh installs. Usage:
# bench/k8s.sh [ROUNDS] [COUNT]
exec "$(dirname "$0")/rounds.sh" '^BenchmarkK8sCreateStart$' "${1:-3}" "${2:-30}"
