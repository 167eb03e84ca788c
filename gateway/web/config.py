"""[web] section: the local web page and API. Absent section = no web server.

A listener that is not on loopback must use TLS and have a users file (authentication): an exposed
page without them is a configuration error, so ``check-config`` refuses it (exit 2, key path).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.confkit import Table, check_host, check_readable_file, is_loopback_host
from gateway.errors import ConfigError

DEFAULT_USERS_FILE = "/etc/ems-gateway/web-users"


@dataclass(frozen=True)
class WebPushConfig:
    """[web.push]: the site's figures POSTed as JSON to a URL (for CMSs that take HTTP rather than MQTT)."""

    url: str
    interval_s: float = 10.0  # figures at most this often (the newest replaces any unsent)
    timeout_s: float = 5.0
    token: str | None = None  # sent as "Authorization: Bearer <token>"
    ca_file: str | None = None  # https: the CA to trust (default: the system's)
    events: bool = True  # also push the event log (durable outbox, at least once, each with an id)
    queue_max: int = 10_000  # events waiting at most (the oldest dropped, logged)
    retry_max_s: float = 30.0  # a failing URL is retried with backoff from 1 s up to this


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = True
    listen_host: str = "127.0.0.1"
    port: int = 8080  # 0: ephemeral (tests)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    users_file: str = DEFAULT_USERS_FILE
    session_lifetime_s: float = 8 * 3600.0
    history_interval_s: float = 10.0  # site figures sampled this often; chargers every charger_history_interval_s
    charger_history_interval_s: float = 60.0
    history_hours: float = 24.0
    login_attempts_per_min: int = 5  # per client address and per user name
    push: WebPushConfig | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def exposed(self) -> bool:
        return not is_loopback_host(self.listen_host)


def _check_users(key_path: str, path: str) -> None:
    from gateway.web.users import UsersFileError, load_users

    try:
        users = load_users(path)
    except (UsersFileError, OSError) as exc:
        raise ConfigError(key_path, f"{path}: {exc}") from None
    if not users:
        raise ConfigError(key_path, f"{path} has no users (add one with `ems-gateway web-user add`)")


def _parse_push(t: Table | None) -> WebPushConfig | None:
    if t is None:
        return None
    from urllib.parse import urlsplit

    url = t.str("url", required=True)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise t.error("url", f"invalid port in {url[:200]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise t.error("url", f"must be an http:// or https:// URL with a host (got {url[:200]!r})")
    token = t.opt_str("token")
    if token is not None and parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise t.error("token", "a token is sent over https only (or to a loopback http URL)")
    ca = t.opt_str("ca_file")
    if ca is not None:
        check_readable_file(t.key_path("ca_file"), ca)
    d = WebPushConfig(url=url)
    c = WebPushConfig(
        url=url,
        interval_s=t.float("interval_s", d.interval_s, min=1, max=3600),
        timeout_s=t.float("timeout_s", d.timeout_s, gt=0, max=120),
        token=token,
        ca_file=ca,
        events=t.bool("events", d.events),
        queue_max=t.int("queue_max", d.queue_max, min=10, max=10_000_000),
        retry_max_s=t.float("retry_max_s", d.retry_max_s, min=1, max=3600),
    )
    t.done()
    return c


def parse_web(t: Table | None, *, taken_ports: tuple[int, ...] = ()) -> WebConfig | None:
    """Parse [web]; ``taken_ports``: the OCPP listeners' ports (a second listener on one is refused)."""
    if t is None:
        return None
    d = WebConfig()
    cert = t.opt_str("tls_cert_file")
    key = t.opt_str("tls_key_file")
    if (cert is None) != (key is None):
        missing = "tls_key_file" if key is None else "tls_cert_file"
        raise t.error(missing, "TLS needs both tls_cert_file and tls_key_file")
    c = WebConfig(
        enabled=t.bool("enabled", True),
        listen_host=check_host(t, "listen_host", d.listen_host),
        port=t.int("port", d.port, min=0, max=65535),
        tls_cert_file=cert,
        tls_key_file=key,
        users_file=t.str("users_file", d.users_file),
        session_lifetime_s=t.float("session_lifetime_s", d.session_lifetime_s, min=60, max=30 * 86400),
        history_interval_s=t.float("history_interval_s", d.history_interval_s, min=1, max=3600),
        charger_history_interval_s=t.float(
            "charger_history_interval_s", d.charger_history_interval_s, min=1, max=3600
        ),
        history_hours=t.float("history_hours", d.history_hours, min=1, max=24 * 31),
        login_attempts_per_min=t.int("login_attempts_per_min", d.login_attempts_per_min, min=1, max=1000),
        push=_parse_push(t.table("push")),
    )
    if c.enabled and c.port != 0 and c.port in taken_ports:
        raise t.error("port", f"{c.port} is an OCPP listener's port: two listeners, one port")
    if c.enabled:
        for k in ("tls_cert_file", "tls_key_file"):
            path = getattr(c, k)
            if path is not None:
                check_readable_file(t.key_path(k), path)
        if c.exposed:
            if not c.tls:
                raise t.error(
                    "tls_cert_file",
                    f"required when listen_host ({c.listen_host}) is not loopback: an exposed page needs TLS",
                )
            check_readable_file(t.key_path("users_file"), c.users_file)
            _check_users(t.key_path("users_file"), c.users_file)
    t.done()
    return c
