"""Builders for site configs and snapshots used across tests."""

from __future__ import annotations

from typing import Any

from gateway.config import Site, site_from_dict
from gateway.model import ChargerSnapshot, ChargerState, MeterReading, Session, Snapshot


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
        draw_at=0.0,
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
) -> Snapshot:
    ms: dict[str, MeterReading | None] = {}
    for mid, v in (meters or {}).items():
        if v is None or isinstance(v, MeterReading):
            ms[mid] = v
        else:
            ms[mid] = MeterReading(current_a=tuple(v), at=now)
    return Snapshot(taken_at=now, meters=ms, chargers={c.id: c for c in chargers}, site_cap_a=site_cap_a)
