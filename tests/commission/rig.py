"""A small simulated site with the real gateway in-process (its control socket included), for commissioning."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from sitesim.ev import EvSpec
from sitesim.site import MeterFault, SiteSim

from gateway.app import App
from gateway.config import site_from_dict
from gateway.ctl import socket_path
from gateway.systemd import Notifier
from hil.support import wait_until
from tests.factories import loopback_meters

wait_for = wait_until  # the name the commissioning tests know

BASE_A = 10.0  # the building's load on the service, per phase


def site(*, can_export: bool = False) -> dict[str, Any]:
    """A 100 A three-phase service with a metered 63 A panel (which may export): single-phase AC chargers on
    L1, L2, L3 (both OCPP versions) and a DC charger on the service."""
    return {
        "site": {"id": "commission-site", "name": "Commissioning test site"},
        "service": {"voltage_ll_v": 400, "phases": 3, "limit_a": 100, "margin_a": 2, "voltage_tolerance_pct": 0,
                    "worst_case_non_ev_a": 20},
        "control": {"tick_s": 0.5, "ramp_up_a_per_s": 20.0, "noncompliance_grace_s": 4.0, "ev_response_s": 3.0,
                    "noncompliance_tolerance_a": 1.0},
        "circuits": [{"id": "p1", "kind": "panel", "parent": "service", "limit_a": 63, "worst_case_non_ev_a": 0,
                      "can_export": can_export}],
        # the meters share the event loop with the gateway and the chargers: on a busy machine a poll can be
        # late by a second, and a stale meter (fail-safe) makes the commissioning refuse its load test
        "meters": [dict(m, timeout_s=1.0, stale_after_s=4.0) for m in loopback_meters("p1")],
        "chargers": [
            {"id": "CP1", "ocpp_version": "1.6J", "kind": "ac", "circuit": "p1", "phases": 1,
             "phase_rotation": "L1", "max_current_a": 32, "failsafe_current_a": 6},
            {"id": "CP2", "ocpp_version": "2.0.1", "kind": "ac", "circuit": "p1", "phases": 1,
             "phase_rotation": "L2", "max_current_a": 32, "failsafe_current_a": 6},
            {"id": "CP3", "ocpp_version": "1.6J", "kind": "ac", "circuit": "service", "phases": 1,
             "phase_rotation": "L3", "max_current_a": 32, "failsafe_current_a": 6},
            {"id": "DC1", "ocpp_version": "2.0.1", "kind": "dc", "circuit": "service", "min_power_w": 5000,
             "max_power_w": 20000, "failsafe_power_w": 5000, "efficiency": 0.95, "power_factor": 0.98},
        ],
        # the EVs' tokens are accepted while the simulated CMS link is still coming up
        "ocpp": {"lease_s": 60, "renew_before_s": 20, "significance_a": 0.5,
                 "offline_allow_list": ["TAGCP1", "TAGCP2", "TAGCP3", "TAGDC1"]},
    }


class Rig:
    def __init__(self, sim: SiteSim, app: App, task: asyncio.Task[None]) -> None:
        self.sim, self.app, self.task = sim, app, task

    @property
    def socket(self) -> Path:
        return socket_path(self.app.site.state_dir)


@contextlib.asynccontextmanager
async def running(
    *, faults: Mapping[str, MeterFault] | None = None, noncompliant: tuple[str, ...] = (), can_export: bool = False,
    plug: tuple[str, ...] = ("CP1", "CP2", "CP3", "DC1"), firmware: str = "sim-1",
) -> AsyncIterator[Rig]:
    raw = site(can_export=can_export)
    sim = SiteSim(raw, base_loads={"service": lambda t: (BASE_A,) * 3}, meter_interval_s=1.0, meter_faults=faults)
    await sim.start()
    app = App(site_from_dict(sim.gateway_config()), notifier=Notifier(address=""), hard_exit_after_s=None)
    task = asyncio.get_running_loop().create_task(app.run())
    try:
        await app.ocpp.wait_started()
        sim.start_chargers(app.ocpp.port, firmware=firmware)
        assert await wait_for(lambda: all(c.online for c in sim.chargers.values()), 20), "chargers not online"
        for cid in noncompliant:
            sim.chargers[cid].noncompliant = True
        for cid in plug:
            cfg = sim.site.chargers[cid]
            sim.chargers[cid].plug_in(EvSpec(capacity_kwh=500, soc_start=0.2, max_ac_a=32.0,
                                             ac_phases=1 if cfg.kind == "ac" else 3, max_dc_w=20_000.0,
                                             response_delay_s=1.5, id_tag=f"TAG{cid}"))
        rig = Rig(sim, app, task)
        assert await wait_for(lambda: rig.socket.exists(), 10), "no control socket"
        # every plugged charger under control and drawing what its EV takes (the ramp after start is over)
        ok = await wait_for(lambda: all(
            (s := app.control.snapshot) is not None and (c := s.chargers[k]).actuation is not None
            and c.actuation.controlled and (max(c.draw_a or (0.0,)) > 20.0 or (c.draw_w or 0.0) > 15_000)
            for k in plug), 60)
        assert ok, f"chargers not controlled and drawing: {app.control.snapshot}"
        yield rig
    finally:
        app.request_stop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(20):
                await task
        await sim.stop()
