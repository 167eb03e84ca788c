"""Harness for the daemon tests: the real `ems-gateway run` as a subprocess, a real NOTIFY_SOCKET
datagram listener, and a simulated site (meters over Modbus TCP, OCPP chargers, a CMS) on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sitesim.site import SiteSim

from hil.launch import GatewayProcess
from hil.support import free_port, wait_until
from hil.tomlw import dumps
from tests.factories import loopback_meters
from tests.mosquitto import Mosquitto, running_broker

wait_for = wait_until  # the name the daemon tests know


def small_site(**service: Any) -> dict[str, Any]:
    """A 100 A three-phase service; panel p1 (63 A, metered) with 3 chargers, 1 charger on the service."""
    svc = {"voltage_ll_v": 400, "phases": 3, "limit_a": 100, "margin_a": 2, "voltage_tolerance_pct": 0,
           "worst_case_non_ev_a": 40}
    svc.update(service)
    return {
        "site": {"id": "test-site"},
        "service": svc,
        "control": {"tick_s": 0.5, "ramp_up_a_per_s": 20.0, "noncompliance_grace_s": 3.0,
                    "noncompliance_tolerance_a": 1.0},
        "circuits": [{"id": "p1", "kind": "panel", "parent": "service", "limit_a": 63}],
        "meters": loopback_meters("p1"),
        "chargers": [
            {"id": "CP1", "ocpp_version": "1.6J", "kind": "ac", "circuit": "p1", "phases": 3,
             "max_current_a": 32, "failsafe_current_a": 8},
            {"id": "CP2", "ocpp_version": "2.0.1", "kind": "ac", "circuit": "p1", "phases": 3,
             "max_current_a": 32, "failsafe_current_a": 8},
            {"id": "CP3", "ocpp_version": "1.6J", "kind": "ac", "circuit": "p1", "phases": 3,
             "max_current_a": 32, "failsafe_current_a": 8},
            {"id": "CP4", "ocpp_version": "2.0.1", "kind": "ac", "circuit": "service", "phases": 3,
             "max_current_a": 32, "failsafe_current_a": 8},
        ],
        "ocpp": {"lease_s": 60, "renew_before_s": 20, "significance_a": 0.5},
    }


class NotifyListener:
    """A NOTIFY_SOCKET: every datagram, with its arrival time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))
        return self.messages

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self.drain() if m.startswith(prefix)]

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Daemon(GatewayProcess):
    """`python -m gateway run --config FILE` through the launcher the rig uses (hil.launch), with this test's
    NOTIFY_SOCKET and a watchdog; its JSON log next to the config, its stderr apart (``stderr`` once it ended)."""

    def __init__(self, config: Path, notify: NotifyListener, *, watchdog_usec: int = 2_000_000) -> None:
        super().__init__(
            config, config.with_suffix(".log"), stderr_path=config.with_suffix(".stderr"),
            env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(watchdog_usec)},
        )
        self.notify = notify
        self.watchdog_usec = watchdog_usec


class Rig:
    def __init__(self, sim: SiteSim, daemon: Daemon, notify: NotifyListener, config: Path, port: int) -> None:
        self.sim, self.daemon, self.notify, self.config, self.port = sim, daemon, notify, config, port


@pytest.fixture
async def rig_factory() -> AsyncIterator[Callable[..., Any]]:
    made: list[Rig] = []
    tmp = tempfile.mkdtemp(prefix="ems-daemon-")

    async def make(raw: dict[str, Any] | None = None, *, base_load_a: float = 20.0,
                   base: Callable[[float], tuple[float, ...]] | None = None, ev_response_s: float = 1.0,
                   start_chargers: bool = True, extra: dict[str, Any] | None = None,
                   edit: Callable[[dict[str, Any]], None] | None = None, wait_ready: bool = True) -> Rig:
        raw = raw or small_site()
        level = [base_load_a]
        sim = SiteSim(raw, base_loads={"service": base or (lambda t: (level[0],) * 3)}, meter_interval_s=1.0)
        sim.level = level  # type: ignore[attr-defined]
        await sim.start()
        port = free_port()
        cfg = Path(tmp) / f"gateway-{len(made)}.toml"
        gateway_cfg = sim.gateway_config(ocpp_port=port, extra=extra)
        if edit is not None:
            edit(gateway_cfg)
        cfg.write_text(dumps(gateway_cfg))
        notify = NotifyListener(str(Path(tmp) / f"notify-{len(made)}.sock"))
        daemon = Daemon(cfg, notify)
        await daemon.start()
        rig = Rig(sim, daemon, notify, cfg, port)
        made.append(rig)
        await daemon.wait_log("gateway_ready" if wait_ready else "ocpp_listening", timeout=30)
        if start_chargers:
            sim.start_chargers(port)
            assert await wait_for(lambda: all(c.online for c in sim.chargers.values()), 20), "chargers not online"
        rig.ev_response_s = ev_response_s  # type: ignore[attr-defined]
        return rig

    yield make
    for rig in made:
        await rig.daemon.kill()
        await rig.sim.stop()
        rig.notify.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto for the daemon's telemetry."""
    with running_broker(tmp_path / "mosquitto") as b:
        yield b
