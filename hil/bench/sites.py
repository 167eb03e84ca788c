"""Synthetic sites for benchmarks: N chargers in a 4-level tree (service, transformers, panels, chargers)."""

from __future__ import annotations

import random
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
    P = site.service.phases
    chargers: dict[str, ChargerSnapshot] = {}
    per_circuit = {cid: [base_load_a] * P for cid in site.circuits}
    for cid, ch in site.chargers.items():
        r = rng.random()
        if r < 0.1:
            chargers[cid] = ChargerSnapshot(id=cid, online=True, state=ChargerState.NO_EV)
            continue
        state = ChargerState.CHARGING if r < 0.9 else ChargerState.SUSPENDED_EV
        draw = rng.uniform(6, 32) if state == ChargerState.CHARGING else 0.0
        if limits is not None and cid in limits.limits and limits.limits[cid].limit > 0:
            draw = min(draw, limits.limits[cid].line_a)
        per = [0.0] * P
        for p in ch.line_phases:
            per[p] = draw
        for c in site.path_to_root[ch.circuit]:
            for p in ch.line_phases:
                per_circuit[c][p] += draw
        chargers[cid] = ChargerSnapshot(
            id=cid, online=True, state=state, draw_a=tuple(per), draw_at=now,
            session=Session(started_at=now - rng.uniform(0, 3600)),
        )
    meters = {
        m.id: MeterReading(current_a=tuple(per_circuit[m.circuit]), at=now) for m in site.meters.values()
    }
    return Snapshot(taken_at=now, meters=meters, chargers=chargers)
