#!/usr/bin/env bash
# crictl create + start of a container on a containerd node with capd-nri
# connected (annotated and unannotated containers) against a node without
# any NRI plugin, rotating in every round.
#
# Needs root and what scripts/install-k8s-deps.sh installs. Usage:
# bench/k8s.sh [ROUNDS] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
count=${2:-30}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/tests.test" ./tests/
for i in $(seq "$rounds"); do
  (cd tests && "$tmp/tests.test" -test.run '^$' -test.bench '^BenchmarkK8sCreateStart$' -test.benchtime "${count}x") | grep '^Benchmark'
done
