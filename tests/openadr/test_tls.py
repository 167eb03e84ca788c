"""The 2.0b VEN over TLS as the profile asks: the VTN requires a client certificate (mutual TLS against a CA),
knows the VEN by its certificate's fingerprint and signs its messages; the VEN checks the VTN's certificate
against its CA and every message's signature against ``vtn_fingerprint``. A wrong fingerprint: no
registration, and the status says so."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openleadr import OpenADRServer
from openleadr.service.vtn_service import VTNService
from openleadr.utils import certificate_fingerprint

from gateway.budget.openadr_ven import Ven2b
from gateway.config import site_from_dict
from hil.support import running_task
from tests.factories import ac, site_dict
from tests.openadr.vtn import PREFIX, free_port, service, until

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[str, str]:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path.with_suffix(".crt")), str(path.with_suffix(".key"))


def make_pki(d: Path) -> dict[str, str]:
    """A CA, the VTN's server certificate for 127.0.0.1, the VEN's client certificate (EC P-256), their
    OpenADR fingerprints."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test-ca")).issuer_name(_name("test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": _write(d / "ca", ca_key, ca)[0]}
    for who, san in (("vtn", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), ("ven", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(_name(f"test-{who}")).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        out[f"{who}_cert"], out[f"{who}_key"] = _write(d / who, key, b.sign(ca_key, hashes.SHA256()))
        out[f"{who}_fp"] = certificate_fingerprint(Path(out[f"{who}_cert"]).read_text())
    return out


@contextlib.contextmanager
def vtn_class_state() -> Iterator[None]:
    """openleadr keeps the VTN's lookup and signing on the VTNService class: put them back afterwards."""
    saved = dict(VTNService.__dict__)
    try:
        yield
    finally:
        for k in ("ven_lookup", "fingerprint_lookup", "_create_message", "verify_message_signatures"):
            if k in saved:
                setattr(VTNService, k, saved[k])
            elif k in VTNService.__dict__:
                delattr(VTNService, k)


async def run_tls(tmp_path: Path, *, wrong_fingerprint: bool) -> tuple[Any, list[dict[str, Any]]]:
    pki = make_pki(tmp_path)
    ven_fp, vtn_fp = pki["ven_fp"], pki["vtn_fp"]
    registered: dict[str, dict[str, Any]] = {}
    seen: list[dict[str, Any]] = []

    async def on_register(payload: dict[str, Any]) -> tuple[str, str] | bool:
        seen.append(payload)
        if payload.get("fingerprint") != ven_fp:  # the VEN is known by its certificate, delivered out of band
            return False
        registered["ven-tls"] = {"ven_id": "ven-tls", "ven_name": payload["ven_name"], "fingerprint": ven_fp,
                                 "registration_id": "reg-tls"}
        return "ven-tls", "reg-tls"

    port = free_port()
    with vtn_class_state():
        server = OpenADRServer(
            vtn_id="TLS-VTN", http_port=port, http_host="127.0.0.1", requested_poll_freq=dt.timedelta(seconds=1),
            cert=pki["vtn_cert"], key=pki["vtn_key"], http_cert=pki["vtn_cert"], http_key=pki["vtn_key"],
            http_ca_file=pki["ca"], ven_lookup=lambda ven_id: registered.get(ven_id), show_fingerprint=False,
            show_server_cert_domain=False)
        server.add_handler("on_create_party_registration", on_register)
        await server.run()
        d = site_dict(limit_a=100, chargers=[ac("A", phases=3)])
        d["budget"] = {"openadr": {
            "vtn_url": f"https://127.0.0.1:{port}{PREFIX}", "ven_name": "depot-tls", "poll_interval_s": 1,
            "cert_file": pki["ven_cert"], "key_file": pki["ven_key"], "ca_file": pki["ca"],
            "vtn_fingerprint": "00:11:22:33:44:55:66:77:88:99" if wrong_fingerprint else vtn_fp,
            "level1_kw": 40, "level2_kw": 20, "level3_kw": 10}}
        s = site_from_dict(d)
        assert s.budget.openadr is not None
        svc = service(s, tmp_path / "state")
        try:
            async with running_task(Ven2b(s.budget.openadr, svc.openadr).run()):
                if wrong_fingerprint:
                    await asyncio.sleep(2.0)
                else:
                    await until(lambda: svc.openadr.ven.registered)
                    eid = server.add_event(ven_id="ven-tls", signal_name="SIMPLE", signal_type="level",
                                           intervals=[{"dtstart": dt.datetime.now(dt.UTC), "signal_payload": 2,
                                                       "duration": dt.timedelta(minutes=5)}],
                                           callback=lambda ven_id, event_id, opt_type: None)
                    await until(lambda: eid in svc.openadr.events)
                return svc.openadr.status(time.time()), seen
        finally:
            svc.close()
            await server.stop()


async def test_mutual_tls_signed_messages_register_and_deliver_events(tmp_path: Path) -> None:
    st, seen = await run_tls(tmp_path, wrong_fingerprint=False)
    assert st["registered"] is True and st["ven_id"] == "ven-tls" and st["registration_id"] == "reg-tls"
    assert seen and seen[0]["fingerprint"] is not None  # the VTN saw the VEN's client certificate
    assert st["last_event"] is not None


async def test_a_wrong_vtn_fingerprint_refuses_the_vtn(tmp_path: Path) -> None:
    st, _ = await run_tls(tmp_path, wrong_fingerprint=True)
    assert st["registered"] is False and st["ven_id"] is None
    assert st["last_error"] == "registration refused or no answer"
