"""The CMS side: one WebSocket client per charger, same identity and subprotocol, own security profile."""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect

from gateway.config import ChargerConfig
from gateway.errors import ConfigError
from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.frames import SUBPROTOCOLS


@dataclass(frozen=True)
class UpstreamTarget:
    url: str
    subprotocol: str
    security_profile: int
    headers: tuple[tuple[str, str], ...]
    ssl_context: ssl.SSLContext | None


def cms_ssl_context(ocpp: OcppConfig, profile: int) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ocpp.cms_ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if profile == 3:
            if not (ocpp.cms_client_cert_file and ocpp.cms_client_key_file):
                raise ConfigError("ocpp.cms_client_cert_file", "security profile 3 towards the CMS needs a client cert")
            ctx.load_cert_chain(ocpp.cms_client_cert_file, ocpp.cms_client_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("ocpp.cms_ca_file", f"cannot load the CMS TLS files: {exc}") from exc
    return ctx


def target_for(ocpp: OcppConfig, ch: ChargerConfig, contexts: dict[int, ssl.SSLContext]) -> UpstreamTarget | None:
    base = ch.ocpp.cms_url or ocpp.cms_url
    if base is None:
        return None
    profile = ch.ocpp.cms_security_profile or ocpp.cms_security_profile
    url = base.rstrip("/") + "/" + quote(ch.id, safe="")
    headers: list[tuple[str, str]] = []
    if ch.ocpp.cms_password is not None:
        token = base64.b64encode(f"{ch.id}:{ch.ocpp.cms_password}".encode()).decode()
        headers.append(("Authorization", f"Basic {token}"))
    ctx = None
    if url.startswith("wss://"):
        if profile not in contexts:
            contexts[profile] = cms_ssl_context(ocpp, profile)
        ctx = contexts[profile]
    return UpstreamTarget(url, SUBPROTOCOLS[ch.ocpp_version], profile, tuple(headers), ctx)


async def open_upstream(target: UpstreamTarget, *, max_size: int, open_timeout_s: float) -> ClientConnection:
    """Connect once. Raises OSError / websockets errors / TimeoutError / OcppError."""
    from websockets.typing import Subprotocol

    ws = await connect(
        target.url,
        subprotocols=[Subprotocol(target.subprotocol)],
        additional_headers=list(target.headers),
        ssl=target.ssl_context,
        open_timeout=open_timeout_s,
        max_size=max_size,
        ping_interval=30,
        ping_timeout=30,
        compression=None,
        user_agent_header=None,
    )
    if ws.subprotocol != target.subprotocol:
        await ws.close(1002, "subprotocol")
        from gateway.errors import OcppError

        raise OcppError(f"CMS chose subprotocol {ws.subprotocol!r}, expected {target.subprotocol!r}")
    return ws
