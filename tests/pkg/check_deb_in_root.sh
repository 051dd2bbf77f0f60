#!/usr/bin/env bash
# Install the Debian package into a clean Debian 12 root with apt (every
# dependency from Debian's archive) and check it there, as root:
#
#     bash tests/pkg/check_deb_in_root.sh dist/klptrace_0.1.0_all.deb   # or: make deb-check
#
# Not part of the unit suite (it needs root, debootstrap and the archive).
# The minbase root is made once with debootstrap into $BASE (a few minutes)
# and copied afresh to $ROOT for every run, so each run installs into a clean
# root. Everything runs chrooted inside `unshare --mount --pid --fork` with
# its own /proc and /dev mounts, which vanish with the namespace; no daemon
# is started (no systemd runs there; a policy-rc.d refuses starts).
#
# Checked: apt installs the .deb with its Depends and Recommends;
# `klptrace --version`; `klptrace validate` on the examples (clean 0,
# violation 1); `import klptrace.tracer` works, `import tracer`/`exporters`
# fail; every module of the klptrace namespace imports; each subcommand's
# --help; the exporter serves /metrics on 127.0.0.1 (prometheus-client's
# API); man pages, unit (ExecStart=/usr/bin/klptrace, enabled), logrotate
# (a real forced rotation), rules and dashboard in place; purge removes the
# code, the unit's enablement and /var/log/klptrace.
#
# Only Debian's bookworm archive: every dependency is Debian 12's own
# (python3-prometheus-client 0.16 included). KLPT_DEB_EXTRA="pkg/suite ..."
# adds packages (and lists their suites).
set -euo pipefail

DEB=${1:?usage: $0 dist/klptrace_VERSION_all.deb}
BASE=${KLPT_DEB_BASE:-/var/tmp/klpt-debroot-base}
ROOT=${KLPT_DEB_ROOT:-/var/tmp/klpt-debroot}
MIRROR=http://deb.debian.org/debian
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
EXTRA=${KLPT_DEB_EXTRA-}
# downloaded .debs are kept here between runs (bound over the root's apt cache)
ARCHIVES=${KLPT_DEB_ARCHIVES:-/var/cache/klptrace-build/debroot-archives}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "check_deb_in_root: run as root" >&2; exit 2; }
[ -f "$DEB" ] || { echo "check_deb_in_root: no such file $DEB" >&2; exit 2; }
command -v debootstrap >/dev/null || bash "$REPO/scripts/setup-build.sh"
VERSION=$(dpkg-deb -f "$DEB" Version)
t0=$(date +%s)

# 1. the base root, once
if [ ! -f "$BASE/.klpt-debootstrap-ok" ]; then
    echo "check: debootstrap --variant=minbase bookworm $BASE (once; a few minutes)"
    rm -rf "$BASE"
    nice -n 19 debootstrap --variant=minbase --keyring="$KEYRING" bookworm "$BASE" "$MIRROR" \
        > /var/tmp/klpt-debootstrap.log 2>&1 \
        || { tail -20 /var/tmp/klpt-debootstrap.log >&2; exit 1; }
    touch "$BASE/.klpt-debootstrap-ok"
fi
t1=$(date +%s)

# 2. a fresh copy, apt sources, the package and the examples. The last run's
# mounts lived in its own namespace; refuse to delete a root that still has
# one (a bind of /dev), and never cross into another file system.
if findmnt -rn -o TARGET | grep -q "^$ROOT/"; then
    echo "check_deb_in_root: something is mounted under $ROOT; unmount it first" >&2
    exit 1
