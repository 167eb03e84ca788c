"""The limit leases across a restart: what a charger may still hold from the gateway's earlier life is persisted,
restored by the next life, and kept reserved (offline too) until it lapses."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.allocation import AllocatorState, allocate
from gateway.config import Site, site_from_dict
from gateway.errors import StoreError
from gateway.model import Allocation
from gateway.ocpp_proxy.controller import OcppController
from gateway.ocpp_proxy.leases import LeaseKeeper
from gateway.ocpp_proxy.limits import ACCEPTED
from gateway.ocpp_proxy.store import Lease, Store
from tests.factories import ac, charging, site_dict, snap

LEASE_S = 120.0  # the default lease
RESP_S = 10.0


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _site(state_dir: Path) -> Site:
    # 40 A service, two three-phase 32 A chargers with a 6 A fail-safe limit
    d = site_dict(limit_a=40, chargers=[ac("A", phases=3, failsafe_current_a=6), ac("B", phases=3)],
                  control={"ramp_up_a_per_s": 1000.0, "hysteresis_a": 0.0, "ev_response_s": RESP_S})
    d["site"]["state_dir"] = str(state_dir)
    return site_from_dict(d)


def test_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ocpp.sqlite"
    s = Store(path)
    try:
        assert s.leases() == {}
        s.put_lease("A", Lease(32.0, 1_800_000_000.5, False))
        s.put_lease("B", Lease(16.0, 1_800_000_100.0, True))
        s.put_lease("A", Lease(20.0, 1_800_000_200.0, True)).result(timeout=5)  # the newest record wins
    finally:
        s.close()
    s = Store(path)
    try:
        assert s.leases() == {"A": Lease(20.0, 1_800_000_200.0, True), "B": Lease(16.0, 1_800_000_100.0, True)}
    finally:
        s.close()


async def test_the_bound_is_written_on_send_and_a_decrease_only_after_the_response(tmp_path: Path) -> None:
    clock = FakeClock(500.0)
    ctrl = OcppController(_site(tmp_path), clock=clock)
    try:
        ctrl.leases = keeper = LeaseKeeper(ctrl.store, clock, lease_s=LEASE_S, ev_response_s=0.2)
        ls = ctrl.limit_state("A")
        clock.t += 5.0  # the first start's bound (its maximum until 620) is not persisted: this one is
        wall = time.time()
        ls.queued("m1", 32.0, clock.t, clock.t + LEASE_S)  # sent: the bound before any answer
        await asyncio.sleep(0)  # written in one batch at the end of the loop iteration
        ctrl.store.flush()
        got = ctrl.store.leases()["A"]
        assert got.limit == 32.0 and abs(got.until_wall - (wall + LEASE_S)) < 2.0 and not got.failsafe
        ls.failsafe_answered(True)
        ls.answered("m1", 32.0, clock.t, clock.t + LEASE_S, ACCEPTED, clock.t)
        clock.t += 30.0
        wall = time.time()  # (the fake clock moved, the wall clock did not)
        ls.queued("m2", 16.0, clock.t, clock.t + LEASE_S)  # a decrease sent: 32 A still bounds it, a lease longer
        await asyncio.sleep(0)
        ctrl.store.flush()
        got = ctrl.store.leases()["A"]
        assert got.limit == 32.0 and got.failsafe and abs(got.until_wall - (wall + LEASE_S)) < 2.0
        ls.answered("m2", 16.0, clock.t, clock.t + LEASE_S, ACCEPTED, clock.t)  # landed: the EV follows it
        ctrl.store.flush()
        assert ctrl.store.leases()["A"].limit == 32.0, "the EV may draw 32 A for a response yet"
        clock.t += 0.3  # the EV's response is over
        await asyncio.sleep(0.4)
        ctrl.store.flush()
        assert ctrl.store.leases()["A"].limit == 16.0
        assert keeper is ctrl.leases
    finally:
        ctrl.store.close()


def _tick(site: Site, ctrl: OcppController, now: float, state: AllocatorState | None) -> tuple[Allocation,
                                                                                             AllocatorState]:
    a_snap = ctrl.snapshot()["A"]  # offline: never connected in this life
    b = replace(charging("B", (0.0,) * 3), actuation=None)
    s = snap(now, [replace(charging("A", online=False), actuation=a_snap.actuation), b], {"m-main": (0.0,) * 3})
    return allocate(s, site, state, now)


def test_a_restored_lease_on_an_offline_charger_stays_reserved_until_it_lapses(tmp_path: Path) -> None:
    site = _site(tmp_path)
    # the earlier life: A holds 32 A for 60 s more (wall clock)
    s = Store(tmp_path / "ocpp.sqlite")
    s.put_lease("A", Lease(32.0, time.time() + 60.0, True)).result(timeout=5)
    s.close()
    clock = FakeClock(7000.0)  # the new life's monotonic clock has nothing to do with the old one's
    ctrl = OcppController(site, clock=clock)
    try:
        act = ctrl.snapshot()["A"].actuation
        assert act is not None and not act.controlled and act.accepted_limit == 32.0 and act.failsafe_installed
        assert act.lease_until is not None and abs(act.lease_until - (7000.0 + 60.0)) < 2.0
        lapse = act.lease_until + RESP_S
        state: AllocatorState | None = None
        seen = []
        for t in (7000.0, 7030.0, lapse - 1.0, lapse + 1.0, lapse + 30.0):
            clock.t = t
            a, state = _tick(site, ctrl, t, state)
            seen.append(a.limits["A"].may_draw_a)
            assert a.circuits["service"].allocated_a[0] <= 40.0 + 1e-9
            if t < lapse:
                assert a.limits["B"].limit <= 8.0 + 1e-9, "B only gets what A's old 32 A lease leaves"
        assert seen == [32.0, 32.0, 32.0, 6.0, 6.0]  # the old lease, then the fail-safe
    finally:
        ctrl.store.close()


def test_a_charger_without_a_record_may_hold_its_maximum_for_a_lease(tmp_path: Path) -> None:
    site = _site(tmp_path)
    clock = FakeClock(100.0)
    ctrl = OcppController(site, clock=clock)
    try:
        act = ctrl.snapshot()["A"].actuation
        assert act is not None and act.accepted_limit == 32.0 and act.lease_until == 100.0 + site.ocpp.lease_s
        assert not act.failsafe_installed
        a, _ = _tick(site, ctrl, 100.0, None)
        assert a.limits["A"].may_draw_a == 32.0
    finally:
        ctrl.store.close()


async def test_a_frame_waits_for_its_record_and_a_failed_commit_holds_it(tmp_path: Path) -> None:
    """``durable``: None once the record on disk covers a frame; else the commit that will, which fails when the
    disk does (the frame must not go) and is tried again."""
    clock = FakeClock(500.0)
    ctrl = OcppController(_site(tmp_path), clock=clock)
    store = ctrl.store
    try:
        ctrl.leases = keeper = LeaseKeeper(store, clock, lease_s=LEASE_S, ev_response_s=RESP_S,
                                           wall=lambda: clock.t + 1.7e9)
        ls = ctrl.limit_state("A")
        clock.t += 5.0
        until = clock.t + LEASE_S
        ls.reserve(20.0, until, clock.t)
        first = keeper.durable("A", ls, 20.0, until)
        assert first is not None and not first.done(), "a bound never written: the frame waits for its commit"
        await asyncio.wait_for(asyncio.shield(first), 5)
        assert keeper.durable("A", ls, 20.0, until) is None, "committed: it covers the frame"
        assert keeper.durable("A", ls, 20.0, until + 1.0) is not None, "a longer lease is not covered yet"
        real = store.put_leases
        calls = []

        def broken(leases: Any) -> concurrent.futures.Future[None]:
            calls.append(dict(leases))
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()
            fut.set_exception(StoreError("disk I/O error"))
            return fut

        store.put_leases = broken  # type: ignore[method-assign]
        clock.t += 1.0
        until = clock.t + LEASE_S
        ls.reserve(32.0, until, clock.t)
        held = keeper.durable("A", ls, 32.0, until)
        assert held is not None
        with pytest.raises(StoreError):
            await held
        assert calls and calls[0]["A"].limit == 32.0
        assert keeper.durable("A", ls, 32.0, until) is not None, "still not covered: the frame waits again"
        store.put_leases = real  # type: ignore[method-assign]
        again = keeper.durable("A", ls, 32.0, until)
        assert again is not None
        await again
        assert keeper.durable("A", ls, 32.0, until) is None and store.leases()["A"].limit == 32.0
    finally:
        store.close()
