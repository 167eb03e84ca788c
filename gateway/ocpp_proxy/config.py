"""[ocpp] section and the per-charger [chargers.ocpp] sub-table."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.confkit import Table, check_host, check_readable_file, valid_host


@dataclass(frozen=True)
class ChargerOcppConfig:
    security_profile: int = 1  # 1: Basic auth over ws; 2: Basic auth over TLS; 3: TLS client certificate
    password: str | None = None  # Basic auth password the charger presents (profile 1/2); None: none asked
    cms_password: str | None = None  # Basic auth password the gateway presents to the CMS for this charger
    cms_url: str | None = None  # overrides [ocpp] cms_url (the identity is still appended)
    cms_security_profile: int | None = None  # overrides [ocpp] cms_security_profile
    profile_purpose: str | None = None  # force "max" or "txdefault" instead of learning it
    # no password and no client certificate: only on a loopback listener, or with this set (logged at start)
    allow_unauthenticated: bool = False


@dataclass(frozen=True)
class OcppConfig:
    listen_host: str = "127.0.0.1"  # loopback unless configured: chargers on the LAN need listen_host set
    listen_port: int = 9000  # plain ws listener (security profile 1); 0 = ephemeral
    tls_listen_port: int | None = None  # wss listener (profiles 2 and 3); needs the server cert/key
    server_cert_file: str | None = None
    server_key_file: str | None = None
    client_ca_file: str | None = None  # CA that signs charger client certificates (profile 3)
    cms_url: str | None = None  # ws:// or wss://; the charger identity is appended as last path segment
    cms_security_profile: int = 1
    cms_ca_file: str | None = None  # CA to verify the CMS's server certificate (None: system store)
    cms_client_cert_file: str | None = None  # profile 3 towards the CMS
    cms_client_key_file: str | None = None
    lease_s: float = 120.0
    renew_before_s: float = 30.0
    significance_a: float = 1.0
    significance_w: float = 2000.0
    strict_offline: bool = False
    offline_allow_list: tuple[str, ...] = ()
    # a token the CMS has never answered for, while the CMS is down: refused (default) or accepted and
    # settled on replay (OCPP's AllowOfflineTxForUnknownId); one the CMS refused stays refused
    offline_accept_unknown: bool = False
    max_frame_bytes: int = 65536
    call_timeout_s: float = 30.0
    failsafe_stack_level: int = 0
    limit_stack_level: int = 1
    failsafe_profile_id: int = 900001
    limit_profile_id: int = 900002
    heartbeat_interval_s: int = 300  # what the gateway answers to BootNotification while the CMS is down
    reconnect_min_s: float = 1.0  # the first retry comes within this (jittered between half and all of it)
    reconnect_max_s: float = 15.0  # the backoff's cap (full jitter beneath it)
    reconnect_refused_s: float = 60.0  # least wait after the CMS refused the connection (401, 404, subprotocol)
    # while the CMS is down: the offline queue's bound (beyond it periodic messages are dropped and counted,
    # transaction begin/end messages use a reserve of a tenth, then are refused so the charger keeps them)
    queue_max_messages: int = 500_000
    replay_batch_messages: int = 100  # rows read, and answered rows deleted, per batch
    # 2.0.1: replayed TransactionEvents go out byte for byte as the charger sent them (false), or with
    # "offline": true set on those the gateway answered while the CMS was unreachable (true)
    offline_mark_events: bool = False
    token_cache_max_age_s: float = 7 * 86400.0  # a cached CMS verdict older than this is not used offline
    token_cache_max_entries: int = 10_000  # least recently confirmed tokens forgotten beyond this
    # what the CMS reads back. "hide": 2.0.1 GetChargingProfiles without the gateway's reserved profiles (the
    # CMS's merged ones included), GetCompositeSchedule (both versions) made of the CMS's own profiles (the
    # charger's rating when none is in force). "ems": the reserved profiles reported apart with
    # chargingLimitSource "EMS", and the charger's own composite schedule (the site limit in it)
    gateway_profiles_report: str = "hide"
    failsafe_timeout_s: float = 5.0  # apply_failsafe waits this long for the answers


def _profile(t: Table, key: str, default: int | None) -> int | None:
    if not t.has(key):
        t.raw(key)
        return default
    v = t.int(key, min=1, max=3)
    return v


def parse_ocpp(t: Table | None) -> OcppConfig:
    if t is None:
        return OcppConfig()
    d = OcppConfig()
    tls_port = t.raw("tls_listen_port")
    c = OcppConfig(
        listen_host=check_host(t, "listen_host", d.listen_host),
        listen_port=t.int("listen_port", d.listen_port, min=0, max=65535),
        tls_listen_port=t.int("tls_listen_port", min=0, max=65535) if tls_port is not None else None,
        server_cert_file=t.opt_str("server_cert_file"),
        server_key_file=t.opt_str("server_key_file"),
        client_ca_file=t.opt_str("client_ca_file"),
        cms_url=t.opt_str("cms_url"),
        cms_security_profile=_profile(t, "cms_security_profile", 1) or 1,
        cms_ca_file=t.opt_str("cms_ca_file"),
        cms_client_cert_file=t.opt_str("cms_client_cert_file"),
        cms_client_key_file=t.opt_str("cms_client_key_file"),
        lease_s=t.float("lease_s", d.lease_s, min=10, max=86400),
        renew_before_s=t.float("renew_before_s", d.renew_before_s, gt=0),
        significance_a=t.float("significance_a", d.significance_a, min=0, max=100),
        significance_w=t.float("significance_w", d.significance_w, min=0, max=100_000),
        strict_offline=t.bool("strict_offline", d.strict_offline),
        offline_allow_list=t.str_list("offline_allow_list"),
        offline_accept_unknown=t.bool("offline_accept_unknown", False),
        max_frame_bytes=t.int("max_frame_bytes", d.max_frame_bytes, min=1024, max=16 * 1024 * 1024),
        call_timeout_s=t.float("call_timeout_s", d.call_timeout_s, gt=0, max=600),
        failsafe_stack_level=t.int("failsafe_stack_level", d.failsafe_stack_level, min=0, max=100),
        limit_stack_level=t.int("limit_stack_level", d.limit_stack_level, min=0, max=100),
        failsafe_profile_id=t.int("failsafe_profile_id", d.failsafe_profile_id, min=1, max=2**31 - 1),
        limit_profile_id=t.int("limit_profile_id", d.limit_profile_id, min=1, max=2**31 - 1),
        heartbeat_interval_s=t.int("heartbeat_interval_s", d.heartbeat_interval_s, min=1, max=86400),
        reconnect_min_s=t.float("reconnect_min_s", d.reconnect_min_s, gt=0, max=3600),
        reconnect_max_s=t.float("reconnect_max_s", d.reconnect_max_s, gt=0, max=3600),
        failsafe_timeout_s=t.float("failsafe_timeout_s", d.failsafe_timeout_s, gt=0, max=60),
        reconnect_refused_s=t.float("reconnect_refused_s", d.reconnect_refused_s, gt=0, max=3600),
        queue_max_messages=t.int("queue_max_messages", d.queue_max_messages, min=10, max=100_000_000),
        replay_batch_messages=t.int("replay_batch_messages", d.replay_batch_messages, min=1, max=10_000),
        offline_mark_events=t.bool("offline_mark_events", d.offline_mark_events),
        token_cache_max_age_s=t.float("token_cache_max_age_s", d.token_cache_max_age_s, gt=0, max=366 * 86400),
        token_cache_max_entries=t.int("token_cache_max_entries", d.token_cache_max_entries, min=1, max=10_000_000),
        gateway_profiles_report=t.choice("gateway_profiles_report", ("hide", "ems"), d.gateway_profiles_report),
    )
    if c.renew_before_s >= c.lease_s:
        raise t.error("renew_before_s", f"must be below lease_s ({c.lease_s:g} s)")
    if c.limit_stack_level <= c.failsafe_stack_level:
        raise t.error("limit_stack_level", "must be above failsafe_stack_level (the fail-safe lies beneath)")
    if c.limit_profile_id == c.failsafe_profile_id:
        raise t.error("limit_profile_id", "must differ from failsafe_profile_id")
    if c.reconnect_max_s < c.reconnect_min_s:
        raise t.error("reconnect_max_s", "must be >= reconnect_min_s")
    if c.tls_listen_port is not None and not (c.server_cert_file and c.server_key_file):
        raise t.error("tls_listen_port", "needs server_cert_file and server_key_file")
    if c.tls_listen_port is not None and c.tls_listen_port == c.listen_port and c.listen_port != 0:
        raise t.error("tls_listen_port", f"must differ from listen_port ({c.listen_port}): two listeners, one port")
    for key in ("server_cert_file", "server_key_file", "client_ca_file", "cms_ca_file", "cms_client_cert_file",
                "cms_client_key_file"):
        path = getattr(c, key)
        if path is not None:
            check_readable_file(t.key_path(key), path)
    if c.tls_listen_port is not None:
        _check_server_tls(t, c)
    if c.cms_url is not None:
        _check_cms_url(t, c.cms_url)
    if c.cms_security_profile >= 2 and c.cms_url is not None and not c.cms_url.startswith("wss://"):
        raise t.error("cms_security_profile", "profiles 2 and 3 need a wss:// cms_url")
    if c.cms_security_profile == 3 and not (c.cms_client_cert_file and c.cms_client_key_file):
        raise t.error("cms_security_profile", "profile 3 needs cms_client_cert_file and cms_client_key_file")
    t.done()
    return c


def _check_cms_url(t: Table, url: str) -> None:
    """ws:// or wss://, a valid host, a port in range."""
    from urllib.parse import urlsplit

    if not url.startswith(("ws://", "wss://")):
        raise t.error("cms_url", "must start with ws:// or wss://")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise t.error("cms_url", f"not a valid URL: {exc}") from None
    if not parts.hostname or not valid_host(parts.hostname):
        raise t.error("cms_url", f"not a valid host in {url[:100]!r}")
    if port == 0:
        raise t.error("cms_url", "port 0 is not a CMS port")


