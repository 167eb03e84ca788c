"""Shared paths and small helpers for the packaging tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "ems-gateway.service"
DEBIAN = ROOT / "packaging" / "debian"
BUILD_DEB = ROOT / "packaging" / "build-deb"
CONFFILE = ROOT / "etc" / "ems-gateway.toml"
# Debian's own tools first (the dev machine's python may be a pyenv shim)
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def have(tool: str) -> bool:
    return shutil.which(tool, path=SYSTEM_PATH) is not None


def pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    assert m, "pyproject.toml has no version"
    return m.group(1)


def debian_changelog_version() -> str:
    first = (DEBIAN / "changelog").read_text(encoding="utf-8").splitlines()[0]
    m = re.match(r"^ems-gateway \(([^)]+)\) ", first)
    assert m, f"packaging/debian/changelog: unexpected first line {first!r}"
    return m.group(1)


def changelog_released_version() -> str:
    """The top released (not [Unreleased]) entry of CHANGELOG.md."""
    for line in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^## \[(\d[^\]]*)\]", line)
        if m:
            return m.group(1)
    raise AssertionError("CHANGELOG.md has no released version section (## [X.Y.Z] - DATE)")


def run(cmd: list[str], *, timeout: float = 120, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc  # type: ignore[no-any-return]
