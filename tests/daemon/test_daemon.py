"""The daemon end to end: `ems-gateway run` against a simulated site, under a real NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import signal
import time
import tomllib
from typing import Any

from sitesim.ev import EvSpec

from hil.tomlw import dumps
from tests.daemon.conftest import Rig, wait_for

TICK_S = 0.5


async def plug_all(rig: Rig, ids: list[str] | None = None, *, response_s: float = 1.0) -> None:
    """EVs on the chargers, once each charger's link to the CMS is up: before that the gateway answers an
    Authorize itself, and refuses a token it has never seen (on a busy machine the links come up late)."""
    assert await wait_for(lambda: set(rig.sim.chargers) <= set(rig.sim.cms.boots), 30), rig.sim.cms.boots
    for i, (cid, ch) in enumerate(rig.sim.chargers.items()):
        if ids is None or cid in ids:
            ch.plug_in(EvSpec(capacity_kwh=500.0, soc_start=0.2, max_ac_a=32.0, ac_phases=3,
                              response_delay_s=response_s, id_tag=f"TAG{i}"))


def site_a(rig: Rig) -> float:
    return max(rig.sim.circuit_current("service"))


def panel_a(rig: Rig) -> float:
    return max(rig.sim.circuit_current("p1"))


async def test_notify_protocol_reload_and_failsafe_on_sigterm(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    d, n = rig.daemon, rig.notify
    assert n.lines("READY=1"), n.drain()
    assert n.lines("STATUS=")
    await plug_all(rig)
    assert await wait_for(lambda: all(c.effective_limit().limit > 8.0 for c in rig.sim.chargers.values()), 20)
    # the watchdog is pinged from the control loop, every tick
    before = len(n.lines("WATCHDOG=1"))
    await asyncio.sleep(2.0)
    assert len(n.lines("WATCHDOG=1")) - before >= 3

    # SIGHUP with a good config: RELOADING=1, then READY=1, and the new limit is used
    raw = tomllib.loads(rig.config.read_text())
    raw["chargers"][3]["max_current_a"] = 10.0
    rig.config.write_text(dumps(raw))
    mark = len(n.drain())
    d.signal(signal.SIGHUP)
    await d.wait_log("config_reloaded")
    after = [m for _, m in n.drain()[mark:]]
    assert any(m.startswith("RELOADING=1") for m in after)
    assert any(m.startswith("MONOTONIC_USEC=") for m in after)
    rl = next(i for i, m in enumerate(after) if m.startswith("RELOADING=1"))
    assert any(m == "READY=1" for m in after[rl:])
    assert await wait_for(lambda: rig.sim.chargers["CP4"].effective_limit().limit <= 10.0, 10)

    # SIGHUP with a bad config: refused, logged, the old config stays and the loop goes on
    bad = tomllib.loads(rig.config.read_text())
    for ch in bad["chargers"][:3]:  # 3 x 25 A on the 63 A panel p1
        ch["failsafe_current_a"] = 25.0
    rig.config.write_text(dumps(bad))
    mark = len(n.drain())
    d.signal(signal.SIGHUP)
    err = await d.wait_log("config_reload_failed")
    assert "fail-safe budget exceeded" in err["reason"] and err["key"] in ("service", "circuits[0]")
    await asyncio.sleep(1.0)
    after = [m for _, m in n.drain()[mark:]]
    assert any(m.startswith("RELOADING=1") for m in after) and "READY=1" in after
    assert sum(1 for m in after if m == "WATCHDOG=1") >= 1
    assert rig.sim.chargers["CP4"].effective_limit().limit <= 10.0

    # SIGTERM: STOPPING=1, every charger left at its fail-safe limit, clean exit
    d.signal(signal.SIGTERM)
    rc = await d.wait_exit()
    assert rc == 0, d.stderr.decode()[-2000:]
    assert n.lines("STOPPING=1")
    assert d.events("failsafe_limits_applied")
    for cid, ch in rig.sim.chargers.items():
        eff = ch.effective_limit()
        assert eff.unit == "A" and abs(eff.limit - 8.0) < 0.05, (cid, eff)


async def test_load_step_brings_the_site_back_under_its_limit(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(base_load_a=20.0)
    for ch in rig.sim.chargers.values():
        ch.tick_s = 0.1
    await plug_all(rig, response_s=1.0)
    limit = 100.0
    # settle: the EVs take what the service can give (100 A - 2 A margin - 20 A)
    assert await wait_for(lambda: site_a(rig) > 85.0, 30), site_a(rig)
    await asyncio.sleep(2.0)
    assert site_a(rig) <= limit
    # the building steps up by 40 A
    rig.sim.level[0] = 60.0  # type: ignore[attr-defined]
    t_step = time.monotonic()
    over_until = t_step
    peak = 0.0
    while time.monotonic() - t_step < 8.0:
        a = site_a(rig)
        peak = max(peak, a)
        if a > limit:
            over_until = time.monotonic()
        await asyncio.sleep(0.02)
    overload_s = over_until - t_step
    # the response window (one loop period + the EVs' 1 s response) is measured by the HIL scorecard;
    # here, on a machine that may be busy, only that the site comes back well within a few seconds
    assert overload_s <= 5.0, (overload_s, peak)
    assert site_a(rig) <= limit
    assert rig.daemon.events("reallocated")  # the overload woke the loop before its tick


async def test_silent_meter_moves_its_subtree_to_failsafe(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await plug_all(rig)
    assert await wait_for(lambda: rig.sim.chargers["CP1"].effective_limit().limit > 8.0, 20)
    t0 = time.monotonic()
    rig.sim.meters["m-p1"].silence()
    ev = await rig.daemon.wait_log("limit_changed", charger="CP1", reason="failsafe:m-p1-stale", timeout=15)
    elapsed = time.monotonic() - t0
    # staleness timeout 1.5 s + one tick 0.5 s (+ log latency and CI slack)
    assert elapsed <= 1.5 + TICK_S + 1.5, elapsed
    assert ev["limit"] == 8.0
    for cid in ("CP2", "CP3"):
        await rig.daemon.wait_log("limit_changed", charger=cid, reason="failsafe:m-p1-stale", timeout=5)
    assert not rig.daemon.events("limit_changed", charger="CP4", reason="failsafe:m-p1-stale")
    assert await wait_for(lambda: abs(rig.sim.chargers["CP2"].effective_limit().limit - 8.0) < 0.05, 10)
    # the meter comes back: the subtree leaves fail-safe
    rig.sim.meters["m-p1"].clear_faults()
    await rig.daemon.wait_log("failsafe_left", timeout=15)


async def test_noncompliant_charger_is_flagged_and_the_others_lowered(rig_factory: Any) -> None:
    def allow_tokens(cfg: dict[str, Any]) -> None:
        # the EVs' tokens are accepted even when the gateway answers for the CMS (its link still coming up on a
        # busy machine, a StartTransaction answered from the queue): this test is about limits, not tokens
        cfg["ocpp"]["offline_allow_list"] = [f"TAG{i}" for i in range(4)]

    rig: Rig = await rig_factory(base_load_a=5.0, edit=allow_tokens)
    for ch in rig.sim.chargers.values():
        ch.tick_s = 0.1
    await plug_all(rig, ["CP1", "CP2", "CP3"], response_s=0.5)
    assert await wait_for(lambda: panel_a(rig) > 55.0, 60), panel_a(rig)
    rig.sim.chargers["CP1"].noncompliant = True  # it ignores its limit and takes its maximum, 32 A
    ev = await rig.daemon.wait_log("charger_noncompliant", charger="CP1", timeout=60)
    assert ev["charger"] == "CP1"
    # the others are lowered so that the panel stays within its 63 A
    assert await wait_for(lambda: panel_a(rig) <= 63.5, 30), panel_a(rig)
    await asyncio.sleep(2.0)
    assert panel_a(rig) <= 63.5
    for cid in ("CP2", "CP3"):
        assert rig.sim.chargers[cid].effective_limit().limit <= (63.0 - 32.0) / 2 + 1.0
