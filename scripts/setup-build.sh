#!/usr/bin/env bash
# Idempotent set-up for `make deb` and `make deb-check` on Debian 12, as root
# (like scripts/setup.sh for `make test`). Installs:
#   - the tools around the build: dpkg-dev (dpkg-buildpackage, dpkg-checkbuilddeps),
#     lintian, and debootstrap for tests/pkg/check_deb_in_root.sh;
#   - the package's Build-Depends, read from debian/control (the one list of
#     them) by `apt-get build-dep`, only when dpkg-checkbuilddeps finds one missing.
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

if ! unmet=$(dpkg-checkbuilddeps 2>&1); then
    need_root "${unmet#dpkg-checkbuilddeps: error: }"
    echo "setup-build: installing the Build-Depends of debian/control"
    apt_update
    apt-get build-dep -y -q --no-install-recommends ./
    dpkg-checkbuilddeps
fi
echo "setup-build: ready (Build-Depends of debian/control, dpkg-dev, lintian, debootstrap)"
