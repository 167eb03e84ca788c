"""[ocpp] section and the per-charger [chargers.ocpp] sub-table."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.confkit import Table


@dataclass(frozen=True)
class ChargerOcppConfig:
    password: str | None = None


@dataclass(frozen=True)
class OcppConfig:
    listen_host: str = "0.0.0.0"
    listen_port: int = 9000
    cms_url: str | None = None


def parse_ocpp(t: Table | None) -> OcppConfig:
    if t is None:
        return OcppConfig()
    c = OcppConfig(
        listen_host=t.str("listen_host", "0.0.0.0"),
        listen_port=t.int("listen_port", 9000, min=0, max=65535),
        cms_url=t.opt_str("cms_url"),
    )
    t.done()
    return c


def parse_charger_ocpp(t: Table | None) -> ChargerOcppConfig:
    if t is None:
        return ChargerOcppConfig()
    c = ChargerOcppConfig(password=t.opt_str("password"))
    t.done()
    return c
