#!/bin/sh
# Prints the go build flags that stamp capd's version (see capd version).
#
# In a git checkout the go command records the module version and the
# commit itself (-buildvcs=true): runtime/debug.ReadBuildInfo reads them.
# It cannot in a linked worktree (golang/go#58218: it takes only a .git
# directory for a repository, and would stamp an enclosing checkout's
# commit), so there the same facts come from git through -ldflags -X.
# Without git, or in a checkout git refuses to read (another user's, under
# sudo: "dubious ownership"), nothing is stamped and the version is (devel).
set -eu
cd "$(dirname "$0")/.."
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1 || ! git status --porcelain >/dev/null 2>&1; then
	echo "-buildvcs=false"
	exit 0
fi
if [ "$(git rev-parse --path-format=absolute --git-dir)" = "$(git rev-parse --path-format=absolute --git-common-dir)" ]; then
	echo "-buildvcs=true"
	exit 0
fi

# A linked worktree: what the go command would have stamped.
rev=$(git rev-parse HEAD)
time=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ)
stamp=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S)
modified=false
[ -z "$(git status --porcelain)" ] || modified=true
# The module version: an exact semver tag, else a pseudo-version after the
# latest tag (vX.Y.Z+1-0.TIME-REV, vX.Y.Z-PRE.0.TIME-REV) or v0.0.0-TIME-REV.
tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*.[0-9]*.[0-9]*' 2>/dev/null || true)
short=$(git rev-parse --short=12 HEAD)
if [ -n "$tag" ] && [ "$(git rev-list -n 1 "$tag")" = "$rev" ]; then
	version=$tag
elif [ -n "$tag" ]; then
	case $tag in
	*-*) version=$tag.0.$stamp-$short ;;
	*)
		patch=${tag##*.}
		version=${tag%.*}.$((patch + 1))-0.$stamp-$short
		;;
	esac
else
	version=v0.0.0-$stamp-$short
fi
[ "$modified" = false ] || version=$version+dirty
echo "-buildvcs=false -ldflags='-X main.stampVersion=$version -X main.stampRevision=$rev -X main.stampTime=$time -X main.stampModified=$modified'"
