#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian 12 machine, run as root by `make setup`
# (and so by `make test` and `make demo`). It installs the host packages the project
# needs and builds .venv/ from Debian's own python3, the interpreter python3-bpfcc is
# built for, with --system-site-packages so `import bcc` works inside the venv.
# The kernel lab installs its guest kernels itself (tracer/lab/packages.py).
set -euo pipefail
cd "$(dirname "$0")/.."

# Host packages. bcc: python3-bpfcc (never PyPI's unrelated "bcc"). promtool: prometheus.
# qemu/busybox-static: the lab VM (virtme-ng). make/gcc/kmod: building test livepatches.
# debootstrap: the lab's guest userland for a kernel the host cannot serve (--kernel sid).
PKGS=(python3 python3-venv python3-bpfcc qemu-system-x86 busybox-static make gcc kmod
      debootstrap prometheus systemd openssl)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing Debian packages: ${missing[*]}; run as root (apt-get install)" >&2
        exit 2
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # --no-install-recommends keeps prometheus from pulling its web UI assets etc.
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=/usr/bin/python3
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then
    rm -rf .venv
    "$PY" -m venv --system-site-packages .venv
fi
stamp=.venv/.klptrace-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test,lab]'
    touch "$stamp"
fi
.venv/bin/python -c 'import bcc' 2>/dev/null || echo "setup: warning: bcc does not import in .venv" >&2
echo "setup: ready (.venv/bin/klptrace)"
