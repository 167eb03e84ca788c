"""[budget.openadr]: utility demand response (an OpenADR 2.0b VEN, or an OpenADR 3 client) as budget sources.

::

    [budget.openadr]
    protocol = "2.0b"                  # "2.0b" (openleadr VEN, XML over HTTP pull) | "3.0" (REST, bearer token)
    vtn_url = "https://vtn.example.com/OpenADR2/Simple/2.0b"   # 3.0: the API's base, e.g. .../openadr3/3.0.1
    ven_name = "depot-1"
    poll_interval_s = 30               # 2.0b: the VTN's requested poll frequency wins when it is shorter
    # 2.0b over https: TLS with a client certificate (the profile requires one), the VTN's CA
    cert_file = "/etc/ems-gateway/ven.crt"
    key_file = "/etc/ems-gateway/ven.key"
    ca_file = "/etc/ems-gateway/vtn-ca.crt"
    vtn_fingerprint = "AB:CD:..:EF"    # 2.0b: 10 hex pairs (openleadr's SHA-256 tail); signed messages checked
    # 3.0: OAuth2 client credentials for the bearer token (token_url defaults to <vtn_url>/auth/token)
    client_id = "ven-1"
    client_secret_file = "/etc/ems-gateway/oadr3.secret"
    programs = ["DR-EV"]               # 3.0: program names whose events apply (default: every program)
    # what the signals mean for the site's import
    level1_kw = 60                     # SIMPLE level 1 (moderate), 2 (high), 3 (emergency); level 0 is normal
    level2_kw = 40
    level3_kw = 20
    opt_policy = "always-opt-in"       # | "opt-out-if-sessions-at-risk" (asks the fleet hook per event)
    lead_s = 30                        # the cap applies this long before the start: the charger's answer, the
                                       # EVs' 5-11 s and a second allocation round (hil/bench/bench_dr_event.py)
    randomize_start = true             # honour the event's start randomisation (2.0b startafter, 3.0 randomizeStart)
    confirm_s = 900                    # an open-ended event lasts this long past the VTN's last contact
    max_event_h = 24                   # no event lasts longer than this, whatever the VTN said

Loopback VTNs may use plain http (tests, a local aggregator); any other host needs https.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from gateway import electrical
from gateway.confkit import Table, check_readable_file, is_loopback_host

if TYPE_CHECKING:
    from gateway.config import ServiceConfig

Protocol = Literal["2.0b", "3.0"]
OptPolicy = Literal["always-opt-in", "opt-out-if-sessions-at-risk"]
OPT_POLICIES: tuple[OptPolicy, ...] = ("always-opt-in", "opt-out-if-sessions-at-risk")
_FINGERPRINT_RE = re.compile(r"([0-9A-F]{2}:){9}[0-9A-F]{2}")


@dataclass(frozen=True)
class OpenADRConfig:
    protocol: Protocol
    vtn_url: str
    ven_name: str
    levels_kw: tuple[float, float, float]  # SIMPLE levels 1, 2, 3
    poll_interval_s: float = 30.0
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    vtn_fingerprint: str | None = None
    check_hostname: bool = True
    client_id: str | None = None
    client_secret_file: str | None = None
    token_url: str | None = None
    programs: tuple[str, ...] = ()
    opt_policy: OptPolicy = "always-opt-in"
    lead_s: float = 30.0
    randomize_start: bool = True
    confirm_s: float = 900.0
    max_event_h: float = 24.0

    def level_kw(self, level: int) -> float | None:
        """The site's import cap (kW) at a SIMPLE level; None for level 0 (normal operation)."""
        if level <= 0:
            return None
        return self.levels_kw[min(level, 3) - 1]


