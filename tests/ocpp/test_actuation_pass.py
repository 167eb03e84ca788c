"""apply(): every due limit frame written to its socket in one pass before it returns, decreases before
increases, and a wake that lands before the increases drops them (their targets stay as they were)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from gateway.model import Allocation, ChargerLimit

from .conftest import Cms, Running, connect_charger, wait_for

CHARGERS = "".join(
    f"""
[[chargers]]
id = "{cid}"
ocpp_version = "1.6J"
kind = "ac"
circuit = "p1"
phases = 3
max_current_a = 32
failsafe_current_a = 6
[chargers.ocpp]
password = "secret-{cid.lower()}"
"""
    for cid in ("A", "B", "C")
)


def alloc(**limits: float) -> Allocation:
    return Allocation(at=0.0, limits={k: ChargerLimit(limit=v, line_a=v, reason="test") for k, v in limits.items()})


def limits_of(ch: Running) -> list[float]:
    return [
        float(p["charging_schedule"]["charging_schedule_period"][0]["limit"])
        for p in ch.cp.of("SetChargingProfile")
        if p["stack_level"] == 1
    ]


async def _three(gw: Any) -> dict[str, Running]:
    chs = {cid: await connect_charger(gw.ctrl.port, cid, "1.6", password=f"secret-{cid.lower()}") for cid in "ABC"}
    for cid in chs:
        await wait_for(lambda c=cid: c in gw.ctrl.sessions and gw.ctrl.sessions[c].profiles_ready.is_set(),
                       what=f"{cid} profiles")
    return chs


async def _all_at(gw: Any, chs: dict[str, Running], limit: float) -> None:
    """Every charger at ``limit``, answered."""
    await gw.ctrl.apply(alloc(A=limit, B=limit, C=limit))
    for cid in chs:
        await wait_for(lambda c=cid: limits_of(chs[c])[-1:] == [limit], what=f"{cid} at {limit:g} A")
    await _idle(gw)


async def _idle(gw: Any) -> None:
    """Until no CALL is in flight to any charger (the last limits answered)."""
    await wait_for(lambda: all(s.to_charger.in_flight is None for s in gw.ctrl.sessions.values()), what="answers")


async def test_every_due_frame_is_on_its_socket_when_apply_returns(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port, chargers=CHARGERS)
    chs = await _three(gw)
    try:
        await _idle(gw)
        assert await gw.ctrl.apply(alloc(A=20.0, B=16.0, C=12.0)) is True
        # no await since apply returned: each limit CALL is the one in flight and already written
        for cid, limit in (("A", 20.0), ("B", 16.0), ("C", 12.0)):
            out = gw.ctrl.sessions[cid].to_charger.in_flight
            assert out is not None and out.action == "SetChargingProfile" and out.written.done()
            assert gw.ctrl.sessions[cid].limit.sent == limit
        for cid, limit in (("A", 20.0), ("B", 16.0), ("C", 12.0)):
            await wait_for(lambda c=cid, v=limit: limits_of(chs[c])[-1:] == [v], what=f"{cid} limit")
    finally:
        for ch in chs.values():
            await ch.close()


async def test_a_wake_before_the_increases_drops_them_and_keeps_the_decreases(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port, chargers=CHARGERS)
    chs = await _three(gw)
    try:
        await _idle(gw)
        await _all_at(gw, chs, 20.0)
        # the wake lands at the first point the loop runs inside apply: after the decreases are written
        woke = asyncio.Event()
        asyncio.get_running_loop().call_soon(woke.set)
        done = await gw.ctrl.apply(alloc(A=10.0, B=25.0, C=8.0), preempt=woke.is_set)
        assert done is False
        sessions = gw.ctrl.sessions
        for cid, limit in (("A", 10.0), ("C", 8.0)):
            assert sessions[cid].limit.sent == limit and sessions[cid].to_charger.in_flight is not None
        # the increase was not written and its target is the one before: nothing would send it later
        assert sessions["B"].limit.sent == 20.0 and sessions["B"].limit.target == 20.0
        assert sessions["B"].to_charger.in_flight is None and not sessions["B"].to_charger.queue
        for cid, limit in (("A", 10.0), ("C", 8.0)):
            await wait_for(lambda c=cid, v=limit: limits_of(chs[c])[-1:] == [v], what=f"{cid} decrease")
        # the re-tick (no wake now) writes the increase
        assert await gw.ctrl.apply(alloc(A=10.0, B=25.0, C=8.0), preempt=lambda: False) is True
        await wait_for(lambda: limits_of(chs["B"])[-1:] == [25.0], what="B increase")
        assert limits_of(chs["B"]) == [20.0, 25.0]
    finally:
        for ch in chs.values():
            await ch.close()


async def test_without_a_wake_decreases_and_increases_go_out_in_the_same_apply(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port, chargers=CHARGERS)
    chs = await _three(gw)
    try:
        await _idle(gw)
        await _all_at(gw, chs, 20.0)
        assert await gw.ctrl.apply(alloc(A=10.0, B=25.0, C=8.0), preempt=lambda: False) is True
        for cid, limit in (("A", 10.0), ("B", 25.0), ("C", 8.0)):
            assert gw.ctrl.sessions[cid].limit.sent == limit
            await wait_for(lambda c=cid, v=limit: limits_of(chs[c])[-1:] == [v], what=f"{cid} limit")
    finally:
        for ch in chs.values():
            await ch.close()


async def _at_10_on_disk(gw: Any, chs: dict[str, Running]) -> None:
    """Every charger at 10 A, answered, its lease on disk; then a moment, so that the next frames' leases end
    later than the ones on disk."""
    await _idle(gw)
    await _all_at(gw, chs, 10.0)
    await asyncio.sleep(0.2)


@contextlib.contextmanager
def _writer_stuck(gw: Any) -> Iterator[None]:
    """The store's writer thread stuck inside a job: nothing commits until the block ends."""
    release = threading.Event()
    gw.ctrl.store.submit(lambda db: release.wait(30))
    try:
        yield
    finally:
        release.set()


