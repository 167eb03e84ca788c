"""[[meters]] configuration section."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.confkit import Table


@dataclass(frozen=True)
class MeterConfig:
    id: str
    circuit: str
    stale_after_s: float = 3.0


def parse_meter(t: Table) -> MeterConfig:
    m = MeterConfig(
        id=t.str("id", required=True),
        circuit=t.str("circuit", required=True),
        stale_after_s=t.float("stale_after_s", 3.0, gt=0),
    )
    t.done()
    return m
