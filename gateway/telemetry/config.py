"""[mqtt] section."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.confkit import Table


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int = 1883


def parse_mqtt(t: Table | None) -> MqttConfig | None:
    if t is None:
        return None
    c = MqttConfig(host=t.str("host", required=True), port=t.int("port", 1883, min=1, max=65535))
    t.done()
    return c
