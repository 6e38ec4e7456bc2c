#!/usr/bin/env bash
# Kernel-enforced revocation's cost, in a QEMU guest with Debian's 6.12
# kernel (this machine's kernel refuses BPF LSM): read(2) of 1 byte and a
# 1-byte send+recv on unrelated fds with the programs attached / without,
# alternating in one run, and Revoke with 10,000 keys in the map (the
# agent's own ioctl, and the fd-table walk it falls back to). TCG emulation:
# the ratios are the guest's. Needs scripts/install-vm-deps.sh. Root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
go test -run '^$' -bench '^BenchmarkBPFLSMGuest$' -benchtime 1x -timeout 30m ./tests/ | tee /dev/stderr | grep -E 'x-read|ns/revoke'
