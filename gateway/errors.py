"""One exception tree for the whole gateway."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid. ``path`` is the dotted key path, ``reason`` why."""

    def __init__(self, path: str, reason: str, *, file: str | None = None, line: int | None = None):
        self.path = path
        self.reason = reason
        self.file = file
        self.line = line
        where = file or "config"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {path}: {reason}" if path else f"{where}: {reason}")


class MeterError(GatewayError):
    """A meter could not be read or returned an implausible value."""


class RegisterMapError(GatewayError):
    """A meter register map file is invalid."""


class OcppError(GatewayError):
    """An OCPP frame or exchange failed."""


class StoreError(GatewayError):
    """The durable store failed."""


class TelemetryError(GatewayError):
    """MQTT telemetry failed."""
