"""A gateway killed while the chargers hold high leased limits: the next life keeps what the old limits still
let them draw reserved until those leases lapse (the real daemon, simulated chargers and meters on loopback)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from sitesim.ev import EvSpec

from hil.support import free_port
from tests.daemon.conftest import Rig, small_site, wait_for

PANEL_A = 63.0  # p1
LEASE_S = 60


def _ev(tag: str) -> EvSpec:
    return EvSpec(capacity_kwh=500.0, soc_start=0.2, max_ac_a=32.0, ac_phases=3, response_delay_s=0.5, id_tag=tag)


def _site() -> dict[str, Any]:
    raw = small_site()
    raw["ocpp"] = {"lease_s": LEASE_S, "renew_before_s": 50, "significance_a": 0.5}
    return raw


def _limits_since(events: list[dict[str, Any]], since: int) -> dict[str, float]:
    """Each charger's newest limit handed out in the life whose log starts at ``since``."""
    out: dict[str, float] = {}
    for e in events[since:]:
        if e.get("event") == "limit_changed":
            out[str(e["charger"])] = float(e["limit"])
    return out


async def test_after_a_kill_the_old_leases_stay_reserved_until_they_lapse(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(_site(), base_load_a=5.0)
    sim, d = rig.sim, rig.daemon
    cp1, cp2, cp3 = (sim.chargers[c] for c in ("CP1", "CP2", "CP3"))
    cp1.plug_in(_ev("TAG1"))
    cp2.plug_in(_ev("TAG2"))
    # both EVs share the panel at a high limit, leased (renewed every 10 s: at least 50 s of it left at any time)
    assert await wait_for(lambda: all(c.effective_limit().limit >= 25.0 and min(c.draw_a()) >= 24.0
                                      for c in (cp1, cp2)), 90), "EVs not charging at a high limit"
    held = cp1.effective_limit().limit
    cp1.url = f"ws://127.0.0.1:{free_port()}"  # after the kill it reaches nothing: offline in the next life
    d.signal(signal.SIGKILL)
    await d.wait_exit(10)
    cp1.unplug()  # its EV leaves meanwhile (the meters no longer see CP1 draw) and a third EV arrives at CP3
    cp3.plug_in(_ev("TAG3"))
    since = len(d.logs)
    await d.start()
    await d.wait_log("gateway_ready", timeout=30)
    # the new life hands CP2 and CP3 what it thinks is free
    assert await wait_for(lambda: sum(_limits_since(d.logs, since).get(c, 0.0) for c in ("CP2", "CP3")) > 20.0, 30)
    await asyncio.sleep(2.0)
    # an EV plugs in at the offline CP1 (authorised locally): it may draw CP1's old leased limit until it lapses
    cp1.plug_in(_ev("TAG4"))
    assert cp1.effective_limit().limit >= held - 0.5, "CP1's old lease is still in force"
    worst_real = worst_sum = 0.0
    end = time.monotonic() + LEASE_S + 5.0
    while time.monotonic() < end and cp1.effective_limit().limit >= held - 0.5:
        still = cp1.effective_limit().limit
        worst_real = max(worst_real, max(sim.circuit_current("p1")))
        # CP1 still holds its old lease: the limits handed out leave it room
        handed = _limits_since(d.logs, since)
        worst_sum = max(worst_sum, still + sum(handed.get(c, 0.0) for c in ("CP2", "CP3")))
        await asyncio.sleep(0.1)
    assert cp1.effective_limit().limit < held - 0.5, "the old lease lapsed (CP1 is on its fail-safe)"
    assert worst_sum <= PANEL_A + 1e-6, f"limits handed out + CP1's old lease reached {worst_sum:.1f} A"
    assert worst_real <= PANEL_A + 0.5, f"the panel drew {worst_real:.1f} A"
    # once it lapsed, CP2 and CP3 get the room back
    assert await wait_for(lambda: sum(_limits_since(d.logs, since).get(c, 0.0) for c in ("CP2", "CP3")) > 40.0, 30)
