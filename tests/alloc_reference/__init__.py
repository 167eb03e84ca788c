"""A FROZEN REFERENCE: gateway/allocation as of commit cefe4dc, imports rewritten to this package.

Do not edit (tests/test_allocation_equivalence.py compares the allocator with it), except to carry a change
of behaviour made in the allocator too, each listed here:

* finalize.gate: where the reserves overfill a constraint, the increases over the accepted limits are scaled
  so that sum(granted - base) <= sum(reserve - base) + free (2026-12-02).

The original docstring:

The headroom allocator: a pure function of frozen values, with its memory as explicit state.

``allocate(snapshot, site, state, now) -> (Allocation, AllocatorState)`` does no IO and reads no clock.

The invariant it keeps, over time and not per snapshot: for every circuit and phase, at every instant,
the current each charger beneath may legitimately draw at that instant (its new limit; while it follows a
decrease, its earlier limit for ``ev_response_s`` after it accepted the decrease; while a limit is pending
or unconfirmed, the higher of the accepted and the pending one; offline or uncontrolled, its leased limit
until the lease lapses and its fail-safe limit after that) plus the non-EV estimate stays within
limit - margin. Increases come only out of capacity that no such reserve holds; decreases pass at once. The
only overloads allowed follow an external load step, for at most a tick plus the chargers' response.

The steps, each a module:

1. ``trust``: an unknown, invalid or stale meter puts its subtree in fail-safe: each charger beneath gets
   min(its limit, its fail-safe limit), never more (evcc's ``overloadOnError``).
2. ``classify``: each charger's reserve from its actuation feedback (``reserve``), its usable draw (a report
   measured before its last state change or before it followed its last decrease, or too old, never makes
   room), and the bounds of every active session (minimum per active connector, maximum, the EV's draw plus
   an allowance, the ramp).
3. ``headroom``: limit - margin - non-EV estimate (measured - usable EV draws; a rise believed at once, a
   fall after a drop of the measured current only once every subtracted draw was measured after the drop),
   lowered by a site cap.
4. ``minimums``: minimum or 0; the lowest priority pauses first, equals take turns (rotation).
5. ``fill``: priority-weighted max-min fairness by progressive filling.
6. ``finalize``: floor, hysteresis, reasons, the in-flight gate, the next state.

All arithmetic runs in line current per phase (A); DC power converts through the charger's efficiency,
power factor and the service voltage less its tolerance (``Site.to_line_a``).
"""

from __future__ import annotations

import numpy as np

from gateway.config import Site
from gateway.model import Allocation, ChargerLimit, CircuitStatus, Snapshot
from tests.alloc_reference.classify import classify
from tests.alloc_reference.fill import fill
from tests.alloc_reference.finalize import gate, propose, remember
from tests.alloc_reference.headroom import Headroom, headroom
from tests.alloc_reference.minimums import pause
from tests.alloc_reference.plan import Plan, plan_of
from tests.alloc_reference.state import AllocatorState, ChargerMemory, CircuitMemory
from tests.alloc_reference.trust import Trust, meter_problem, mode_of, trust

__all__ = ["AllocatorState", "ChargerMemory", "CircuitMemory", "allocate", "meter_problem"]


def allocate(
    snapshot: Snapshot, site: Site, state: AllocatorState | None, now: float
) -> tuple[Allocation, AllocatorState]:
    state = state if state is not None else AllocatorState()
    plan = plan_of(site)
    t = trust(site, plan, snapshot.meters, now)
    c = classify(snapshot, site, plan, state, t.failsafe_reason, now, t.aging, t.readings)
    # the reference predates budget caps: it took one remote cap on every phase (the test gives only such caps)
    site_cap_a = min((min(bc.limit_a) for bc in snapshot.caps), default=None)
    h = headroom(site, plan, c, t.readings, state.circuits, site_cap_a, now)
    room = h.cap - h.non_ev - plan.per_constraint(np.array(c.fixed, dtype=np.float64))
    paused = pause(plan, c, room, snapshot.chargers, site.control.rotation_period_s, now)
    n = len(plan.ids)
    grow = np.zeros(n, dtype=bool)
    grow[[i for i in c.active if i not in paused]] = True
    x, frozen_by = fill(
        plan, grow, np.array(c.lo, dtype=np.float64), np.array(c.hi, dtype=np.float64),
        np.array(c.weight, dtype=np.float64), room,
    )
    propose(site, plan, c, x, frozen_by, paused, h.binding_name, state)
    gate(plan, c, h.cap, h.non_ev)
    limits, memory = remember(site, plan, c, snapshot, state, now)
    allocation = Allocation(
        at=now,
        limits=limits,
        circuits=_circuits(site, plan, t, h, limits),
        mode=mode_of(site, t.failsafe_meters),
        failsafe_meters=t.failsafe_meters,
    )
    return allocation, AllocatorState(at=now, chargers=memory, circuits=h.memory)


def _circuits(
    site: Site, plan: Plan, t: Trust, h: Headroom, limits: dict[str, ChargerLimit]
) -> dict[str, CircuitStatus]:
    P = plan.n_phases
    may = np.array([limits[cid].may_draw_a for cid in plan.ids], dtype=np.float64)
    alloc_k = plan.per_constraint(may) if len(plan.ids) else np.zeros(plan.n_constraints)
    head = h.cap - h.non_ev
    out: dict[str, CircuitStatus] = {}
    for j, cid in enumerate(plan.circuit_ids):
        sl = slice(j * P, (j + 1) * P)
        out[cid] = CircuitStatus(
            limit_a=float(h.cap[j * P] + site.circuits[cid].margin_a) if P else site.circuits[cid].limit_a,
            measured_a=h.measured.get(cid),
            non_ev_a=tuple(float(v) for v in h.non_ev[sl]),
            headroom_a=tuple(float(v) for v in head[sl]),
            allocated_a=tuple(float(v) for v in alloc_k[sl]),
            state=t.circuit_state[cid],
        )
    return out
