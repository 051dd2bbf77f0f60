"""The Debian package's sources that must not drift (docs/packaging.md):
debian/changelog's version is pyproject.toml's, the packaged unit generated
from deploy/systemd/klptrace.service verifies like the source unit, and the
man pages are generated for every click command. Building the .deb itself is
`make deb`; installing it into a clean root is tests/pkg/check_deb_in_root.sh
(`make deb-check`): neither runs here."""

import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_changelog_version_is_pyprojects():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    first = (REPO / "debian/changelog").read_text().splitlines()[0]
    m = re.match(r"^klptrace \(([^)]+)\) ", first)
    assert m, first
    assert m.group(1) == version, \
        f"debian/changelog's latest entry is {m.group(1)}, pyproject.toml has {version}: dch -v {version}"


def test_packaged_unit_is_the_source_unit_with_the_packages_paths(tmp_path):
    pu = _script("packaged_unit")
    src = (REPO / "deploy/systemd/klptrace.service").read_text()
    unit = pu.packaged(src)
    assert "/opt/klptrace" not in unit
    assert re.search(r"^ExecStart=/usr/bin/klptrace run ", unit, re.M)
    assert re.search(r"^Documentation=man:klptrace-run\(1\) ", unit, re.M)
    # everything from [Unit] on but those two lines is the source's
    def body(t):
        t = t[t.index("[Unit]"):]
        return [l for l in t.splitlines() if not l.startswith(("ExecStart=", "Documentation="))]
    assert body(unit) == body(src)
    # a source unit whose ExecStart moved elsewhere stops the build
    with pytest.raises(pu.UnitError):
        pu.packaged(src.replace("ExecStart=/opt/klptrace/.venv/bin/klptrace",
                                "ExecStart=/srv/klptrace/bin/klptrace"))


def test_packaged_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    stub = tmp_path / "klptrace"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = _script("packaged_unit").packaged((REPO / "deploy/systemd/klptrace.service").read_text())
    (tmp_path / "klptrace.service").write_text(unit.replace("/usr/bin/klptrace", str(stub)))
    # --man=no: the pages named by Documentation= are installed by the package only
    r = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "klptrace.service")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_man_pages_cover_every_command(tmp_path):
    import click
    mp = _script("manpages")
    assert mp.main(["--out", str(tmp_path), "--doc", "/usr/share/doc/klptrace/operations.md"]) == 0
    _mod, root = mp.root_command(mp.entry_points(REPO / "pyproject.toml")["klptrace"])
    names = {"klptrace"}
    for name, cmd in root.commands.items():
        names.add(f"klptrace-{name}")
        if isinstance(cmd, click.Group):
            names |= {f"klptrace-{name}-{sub}" for sub in cmd.commands}
    assert {p.stem for p in tmp_path.glob("*.1")} == names
    run = (tmp_path / "klptrace-run.1").read_text()
    assert ".SH OPTIONS" in run and "\\-\\-trace\\-max\\-bytes" in run
    assert ".SH EXIT STATUS" in (tmp_path / "klptrace.1").read_text()
    man = shutil.which("man")
    if man:     # man-db: the pages render without a groff warning (lintian's check)
        for page in tmp_path.glob("*.1"):
            r = subprocess.run([man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
                               capture_output=True, text=True, timeout=60,
                               env={"LC_ALL": "C.UTF-8", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
            assert r.returncode == 0 and not r.stderr.strip(), (page.name, r.stderr)
