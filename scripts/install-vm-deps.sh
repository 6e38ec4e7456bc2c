#!/usr/bin/env bash
# Installs what the BPF LSM VM tests (tests/bpflsm_vm_test.go) need: QEMU,
# busybox-static and cpio from Debian, and Debian's stock cloud kernels
# (6.1 and 6.12, whose BPF LSM this machine's kernel may lack), unpacked
# into /var/cache/capd-test/vm/ as vmlinuz-6.1 and vmlinuz-6.12.
# Idempotent and cached: does nothing for what is present. Needs root;
# reaches Debian's package mirrors only. Never reads stdin.
set -euo pipefail
exec </dev/null
cache=/var/cache/capd-test/vm
export DEBIAN_FRONTEND=noninteractive

packages=(qemu-system-x86 busybox-static cpio)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
updated=
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  updated=1
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

mkdir -p "$cache"
# kernel <short name> <meta-package>: the meta-package depends on the
# current versioned image package, whose vmlinuz we keep.
kernel() {
  local short=$1 meta=$2
  [ -s "$cache/vmlinuz-$short" ] && return 0
  if [ -z "$updated" ]; then apt-get update -qq; updated=1; fi
  local pkg
  pkg=$(apt-cache depends "$meta" | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
  if [ -z "$pkg" ]; then
    echo "install-vm-deps: no kernel image package behind $meta (apt-cache depends $meta)" >&2
    return 1
  fi
  local tmp
  tmp=$(mktemp -d)
  chmod 755 "$tmp" # apt-get download runs as _apt
  (cd "$tmp" && apt-get download -qq "$pkg")
  dpkg-deb -x "$tmp"/*.deb "$tmp/x"
  local img
  img=$(ls "$tmp"/x/boot/vmlinuz-* | head -n1)
  cp "$img" "$cache/vmlinuz-$short.tmp"
  echo "$pkg" >"$cache/vmlinuz-$short.package"
  mv "$cache/vmlinuz-$short.tmp" "$cache/vmlinuz-$short"
  rm -rf "$tmp"
  echo "install-vm-deps: $cache/vmlinuz-$short from $pkg"
}
kernel 6.1 linux-image-cloud-amd64
kernel 6.12 linux-image-6.12-cloud-amd64