def _check_server_tls(t: Table, c: OcppConfig) -> None:
    """The TLS listener's certificate and key load together (and the client CA), as at start."""
    import ssl

    assert c.server_cert_file is not None and c.server_key_file is not None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(c.server_cert_file, c.server_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise t.error("server_cert_file", f"cannot load the certificate with server_key_file: {exc}") from None
    if c.client_ca_file:
        try:
            ctx.load_verify_locations(c.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise t.error("client_ca_file", f"cannot load the CA: {exc}") from None


def parse_charger_ocpp(t: Table | None) -> ChargerOcppConfig:
    if t is None:
        return ChargerOcppConfig()
    purpose = t.raw("profile_purpose")
    c = ChargerOcppConfig(
        security_profile=_profile(t, "security_profile", 1) or 1,
        password=t.opt_str("password"),
        cms_password=t.opt_str("cms_password"),
        cms_url=t.opt_str("cms_url"),
        cms_security_profile=_profile(t, "cms_security_profile", None),
        profile_purpose=t.choice("profile_purpose", ("max", "txdefault")) if purpose is not None else None,
        allow_unauthenticated=t.bool("allow_unauthenticated", False),
    )
    if c.allow_unauthenticated and (c.password is not None or c.security_profile == 3):
        raise t.error("allow_unauthenticated", "contradicts the charger's password / client certificate: remove it")
    if c.cms_url is not None:
        _check_cms_url(t, c.cms_url)
    if c.password is not None and len(c.password) < 8:
        raise t.error("password", "must be at least 8 characters (OCPP security profile 1/2)")
    t.done()
    return c