def _on_disk(path: str, cid: str) -> tuple[float, float] | None:
    """A charger's lease record as a restart would read it: (limit, until wall clock), from the file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT limit_value, lease_until_wall FROM leases WHERE charger = ?", (cid,)).fetchone()
    return None if row is None else (float(row[0]), float(row[1]))


Seen = list[tuple[float, float, tuple[float, float] | None]]


def _watch_limits(ch: Running, path: str, cid: str, seen: Seen) -> None:
    """At each limit profile the charger receives: (its limit, its lease end, the record on disk then)."""
    route = ch.cp.route_message

    async def checking(raw: str) -> None:
        msg = json.loads(raw)
        if msg[0] == 2 and msg[2] == "SetChargingProfile" and msg[3]["csChargingProfiles"]["stackLevel"] == 1:
            sched = msg[3]["csChargingProfiles"]["chargingSchedule"]
            start = datetime.fromisoformat(sched["startSchedule"].replace("Z", "+00:00")).timestamp()
            limit = float(sched["chargingSchedulePeriod"][0]["limit"])
            seen.append((limit, start + float(sched["duration"]), _on_disk(path, cid)))
        await route(raw)

    ch.cp.route_message = checking


async def test_an_increase_goes_out_only_once_its_lease_is_on_disk(cms: Cms, make_gateway: Any) -> None:
    """A gateway killed between an increase's frame and its lease record would restart believing the charger
    holds less than it does; a decrease must not wait for the disk."""
    gw = await make_gateway(cms.port, chargers=CHARGERS)
    chs = await _three(gw)
    try:
        await _at_10_on_disk(gw, chs)
        path = gw.ctrl.store.path
        seen: dict[str, Seen] = {c: [] for c in "AB"}
        for cid in "AB":
            _watch_limits(chs[cid], path, cid, seen[cid])
        with _writer_stuck(gw):
            assert await gw.ctrl.apply(alloc(A=25.0, B=5.0, C=10.0)) is True
            await wait_for(lambda: limits_of(chs["B"])[-1:] == [5.0], what="the decrease, while the disk is stuck")
            await asyncio.sleep(0.5)
            assert limits_of(chs["A"])[-1:] == [10.0], "the increase went out before its lease record was committed"
        await wait_for(lambda: limits_of(chs["A"])[-1:] == [25.0], what="the increase, once committed")
        limit, until, disk = seen["A"][-1]
        assert limit == 25.0 and disk is not None
        assert disk[0] >= 25.0 and disk[1] >= until - 0.05, f"on disk {disk} when {limit} A until {until} arrived"
        limit, until, disk = seen["B"][-1]
        assert limit == 5.0 and disk is not None and disk[0] >= 10.0  # the record still covers the earlier limit
    finally:
        for ch in chs.values():
            await ch.close()


async def test_a_wake_while_an_increase_waits_for_its_lease_drops_it(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port, chargers=CHARGERS)
    chs = await _three(gw)
    try:
        await _at_10_on_disk(gw, chs)
        woke = asyncio.Event()
        with _writer_stuck(gw):
            applying = asyncio.create_task(gw.ctrl.apply(alloc(A=25.0, B=5.0, C=10.0), preempt=woke.is_set))
            await wait_for(lambda: limits_of(chs["B"])[-1:] == [5.0], what="the decrease")
            assert not applying.done(), "apply waits for the increase's lease record"
            woke.set()  # an overload reading lands meanwhile
        assert await applying is False
        a = gw.ctrl.sessions["A"].limit
        assert a.sent == 10.0 and a.target == 10.0, "dropped: as if never sent"
        await asyncio.sleep(0.3)
        assert limits_of(chs["A"]) == [10.0]
        assert await gw.ctrl.apply(alloc(A=25.0, B=5.0, C=10.0), preempt=lambda: False) is True
        await wait_for(lambda: limits_of(chs["A"])[-1:] == [25.0], what="the increase, re-ticked")
    finally:
        for ch in chs.values():
            await ch.close()
