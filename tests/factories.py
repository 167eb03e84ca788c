"""Builders for site configs and snapshots used across tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gateway.allocation import AllocatorState, allocate
from gateway.config import Site, site_from_dict
from gateway.model import (
    Allocation,
    BudgetCap,
    ChargerCap,
    ChargerSnapshot,
    ChargerState,
    MeterReading,
    Session,
    Snapshot,
)


def loopback_meters(panel: str = "p1") -> list[dict[str, Any]]:
    """The daemon and commissioning sites' two meters (a Janitza on the service, an Eastron on ``panel``) as
    ``sitesim.site.SiteSim`` points them at its simulators on loopback (port 1 is replaced)."""
    common = {"transport": "tcp", "host": "127.0.0.1", "port": 1, "poll_interval_s": 0.25, "timeout_s": 0.3,
              "stale_after_s": 1.5}
    return [{"id": "m-main", "circuit": "service", "map": "janitza_umg604", **common},
            {"id": "m-" + panel, "circuit": panel, "map": "eastron_sdm630", **common}]


def site_dict(
    *,
    phases: int = 3,
    limit_a: float = 100.0,
    margin_a: float = 0.0,
    voltage_ll_v: float = 400.0,
    circuits: list[dict[str, Any]] | None = None,
    chargers: list[dict[str, Any]] | None = None,
    meters: list[dict[str, Any]] | None = None,
    priorities: dict[str, float] | None = None,
    control: dict[str, Any] | None = None,
    worst_case_non_ev_a: float | None = 0.0,
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "site": {"id": "test-site"},
        "service": {
            "voltage_ll_v": voltage_ll_v,
            "phases": phases,
            "limit_a": limit_a,
            "margin_a": margin_a,
            "voltage_tolerance_pct": 0.0,
        },
        "circuits": circuits or [],
        "chargers": chargers or [],
        "meters": meters if meters is not None else [{"id": "m-main", "circuit": "service"}],
    }
    for m in d["meters"]:
        m.setdefault("host", "127.0.0.1")
        if phases == 1:
            m.setdefault("phase_map", ["L1"])
    if worst_case_non_ev_a is not None:
        d["service"]["worst_case_non_ev_a"] = worst_case_non_ev_a
    if priorities:
        d["priorities"] = {k: {"weight": v} for k, v in priorities.items()}
    if control:
        d["control"] = control
    return d


def ac(cid: str, circuit: str = "service", **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": cid,
        "kind": "ac",
        "circuit": circuit,
        "phases": 1,  # a three-phase service needs it explicit; pass phases=3 for a three-phase charger
        "max_current_a": 32.0,
        "failsafe_current_a": 0.0,
    }
    d.update(kw)
    return d


def dc(cid: str, circuit: str = "service", **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": cid,
        "kind": "dc",
        "circuit": circuit,
        "min_power_w": 10_000.0,
        "max_power_w": 150_000.0,
        "failsafe_power_w": 0.0,
        "efficiency": 1.0,
        "power_factor": 1.0,
    }
    d.update(kw)
    return d


def make_site(**kw: Any) -> Site:
    return site_from_dict(site_dict(**kw))


def charging(
    cid: str,
    draw_a: tuple[float, ...] | None = None,
    *,
    state: ChargerState = ChargerState.CHARGING,
    started_at: float = 0.0,
    online: bool = True,
    draw_w: float | None = None,
    noncompliant: bool = False,
    priority: str | None = None,
    departure_at: float | None = None,
) -> ChargerSnapshot:
    return ChargerSnapshot(
        id=cid,
        online=online,
        state=state,
        draw_a=draw_a,
        draw_w=draw_w,
        draw_at=None,  # snap() stamps it: measured when the snapshot is taken
        session=Session(started_at=started_at, priority=priority, departure_at=departure_at),
        noncompliant=noncompliant,
    )


def idle(cid: str) -> ChargerSnapshot:
    return ChargerSnapshot(id=cid, online=True, state=ChargerState.NO_EV)


def snap(
    now: float,
    chargers: list[ChargerSnapshot],
    meters: dict[str, tuple[float, ...] | MeterReading | None] | None = None,
    site_cap_a: float | None = None,
    caps: tuple[BudgetCap, ...] = (),
    charger_caps: Mapping[str, ChargerCap] | None = None,
) -> Snapshot:
    """``site_cap_a``: a remote cap named ``remote:test`` on every line."""
    ms: dict[str, MeterReading | None] = {}
    for mid, v in (meters or {}).items():
        if v is None or isinstance(v, MeterReading):
            ms[mid] = v
        else:
            ms[mid] = MeterReading(current_a=tuple(v), at=now)
    stamped = {
        c.id: (replace(c, draw_at=now) if c.draw_at is None and (c.draw_a or c.draw_w) is not None else c)
        for c in chargers
    }
    if site_cap_a is not None:
        caps = (*caps, BudgetCap("remote:test", (site_cap_a,) * 3))
    return Snapshot(taken_at=now, meters=ms, chargers=stamped, caps=caps, charger_caps=charger_caps or {})


# the allocator's state travels with the allocation it came with, so table tests read as one tick after another
_STATES: dict[int, tuple[Allocation, AllocatorState]] = {}


def alloc(snapshot: Snapshot, site: Site, previous: Allocation | None, now: float) -> Allocation:
    """``allocate`` with the state of the tick that returned ``previous`` (None: a fresh start)."""
    state = _STATES[id(previous)][1] if previous is not None and id(previous) in _STATES else None
    allocation, nxt = allocate(snapshot, site, state, now)
    if len(_STATES) > 10_000:
        _STATES.clear()
    _STATES[id(allocation)] = (allocation, nxt)
    return allocation
