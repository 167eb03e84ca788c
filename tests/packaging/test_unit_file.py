"""The systemd unit: `systemd-analyze verify` clean and a security exposure of 2.0 or lower."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from tests.packaging.helpers import SYSTEM_PATH, UNIT, have, run

pytestmark = pytest.mark.skipif(not have("systemd-analyze"), reason="systemd-analyze is not installed")


def _unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _unit_with_fake_binary(tmp_path: Path) -> Path:
    """The unit with /usr/bin/ems-gateway replaced by an executable that exists here."""
    fake = tmp_path / "bin" / "ems-gateway"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    text = UNIT.read_text(encoding="utf-8")
    assert "/usr/bin/ems-gateway " in text
    unit = tmp_path / "unit" / "ems-gateway.service"
    unit.parent.mkdir()
    unit.write_text(text.replace("/usr/bin/ems-gateway ", f"{fake} "))
    return unit


def test_verify_is_clean(tmp_path: Path) -> None:
    unit = _unit_with_fake_binary(tmp_path)
    env = {**os.environ, "PATH": SYSTEM_PATH, "SYSTEMD_LOG_COLOR": "0"}
    proc = run(["systemd-analyze", "verify", str(unit)], env=env, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", f"systemd-analyze verify warned:\n{proc.stderr}"


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above would see a mistake: a misspelt directive makes verify speak."""
    unit = _unit_with_fake_binary(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    env = {**os.environ, "PATH": SYSTEM_PATH, "SYSTEMD_LOG_COLOR": "0"}
    proc = run(["systemd-analyze", "verify", str(unit)], env=env, check=False, cwd=tmp_path)
    assert "ProtectHomes" in proc.stderr


def _exposure(unit: Path, cwd: Path) -> float:
    env = {**os.environ, "PATH": SYSTEM_PATH, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    proc = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)], env=env, check=False, cwd=cwd)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, f"no exposure level in the output:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return float(m.group(1))


def test_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    level = _exposure(UNIT, tmp_path)
    assert level <= 2.0, f"exposure {level} > 2.0"


def test_security_parse_sees_an_unhardened_unit(tmp_path: Path) -> None:
    """The parser reads the real figure: a bare unit is rated far worse."""
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/bin/true\n")
    assert _exposure(bare, tmp_path) > 8.0


def test_unit_has_the_required_settings() -> None:
    s = _unit_settings()
    expect = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "StateDirectory": "ems-gateway",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "DevicePolicy": "closed",
        "User": "ems-gateway",
    }
    for key, value in expect.items():
        assert value in s.get(key, []), f"{key}={value} missing (have {s.get(key)})"
    assert s["ExecStart"] == ["/usr/bin/ems-gateway run --config /etc/ems-gateway/gateway.toml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert re.fullmatch(r"\d+s", s["WatchdogSec"][0])
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "dialout" in s["SupplementaryGroups"]
    devices = [d.split()[0] for d in s["DeviceAllow"]]
    assert devices and all(d.startswith("char-tty") for d in devices), devices