fi
rm -rf --one-file-system "$ROOT"
cp -a "$BASE" "$ROOT"
cat > "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
for x in $EXTRA; do       # pkg/suite: that suite, at a priority that takes nothing unasked
    suite=${x#*/}
    echo "deb $MIRROR $suite main" >> "$ROOT/etc/apt/sources.list"
    printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "$suite" \
        > "$ROOT/etc/apt/preferences.d/klptrace-check-$suite"
done
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
mkdir -p "$ROOT/tmp/klpt"
cp "$DEB" "$ROOT/tmp/klpt/"
cp -r "$REPO/examples" "$ROOT/tmp/klpt/"
DEBNAME=$(basename "$DEB")

# 3. install and check, chrooted in private mount and PID namespaces
cat > "$ROOT/tmp/klpt/inroot.sh" <<'INROOT'
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin
cd /
fails=0
ok()   { echo "ok   $*"; }
bad()  { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@" >/tmp/klpt/out 2>&1; then ok "$what"; else bad "$what"; sed 's/^/     /' /tmp/klpt/out | tail -15; fi; }

apt-get -q update >/tmp/klpt/apt.log 2>&1 || { cat /tmp/klpt/apt.log; exit 1; }
# shellcheck disable=SC2086
if apt-get install -y -q "/tmp/klpt/$DEBNAME" $EXTRA logrotate >>/tmp/klpt/apt.log 2>&1; then
    ok "apt install ./$DEBNAME $EXTRA: $(dpkg-query -W -f='${Version}' klptrace)," \
       "prometheus-client $(dpkg-query -W -f='${Version}' python3-prometheus-client)," \
       "bpfcc $(dpkg-query -W -f='${Version}' python3-bpfcc)," \
       "headers: $(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 'linux-headers-*' 2>/dev/null | awk '$1 == "ii" {printf "%s ", $2}')"
else
    tail -25 /tmp/klpt/apt.log; bad "apt install"; exit 1
fi

check "klptrace --version is $VERSION" sh -c "klptrace --version | grep -x 'klptrace, version $VERSION'"
check "klptrace validate (clean examples): exit 0" klptrace validate /tmp/klpt/examples/module-coming.jsonl /tmp/klpt/examples/atomic-replace.jsonl
v=$(ls /tmp/klpt/examples/violations/*.jsonl | head -1)
check "klptrace validate ($(basename "$v")): exit 1" sh -c "klptrace validate '$v'; test \$? = 1"
check "import klptrace.tracer, klptrace.exporters, klptrace.bpf" python3 -c 'import klptrace.tracer, klptrace.exporters, klptrace.bpf'
check "import tracer fails" sh -c "! python3 -c 'import tracer'"
check "import exporters fails" sh -c "! python3 -c 'import exporters'"
check "only klptrace in dist-packages from the package" sh -c \
    "! dpkg -L klptrace | grep '^/usr/lib/python3/dist-packages/[^/]*$' | grep -v -e '/klptrace$' -e '/klptrace-.*dist-info$'"
check "every module of the klptrace namespace imports" python3 - <<'PY'
import importlib, pkgutil, klptrace
mods = [m.name for m in pkgutil.walk_packages(klptrace.__path__, "klptrace.")]
for m in mods:
    importlib.import_module(m)
print(len(mods), "modules")
PY
# the subcommands, from the click group behind the console script (the
# command of the entry point's module that no group there contains)
cmds=$(python3 - <<'PY'
import importlib, click
from importlib.metadata import entry_points
ep = [x for x in entry_points(group="console_scripts") if x.name == "klptrace"][0]
m = importlib.import_module(ep.module)
cmds = [v for v in vars(m).values() if isinstance(v, click.Command)]
inner = {id(c) for g in cmds if isinstance(g, click.Group) for c in g.commands.values()}
root, = [c for c in cmds if id(c) not in inner]
print(" ".join(root.commands))
PY
)
[ -n "$cmds" ] && ok "subcommands: $cmds" || bad "no subcommands found"
for c in $cmds; do
    check "klptrace $c --help" klptrace "$c" --help
done
check "the exporter serves /metrics on 127.0.0.1 (prometheus-client API)" python3 - <<'PY'
import urllib.request
from prometheus_client import CollectorRegistry, Counter
from klptrace.exporters import server
reg = CollectorRegistry()
Counter("klpt_pkgcheck", "package check", registry=reg).inc()
s = server.start(reg, "127.0.0.1:0")
try:
    body = urllib.request.urlopen(s.url, timeout=10).read()
finally:
    s.close()
assert b"klpt_pkgcheck_total 1.0" in body, body[:300]
PY
check "bcc importable (python3-bpfcc)" python3 -c 'import bcc'
check "man pages klptrace(1), klptrace-run(1)" test -f /usr/share/man/man1/klptrace.1.gz -a -f /usr/share/man/man1/klptrace-run.1.gz
check "unit: ExecStart=/usr/bin/klptrace run" grep -q '^ExecStart=/usr/bin/klptrace run ' /lib/systemd/system/klptrace.service
check "unit: no /opt path" sh -c "! grep -n /opt/ /lib/systemd/system/klptrace.service"
check "unit: enabled (multi-user.target.wants)" test -L /etc/systemd/system/multi-user.target.wants/klptrace.service
check "rules and dashboard in /usr/share/klptrace" test -f /usr/share/klptrace/klptrace-rules.yml -a -f /usr/share/klptrace/klptrace-dashboard.json
mkdir -p /var/log/klptrace
echo '{"record":"header"}' > /var/log/klptrace/trace.jsonl
echo '{"record":"old"}' > /var/log/klptrace/trace.jsonl.1
check "logrotate -f rotates trace.jsonl by date, leaves trace.jsonl.1" sh -c \
    "logrotate -f -s /tmp/klpt/lr.state /etc/logrotate.d/klptrace && ls /var/log/klptrace/trace.jsonl-* && test -f /var/log/klptrace/trace.jsonl.1 && test ! -e /var/log/klptrace/trace.jsonl"
check "apt purge klptrace" apt-get purge -y -q klptrace
check "purged: code, unit link, /var/log/klptrace gone" sh -c \
    "test ! -e /usr/lib/python3/dist-packages/klptrace && test ! -e /etc/systemd/system/multi-user.target.wants/klptrace.service && test ! -e /var/log/klptrace && test ! -e /usr/bin/klptrace"
echo "$fails failed"
exit $((fails > 0))
INROOT

rc=0
mkdir -p "$ARCHIVES/partial"
unshare --mount --propagation private --pid --fork sh -c '
    set -e
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"
    mount --bind "$5" "$1/var/cache/apt/archives"
    exec chroot "$1" env DEBNAME="$2" EXTRA="$3" VERSION="$4" nice -n 19 bash /tmp/klpt/inroot.sh
' sh "$ROOT" "$DEBNAME" "$EXTRA" "$VERSION" "$ARCHIVES" || rc=$?
t2=$(date +%s)
echo "check: debootstrap $((t1 - t0)) s, install and checks $((t2 - t1)) s, total $((t2 - t0)) s"
exit $rc
