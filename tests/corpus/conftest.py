"""The corpus tests reuse the telemetry fixtures (a real mosquitto, the small site) and the OCPP ones (a CMS, a
gateway's OCPP controller)."""

from tests.ocpp.conftest import cms, make_gateway
from tests.telemetry.conftest import mosquitto, site

__all__ = ["cms", "make_gateway", "mosquitto", "site"]
