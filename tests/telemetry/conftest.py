"""Fixtures for the MQTT telemetry tests: a real mosquitto on a free loopback port, a small site."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import Site, site_from_text
from gateway.model import (
    Allocation,
    ChargerLimit,
    ChargerSnapshot,
    ChargerState,
    CircuitStatus,
    MeterReading,
    Snapshot,
)
from gateway.telemetry.config import MqttConfig
from tests.mosquitto import Mosquitto, running_broker

SITE_TOML = """
[site]
id = "t-site"

[service]
voltage_ll_v = 400
phases = 3
limit_a = 200
margin_a = 5
worst_case_non_ev_a = 40

[[circuits]]
id = "panel-1"
parent = "service"
limit_a = 150

[[meters]]
id = "m-main"
circuit = "service"
host = "127.0.0.1"

[[chargers]]
id = "AC-1"
kind = "ac"
circuit = "panel-1"
phases = 1
max_current_a = 32
failsafe_current_a = 6

[[chargers]]
id = "DC-1"
kind = "dc"
circuit = "panel-1"
min_power_w = 10000
max_power_w = 50000
failsafe_power_w = 10000
"""


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto broker: ``listener PORT 127.0.0.1`` + ``allow_anonymous true``."""
    with running_broker(tmp_path / "broker") as broker:
        yield broker


@pytest.fixture
def site() -> Site:
    return site_from_text(SITE_TOML)


def mqtt_cfg(broker: Mosquitto | None = None, **kw: object) -> MqttConfig:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": broker.port if broker is not None else 1,
        "keepalive_s": 5,
        "charger_min_interval_s": 0.0,
        "heartbeat_s": 60.0,
        "reconnect_max_s": 1,
    }
    base.update(kw)
    return MqttConfig(**base)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def circuit_status(limit_a: float, measured: float | None, state: str = "ok") -> CircuitStatus:
    m = None if measured is None else (measured,) * 3
    return CircuitStatus(
        limit_a=limit_a,
        measured_a=m,
        non_ev_a=(10.0, 10.0, 10.0),
        headroom_a=(limit_a - 15.0,) * 3,
        allocated_a=(20.0, 20.0, 20.0),
        state=state,
    )


def tick(
    now: float,
    *,
    ac_limit: float = 16.0,
    dc_limit: float = 20000.0,
    ac_draw: float = 15.0,
    dc_draw_w: float = 19000.0,
    mode: str = "normal",
    meter: MeterReading | str | None = "ok",
    ac_state: ChargerState = ChargerState.CHARGING,
    noncompliant: bool = False,
) -> tuple[Snapshot, Allocation]:
    rd: MeterReading | None
    if meter == "ok":
        rd = MeterReading(current_a=(50.0, 51.0, 52.0), at=now, voltage_v=(230.0, 231.0, 229.5))
    else:
        assert not isinstance(meter, str)
        rd = meter
    snap = Snapshot(
        taken_at=now,
        meters={"m-main": rd},
        chargers={
            "AC-1": ChargerSnapshot("AC-1", True, ac_state, draw_a=(ac_draw, 0.0, 0.0), draw_at=now,
                                    noncompliant=noncompliant),
            "DC-1": ChargerSnapshot("DC-1", True, ChargerState.CHARGING, draw_a=(30.0, 30.0, 30.0),
                                    draw_w=dc_draw_w, draw_at=now),
        },
    )
    alloc = Allocation(
        at=now,
        limits={
            "AC-1": ChargerLimit(ac_limit, ac_limit, "fair-share"),
            "DC-1": ChargerLimit(dc_limit, dc_limit / 680.0, "fair-share"),
        },
        circuits={"service": circuit_status(200.0, 52.0), "panel-1": circuit_status(150.0, 45.0)},
        mode=mode,
        failsafe_meters=("m-main",) if mode != "normal" else (),
    )
    return snap, alloc


async def async_wait(pred: Callable[[], bool], timeout: float = 15.0, interval: float = 0.02) -> bool:
    """Poll ``pred`` without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True
