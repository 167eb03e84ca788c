"""The charger side: WebSocket listeners, identity from the URL path, security profiles 1-3."""

from __future__ import annotations

import base64
import binascii
import hmac
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.config import ChargerConfig
from gateway.errors import ConfigError
from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.frames import SUBPROTOCOLS

log = structlog.get_logger(__name__)


def server_ssl_context(ocpp: OcppConfig) -> ssl.SSLContext:
    if not (ocpp.server_cert_file and ocpp.server_key_file):
        raise ConfigError("ocpp.server_cert_file", "the TLS listener needs server_cert_file and server_key_file")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(ocpp.server_cert_file, ocpp.server_key_file)
        if ocpp.client_ca_file:
            ctx.load_verify_locations(ocpp.client_ca_file)
            ctx.verify_mode = ssl.CERT_OPTIONAL  # profile 3 chargers must present one (checked per charger)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("ocpp.server_cert_file", f"cannot load the TLS files: {exc}") from exc
    return ctx


def identity_of(path: str) -> str:
    segs = [s for s in urlsplit(path).path.split("/") if s]
    return unquote(segs[-1]) if segs else ""


def _basic_auth(headers: Headers) -> tuple[str, str] | None:
    value = headers.get("Authorization")
    if not value or not value.lower().startswith("basic "):
        return None
    try:
        user, _, pw = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, pw


def _peer_cn(conn: ServerConnection) -> str | None:
    sslobj = conn.transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    cert: Any = sslobj.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return None


def check_request(
    conn: ServerConnection, request: Request, chargers: Mapping[str, ChargerConfig], tls: bool
) -> tuple[Response | None, str]:
    """Admit or refuse a charger's opening handshake. Returns (refusal or None, identity)."""
    cid = identity_of(request.path)
    ch = chargers.get(cid)
    if ch is None:
        log.warning("charger_refused", charger=cid, reason="unknown identity")
        return conn.respond(404, "unknown charging station identity\n"), cid
    sub = SUBPROTOCOLS[ch.ocpp_version]
    offered = [p.strip() for v in request.headers.get_all("Sec-WebSocket-Protocol") for p in v.split(",")]
    if sub not in offered:
        log.warning("charger_refused", charger=cid, reason="subprotocol", offered=offered, expected=sub)
        return conn.respond(400, f"this station is configured for {sub}\n"), cid
    profile = ch.ocpp.security_profile
    if profile >= 2 and not tls:
        log.warning("charger_refused", charger=cid, reason="needs TLS", security_profile=profile)
        return conn.respond(403, "security profile needs TLS\n"), cid
    if profile == 3:
        cn = _peer_cn(conn)
        if cn != cid:
            log.warning("charger_refused", charger=cid, reason="client certificate", cn=cn)
            return conn.respond(403, "client certificate required\n"), cid
    elif ch.ocpp.password is not None:
        creds = _basic_auth(request.headers)
        if creds is None or creds[0] != cid or not hmac.compare_digest(creds[1].encode(), ch.ocpp.password.encode()):
            log.warning("charger_refused", charger=cid, reason="basic auth")
            resp = conn.respond(401, "authentication required\n")
            resp.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
            return resp, cid
    return None, cid


def credential_strength(ch: ChargerConfig, tls: bool) -> int:
    """How strongly an admitted connection proves the identity: a client certificate (4), a password over TLS (3),
    a password over plain ws (2), none over TLS (1), none (0). A connection may replace the identity's live one
    only when it is at least as strong."""
    if ch.ocpp.security_profile == 3:
        return 4
    return (2 if ch.ocpp.password is not None else 0) + (1 if tls else 0)


def is_tls(conn: ServerConnection) -> bool:
    transport = getattr(conn, "transport", None)
    return transport is not None and transport.get_extra_info("ssl_object") is not None
