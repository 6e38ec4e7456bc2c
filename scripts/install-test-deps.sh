#!/usr/bin/env bash
# Installs the Debian packages capd's tests need, skipping those present.
# Then scripts/install-k8s-deps.sh (containerd, crictl; cached) and
# scripts/install-vm-deps.sh (QEMU and Debian's stock kernels for the BPF LSM
# tests, which run in a VM; cached).
# Needs root; reaches Debian's package mirrors (and the Go module proxy, once).
set -euo pipefail
packages=(
  gcc libc6-dev   # go test -race needs cgo
  util-linux      # setpriv, nsenter
  runc podman     # real container runtimes for the OCI hook tests
  busybox-static  # the test containers' rootfs
  systemd-container  # systemd-nspawn: a real systemd PID 1 for the fd store tests
  disorderfs fuse3   # a FUSE server that answers FUSE_FLUSH and can be stopped (stuck close and stat tests); fuse3 for its "fuse"
  bash-completion    # the shell completion test runs capd's bash completion
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v go >/dev/null || { echo "Go is not on PATH: install Go $(sed -n 's/^go //p' go.mod) or newer (https://go.dev/dl/)" >&2; exit 1; }
# containerd, crictl and friends for the Kubernetes node tests (cached).
"$(dirname "$0")/install-k8s-deps.sh"
# QEMU and guest kernels for the kernel-enforced revocation tests (cached).
"$(dirname "$0")/install-vm-deps.sh"
