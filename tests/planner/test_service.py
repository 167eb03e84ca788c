"""The planner service in the loop: sessions from the snapshot and every needs source, targets into the tick."""

from __future__ import annotations

import json

from gateway.config import Site, site_from_dict
from gateway.model import ChargerSnapshot, ChargerState, Session, Snapshot
from gateway.planner.config import Default, PlannerSettings
from gateway.planner.needs import Needs
from gateway.planner.service import PlannerService
from tests.factories import ac, site_dict

WALL0 = 1768327200.0  # 2026-01-13 18:00 UTC; the monotonic clock reads 1000 then


def _site() -> Site:
    return site_from_dict(site_dict(limit_a=40.0, chargers=[ac(c, phases=3) for c in ("A", "B", "C")],
                                    priorities={"fleet": 1.0}))


def _snap(now: float) -> Snapshot:
    def cs(cid: str, token: str | None) -> ChargerSnapshot:
        return ChargerSnapshot(id=cid, online=True, state=ChargerState.CHARGING,
                               session=Session(started_at=900.0, id_token=token, energy_wh=5000.0,
                                               energy_at=1000.0))

    return Snapshot(taken_at=now, meters={}, chargers={"A": cs("A", None), "B": cs("B", "T1"),
                                                       "C": ChargerSnapshot(id="C", online=True)})


def test_sessions_from_every_source() -> None:
    site = _site()
    settings = PlannerSettings(enabled=True, classes={"fleet": Default(300, 60_000.0, expect_vehicles=True)})
    tracked = {"A": Needs(30_000.0, None, "iso15118")}
    svc = PlannerService(site, settings, needs_of=tracked.get, wall=lambda: WALL0)
    try:
        # B's driver tells the departure over MQTT: 06:00 UTC
        reply = svc.command(json.dumps({"charger": "B", "departure": "2026-01-14T06:00:00Z", "energy_kwh": 40,
                                        "ts": "2026-01-13T18:00:00Z"}).encode(), require_ts=True)
        assert reply["ok"] is True
        bad = svc.command(b'{"charger": "B", "energy_kwh": 40}', require_ts=True)
        assert bad["ok"] is False and "ts is required" in str(bad["reason"])
        by = {s.charger_id: s for s in svc.sessions(_snap(1000.0), 1000.0)}
        # A: the EV's energy, the class's 05:00 departure (11 h after 18:00: 1000 + 39600 on the monotonic clock)
        assert by["A"].need_wh == 30_000.0 - 5000.0 and by["A"].departure_at == 1000.0 + 11 * 3600.0
        assert by["B"].need_wh == 40_000.0 - 5000.0 and by["B"].departure_at == 1000.0 + 12 * 3600.0
        assert by["C"].expected and by["C"].need_wh == 60_000.0  # a free fleet charger expects its van
    finally:
        svc.close()


def test_disabled_or_unknown_gives_no_targets() -> None:
    site = _site()
    svc = PlannerService(site, PlannerSettings(enabled=False), wall=lambda: WALL0)
    try:
        assert svc.targets(_snap(1000.0), None, 1000.0) == {}
    finally:
        svc.close()
    svc = PlannerService(site, PlannerSettings(enabled=True), wall=lambda: WALL0)
    try:
        ss = svc.sessions(_snap(1000.0), 1000.0)
        assert all(s.need_wh is None for s in ss)  # nothing known: today's behaviour
    finally:
        svc.close()


def test_the_evs_own_maximum_reaches_the_plan() -> None:
    """An ISO 15118 EV's EVMaxCurrent (16 A) and phases: the planned session carries them."""
    from gateway.model import Snapshot
    from gateway.planner.config import PlannerSettings
    from gateway.planner.needs import Needs as _Needs
    from gateway.planner.service import PlannerService
    from tests.factories import ac, charging, make_site

    site = make_site(chargers=[ac("A", phases=3)])
    snap = Snapshot(taken_at=100.0, meters={}, chargers={"A": charging("A")})
    started = snap.chargers["A"].session
    assert started is not None
    svc = PlannerService(site, PlannerSettings(enabled=True), wall=lambda: 1000.0,
                         needs_of=lambda _cid: _Needs(10_000.0, 5000.0, "iso15118", ev_max_a=16.0, ac_phases=3))
    try:
        (s,) = svc.sessions(snap, 100.0)
        assert s.ev_max_a == 16.0 and s.ac_phases == 3 and s.need_wh is not None and s.need_wh > 0
    finally:
        svc.close()


