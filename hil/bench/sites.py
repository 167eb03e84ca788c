"""Synthetic sites for benchmarks: N chargers in a 4-level tree (service, transformers, panels, chargers)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Any

from gateway.config import Site, site_from_dict
from gateway.model import Allocation, ChargerSnapshot, ChargerState, MeterReading, Session, Snapshot


def tree_site_dict(
    n_chargers: int, *, per_panel: int = 10, panels_per_xfmr: int = 5, service_factor: float = 0.45
) -> dict[str, Any]:
    """A three-phase 400 V site: service -> transformers -> panels -> AC chargers (mixed 1- and 3-phase)."""
    n_panels = max(1, -(-n_chargers // per_panel))
    n_xfmr = max(1, -(-n_panels // panels_per_xfmr))
    circuits: list[dict[str, Any]] = []
    meters: list[dict[str, Any]] = [{"id": "m-main", "circuit": "service", "host": "127.0.0.1"}]
    for x in range(n_xfmr):
        circuits.append({"id": f"xf{x}", "kind": "transformer", "parent": "service",
                         "limit_a": 32.0 * per_panel * panels_per_xfmr * 0.6})
        meters.append({"id": f"m-xf{x}", "circuit": f"xf{x}", "host": "127.0.0.1"})
    for p in range(n_panels):
        circuits.append({"id": f"p{p}", "kind": "panel", "parent": f"xf{p // panels_per_xfmr}",
                         "limit_a": 32.0 * per_panel * 0.7})
    rot1 = ["L1", "L2", "L3"]
    chargers = []
    for i in range(n_chargers):
        three = i % 3 == 0
        chargers.append({
            "id": f"CP{i:04d}", "kind": "ac", "circuit": f"p{i // per_panel}",
            "phases": 3 if three else 1, "phase_rotation": "L1L2L3" if three else rot1[i % 3],
            "min_current_a": 6.0, "max_current_a": 32.0, "failsafe_current_a": 0.0,
            "priority": "fleet" if i % 4 == 0 else "guest",
        })
    return {
        "site": {"id": f"bench-{n_chargers}"},
        "service": {"voltage_ll_v": 400, "phases": 3, "limit_a": 32.0 * n_chargers * service_factor, "margin_a": 10.0,
                    "worst_case_non_ev_a": 0.0},
        "priorities": {"fleet": {"weight": 3.0}, "guest": {"weight": 1.0}},
        "circuits": circuits,
        "meters": meters,
        "chargers": chargers,
    }


def tree_site(n_chargers: int, service_factor: float = 0.45) -> Site:
    return site_from_dict(tree_site_dict(n_chargers, service_factor=service_factor))


def busy_snapshot(
    site: Site, now: float, rng: random.Random, *, base_load_a: float = 50.0, limits: Allocation | None = None
) -> Snapshot:
    """Most chargers charging with measured draws, meters reading a consistent site current. With the
    previous allocation, each EV draws within its limit, as a compliant EV does."""
    chargers = {cid: charger_snapshot(site, cid, now, rng, limits) for cid in site.chargers}
    return Snapshot(taken_at=now, meters=consistent_meters(site, chargers, now, base_load_a), chargers=chargers)


def next_snapshot(
    site: Site, now: float, rng: random.Random, before: Snapshot, limits: Allocation, last: Allocation | None,
    *, tick_s: float = 1.0, base_load_a: float = 50.0,
) -> tuple[Snapshot, int]:
    """The daemon's next snapshot after ``before`` (and how many charger snapshots are new objects): as
    gateway/ocpp_proxy/state.py does, a charger's ChargerSnapshot is the same object until something about it
    changes. Here a charger reports (a new draw, within its limit) on average every 10-60 s (its own period),
    and one whose limit changed last tick gets a new object with the same values (its actuation feedback
    changed; this snapshot carries none). The meters read afresh every tick."""
    chargers: dict[str, ChargerSnapshot] = {}
    new = 0
    for k, cid in enumerate(site.chargers):
        old = before.chargers[cid]
        period_s = 10.0 + 50.0 * ((k * 7919) % 1000) / 1000
        if rng.random() < tick_s / period_s:
            chargers[cid] = charger_snapshot(site, cid, now, rng, limits)
        elif last is not None and limits.limit_of(cid) != last.limit_of(cid):
            chargers[cid] = dataclasses.replace(old)
        else:
            chargers[cid] = old
            continue
        new += 1
    meters = consistent_meters(site, chargers, now, base_load_a)
    return Snapshot(taken_at=now, meters=meters, chargers=chargers), new


def charger_snapshot(
    site: Site, cid: str, now: float, rng: random.Random, limits: Allocation | None
) -> ChargerSnapshot:
    """One charger: no EV (10 %), charging with a random draw (80 %, within its limit when given), or suspended."""
    ch = site.chargers[cid]
    r = rng.random()
    if r < 0.1:
        return ChargerSnapshot(id=cid, online=True, state=ChargerState.NO_EV)
    state = ChargerState.CHARGING if r < 0.9 else ChargerState.SUSPENDED_EV
    draw = rng.uniform(6, 32) if state == ChargerState.CHARGING else 0.0
    if limits is not None and cid in limits.limits and limits.limits[cid].limit > 0:
        draw = min(draw, limits.limits[cid].line_a)
    per = [0.0] * site.service.phases
    for p in ch.line_phases:
        per[p] = draw
    return ChargerSnapshot(
        id=cid, online=True, state=state, draw_a=tuple(per), draw_at=now,
        session=Session(started_at=now - rng.uniform(0, 3600)),
    )


def consistent_meters(
    site: Site, chargers: Mapping[str, ChargerSnapshot], now: float, base_load_a: float
) -> dict[str, MeterReading]:
    """Every meter reading the base load plus the draws the chargers beneath report."""
    P = site.service.phases
    per_circuit = {cid: [base_load_a] * P for cid in site.circuits}
    for cid, cs in chargers.items():
        if cs.draw_a is None:
            continue
        ch = site.chargers[cid]
        for c in site.path_to_root[ch.circuit]:
            for p in ch.line_phases:
                per_circuit[c][p] += cs.draw_a[p]
    return {m.id: MeterReading(current_a=tuple(per_circuit[m.circuit]), at=now) for m in site.meters.values()}
