"""apply(): every due limit frame written to its socket in one pass before it returns, decreases before
increases, and a wake that lands before the increases drops them (their targets stay as they were)."""

from __future__ import annotations

import asyncio
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
        await gw.ctrl.apply(alloc(A=20.0, B=20.0, C=20.0))
        for cid in "ABC":
            await wait_for(lambda c=cid: limits_of(chs[c])[-1:] == [20.0], what=f"{cid} at 20 A")
        await _idle(gw)
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
        await gw.ctrl.apply(alloc(A=20.0, B=20.0, C=20.0))
        for cid in "ABC":
            await wait_for(lambda c=cid: limits_of(chs[c])[-1:] == [20.0], what=f"{cid} at 20 A")
        await _idle(gw)
        assert await gw.ctrl.apply(alloc(A=10.0, B=25.0, C=8.0), preempt=lambda: False) is True
        for cid, limit in (("A", 10.0), ("B", 25.0), ("C", 8.0)):
            assert gw.ctrl.sessions[cid].limit.sent == limit
            await wait_for(lambda c=cid, v=limit: limits_of(chs[c])[-1:] == [v], what=f"{cid} limit")
    finally:
        for ch in chs.values():
            await ch.close()
