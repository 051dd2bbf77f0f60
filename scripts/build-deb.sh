#!/usr/bin/env bash
# `make deb`: build dist/klptrace_VERSION_all.deb (and the native source
# package: .dsc, .tar.xz, .changes, .buildinfo) with Debian's own tooling
# (dpkg-buildpackage, debhelper 13, pybuild's pyproject plugin), offline, and
# run lintian on the result. docs/packaging.md says what is built and why.
#
# The build runs in a staged copy, build/deb/klptrace-VERSION/, of the files
# git knows (tracked, plus untracked ones not ignored: uncommitted work is
# built), so .venv/, lab-out/ and build products never reach the source
# package and the checkout stays clean.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

bash scripts/setup-build.sh

# One version: pyproject.toml's must be debian/changelog's latest entry.
pyver=$(/usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
debver=$(dpkg-parsechangelog -S Version)
if [ "$pyver" != "$debver" ]; then
    echo "deb: pyproject.toml has version $pyver but debian/changelog's latest entry is $debver;" \
         "add an entry: dch -v $pyver" >&2
    exit 1
fi

STAGE=build/deb
SRC=$STAGE/klptrace-$pyver
rm -rf "$STAGE"
mkdir -p "$SRC"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$SRC"

# A clean environment: Debian's python3 (not a pyenv/venv one first in PATH),
# no PIP_* or PYTHON* settings; pybuild builds with --no-isolation from the
# Build-Depends.
# As root, the build runs in a network namespace of its own (no interface but
# a down loopback): proof that nothing is fetched.
offline=()
[ "$(id -u)" != 0 ] || offline=(unshare --net)
start=$(date +%s)
(cd "$SRC" && "${offline[@]}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent LANG=C.UTF-8 \
    nice -n 19 dpkg-buildpackage -us -uc --build=full) > "$STAGE/build.log" 2>&1 || {
    tail -40 "$STAGE/build.log" >&2
    echo "deb: dpkg-buildpackage failed; whole log: $STAGE/build.log" >&2
    exit 1
}
echo "deb: built in $(( $(date +%s) - start )) s (log: $STAGE/build.log)"

mkdir -p dist
rm -f dist/klptrace_*
arch=$(dpkg --print-architecture)
for f in "klptrace_${pyver}_all.deb" "klptrace_${pyver}.dsc" "klptrace_${pyver}.tar.xz" \
         "klptrace_${pyver}_${arch}.changes" "klptrace_${pyver}_${arch}.buildinfo"; do
    cp "$STAGE/$f" dist/
done

# lintian on the .changes: the .deb, the .dsc and the source. Fails on an
# error; warnings and infos are shown (each is explained in docs/packaging.md).
echo "deb: lintian"
# As root, lintian runs as nobody (it warns against root).
as=()
[ "$(id -u)" != 0 ] || as=(setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=/tmp)
"${as[@]}" nice -n 19 lintian --info --display-info --fail-on error \
    "dist/klptrace_${pyver}_${arch}.changes" | tee "$STAGE/lintian.log"
echo "deb: dist/klptrace_${pyver}_all.deb"
