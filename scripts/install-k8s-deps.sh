#!/usr/bin/env bash
# Installs what the Kubernetes node tests (tests/k8s_*_test.go) need: a
# containerd with its CRI plugin and NRI, its runc shim, ctr and crictl,
# built with 'go install' from the Go module proxy into a cache directory
# named after their versions, plus the Debian packages the node runs on.
# A build already in the cache is kept: only the first run pays (minutes).
#
#   scripts/install-k8s-deps.sh              install (as root, no stdin)
#   scripts/install-k8s-deps.sh --print-dir  print the cache directory only
#
# The tests find the binaries through --print-dir, so the versions are
# written here alone. CAPD_TEST_CACHE moves the cache (/var/cache/capd-test).
# Needs Go on PATH; reaches Debian's mirrors and the Go module proxy.
set -euo pipefail

CONTAINERD_VERSION=v2.4.2
CRICTL_VERSION=v1.37.0
cache=${CAPD_TEST_CACHE:-/var/cache/capd-test}
dir=$cache/k8s-$CONTAINERD_VERSION-$CRICTL_VERSION

if [ "${1:-}" = --print-dir ]; then
  echo "$dir"
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--print-dir]" >&2; exit 2; }

# runc: the runtime the shim runs; busybox-static: the test image; gcc and
# libc6-dev: the static pause binary of the sandbox image (and cgo for
# containerd's build).
packages=(runc busybox-static gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-k8s-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi
command -v go >/dev/null || { echo "install-k8s-deps: Go is not on PATH (https://go.dev/dl/)" >&2; exit 1; }

# name, package@version, extra go install flags
builds=(
  "containerd github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION"
  "containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  "ctr github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
  "crictl sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION -ldflags=-X=sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
)

mkdir -p "$dir/bin" "$cache/k8s-go"
# One install at a time: a second waits, then finds the binaries there.
exec 9>"$cache/k8s.lock"
flock 9

# Everything Go writes stays in the cache, outside any module: go install
# pkg@version never reads or changes capd's go.mod.
export GOPATH=$cache/k8s-go GOMODCACHE=$cache/k8s-go/pkg/mod GOCACHE=$cache/k8s-go/cache
export GOFLAGS=-modcacherw GOWORK=off
cd "$cache"
tmp=
trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT
for b in "${builds[@]}"; do
  read -r name pkg flags <<<"$b"
  if [ -x "$dir/bin/$name" ]; then
    echo "install-k8s-deps: $name is in $dir/bin"
    continue
  fi
  echo "install-k8s-deps: go install $pkg (minutes the first time)"
  start=$SECONDS
  tmp=$(mktemp -d "$dir/bin.XXXXXX")
  # shellcheck disable=SC2086 # flags is one word or none
  GOBIN=$tmp go install $flags "$pkg"
  mv "$tmp/$name" "$dir/bin/$name" # whole binaries only: a killed build leaves none
  rmdir "$tmp"
  tmp=
  echo "install-k8s-deps: $name built in $((SECONDS - start)) s"
done
"$dir/bin/containerd" --version
"$dir/bin/crictl" --version
