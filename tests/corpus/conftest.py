"""The corpus tests reuse the telemetry fixtures (a real mosquitto, the small site)."""

from tests.telemetry.conftest import mosquitto, site

__all__ = ["mosquitto", "site"]
