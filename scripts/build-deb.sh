#!/usr/bin/env bash
# Builds $BIN/capd_VERSION_ARCH.deb with dpkg-deb (run by 'make deb', after
# 'make build man completions'): the tree 'make install PREFIX=/usr' writes,
# what Debian policy asks of a package (compressed man pages, copyright,
# changelog, md5sums, conffiles) and the maintainer scripts in dist/debian/.
#
# The version is the binary's own (capd version: a tag, or the Go
# pseudo-version of the commit) in Debian's syntax: v0.0.0-TIME-REV becomes
# 0.0.0~TIME.REV, which sorts before 0.0.0 as the pseudo-version does.
# DEB_MAINTAINER overrides the Maintainer field; SOURCE_DATE_EPOCH (default:
# the commit's time) dates the changelog and the archive's files.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
bin=${BIN:-bin}
make=${MAKE:-make}
go=${GO:-go}
capd=$bin/capd
maintainer=${DEB_MAINTAINER:-capd developers <capd@capd.invalid>}
command -v strip >/dev/null || { echo "build-deb: needs strip (apt-get install binutils)" >&2; exit 1; }

# (docs/JSON.md: "version" is the format's, "capd_version" the binary's.)
info=$("$capd" version --json)
# field KEY: the string value of KEY, empty if it is null.
field() { sed -n 's/^  "'"$1"'": "\([^"]*\)",\{0,1\}$/\1/p' <<<"$info"; }
goversion=$(field capd_version)
revision=$(field revision)
platform=$(field platform)

arch=$(dpkg --print-architecture)
case ${platform#linux/} in
amd64) want=amd64 ;; arm64) want=arm64 ;; 386) want=i386 ;; arm) want="armhf armel" ;;
ppc64le) want=ppc64el ;; s390x) want=s390x ;; riscv64) want=riscv64 ;;
mips64le) want=mips64el ;; loong64) want=loong64 ;; *) want=unknown ;;
esac
case " $want " in
*" $arch "*) ;;
*) echo "build-deb: $capd is for $platform, not for $arch ('dpkg --print-architecture')" >&2; exit 1 ;;
esac

case $goversion in
"(devel)" | "") version=0~devel ;;
*)
	version=${goversion#v}
	version=${version/-/\~}   # the first '-' starts a prerelease or a pseudo-version
	version=${version//-/.}   # Debian reserves '-' for a revision
	;;
esac
if [[ ! $version =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
	echo "build-deb: cannot make a Debian version of $goversion (got $version)" >&2
	exit 1
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/capd
"$make" --no-print-directory -s install DESTDIR="$root" PREFIX=/usr BIN="$bin" >/dev/null

# As dh_strip does: no symbol table (Go's stack traces need none; the build
# information capd version reads stays).
strip --remove-section=.comment --remove-section=.note "$root/usr/bin/capd" "$root/usr/bin/capd-full" "$root/usr/bin/capd-nri"
gzip -9n "$root"/usr/share/man/man1/*.1
install -D -m 0644 dist/debian/lintian-overrides "$root/usr/share/lintian/overrides/capd"
doc=$root/usr/share/doc/capd
install -d "$doc"
install -m 0644 README.md "$doc/README.md"
{
	cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: capd
Source: https://github.com/capd-dev/capd
Comment: The capd source tree states no license. The binary links these Go
 modules statically; each comes under the license in its own source.
EOF
	"$go" version -m "$capd" | awk '$1 == "dep" { printf " %s %s\n", $2, $3 }'
	cat <<EOF

Files: *
Copyright: $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y) the capd authors
License: unstated
 The capd source tree carries no license statement.
EOF
} >"$doc/copyright"
what="an unknown commit"
[ -z "$revision" ] || what="commit ${revision:0:12}"
{
	echo "capd ($version) unstable; urgency=medium"
	echo
	echo "  * Built from $what."
	echo
	echo " -- $maintainer  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"

install -d "$root/DEBIAN"
for f in conffiles postinst prerm postrm; do
	install -m "$([ "$f" = conffiles ] && echo 0644 || echo 0755)" "dist/debian/$f" "$root/DEBIAN/$f"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
	grep -vxF -f <(sed 's|^/||' DEBIAN/conffiles) | xargs -d '\n' md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
	-e "s|@INSTALLED_SIZE@|$size|" dist/debian/control >"$root/DEBIAN/control"

deb=$bin/capd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
