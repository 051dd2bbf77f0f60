#!/usr/bin/env bash
# Idempotent set-up for `make deb` and `make deb-check` on Debian 12, as root
# (like scripts/setup.sh for `make test`). Installs:
#   - the tools around the build: dpkg-dev (dpkg-buildpackage, dpkg-checkbuilddeps),
#     lintian, and debootstrap for tests/pkg/check_deb_in_root.sh;
#   - the package's Build-Depends, read from debian/control (the one list of
#     them) by `apt-get build-dep`, only when dpkg-checkbuilddeps finds one missing.
#   - on bookworm, python3-prometheus-client from trixie (see NEWER below).
# apt-get update runs only when something is to be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

TOOLS=(dpkg-dev lintian debootstrap)

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup-build: $1; run as root" >&2
        exit 2
    fi
}
updated=
apt_update() {
    [ -n "$updated" ] || { apt-get update -q; updated=1; }
}

missing=()
for p in "${TOOLS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    need_root "missing Debian packages: ${missing[*]}"
    echo "setup-build: installing ${missing[*]}"
    apt_update
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# NEWER: packages the code needs in a version bookworm's archive does not
# have, with that version. klptrace needs prometheus-client >= 0.20
# (pyproject.toml; exporters/server.py says why), bookworm has 0.16.0, and
# bookworm-backports has none. Trixie's is architecture-independent pure
# Python whose dependencies (python3:any, python3-decorator) bookworm
# satisfies: it is fetched through a private apt configuration (under
# /var/cache/klptrace-build; /etc/apt is not touched) and installed with apt,
# as docs/packaging.md tells fleet hosts to do.
NEWER=("python3-prometheus-client 0.20")
NEWER_SUITE=trixie
APTDIR=/var/cache/klptrace-build/apt-$NEWER_SUITE
for spec in "${NEWER[@]}"; do
    read -r pkg minver <<<"$spec"
    have=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
    if [ -n "$have" ] && dpkg --compare-versions "$have" ge "$minver"; then
        continue
    fi
    need_root "$pkg >= $minver missing (installed: ${have:-none})"
    apt_update
    cand=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
    if [ -n "$cand" ] && [ "$cand" != "(none)" ] && dpkg --compare-versions "$cand" ge "$minver"; then
        apt-get install -y -q --no-install-recommends "$pkg"
        continue
    fi
    echo "setup-build: $pkg $minver or newer is not in this machine's apt sources (candidate: ${cand:-none}); from $NEWER_SUITE"
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $NEWER_SUITE main" \
        > "$APTDIR/sources.list"
    opts=(-o "Dir::Etc::sourcelist=$APTDIR/sources.list" -o Dir::Etc::sourceparts=-
          -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache")
    apt-get "${opts[@]}" -q update
    rm -f "$APTDIR/debs/${pkg}"_*.deb
    (cd "$APTDIR/debs" && apt-get "${opts[@]}" -q download "$pkg")
    apt-get install -y -q --no-install-recommends "$APTDIR/debs/${pkg}"_*.deb
done

if ! unmet=$(dpkg-checkbuilddeps 2>&1); then
    need_root "${unmet#dpkg-checkbuilddeps: error: }"
    echo "setup-build: installing the Build-Depends of debian/control"
    apt_update
    apt-get build-dep -y -q --no-install-recommends ./
    dpkg-checkbuilddeps
fi
echo "setup-build: ready (Build-Depends of debian/control, dpkg-dev, lintian, debootstrap)"