def test_the_need_falls_with_the_energy_measured() -> None:
    """Before the charger reports its energy register, the session's energy is the measured power over time: 11 kW
    for an hour takes 11 kWh off a 20 kWh need; nothing more while it draws nothing."""
    import dataclasses

    import pytest

    from gateway.model import ChargerState, Snapshot
    from gateway.planner.config import PlannerSettings
    from gateway.planner.needs import Needs as _Needs
    from gateway.planner.service import PlannerService
    from tests.factories import ac, charging, make_site

    site = make_site(chargers=[ac("A", phases=3)])
    cs = dataclasses.replace(charging("A"), draw_w=11_000.0)
    svc = PlannerService(site, PlannerSettings(enabled=True), wall=lambda: 1000.0,
                         needs_of=lambda _cid: _Needs(20_000.0, 90_000.0, "iso15118"))
    try:
        (s0,) = svc.sessions(Snapshot(taken_at=0.0, meters={}, chargers={"A": cs}), 0.0)
        (s1,) = svc.sessions(Snapshot(taken_at=3600.0, meters={}, chargers={"A": cs}), 3600.0)
        assert s0.need_wh == 20_000.0 and s1.need_wh == pytest.approx(9_000.0)
        idle = dataclasses.replace(cs, state=ChargerState.SUSPENDED_EVSE, draw_w=0.0)
        (s2,) = svc.sessions(Snapshot(taken_at=7200.0, meters={}, chargers={"A": idle}), 7200.0)
        assert s2.need_wh == pytest.approx(9_000.0)
    finally:
        svc.close()


def test_the_reported_energy_counts_and_the_integral_only_since_it() -> None:
    """The charger's energy report (Session.energy_wh at energy_at) replaces the integral of the measured power,
    which then counts only from the report's time: a taper the 11 kW reading missed does not run the estimate
    ahead of the energy the EV really got."""
    import dataclasses

    import pytest

    from gateway.model import Snapshot
    from gateway.planner.config import PlannerSettings
    from gateway.planner.needs import Needs as _Needs
    from gateway.planner.service import PlannerService
    from tests.factories import ac, charging, make_site

    site = make_site(chargers=[ac("A", phases=3)])
    cs = dataclasses.replace(charging("A"), draw_w=11_000.0)
    assert cs.session is not None
    svc = PlannerService(site, PlannerSettings(enabled=True), wall=lambda: 1000.0,
                         needs_of=lambda _cid: _Needs(30_000.0, 90_000.0, "iso15118"))
    try:
        def need(c: object, now: float) -> float:
            (s,) = svc.sessions(Snapshot(taken_at=now, meters={}, chargers={"A": c}), now)  # type: ignore[dict-item]
            assert s.need_wh is not None
            return s.need_wh

        assert need(cs, 0.0) == 30_000.0
        assert need(cs, 3600.0) == pytest.approx(19_000.0)  # no report yet: 11 kWh integrated
        # the charger reports 8 kWh as of 3000 s (the EV tapered): 8 kWh plus 11 kW over the 600 s since
        rep = dataclasses.replace(cs, session=dataclasses.replace(cs.session, energy_wh=8_000.0, energy_at=3000.0))
        assert need(rep, 3600.0) == pytest.approx(30_000.0 - 8_000.0 - 11_000.0 * 600 / 3600)
        # the same report again, an hour on: the integral goes on from the last tick, not from the report twice
        assert need(rep, 7200.0) == pytest.approx(30_000.0 - 8_000.0 - 11_000.0 * 4200 / 3600)
    finally:
        svc.close()
