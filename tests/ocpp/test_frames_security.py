"""Malformed frames never crash the gateway; security profiles 1-3 on both sides; config keys."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ocpp.v16 import call as c16
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.config import site_from_text
from gateway.errors import ConfigError
from gateway.ocpp_proxy.frames import FrameError, parse_frame

from .conftest import Cms, connect_charger, site_text, wait_for


async def _recv(ws: Any, limit_s: float = 5.0) -> list[Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), limit_s))  # type: ignore[no-any-return]


async def _recv_answer(ws: Any, mid: str) -> list[Any]:
    """Answer the gateway's own CALLs until the frame answering ``mid`` arrives."""
    while True:
        f = await _recv(ws)
        if f[0] == 2:
            await ws.send(json.dumps([3, f[1], {"status": "Accepted"}]))
            continue
        if f[1] == mid:
            return f


async def test_malformed_frames_201(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port, ocpp_extra="max_frame_bytes = 2048")
    ws = await connect(f"ws://127.0.0.1:{gw.ctrl.port}/ocpp/CP201", subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
    try:
        await ws.send("{not json")
        assert (await _recv_answer(ws, "-1"))[2] == "RpcFrameworkError"
        await ws.send('[2,"m1","MeterValues",{"evseId":"one","meterValue":[]}]')
        assert (await _recv_answer(ws, "m1"))[2] == "TypeConstraintViolation"
        await ws.send('[2,"m2","StatusNotification",{"timestamp":"2024-01-01T00:00:00Z"}]')
        assert (await _recv_answer(ws, "m2"))[2] == "OccurrenceConstraintViolation"
        await ws.send('[7,"m3","Heartbeat",{}]')
        assert (await _recv_answer(ws, "m3"))[2] == "MessageTypeNotSupported"
        await ws.send('[2,"m4","DataTransfer",{"vendorId":"ACME","data":"' + "x" * 4000 + '"}]')
        assert (await _recv_answer(ws, "m4"))[2] == "FormatViolation"
        await ws.send('[2,"m5","Heartbeat","not an object"]')
        assert (await _recv_answer(ws, "m5"))[2] == "FormatViolation"
        await ws.send(b"\x00\x01binary")
        await ws.send('[3,"nobody-asked",{}]')  # an answer to nothing: relayed or dropped, never a crash
        # still serving: a good CALL is relayed and answered by the CMS
        await ws.send('[2,"ok1","Heartbeat",{}]')
        ans = await _recv_answer(ws, "ok1")
        assert ans[0] == 3 and "currentTime" in ans[2]
        assert not any(f'"m{i}"' in r for _, r in cms.raw for i in range(1, 6)), "rejected frames are not relayed"
    finally:
        await ws.close()


async def test_malformed_frames_16_and_from_cms(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    try:
        await wait_for(lambda: "CP16" in cms.conns, what="upstream")
        await ch.ws.send("[2, broken")  # 1.6 has no answer for unreadable frames: dropped
        await ch.ws.send('[2,"s1","StartTransaction",{"connectorId":1}]')
        await wait_for(lambda: any('"s1","OccurenceConstraintViolation"' in f for f in ch.cp.raw_in))
        await ch.ws.send('[2,"s2","MeterValues",{"connectorId":"x","meterValue":[]}]')
        await wait_for(lambda: any('"s2","TypeConstraintViolation"' in f for f in ch.cp.raw_in))
        # the CMS side: junk from the CMS is refused the same way
        up = cms.conns["CP16"]
        await up.send("][")
        await up.send('[2,"c1","SetChargingProfile",{"connectorId":"zero"}]')
        await wait_for(lambda: any('"c1"' in r and r.startswith("[4") for _, r in cms.raw), what="CALLERROR to CMS")
        hb = await ch.cp.call(c16.Heartbeat())
        assert hb.current_time
        assert gw.task is not None and not gw.task.done()
    finally:
        await ch.close()


def test_parse_frame_edge_cases() -> None:
    with pytest.raises(FrameError) as e:
        parse_frame('[2,"' + "a" * 40 + '","Heartbeat",{}]', "2.0.1", 1000)
    assert e.value.reply is not None and '"-1"' in e.value.reply
    with pytest.raises(FrameError) as e:
        parse_frame("[3]", "1.6", 1000)
    assert e.value.reply is None
    f = parse_frame('[4,"x","GenericError","d",{}]', "1.6", 1000)
    assert f.payload["code"] == "GenericError"


async def test_profile_1_basic_auth_and_identity(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    port = gw.ctrl.port
    with pytest.raises(InvalidStatus) as e:
        await connect(f"ws://127.0.0.1:{port}/ocpp/NOPE", subprotocols=["ocpp1.6"])  # type: ignore[list-item]
    assert e.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as e:
        await connect_charger(port, "CP16", "1.6", password="wrong-password")
    assert e.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as e:
        await connect_charger(port, "CP16", "1.6")
    assert e.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as e:  # configured for 1.6, offers 2.0.1 only
        await connect(f"ws://127.0.0.1:{port}/ocpp/CP16", subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
    assert e.value.response.status_code == 400
    ch = await connect_charger(port, "CP16", "1.6", password="secret-cp16")
    assert ch.ws.subprotocol == "ocpp1.6"
    await ch.close()


# ------------------------------------------------------------------ TLS (profiles 2 and 3)
class Pki:
    def __init__(self, d: Path) -> None:
        self.d = d
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = d / "ca.pem"
        self.ca_file.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        if server:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = b.sign(self.ca_key, hashes.SHA256())
        cf, kf = self.d / f"{cn}.crt", self.d / f"{cn}.key"
        cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kf.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return str(cf), str(kf)


def _server_ctx(pki: Pki, cert: tuple[str, str], require_client: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    if require_client:
        ctx.load_verify_locations(str(pki.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _client_ctx(pki: Pki, cert: tuple[str, str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_file))
    ctx.check_hostname = False  # the test certificates name localhost; we dial 127.0.0.1
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


_TLS_CHARGERS = """
[[chargers]]
id = "P2"
ocpp_version = "1.6J"
circuit = "p1"
phases = 1
max_current_a = 32
failsafe_current_a = 6
[chargers.ocpp]
security_profile = 2
password = "profile-two-pw"
cms_password = "cms-side-pw-2"
[[chargers]]
id = "P3"
ocpp_version = "2.0.1"
circuit = "p1"
phases = 1
max_current_a = 32
failsafe_current_a = 6
[chargers.ocpp]
security_profile = 3
[[chargers]]
id = "P1"
ocpp_version = "1.6J"
circuit = "p1"
phases = 1
max_current_a = 32
failsafe_current_a = 6
[chargers.ocpp]
password = "profile-one-pw"
"""


async def test_security_profiles_2_and_3_both_sides(tmp_path: Path, make_gateway: Any) -> None:
    pki = Pki(tmp_path)
    gw_cert = pki.issue("gateway.local", server=True)
    cms_cert = pki.issue("cms.local", server=True)
    gw_client = pki.issue("gateway-client", server=False)
    # the CMS demands profile 3 of the gateway: TLS with a client certificate
    cms = Cms(ssl_context=_server_ctx(pki, cms_cert, require_client=True))
    await cms.start()
    extra = f"""
tls_listen_port = 0
server_cert_file = "{gw_cert[0]}"
server_key_file = "{gw_cert[1]}"
client_ca_file = "{pki.ca_file}"
cms_security_profile = 3
cms_ca_file = "{pki.ca_file}"
cms_client_cert_file = "{gw_client[0]}"
cms_client_key_file = "{gw_client[1]}"
"""
    site_txt = site_text(tmp_path / "st", cms.port, ocpp_extra=extra, chargers=_TLS_CHARGERS).replace(
        f"ws://127.0.0.1:{cms.port}", f"wss://localhost:{cms.port}"
    )
    from .conftest import Gateway

    gw = Gateway(site_from_text(site_txt))
    await gw.start()
    try:
        tls_port = gw.ctrl.tls_port
        assert tls_port is not None
        # profile 2: server certificate + Basic auth
        p2 = await connect_charger(
            tls_port, "P2", "1.6", password="profile-two-pw", ssl_context=_client_ctx(pki, None), scheme="wss"
        )
        await wait_for(lambda: gw.ctrl.cms_online("P2"), what="P2 upstream over mutual TLS")
        boot = await p2.cp.call(c16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        assert boot.status == "Accepted" and cms.of("P2", "BootNotification")
        assert cms.client_cns[-1] == "gateway-client"
        auth = base64.b64decode(cms.headers[-1]["Authorization"].split()[1]).decode()
        assert auth == "P2:cms-side-pw-2"
        # profile 2 on the plain listener is refused
        with pytest.raises(InvalidStatus) as e:
            await connect_charger(gw.ctrl.port, "P2", "1.6", password="profile-two-pw")
        assert e.value.response.status_code == 403
        # profile 3: a client certificate whose CN is the identity
        p3_cert = pki.issue("P3", server=False)
        p3 = await connect_charger(tls_port, "P3", "2.0.1", ssl_context=_client_ctx(pki, p3_cert), scheme="wss")
        await wait_for(lambda: gw.ctrl.cms_online("P3"), what="P3 upstream over mutual TLS")
        # ...and without one, or with another station's, refused
        with pytest.raises(InvalidStatus) as e:
            await connect_charger(tls_port, "P3", "2.0.1", ssl_context=_client_ctx(pki, None), scheme="wss")
        assert e.value.response.status_code == 403
        other = pki.issue("P2", server=False)
        with pytest.raises(InvalidStatus):
            await connect_charger(tls_port, "P3", "2.0.1", ssl_context=_client_ctx(pki, other), scheme="wss")
        # profile 1 connected over TLS: a plain-ws connection as its identity (weaker) does not replace it
        p1 = await connect_charger(
            tls_port, "P1", "1.6", password="profile-one-pw", ssl_context=_client_ctx(pki, None), scheme="wss"
        )
        await wait_for(lambda: "P1" in gw.ctrl.sessions, what="P1 over TLS")
        live = gw.ctrl.sessions["P1"]
        with pytest.raises(InvalidStatus) as e:
            await connect_charger(gw.ctrl.port, "P1", "1.6", password="profile-one-pw")
        assert e.value.response.status_code == 409
        assert gw.ctrl.sessions["P1"] is live
        # ...an equally strong one (a reboot) does
        p1b = await connect_charger(
            tls_port, "P1", "1.6", password="profile-one-pw", ssl_context=_client_ctx(pki, None), scheme="wss"
        )
        await wait_for(lambda: gw.ctrl.sessions.get("P1") not in (None, live), what="P1 replaced over TLS")
        await p1b.close()
        await p1.close()
        await p2.close()
        await p3.close()
    finally:
        await gw.stop()
        await cms.stop()


def test_config_keys_and_errors(tmp_path: Path) -> None:
    site = site_from_text(
        site_text(tmp_path, 1234, ocpp_extra='offline_allow_list = ["A", "B"]\nstrict_offline = true')
    )
    oc = site.ocpp
    assert oc.cms_url == "ws://127.0.0.1:1234/ocpp" and oc.offline_allow_list == ("A", "B") and oc.strict_offline
    assert site.chargers["CP16"].ocpp.password == "secret-cp16"
    assert (oc.failsafe_stack_level, oc.limit_stack_level) == (0, 1)
    for bad, key in [
        ("lease_time = 3", "ocpp.lease_time"),
        ("significance_w = -1", "ocpp.significance_w"),
        ("failsafe_profile_id = 900002", "ocpp.limit_profile_id"),
        ("limit_stack_level = 0", "ocpp.limit_stack_level"),
        ("cms_security_profile = 2", "ocpp.cms_security_profile"),
        ("tls_listen_port = 9443", "ocpp.tls_listen_port"),
    ]:
        with pytest.raises(ConfigError) as e:
            site_from_text(site_text(tmp_path, 1234, ocpp_extra=bad))
        assert e.value.path == key, (bad, e.value)


async def test_allow_unauthenticated_chargers_are_logged_at_start(tmp_path: Path, make_gateway: Any) -> None:
    chargers = """
[[chargers]]
id = "OPEN1"
ocpp_version = "1.6J"
circuit = "p1"
phases = 1
max_current_a = 16
failsafe_current_a = 6
[chargers.ocpp]
allow_unauthenticated = true
"""
    import structlog

    with structlog.testing.capture_logs() as logs:
        gw = await make_gateway(None, chargers=chargers)
        await wait_for(lambda: gw.ctrl.port != 0, what="listening")
    warned = [e for e in logs if e["event"] == "ocpp_unauthenticated_chargers"]
    assert warned and warned[0]["chargers"] == ["OPEN1"] and warned[0]["log_level"] == "warning"
