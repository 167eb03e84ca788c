"""The OpenADR 2.0b VEN against a real openleadr VTN on loopback, through the budget service and the allocator:
registration (ids persisted), an event lowering the site from its start, opt-out, cancellation, a restart
mid-event, the VTN going away, the usage report the VTN asks for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from openleadr.utils import setmember

from gateway.budget import Budget
from gateway.budget.openadr import STATE_FILE
from gateway.budget.openadr_ven import Ven2b
from gateway.budget.service import BudgetService
from gateway.config import Site
from gateway.electrical import service_line_current_a
from gateway.model import Allocation, MeterReading
from tests.factories import alloc, charging, snap
from tests.openadr.vtn import VTN, free_port, service, site, until

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

LEVEL2_A = service_line_current_a(site(1).service, 20_000.0)  # 28.87 A per line
MARGIN_A = 2.0


class Wall:
    """The budget service's wall clock: real time plus a shift, to tick at an event's start without waiting."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


@dataclass
class Rig:
    vtn: VTN
    site: Site
    svc: BudgetService
    wall: Wall
    task: asyncio.Task[None]
    events: list[tuple[str, dict[str, object]]]

    @property
    def ven_id(self) -> str:
        v = self.svc.openadr.ven.ven_id
        assert v is not None
        return v


class Listener:
    def __init__(self, out: list[tuple[str, dict[str, object]]]) -> None:
        self.out = out

    def event(self, name: str, **fields: object) -> None:
        self.out.append((name, fields))

    def budget_changed(self, what: str) -> None:
        pass


def start_ven(s: Site, state_dir: Path, wall: Wall, events: list[tuple[str, dict[str, object]]]) -> tuple[
        BudgetService, asyncio.Task[None]]:
    svc = service(s, state_dir, wall)
    svc.listen(Listener(events))
    assert s.budget.openadr is not None
    task = asyncio.create_task(Ven2b(s.budget.openadr, svc.openadr).run())
    return svc, task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, **openadr: Any) -> AsyncIterator[Rig]:
    port = free_port()
    vtn = VTN(port)
    await vtn.start()
    s = site(port, **openadr)
    wall, events = Wall(), list[tuple[str, dict[str, object]]]()
    svc, task = start_ven(s, tmp_path, wall, events)
    try:
        await until(lambda: svc.openadr.ven.registered, what="registration")
        yield Rig(vtn, s, svc, wall, task, events)
    finally:
        await stop(task)
        svc.close()
        await vtn.stop()


def tick(r: Rig | BudgetService, at_wall: float, wall: Wall | None = None) -> tuple[Budget, Allocation]:
    """One control tick at ``at_wall``: both chargers drawing 32 A, the service meter reading 64 A."""
    svc = r.svc if isinstance(r, Rig) else r
    w = r.wall if isinstance(r, Rig) else wall
    assert w is not None
    w.shift = at_wall - time.time()
    now = time.monotonic()
    chargers = {c: charging(c, (32.0,) * 3) for c in ("A", "B")}
    rd = MeterReading(current_a=(64.0,) * 3, at=now, total_power_w=3 * 230.94 * 64.0)
    b = svc.tick({"m-main": rd}, chargers, now)
    s = svc._site
    a = alloc(snap(now, list(chargers.values()), {"m-main": rd}, caps=b.caps), s, None, now)
    return b, a


def openadr_caps(b: Budget) -> dict[str, float]:
    return {c.name: min(c.limit_a) for c in b.caps if c.name.startswith("openadr:")}