def parse_openadr(t: Table | None, service: ServiceConfig) -> OpenADRConfig | None:
    if t is None:
        return None
    for bad in ("level1_w", "level1_a", "poll_interval", "poll_interval_ms", "lead_ms", "confirm_h"):
        if t.has(bad):
            raise t.error(bad, "wrong unit: units are part of key names (level1_kw, poll_interval_s, lead_s, "
                          "confirm_s)")
    protocol: Protocol = "3.0" if t.choice("protocol", ("2.0b", "3.0"), "2.0b") == "3.0" else "2.0b"
    url = _url(t, "vtn_url")
    https = urlsplit(url).scheme == "https"
    capacity_kw = electrical.service_power_w(service, service.limit_a) / 1000.0
    levels = tuple(t.float(f"level{n}_kw", min=0, max=1e6) for n in (1, 2, 3))
    for n in (2, 3):
        if levels[n - 1] > levels[n - 2]:
            raise t.error(f"level{n}_kw", f"{levels[n - 1]:g} kW is above level {n - 1}'s {levels[n - 2]:g} kW: a "
                          "higher level sheds more")
    if levels[0] > capacity_kw + 1e-9:
        raise t.error("level1_kw", f"{levels[0]:g} kW is above the service's capacity ({capacity_kw:.1f} kW = "
                      f"{service.limit_a:g} A per line): it could never bind")
    cert, key, ca = (_file(t, k) for k in ("cert_file", "key_file", "ca_file"))
    if (cert is None) != (key is None):
        raise t.error("key_file" if key is None else "cert_file", "cert_file and key_file go together")
    if protocol == "2.0b" and https and cert is None:
        raise t.error("cert_file", "OpenADR 2.0b over https authenticates the VEN with a client certificate: "
                      "give cert_file and key_file")
    fp = t.opt_str("vtn_fingerprint")
    if fp is not None:
        fp = fp.upper()
        if protocol != "2.0b":
            raise t.error("vtn_fingerprint", "only OpenADR 2.0b signs messages (protocol = \"2.0b\")")
        if not _FINGERPRINT_RE.fullmatch(fp):
            raise t.error("vtn_fingerprint", "10 hex pairs separated by colons (AB:CD:...), as "
                          "`python -m openleadr.fingerprint vtn.crt` prints")
    client_id = t.opt_str("client_id")
    secret = _file(t, "client_secret_file")
    if protocol == "3.0" and (client_id is None) != (secret is None):
        raise t.error("client_id" if client_id is None else "client_secret_file",
                      "client_id and client_secret_file go together (OAuth2 client credentials)")
    if protocol == "2.0b":
        for k in ("client_id", "client_secret_file", "token_url", "programs"):
            if t.has(k):
                raise t.error(k, "an OpenADR 3 key (protocol = \"3.0\")")
    c = OpenADRConfig(
        protocol=protocol, vtn_url=url.rstrip("/"), ven_name=_name(t), levels_kw=(levels[0], levels[1], levels[2]),
        poll_interval_s=t.float("poll_interval_s", 30.0, min=1, max=86400),
        cert_file=cert, key_file=key, ca_file=ca, vtn_fingerprint=fp,
        check_hostname=t.bool("check_hostname", True), client_id=client_id, client_secret_file=secret,
        token_url=_url(t, "token_url") if t.has("token_url") else None, programs=t.str_list("programs"),
        opt_policy="opt-out-if-sessions-at-risk" if t.choice("opt_policy", OPT_POLICIES, "always-opt-in")
        == "opt-out-if-sessions-at-risk" else "always-opt-in",
        lead_s=t.float("lead_s", 30.0, min=0, max=3600), randomize_start=t.bool("randomize_start", True),
        confirm_s=t.float("confirm_s", 900.0, min=10, max=86400),
        max_event_h=t.float("max_event_h", 24.0, gt=0, max=168),
    )
    if c.confirm_s < 2 * c.poll_interval_s:
        raise t.error("confirm_s", f"{c.confirm_s:g} s is shorter than two polls ({c.poll_interval_s:g} s "
                      "each): one late poll would end every open-ended event")
    t.done()
    return c


def _url(t: Table, key: str) -> str:
    url = t.str(key, required=True)
    try:
        u = urlsplit(url)
        host = u.hostname
        u.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise t.error(key, f"not a URL: {url[:80]!r}") from None
    if u.scheme not in ("http", "https") or not host:
        raise t.error(key, f"an http(s) URL with a host, got {url[:80]!r}")
    if u.scheme == "http" and not is_loopback_host(host):
        raise t.error(key, "plain http only to a loopback VTN: a utility's VTN is reached over https")
    return url


def _file(t: Table, key: str) -> str | None:
    v = t.opt_str(key)
    return None if v is None else check_readable_file(t.key_path(key), v)


def _name(t: Table) -> str:
    v = t.str("ven_name", required=True)
    if not 0 < len(v) <= 128 or not v.isprintable():
        raise t.error("ven_name", "1..128 printable characters")
    return v


def describe(c: OpenADRConfig, service: ServiceConfig) -> list[str]:
    """check-config's lines: what each level means in A at the service."""
    out = [f"  openadr {c.protocol} VEN {c.ven_name!r} -> {c.vtn_url} (poll {c.poll_interval_s:g} s, "
           f"{c.opt_policy}, lead {c.lead_s:g} s, open-ended events confirmed for {c.confirm_s:g} s):"]
    for n, kw in enumerate(c.levels_kw, start=1):
        amps = min(electrical.service_line_current_a(service, kw * 1000.0), service.limit_a)
        out.append(f"    level {n}: {kw:g} kW = {amps:.1f} A per line at the service "
                   f"({amps / service.limit_a:.0%} of its {service.limit_a:g} A)")
    out.append("    kW setpoints (LOAD_DISPATCH, IMPORT_CAPACITY_LIMIT) map the same way: "
               f"1 kW = {electrical.service_line_current_a(service, 1000.0):.2f} A per line")
    return out

