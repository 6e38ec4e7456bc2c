#!/bin/sh
# build-image.sh: the image of Containerfile, without a registry, a base
# image or a container build tool: an OCI image layout in one tar archive,
# reproducible (sorted, owned by root, times 0), for
#
#   ctr -n k8s.io images import bin/capd-image.oci.tar
#
# (add --address for a containerd with another socket), on every node.
# Run from the repository's root after 'make build'. Needs the static
# /bin/busybox of Debian's busybox-static, tar, gzip and sha256sum.
#   IMAGE  the image's name (default capd.local/capd:dev, as daemonset.yaml)
#   BIN    where make build wrote the binaries (default bin)
#   ARCH   the OCI architecture (default: that of this machine)
set -eu
IMAGE=${IMAGE:-capd.local/capd:dev}
BIN=${BIN:-bin}
BUSYBOX=${BUSYBOX:-/bin/busybox}
case ${ARCH:-$(uname -m)} in
x86_64 | amd64) ARCH=amd64 ;;
aarch64 | arm64) ARCH=arm64 ;;
*) ARCH=${ARCH:-$(uname -m)} ;;
esac
OUT=$BIN/capd-image.oci.tar

for f in "$BIN/capd" "$BIN/capd-full" "$BIN/capd-nri" dist/capd.toml "$BUSYBOX"; do
	[ -f "$f" ] || { echo "build-image.sh: $f missing (run make build from the repository's root)" >&2; exit 1; }
done
if command -v file >/dev/null && ! file -L "$BUSYBOX" | grep -q "statically linked"; then
	echo "build-image.sh: $BUSYBOX is not a static busybox (apt-get install busybox-static)" >&2
	exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bin" "$root/usr/bin" "$root/etc/capd/conf.d" "$root/run/capd" "$root/var/run/nri" \
	"$root/proc" "$root/sys" "$root/dev" "$root/tmp" "$work/layout/blobs/sha256"
chmod 1777 "$root/tmp"
cp "$BUSYBOX" "$root/bin/busybox"
for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
install -m 0755 "$BIN/capd" "$BIN/capd-full" "$BIN/capd-nri" "$root/usr/bin/"
install -m 0644 dist/capd.toml "$root/etc/capd/capd.toml"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
# blob FILE: move FILE into the layout under its digest; prints "DIGEST SIZE".
blob() {
	d=$(sha "$1") s=$(size "$1")
	mv "$1" "$work/layout/blobs/sha256/$d"
	echo "$d $s"
}

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
diffid=$(sha "$work/layer.tar")
gzip -n -9 "$work/layer.tar"
set -- $(blob "$work/layer.tar.gz")
layer=$1 layersize=$2

printf '{"architecture":"%s","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/usr/bin:/bin"],"Cmd":["/usr/bin/capd","--help"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"deploy/kubernetes/build-image.sh"}]}' \
	"$ARCH" "$diffid" >"$work/config.json"
set -- $(blob "$work/config.json")
config=$1 configsize=$2

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
	"$config" "$configsize" "$layer" "$layersize" >"$work/manifest.json"
set -- $(blob "$work/manifest.json")
manifest=$1 manifestsize=$2

# io.containerd.image.name gives ctr the image's full name.
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
	"$manifest" "$manifestsize" "$ARCH" "$IMAGE" "${IMAGE##*:}" >"$work/layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/layout" -cf "$OUT" oci-layout index.json blobs
echo "$OUT: $IMAGE ($ARCH), manifest sha256:$manifest"