async def test_registration_ids_persisted_and_reused_after_restart(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        first = r.ven_id
        assert r.vtn.registrations[0].get("ven_id") is None and r.vtn.registrations[0]["ven_name"] == "depot-test"
        st = r.svc.openadr.status(time.time())
        assert st["registered"] is True and st["registration_id"] == "reg-1" and st["vtn_id"] == "TEST-VTN"
        await stop(r.task)
        r.svc.flush()
        saved = json.loads((tmp_path / "budget" / STATE_FILE).read_text())
        assert saved["ven"]["ven_id"] == first and saved["ven"]["registration_id"] == "reg-1"
        svc2, task2 = start_ven(r.site, tmp_path, r.wall, r.events)
        try:
            assert svc2.openadr.status(time.time())["registered"] is False  # until the VTN confirms it
            await until(lambda: svc2.openadr.ven.registered)
            # the restarted VEN registered as itself
            assert r.vtn.registrations[-1].get("ven_id") == first and len(r.vtn.registrations) == 2
            assert svc2.openadr.ven.ven_id == first
        finally:
            await stop(task2)
            svc2.close()


async def test_event_lowers_the_site_from_its_start(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        start = time.time() + 120
        eid = r.vtn.event(r.ven_id, start, 10, value=2)
        await until(lambda: eid in r.vtn.opts)
        assert r.vtn.opts[eid] == "optIn"
        b, a = tick(r, start - 15 - 1)  # before the lead: nothing
        assert openadr_caps(b) == {} and not any("openadr" in lim.reason for lim in a.limits.values())
        for at in (start - 15, start, start + 300):  # from lead_s before the start: the EVs follow in time
            b, a = tick(r, at)
            assert openadr_caps(b) == {f"openadr:{eid}": pytest.approx(LEVEL2_A)}
            assert {lim.reason for lim in a.limits.values()} == {f"capped:openadr:{eid}/L1"}
            assert sum(lim.line_a for lim in a.limits.values()) <= LEVEL2_A - MARGIN_A + 1e-6
        b, a = tick(r, start + 600)  # the event's end
        assert openadr_caps(b) == {}
        names = [n for n, _ in r.events]
        assert names.count("openadr_event_applied") == 1 and "openadr_event_ended" in names


async def test_load_dispatch_setpoint_in_kw(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        start = time.time() - 5
        eid = r.vtn.event(r.ven_id, start, 10, signal="LOAD_DISPATCH", stype="setpoint", value=30)
        await until(lambda: eid in r.svc.openadr.events)
        b, a = tick(r, time.time())
        assert openadr_caps(b) == {f"openadr:{eid}": pytest.approx(service_line_current_a(r.site.service, 30e3))}
        assert {lim.reason for lim in a.limits.values()} == {f"capped:openadr:{eid}/L1"}


async def test_opt_out_while_sessions_at_risk(tmp_path: Path) -> None:
    async with rig(tmp_path, opt_policy="opt-out-if-sessions-at-risk") as r:
        asked: list[str] = []

        def at_risk(ev: Any) -> bool:
            asked.append(ev.event_id)
            return len(asked) == 1  # the first event would make a session miss its departure

        r.svc.openadr.sessions_at_risk = at_risk
        start = time.time() + 60
        out = r.vtn.event(r.ven_id, start, 10, value=3)
        await until(lambda: out in r.vtn.opts)
        inn = r.vtn.event(r.ven_id, start, 10, value=1)
        await until(lambda: inn in r.vtn.opts)
        assert r.vtn.opts == {out: "optOut", inn: "optIn"} and asked[:2] == [out, inn]
        b, _ = tick(r, start + 1)
        assert openadr_caps(b) == {f"openadr:{inn}": pytest.approx(service_line_current_a(r.site.service, 40e3))}
        held = r.svc.openadr.status(time.time(), r.site.service)["events"]
        assert isinstance(held, list)
        assert {e["event_id"]: e["opt"] for e in held} == {out: "optOut", inn: "optIn"}


async def test_opt_out_during_an_event_when_sessions_become_at_risk(tmp_path: Path) -> None:
    async with rig(tmp_path, opt_policy="opt-out-if-sessions-at-risk") as r:
        risk = [False]
        r.svc.openadr.sessions_at_risk = lambda ev: risk[0]
        eid = r.vtn.event(r.ven_id, time.time() - 5, 30, value=2)
        await until(lambda: r.vtn.opts.get(eid) == "optIn")
        b, _ = tick(r, time.time())
        assert f"openadr:{eid}" in openadr_caps(b)
        risk[0] = True  # a fleet session would now miss its departure
        await until(lambda: r.vtn.opts.get(eid) == "optOut", what="the VTN told of the opt-out")
        # openleadr's client answers an event the VTN distributes again with the opt it holds for it: repeats
        changes = [o for i, o in enumerate(r.vtn.opt_log) if i == 0 or r.vtn.opt_log[i - 1] != o]
        assert changes == [(eid, "optIn"), (eid, "optOut")]
        await asyncio.sleep(2.5)  # polls later (the event distributed again): still out, never back in
        assert r.vtn.opts[eid] == "optOut" and r.vtn.opt_log[-1] == (eid, "optOut")
        b, a = tick(r, time.time())
        assert openadr_caps(b) == {} and not any("openadr" in lim.reason for lim in a.limits.values())
        assert ("openadr_opt_changed", {"event_id": eid, "opt": "optOut",
                                        "reason": "sessions would miss their departure (during the event)"}) in r.events


async def test_cancellation_releases_the_cap(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        eid = r.vtn.event(r.ven_id, time.time() - 5, 30, value=3)
        await until(lambda: eid in r.svc.openadr.events)
        b, _ = tick(r, time.time())
        assert f"openadr:{eid}" in openadr_caps(b)
        r.vtn.cancel(r.ven_id, eid)
        await until(lambda: r.svc.openadr.events.get(eid) is None or r.svc.openadr.events[eid].cancelled)
        b, a = tick(r, time.time())
        assert openadr_caps(b) == {} and not any("openadr" in lim.reason for lim in a.limits.values())
        assert ("openadr_event_ended", {"event_id": eid, "reason": "cancelled"}) in r.events


async def test_restart_mid_event_keeps_it_without_the_vtn(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        start = time.time() - 5
        eid = r.vtn.event(r.ven_id, start, 10, value=2)
        await until(lambda: eid in r.svc.openadr.events)
        b, _ = tick(r, time.time())
        assert f"openadr:{eid}" in openadr_caps(b)
        await r.vtn.stop()  # the utility's VTN is gone while the gateway restarts
        await stop(r.task)
        r.svc.close()
        wall = Wall()
        svc2 = service(r.site, tmp_path, wall)
        try:
            b, a = tick(svc2, time.time(), wall)  # the first tick after the restart, before any VTN contact
            assert openadr_caps(b) == {f"openadr:{eid}": pytest.approx(LEVEL2_A)}
            assert {lim.reason for lim in a.limits.values()} == {f"capped:openadr:{eid}/L1"}
            b, _ = tick(svc2, start + 600, wall)  # it ends on its own time
            assert openadr_caps(b) == {} and svc2.openadr.events == {}
        finally:
            svc2.close()


async def test_vtn_going_away_ends_an_open_ended_event_after_confirm_s(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        fixed = r.vtn.event(r.ven_id, time.time() - 5, 60, value=1)
        open_ = r.vtn.event(r.ven_id, time.time() - 5, 0, value=3)  # duration 0: until further notice
        await until(lambda: {fixed, open_} <= set(r.svc.openadr.events))
        assert r.svc.openadr.events[open_].end == float("inf")
        await r.vtn.stop()
        await until(lambda: r.svc.openadr.ven.last_error is not None, what="a failed poll")
        last = r.svc.openadr.ven.last_contact
        assert last is not None
        b, _ = tick(r, last + 10 - 0.5)  # confirm_s = 10: still held
        assert set(openadr_caps(b)) == {f"openadr:{fixed}", f"openadr:{open_}"}
        b, _ = tick(r, last + 10 + 0.5)  # no longer confirmed: it ends; the fixed one runs to its end
        assert set(openadr_caps(b)) == {f"openadr:{fixed}"}
        assert ("openadr_event_ended", {"event_id": open_, "reason": "unconfirmed"}) in r.events
        st = r.svc.openadr.status(time.time())
        assert st["last_error"] == "the VTN did not answer the poll"


async def test_usage_report_carries_the_service_import(tmp_path: Path) -> None:
    port = free_port()
    vtn = VTN(port)
    got: list[float] = []

    async def on_register_report(ven_id: str, resource_id: str, measurement: str, unit: str, scale: str,
                                 min_sampling_interval: timedelta, max_sampling_interval: timedelta) -> Any:
        assert resource_id == "service" and measurement == "RealPower"
        return lambda data: got.extend(v for _, v in data), timedelta(seconds=1)

    vtn.server.add_handler("on_register_report", on_register_report)
    await vtn.start()
    s = site(port)
    wall, events = Wall(), list[tuple[str, dict[str, object]]]()
    svc, task = start_ven(s, tmp_path, wall, events)
    try:
        await until(lambda: svc.openadr.ven.registered)
        tick(svc, time.time(), wall)  # the service meter reads 64 A per line: 44.34 kW
        await until(lambda: got, timeout_s=20, what="a report")
        assert got[-1] == pytest.approx(3 * 230.94 * 64.0 / 1000.0, abs=0.01)
    finally:
        await stop(task)
        svc.close()
        await vtn.stop()


async def test_a_vtn_not_up_yet_is_retried_until_it_registers(tmp_path: Path) -> None:
    port = free_port()
    s = site(port)
    wall, events = Wall(), list[tuple[str, dict[str, object]]]()
    svc, task = start_ven(s, tmp_path, wall, events)
    vtn = VTN(port)
    try:
        await until(lambda: svc.openadr.ven.last_error is not None, what="a refused registration")
        assert svc.openadr.status(time.time())["registered"] is False
        await vtn.start()
        await until(lambda: svc.openadr.ven.registered, what="registration once the VTN is up")
        assert svc.openadr.ven.last_error is None and len(vtn.registrations) == 1
    finally:
        await stop(task)
        svc.close()
        await vtn.stop()


async def test_ramp_up_and_start_randomisation_from_the_vtn(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        start = time.time() + 600
        eid = r.vtn.event(r.ven_id, start, 10, value=3)
        # the event as openleadr queued it (its add_event drops a ramp-up given with dict intervals): a ramp-up
        # of 5 minutes, a start tolerance of 2
        queued = r.vtn.server.events[r.ven_id][-1]
        setmember(queued, "active_period.ramp_up_period", timedelta(minutes=5))
        setmember(queued, "active_period.tolerance", {"startafter": timedelta(minutes=2)})
        await until(lambda: eid in r.svc.openadr.events)
        held = r.svc.openadr.events[eid]
        assert held.ramp_up_s == 300 and 0 <= held.offset_s <= 120
        level3 = service_line_current_a(r.site.service, 10_000.0)
        begin = start + held.offset_s - 15  # lead_s 15 before the randomised start
        b, _ = tick(r, begin - 300 - 1)
        assert openadr_caps(b) == {}
        b, _ = tick(r, begin - 150)  # halfway down the ramp
        assert openadr_caps(b)[f"openadr:{eid}"] == pytest.approx((100 + level3) / 2, abs=0.1)
        b, _ = tick(r, begin)
        assert openadr_caps(b)[f"openadr:{eid}"] == pytest.approx(level3)
