"""Step 1: which meters can be trusted; an untrusted meter puts its subtree in fail-safe."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.allocation.plan import Plan
from gateway.config import Site
from gateway.model import MeterReading


def meter_problem(reading: MeterReading | None, stale_after_s: float, now: float) -> str | None:
    """Why a meter reading cannot be trusted (``"stale"``, ``"invalid"``), or None when it can."""
    if reading is None:
        return "stale"
    if not reading.valid:
        return "invalid"
    if now - reading.at > stale_after_s or reading.at > now + 1.0:
        return "stale"
    if any(not math.isfinite(a) for a in reading.current_a):
        return "invalid"
    return None


@dataclass(frozen=True)
class Trust:
    readings: Mapping[str, MeterReading]  # metered circuit -> its trusted reading
    failsafe_reason: Mapping[int, str]  # charger index -> "failsafe:<meter>-<problem>" (nearest meter)
    circuit_state: Mapping[str, str]  # "ok" | "unmetered" | "<problem>:<meter>" | "failsafe:<meter>"
    failsafe_meters: tuple[str, ...]
    # charger index -> the nearest meter whose reading is trusted but late (older than a poll and a tick): no
    # increase beneath it until it reads again (a reading that stopped moving must not make room)
    aging: Mapping[int, str]


def trust(site: Site, plan: Plan, meters: Mapping[str, MeterReading | None], now: float) -> Trust:
    P = plan.n_phases
    failsafe_reason: dict[int, str] = {}
    aging: dict[int, str] = {}
    state = dict(plan.circuit_states)
    bad: list[str] = []
    usable: dict[str, MeterReading] = {}
    late = site.control.tick_s
    for mid, circuit, stale_after_s, poll_s in plan.meter_order:  # deepest first: the nearest meter is named
        reading = meters.get(mid)
        problem = meter_problem(reading, stale_after_s, now)
        if problem is None and reading is not None and len(reading.current_a) >= P:
            usable[circuit] = reading
            if now - reading.at > poll_s + late:
                for i in plan.subtree_chargers[circuit].tolist():
                    aging.setdefault(i, mid)
            continue
        problem = problem or "invalid"
        bad.append(mid)
        state[circuit] = f"{problem}:{mid}"
        for sub in plan.subtree_circuits[circuit]:
            if sub != circuit and not state[sub].startswith(("stale:", "invalid:")):
                state[sub] = f"failsafe:{mid}"
        for i in plan.subtree_chargers[circuit].tolist():
            failsafe_reason.setdefault(i, f"failsafe:{mid}-{problem}")
    return Trust(usable, failsafe_reason, state, tuple(bad), aging)


def mode_of(site: Site, failsafe_meters: tuple[str, ...]) -> str:
    root_meter = site.circuits[site.root].meter
    if root_meter is not None and root_meter in failsafe_meters:
        return "failsafe"
    return "partial-failsafe" if failsafe_meters else "normal"
