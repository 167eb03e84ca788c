"""What the OCPP layer tells the allocator: actuation feedback (controlled, accepted, pending, rejected,
lease), report times from the chargers' own timestamps, and multi-connector stations summed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as cr16
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as cr201
from sitesim.cms import on
from websockets.asyncio.client import connect

from gateway.config import site_from_text
from gateway.model import Actuation, ChargerSnapshot, ChargerState
from gateway.ocpp_proxy.limits import ACCEPTED, REJECTED, UNANSWERED, LimitState
from gateway.ocpp_proxy.state import PLAUSIBLE_MARGIN_A, PLAUSIBLE_TOLERANCE, ChargerTracker, draw_bounds

from .conftest import CHARGERS, Charger16, Charger201, Cms, Gateway, Running, site_text, wait_for
from .test_limits import FakeClock, alloc

FAILSAFE_ID, LIMIT_ID = 900001, 900002  # the gateway's profile ids (defaults)
LEASE_S = 120.0  # site_text's lease_s

STATIONS = """
[[chargers]]
id = "ST16"
ocpp_version = "1.6J"
kind = "ac"
circuit = "p1"
phases = 3
connectors = 2
max_current_a = 32
failsafe_current_a = 6
[[chargers]]
id = "ST201"
ocpp_version = "2.0.1"
kind = "ac"
circuit = "p1"
phases = 3
connectors = 2
max_current_a = 32
failsafe_current_a = 6
"""


# ---------------------------------------------------------------- chargers that hold or refuse some answers
class Gated16(Charger16):
    """Holds its answer to an action until released; rejects the profiles whose id is in `reject_ids`."""

    def __init__(self, cid: str, conn: Any) -> None:
        super().__init__(cid, conn)
        self.gates: dict[str, asyncio.Event] = {}
        self.reject_ids: set[int] = set()

    async def _gate(self, action: str) -> None:
        gate = self.gates.get(action)
        if gate is not None:
            await gate.wait()

    @on("GetConfiguration")
    async def getconf(self, key: list[str] | None = None) -> Any:
        self.received.append(("GetConfiguration", {"key": key}))
        await self._gate("GetConfiguration")
        return cr16.GetConfiguration(
            configuration_key=[{"key": "SupportedFeatureProfiles", "readonly": True, "value": "Core,SmartCharging"}]
        )

    @on("SetChargingProfile")
    async def scp(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        self.received.append(("SetChargingProfile", {"connector_id": connector_id, **cs_charging_profiles}))
        if cs_charging_profiles["charging_profile_id"] == LIMIT_ID:
            await self._gate("SetChargingProfile")
        rejected = cs_charging_profiles["charging_profile_id"] in self.reject_ids
        return cr16.SetChargingProfile(status="Rejected" if rejected else "Accepted")

    @on("DataTransfer")
    async def dt(self, **kw: Any) -> Any:
        self.received.append(("DataTransfer", kw))
        await self._gate("DataTransfer")
        return cr16.DataTransfer(status="Accepted")


class Gated201(Charger201):
    def __init__(self, cid: str, conn: Any) -> None:
        super().__init__(cid, conn)
        self.gates: dict[str, asyncio.Event] = {}
        self.reject_ids: set[int] = set()

    @on("GetVariables")
    async def getvars(self, get_variable_data: list[dict[str, Any]], **kw: Any) -> Any:
        self.received.append(("GetVariables", {"data": get_variable_data}))
        gate = self.gates.get("GetVariables")
        if gate is not None:
            await gate.wait()
        return cr201.GetVariables(
            get_variable_result=[
                {
                    "attribute_status": "Accepted",
                    "attribute_value": "true",
                    "component": d["component"],
                    "variable": d["variable"],
                }
                for d in get_variable_data
            ]
        )

    @on("SetChargingProfile")
    def scp(self, evse_id: int, charging_profile: dict[str, Any], **kw: Any) -> Any:
        self.received.append(("SetChargingProfile", {"evse_id": evse_id, **charging_profile}))
        rejected = charging_profile["id"] in self.reject_ids
        return cr201.SetChargingProfile(status="Rejected" if rejected else "Accepted")


async def connect_gated(port: int, cid: str, version: str, gates: tuple[str, ...] = (), **kw: Any) -> Running:
    import base64

    headers = []
    if cid == "CP16":
        headers.append(("Authorization", "Basic " + base64.b64encode(b"CP16:secret-cp16").decode()))
    sub = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
    ws = await connect(
        f"ws://127.0.0.1:{port}/ocpp/{cid}",
        subprotocols=[sub],  # type: ignore[list-item]
        additional_headers=headers,
        open_timeout=10,
    )
    cp: Gated16 | Gated201 = Gated16(cid, ws) if version == "1.6" else Gated201(cid, ws)
    for g in gates:
        cp.gates[g] = asyncio.Event()
    cp.reject_ids = set(kw.get("reject_ids", ()))
    return Running(cp, ws, asyncio.create_task(cp.start()))


def act(gw: Gateway, cid: str) -> Actuation:
    a = gw.ctrl.snapshot()[cid].actuation
    assert a is not None, "the daemon always reports actuation"
    return a


def limit_profiles(cp: Any) -> list[dict[str, Any]]:
    key = "charging_profile_id" if isinstance(cp, Charger16) else "id"
    return [p for p in cp.of("SetChargingProfile") if p[key] == LIMIT_ID]


def ready(gw: Gateway, cid: str) -> bool:
    s = gw.ctrl.sessions.get(cid)
    return s is not None and s.profiles_ready.is_set()


# ---------------------------------------------------------------- actuation feedback
@pytest.mark.parametrize(("cid", "version"), [("CP16", "1.6"), ("CP201", "2.0.1")])
async def test_controlled_only_after_capabilities_failsafe_and_limit_accepted(
    make_gateway: Any, cid: str, version: str
) -> None:
    clock = FakeClock()
    gw = await make_gateway(None, clock=clock)
    caps = "GetConfiguration" if version == "1.6" else "GetVariables"
    ch = await connect_gated(gw.ctrl.port, cid, version, gates=(caps,))
    try:
        # the socket is open and the capabilities are being asked: online, not controlled
        await wait_for(lambda: ch.cp.of(caps), what="capabilities asked")
        snap = gw.ctrl.snapshot()[cid]
        # a first start: nothing known of an earlier life, so it may hold its maximum for a lease
        top = gw.ctrl.site.chargers[cid].max_limit
        assert snap.online and snap.actuation == Actuation(accepted_limit=top, accepted_at=clock.t,
                                                           lease_until=clock.t + LEASE_S)
        ch.cp.gates[caps].set()
        await wait_for(lambda: ready(gw, cid), what="profiles installed")
        a = act(gw, cid)
        assert a.failsafe_installed and not a.controlled, "no limit profile accepted yet"
        assert a.accepted_limit == top and a.pending_limit is None and a.rejected_at is None
        await gw.ctrl.apply(alloc(**{cid: 20.0}))
        await wait_for(lambda: act(gw, cid).accepted_limit == 20.0, what="limit accepted")
        a = act(gw, cid)
        assert a.controlled and a.accepted_at == clock.t and a.pending_limit is None
        assert a.lease_until == clock.t + LEASE_S
        # the lease lapses (no renewal sent under the fake clock's jump): the fail-safe takes over
        clock.t += LEASE_S + 1
        a = act(gw, cid)
        assert not a.controlled and a.accepted_limit == 20.0 and a.lease_until == clock.t - 1
    finally:
        await ch.close()
    # offline: not controlled; what it last accepted and its lease are kept for the allocator
    await wait_for(lambda: not gw.ctrl.snapshot()[cid].online, what="offline")
    a = act(gw, cid)
    assert not a.controlled and a.accepted_limit == 20.0 and a.failsafe_installed


async def test_rejected_limit_is_reported_and_never_counts_as_accepted(make_gateway: Any) -> None:
    clock = FakeClock()
    gw = await make_gateway(None, clock=clock)
    ch = await connect_gated(gw.ctrl.port, "CP16", "1.6", reject_ids={LIMIT_ID})
    try:
        await wait_for(lambda: ready(gw, "CP16"), what="profiles installed")
        await gw.ctrl.apply(alloc(CP16=20.0))
        # rejected under ChargePointMaxProfile, then (after the purpose fallback) under TxDefaultProfile
        await wait_for(
            lambda: len(limit_profiles(ch.cp)) == 2 and act(gw, "CP16").pending_limit is None, what="both rejected"
        )
        a = act(gw, "CP16")
        top = gw.ctrl.site.chargers["CP16"].max_limit  # the first start's bound: never replaced by a rejection
        assert a.rejected_at == clock.t and a.accepted_limit == top and a.lease_until == clock.t + LEASE_S
        assert a.failsafe_installed and not a.controlled
    finally:
        await ch.close()


async def test_rejected_failsafe_keeps_the_session_but_is_not_controlled(make_gateway: Any) -> None:
    gw = await make_gateway(None, clock=FakeClock())
    ch = await connect_gated(gw.ctrl.port, "CP201", "2.0.1", reject_ids={FAILSAFE_ID})
    try:
        await wait_for(lambda: ready(gw, "CP201"), what="session goes on")
        await gw.ctrl.apply(alloc(CP201=16.0))
        await wait_for(lambda: act(gw, "CP201").accepted_limit == 16.0, what="limit accepted")
        a = act(gw, "CP201")
        assert not a.failsafe_installed and not a.controlled
        assert ("failsafe_not_installed", {"charger": "CP201"}) in gw.events
    finally:
        await ch.close()


async def test_unanswered_limit_stays_pending_and_a_reconnect_is_not_controlled(make_gateway: Any) -> None:
    clock = FakeClock()
    gw = await make_gateway(None, clock=clock)
    ch = await connect_gated(gw.ctrl.port, "CP16", "1.6")
    try:
        await wait_for(lambda: ready(gw, "CP16"), what="profiles installed")
        await gw.ctrl.apply(alloc(CP16=10.0))
        await wait_for(lambda: act(gw, "CP16").accepted_limit == 10.0, what="first limit")
        ch.cp.gates["SetChargingProfile"] = asyncio.Event()  # the next limit profile is never answered
        clock.t += 2.0
        await gw.ctrl.apply(alloc(CP16=20.0))
        await wait_for(lambda: len(limit_profiles(ch.cp)) == 2, what="increase at the charger")
    finally:
        await ch.close()
    await wait_for(lambda: not gw.ctrl.snapshot()["CP16"].online, what="offline")
    # the charger may have applied the increase before it went away: still pending (unconfirmed)
    a = act(gw, "CP16")
    assert (a.pending_limit, a.pending_since, a.accepted_limit) == (20.0, clock.t, 10.0)
    assert a.rejected_at == clock.t and not a.controlled
    ch2 = await connect_gated(gw.ctrl.port, "CP16", "1.6", gates=("SetChargingProfile",))
    try:
        # the fail-safe is accepted again, the limit is held at the charger
        await wait_for(lambda: limit_profiles(ch2.cp), what="limit resent after the reconnect")
        a = act(gw, "CP16")
        assert gw.ctrl.snapshot()["CP16"].online and a.failsafe_installed and a.pending_limit == 20.0
        assert a.lease_until == clock.t - 2.0 + LEASE_S, "the first lease has not lapsed"
        assert not a.controlled, "a new socket: no limit confirmed on it yet"
        ch2.cp.gates["SetChargingProfile"].set()
        await wait_for(lambda: act(gw, "CP16").controlled, what="reinstalled")
        a = act(gw, "CP16")
        assert (a.accepted_limit, a.pending_limit, a.lease_until) == (20.0, None, clock.t + LEASE_S)
    finally:
        await ch2.close()


async def test_limit_behind_a_cms_call_is_pending_until_answered(cms: Cms, make_gateway: Any) -> None:
    clock = FakeClock()
    gw = await make_gateway(cms.port, clock=clock)
    ch = await connect_gated(gw.ctrl.port, "CP16", "1.6", gates=("DataTransfer",))
    cms_call: asyncio.Task[Any] | None = None
    try:
        await wait_for(lambda: ready(gw, "CP16") and "CP16" in cms.peers, what="profiles and CMS link")
        await gw.ctrl.apply(alloc(CP16=20.0))
        await wait_for(lambda: act(gw, "CP16").accepted_limit == 20.0, what="first limit")
        # the CMS's CALL is in flight on the charger's socket and the charger takes its time
        cms_call = asyncio.create_task(cms.peers["CP16"].call(c16.DataTransfer(vendor_id="ACME", data="x")))
        await wait_for(lambda: ch.cp.of("DataTransfer"), what="CMS call at the charger")
        sent_before = len(limit_profiles(ch.cp))
        decided_at = clock.t
        await gw.ctrl.apply(alloc(CP16=10.0))
        a = act(gw, "CP16")
        assert (a.pending_limit, a.pending_since) == (10.0, decided_at)
        assert a.accepted_limit == 20.0 and a.controlled, "the charger still holds what it accepted"
        assert len(limit_profiles(ch.cp)) == sent_before, "one CALL outstanding per direction"
        clock.t += 3.0
        ch.cp.gates["DataTransfer"].set()
        await cms_call
        await wait_for(lambda: act(gw, "CP16").accepted_limit == 10.0, what="decrease accepted")
        a = act(gw, "CP16")
        assert a.accepted_at == decided_at + 3.0 and a.pending_limit is None
        # the profile's lease runs from its start (when it was built), not from the late answer
        assert a.lease_until == decided_at + LEASE_S
    finally:
        if cms_call is not None and not cms_call.done():
            cms_call.cancel()
            with contextlib.suppress(BaseException):
                await cms_call
        await ch.close()


async def test_failsafe_now_is_recorded(make_gateway: Any) -> None:
    clock = FakeClock()
    gw = await make_gateway(None, clock=clock)
    ch = await connect_gated(gw.ctrl.port, "DC1", "2.0.1")
    try:
        await wait_for(lambda: ready(gw, "DC1"), what="profiles installed")
        await gw.ctrl.apply(alloc(DC1=42000.0))
        await wait_for(lambda: act(gw, "DC1").accepted_limit == 42000.0, what="limit")
        clock.t += 7.0
        await gw.ctrl.apply_failsafe()
        a = act(gw, "DC1")
        assert (a.accepted_limit, a.accepted_at, a.lease_until) == (10000.0, clock.t, clock.t + LEASE_S)
        assert a.controlled and a.pending_limit is None
    finally:
        await ch.close()


# ---------------------------------------------------------------- report times
def wall_iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def tracker(tmp_path: Path, cid: str, clock: FakeClock, wall: float) -> ChargerTracker:
    site = site_from_text(site_text(tmp_path, None, chargers=CHARGERS + STATIONS))
    return ChargerTracker(site.chargers[cid], site.service.phases, clock, wall=lambda: wall)


def mv16(conn: int, amps: float, stamp: str) -> dict[str, Any]:
    sv = [{"value": str(amps), "measurand": "Current.Import", "phase": f"L{i}", "unit": "A"} for i in (1, 2, 3)]
    return {"connectorId": conn, "meterValue": [{"timestamp": stamp, "sampledValue": sv}]}


def test_report_time_is_the_chargers_own(tmp_path: Path) -> None:
    clock, wall = FakeClock(), 1_800_000_000.0
    t = tracker(tmp_path, "CP16", clock, wall)
    t.on_meter_values_16(mv16(1, 16.0, wall_iso(wall - 40)))
    assert (t.draw_a, t.draw_at) == ((16.0,) * 3, clock.t - 40)
    t.on_meter_values_16(mv16(1, 12.0, wall_iso(wall - 5)))
    assert (t.draw_a, t.draw_at) == ((12.0,) * 3, clock.t - 5)
    # a buffered value from before the one held does not replace it
    t.on_meter_values_16(mv16(1, 30.0, wall_iso(wall - 30)))
    assert (t.draw_a, t.draw_at) == ((12.0,) * 3, clock.t - 5)
    # a charger clock ahead of ours: never later than now
    t.on_meter_values_16(mv16(1, 11.0, wall_iso(wall + 100)))
    assert (t.draw_a, t.draw_at) == ((11.0,) * 3, clock.t)
    # no parseable timestamp: the arrival time
    clock.t += 1
    t.on_meter_values_16(mv16(1, 10.0, "yesterday"))
    assert (t.draw_a, t.draw_at) == ((10.0,) * 3, clock.t)


@pytest.mark.parametrize(("cid", "version"), [("CP16", "1.6"), ("CP201", "2.0.1")])
async def test_buffered_meter_values_keep_their_old_time(make_gateway: Any, cid: str, version: str) -> None:
    clock = FakeClock()
    gw = await make_gateway(None, clock=clock)
    ch = await connect_gated(gw.ctrl.port, cid, version)
    try:
        old = wall_iso(time.time() - 40)
        if version == "1.6":
            sv = [{"value": "16", "measurand": "Current.Import", "phase": "L1", "unit": "A"}]
            await ch.cp.call(c16.MeterValues(connector_id=1, meter_value=[{"timestamp": old, "sampledValue": sv}]))
        else:
            sv201 = [{"value": 16.0, "measurand": "Current.Import", "phase": "L1"}]
            await ch.cp.call(c201.MeterValues(evse_id=1, meter_value=[{"timestamp": old, "sampled_value": sv201}]))
        snap = gw.ctrl.snapshot()[cid]
        assert snap.draw_at is not None and clock.t - 42 < snap.draw_at <= clock.t - 40
    finally:
        await ch.close()


# ---------------------------------------------------------------- multi-connector stations
def total(s: ChargerSnapshot) -> float | None:
    return None if s.draw_a is None else s.draw_a[0]


async def test_16_two_connector_station_sums_its_connectors(cms: Cms, make_gateway: Any) -> None:
    clock = FakeClock()
    gw = await make_gateway(cms.port, clock=clock, chargers=STATIONS)
    ch = await connect_gated(gw.ctrl.port, "ST16", "1.6")
    now = time.time()

    async def meter(conn: int, amps: float, age_s: float) -> None:
        p = mv16(conn, amps, wall_iso(now - age_s))
        await ch.cp.call(c16.MeterValues(connector_id=conn, meter_value=p["meterValue"]))

    try:
        await wait_for(lambda: "ST16" in cms.peers, what="CMS link")
        tx = {}
        for conn in (1, 2):
            await ch.cp.call(c16.StatusNotification(connector_id=conn, error_code="NoError", status="Preparing"))
            start = await ch.cp.call(
                c16.StartTransaction(connector_id=conn, id_tag="OK-1", meter_start=0, timestamp=wall_iso(now))
            )
            tx[conn] = start.transaction_id
            await ch.cp.call(c16.StatusNotification(connector_id=conn, error_code="NoError", status="Charging"))
        snap = gw.ctrl.snapshot()["ST16"]
        assert snap.state == ChargerState.CHARGING and snap.state_changed_at == clock.t
        assert snap.active_connectors == 2 and snap.draw_a is None, "no connector has reported yet"
        await meter(1, 16.0, 20)
        assert total(gw.ctrl.snapshot()["ST16"]) is None, "connector 2 has a session and no report"
        await meter(2, 10.0, 5)
        clock.t += 30  # the reports do not move the state's change time
        snap = gw.ctrl.snapshot()["ST16"]
        assert snap.draw_a == (26.0, 26.0, 26.0) and snap.state_changed_at == clock.t - 30
        assert snap.draw_at is not None and abs(snap.draw_at - (clock.t - 30 - 20)) < 2, "the oldest report"
        # new reports of one connector do not overwrite the other's (issue 11 item 6)
        await meter(1, 15.0, 1)
        await meter(1, 14.0, 0)
        assert total(gw.ctrl.snapshot()["ST16"]) == 24.0
        # connector 2's session ends: it drops out of the sum and the count
        await ch.cp.call(c16.StopTransaction(meter_stop=100, timestamp=wall_iso(now), transaction_id=tx[2]))
        await ch.cp.call(c16.StatusNotification(connector_id=2, error_code="NoError", status="Finishing"))
        snap = gw.ctrl.snapshot()["ST16"]
        assert (total(snap), snap.active_connectors, snap.state) == (14.0, 1, ChargerState.CHARGING)
        assert snap.session is not None and snap.session.transaction_id == str(tx[1]), "connector 1's goes on"
        # the station's own meter (connector 0), as recent as the connectors: preferred as the total
        await meter(0, 15.5, 0)
        assert total(gw.ctrl.snapshot()["ST16"]) == 15.5
    finally:
        await ch.close()


async def test_201_two_evse_station_sums_its_evses(make_gateway: Any) -> None:
    clock = FakeClock()
    gw = await make_gateway(None, clock=clock, chargers=STATIONS)
    ch = await connect_gated(gw.ctrl.port, "ST201", "2.0.1")
    stamp = wall_iso(time.time())

    def meter(amps: float) -> list[dict[str, Any]]:
        sv = [{"value": amps, "measurand": "Current.Import", "phase": f"L{i}"} for i in (1, 2, 3)]
        return [{"timestamp": stamp, "sampled_value": sv}]

    async def event(kind: str, seq: int, tx: str, amps: float, evse: int | None) -> None:
        await ch.cp.call(
            c201.TransactionEvent(
                event_type=kind,
                timestamp=stamp,
                trigger_reason="MeterValuePeriodic",
                seq_no=seq,
                transaction_info={"transaction_id": tx, "charging_state": "Charging"},
                evse=None if evse is None else {"id": evse, "connector_id": 1},
                meter_value=meter(amps),
            )
        )

    try:
        await event("Started", 0, "tx-a", 10.0, 1)
        await event("Started", 0, "tx-b", 12.0, 2)
        snap = gw.ctrl.snapshot()["ST201"]
        assert (total(snap), snap.active_connectors, snap.state) == (22.0, 2, ChargerState.CHARGING)
        # a later event without its EVSE belongs to the transaction's EVSE
        await event("Updated", 1, "tx-b", 8.0, None)
        assert total(gw.ctrl.snapshot()["ST201"]) == 18.0
        await ch.cp.call(c201.MeterValues(evse_id=1, meter_value=meter(9.0)))
        assert total(gw.ctrl.snapshot()["ST201"]) == 17.0
        await event("Ended", 2, "tx-a", 9.0, None)
        snap = gw.ctrl.snapshot()["ST201"]
        assert (total(snap), snap.active_connectors) == (8.0, 1)
        assert snap.session is not None and snap.session.transaction_id == "tx-b"
    finally:
        await ch.close()


def test_snapshot_is_rebuilt_only_on_a_change(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(tmp_path, "CP16", clock, 1_800_000_000.0)
    a = Actuation(controlled=True)
    first = t.snapshot(a)
    assert t.snapshot(a) is first
    t.on_meter_values_16(mv16(1, 6.0, "2027-01-15T08:00:00Z"))
    second = t.snapshot(a)
    assert second is not first and second.draw_a == (6.0,) * 3
    assert t.snapshot(Actuation()) is not second


def test_limit_state_transitions() -> None:
    ls = LimitState()
    ls.connected()
    ls.installing(True)
    ls.failsafe_answered(True)
    ls.queued("a", 20.0, 100.0)
    ls.answered("a", 20.0, 100.0, 100.0 + LEASE_S, UNANSWERED, 105.0)  # written, never answered
    a = ls.actuation(105.0, True)
    assert (a.pending_limit, a.pending_since, a.rejected_at, a.accepted_limit) == (20.0, 100.0, 105.0, None)
    ls.queued("b", 12.0, 106.0)
    assert ls.actuation(106.0, True).pending_limit == 12.0
    ls.answered("b", 12.0, 106.0, 106.0 + LEASE_S, REJECTED, 107.0)
    # b changed nothing; a may still have been applied
    assert (ls.actuation(107.0, True).pending_limit, ls.actuation(107.0, True).pending_since) == (20.0, 100.0)
    ls.queued("c", 16.0, 108.0)
    ls.answered("c", 16.0, 108.0, 108.0 + LEASE_S, ACCEPTED, 109.0)
    a = ls.actuation(109.0, True)
    assert (a.accepted_limit, a.accepted_at, a.lease_until, a.pending_limit) == (16.0, 109.0, 108.0 + LEASE_S, None)
    assert a.controlled and ls.actuation(110.0, True) is a, "unchanged: the same record"
    assert not ls.actuation(108.0 + LEASE_S, True).controlled, "the lease lapsed"
    assert not ls.actuation(110.0, False).controlled, "offline"


# ---------------------------------------------------------------- plausibility relative to the equipment
def test_a_draw_above_what_the_charger_could_draw_is_rejected(tmp_path: Path) -> None:
    """Issue 13 finding 4: one report of 9999 A from a 32 A charger is not believed (it would become a fixed
    load holding the panel's other chargers at 0 A); up to the tolerance above its maximum it is."""
    site = site_from_text(site_text(tmp_path, None, chargers=CHARGERS + STATIONS))
    clock, wall = FakeClock(), 1_800_000_000.0
    cp16, st16 = site.chargers["CP16"], site.chargers["ST16"]
    t = ChargerTracker(cp16, 3, clock, wall=lambda: wall, bounds=draw_bounds(site, cp16))
    bound = 32 * (1 + PLAUSIBLE_TOLERANCE) + PLAUSIBLE_MARGIN_A
    assert t.bounds.max_a == pytest.approx(bound)
    t.on_meter_values_16(mv16(1, 20.0, wall_iso(wall - 2)))
    t.on_meter_values_16(mv16(1, 9999.0, wall_iso(wall - 1)))
    assert t.draw_a == (20.0,) * 3, "9999 A rejected, the last plausible report kept"
    t.on_meter_values_16(mv16(1, bound + 0.5, wall_iso(wall)))
    assert t.draw_a == (20.0,) * 3
    t.on_meter_values_16(mv16(1, 34.0, wall_iso(wall)))  # a little above its 32 A: believed (it may overdraw)
    assert t.draw_a == (34.0,) * 3
    # a multi-connector station: one connector's implausible report leaves the other connector's draw alone
    st = ChargerTracker(st16, 3, clock, wall=lambda: wall, bounds=draw_bounds(site, st16))
    for conn in (1, 2):
        st.on_status_16({"connectorId": conn, "status": "Charging", "errorCode": "NoError"})
    st.on_meter_values_16(mv16(1, 10.0, wall_iso(wall)))
    st.on_meter_values_16(mv16(2, 12.0, wall_iso(wall)))
    st.on_meter_values_16(mv16(2, 9999.0, wall_iso(wall)))
    assert st.draw_a == (22.0,) * 3


def test_the_circuit_limit_bounds_a_draw_too(tmp_path: Path) -> None:
    """A 32 A charger on a 20 A circuit cannot draw 30 A: the breaker would have opened."""
    txt = site_text(tmp_path, None, chargers=CHARGERS).replace("limit_a = 200", "limit_a = 20", 1)
    site = site_from_text(txt.replace("failsafe_current_a = 6", "failsafe_current_a = 0"))
    assert site.circuits["p1"].limit_a == 20
    b = draw_bounds(site, site.chargers["CP16"])
    assert b.max_a == pytest.approx(20 * (1 + PLAUSIBLE_TOLERANCE) + PLAUSIBLE_MARGIN_A)
    dc = draw_bounds(site, site.chargers["DC1"])
    assert dc.max_w >= 50000 * (1 + PLAUSIBLE_TOLERANCE) and dc.max_w < 5e6
