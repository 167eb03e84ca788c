"""Version kept in step; the packaged conffile is valid and safe by default; build-deb argument checks."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from gateway.config import load_site
from tests.packaging.helpers import (
    BUILD_DEB,
    CONFFILE,
    ROOT,
    SYSTEM_PATH,
    changelog_released_version,
    debian_changelog_version,
    pyproject_version,
    run,
)


def test_versions_in_step() -> None:
    py = pyproject_version()
    assert debian_changelog_version() == py, "packaging/debian/changelog top entry != pyproject version"
    assert changelog_released_version() == py, "CHANGELOG.md top released entry != pyproject version"


def test_installed_version_matches_pyproject() -> None:
    import gateway

    assert gateway.__version__ == pyproject_version()


def test_conffile_is_valid_and_safe() -> None:
    site = load_site(CONFFILE)
    assert site.chargers == {}
    assert site.meters == {}
    assert site.mqtt is None
    assert site.ocpp.listen_host == "127.0.0.1"
    assert site.ocpp.cms_url is None
    assert site.state_dir == "/var/lib/ems-gateway"


def test_conffile_passes_check_config_cli() -> None:
    proc = run(["ems-gateway", "check-config", str(CONFFILE)], check=False)
    assert proc.returncode == 0, proc.stderr
    assert "0 chargers" in proc.stdout
    assert "configuration OK" in proc.stdout


def test_conffile_commented_examples_are_valid(tmp_path: Path) -> None:
    """Uncommenting the example sections (circuit, meter, charger) gives a valid config."""
    lines = []
    for line in CONFFILE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^# (\[\[?\w+\]\]?|\w+ = .*)$", line)
        if m and not m.group(1).startswith(("[mqtt]", "host", "port", "cms_url")):
            lines.append(m.group(1))
        else:
            lines.append(line)
    text = "\n".join(lines) + "\n"
    f = tmp_path / "site.toml"
    f.write_text(text)
    site = load_site(f)
    assert list(site.chargers) == ["CP-01"]
    assert list(site.meters) == ["main"]
    assert "panel-ev" in site.circuits
    assert tomllib.loads(text)["chargers"][0]["failsafe_current_a"] == 0


def _build_deb(*args: str) -> tuple[int, str]:
    env = {**os.environ, "PATH": f"{SYSTEM_PATH}:{os.environ.get('PATH', '')}"}
    proc = run(["bash", str(BUILD_DEB), *args], check=False, env=env, cwd=ROOT, timeout=60)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("bad", ["1.2.3~rc1", "v1.2", "1", "1.2.3-1", "../1.0"])
def test_build_deb_refuses_bad_versions(bad: str) -> None:
    rc, err = _build_deb("--version", bad)
    assert rc == 2
    assert "invalid version" in err


def test_build_deb_refuses_unknown_arguments() -> None:
    rc, err = _build_deb("--frobnicate")
    assert rc == 2
    assert "unknown argument" in err
