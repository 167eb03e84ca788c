"""[web] configuration and the users file: check-config refuses an exposed page without TLS and users."""

from __future__ import annotations

import grp
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import site_from_dict
from gateway.errors import ConfigError
from gateway.web.users import load_users, verify_password
from hil.tomlw import dumps
from tests.daemon.conftest import small_site
from tests.web.conftest import write_users


def _site(web: dict[str, Any]) -> Any:
    raw = small_site()
    raw["web"] = web
    return site_from_dict(raw)


def _check_config(tmp_path: Path, web: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    raw = small_site()
    raw["site"]["state_dir"] = str(tmp_path)
    raw["web"] = web
    cfg = tmp_path / "gw.toml"
    cfg.write_text(dumps(raw))
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", str(cfg)], capture_output=True,
                          text=True, timeout=60, env={**os.environ})


def test_defaults_are_loopback_without_tls() -> None:
    w = _site({}).web
    assert w is not None and w.listen_host == "127.0.0.1" and not w.tls and not w.exposed
    assert w.users_file == "/etc/ems-gateway/web-users" and w.session_lifetime_s == 8 * 3600
    assert _site({}).web == _site({"enabled": True}).web
    assert site_from_dict(small_site()).web is None


@pytest.mark.parametrize(("web", "key", "words"), [
    ({"listen_host": "0.0.0.0"}, "web.tls_cert_file", "not loopback"),
    ({"listen_host": "192.168.1.10", "tls_cert_file": "CERT"}, "web.tls_key_file", "both"),
    ({"listen_host": "0.0.0.0", "tls_cert_file": "CERT", "tls_key_file": "CERT", "users_file": "NOFILE"},
     "web.users_file", "cannot read"),
    ({"listen_host": "0.0.0.0", "tls_cert_file": "CERT", "tls_key_file": "CERT", "users_file": "EMPTY"},
     "web.users_file", "no users"),
    ({"port": 9000}, "web.port", "OCPP"),
    ({"port": 70000}, "web.port", ""),
    ({"session_lifetime": 10}, "web.session_lifetime", "unknown key"),
    ({"tls_cert_file": "NOFILE", "tls_key_file": "NOFILE"}, "web.tls_cert_file", "cannot read"),
])
def test_an_exposed_or_wrong_listener_is_refused_with_the_key_path(
        tmp_path: Path, web: dict[str, Any], key: str, words: str) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    (tmp_path / "empty").write_text("# nobody\n")
    subst = {"CERT": str(cert), "NOFILE": str(tmp_path / "missing"), "EMPTY": str(tmp_path / "empty")}
    web = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in web.items()}
    with pytest.raises(ConfigError) as ei:
        _site(web)
    assert ei.value.path == key and words in ei.value.reason
    r = _check_config(tmp_path, web)
    assert r.returncode == 2, r.stdout
    assert key in r.stderr


def test_an_exposed_listener_with_tls_and_users_passes_check_config(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    users = write_users(tmp_path / "users")
    web = {"listen_host": "0.0.0.0", "tls_cert_file": str(cert), "tls_key_file": str(cert), "users_file": str(users)}
    assert _site(web).web is not None
    r = _check_config(tmp_path, web)
    assert r.returncode == 0, r.stderr


def test_web_user_add_writes_scrypt_hashes_never_world_readable(tmp_path: Path) -> None:
    f = tmp_path / "etc" / "web-users"

    def add(name: str, role: str, pw: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "web-user", "add", name, "--role", role, "--file",
                               str(f), "--password-stdin"], input=pw + "\n", capture_output=True, text=True,
                              timeout=60)

    assert add("anna", "technician", "correct horse").returncode == 0
    assert add("bob", "viewer", "battery staple").returncode == 0
    assert add("bob", "viewer", "short").returncode == 2  # too short: refused, the old one kept
    assert add("bad name", "viewer", "long enough pw").returncode == 2
    users = load_users(f)
    assert {u.name: u.role for u in users.values()} == {"anna": "technician", "bob": "viewer"}
    assert verify_password("battery staple", users["bob"].hash)
    assert not verify_password("battery stapl", users["bob"].hash)
    assert "correct horse" not in f.read_text()
    try:
        grp.getgrnam("ems-gateway")
        created = 0o640  # readable by the daemon's group
    except KeyError:
        created = 0o600
    assert f.stat().st_mode & 0o777 == created
    f.chmod(0o640)
    assert add("anna", "viewer", "new password!").returncode == 0
    assert load_users(f)["anna"].role == "viewer"
    assert f.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
