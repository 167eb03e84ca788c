"""The headroom allocator: a pure function of frozen values, with its memory as explicit state.

``allocate(snapshot, site, state, now) -> (Allocation, AllocatorState)`` does no IO and reads no clock.

The invariant it keeps, over time and not per snapshot: for every circuit and phase, at every instant,
the current each charger beneath may legitimately draw at that instant (its new limit; while it follows a
decrease, its earlier limit for ``ev_response_s`` after it accepted the decrease; while a limit is pending
or unconfirmed, the higher of the accepted and the pending one; offline or uncontrolled, its leased limit
until the lease lapses and its fail-safe limit after that) plus the non-EV estimate stays within
limit - margin. Increases come only out of capacity that no such reserve holds; decreases pass at once. A
decrease being followed holds its room only until its window ends, so where the reserves overfill a circuit
an increase inside a charger's own earlier limit is gated too (``finalize.gate``). The only overloads
allowed follow an external load step, for at most a tick plus the chargers' response.

The steps, each a module:

1. ``trust``: an unknown, invalid or stale meter puts its subtree in fail-safe: each charger beneath gets
   min(its limit, its fail-safe limit), never more (evcc's ``overloadOnError``).
2. ``classify``: each charger's reserve from its actuation feedback (``reserve``), its usable draw (a report
   measured before its last state change or before it followed its last decrease, or too old, never makes
   room), and the bounds of every active session (minimum per active connector, maximum, the EV's draw plus
   an allowance, the ramp).
3. ``headroom``: limit - margin - non-EV estimate (measured - usable EV draws; a rise believed at once, a
   fall after a drop of the measured current only once every subtracted draw was measured after the drop),
   the service's lowered by the budget caps (gateway.budget: remote, demand window, tariff).
4. ``minimums``: minimum or 0; the lowest priority pauses first, equals take turns (rotation).
5. ``fill``: priority-weighted max-min fairness by progressive filling.
6. ``finalize``: floor, hysteresis, reasons, the in-flight gate, the next state.

All arithmetic runs in line current per phase (A); DC power converts through the charger's efficiency,
power factor and the service voltage less its tolerance (``Site.to_line_a``).

Every step works on arrays over the plan's chargers (numpy), not charger by charger: ``plan`` derives the
site's per-charger figures once per Site object, ``inputs`` reads the snapshot once per field, and the
memory between ticks stays in arrays (``state.Memory``; ``AllocatorState.chargers`` shows it per charger).
tests/test_allocation_equivalence.py holds the results to those of the per-charger version it replaced.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.allocation.classify import classify
from gateway.allocation.fill import fill
from gateway.allocation.finalize import gate, propose, remember
from gateway.allocation.headroom import Headroom, headroom
from gateway.allocation.minimums import pause
from gateway.allocation.plan import FloatArray, Plan, plan_of
from gateway.allocation.state import AllocatorState, ChargerMemory, CircuitMemory, MemoryView, RowsView
from gateway.allocation.targets import fill_toward, with_hold_caps
from gateway.allocation.trust import Trust, meter_problem, mode_of, trust
from gateway.config import Site
from gateway.model import Allocation, CircuitStatus, Snapshot

__all__ = ["AllocatorState", "ChargerMemory", "CircuitMemory", "allocate", "meter_problem"]


def allocate(
    snapshot: Snapshot, site: Site, state: AllocatorState | None, now: float
) -> tuple[Allocation, AllocatorState]:
    state = state if state is not None else AllocatorState()
    plan = plan_of(site)
    snapshot = with_hold_caps(snapshot, site)  # the planner's held targets are charger caps (targets.py)
    t = trust(site, plan, snapshot.meters, now)
    c = classify(snapshot, site, plan, state, t.failsafe_reason, now, t.aging, t.readings)
    h = headroom(site, plan, c, t.readings, state.circuits, snapshot.caps, now)
    room = h.cap - h.non_ev - plan.per_constraint(c.fixed)
    paused = pause(plan, c, room, site.control.rotation_period_s, now)
    grow = c.is_active.copy()
    grow[list(paused)] = False
    # the planner's targets first where it has any (targets.py), else the filling alone
    x, frozen_by = fill_toward(plan, grow, c.lo, c.hi, c.weight, room, snapshot, c.hi_reason, fill)
    propose(site, plan, c, x, frozen_by, paused, h.binding_name)
    gate(plan, c, h.cap, h.non_ev)
    limits, memory, may = remember(site, plan, c, now, state)
    allocation = Allocation(
        at=now,
        limits=limits,
        circuits=_circuits(site, plan, t, h, may),
        mode=mode_of(site, t.failsafe_meters),
        failsafe_meters=t.failsafe_meters,
    )
    return allocation, AllocatorState(now, MemoryView(memory), h.memory, memory, plan, c.inp, limits, may)


def _circuits(site: Site, plan: Plan, t: Trust, h: Headroom, may: FloatArray) -> Mapping[str, CircuitStatus]:
    """Every circuit's status (121 of them at 1000 chargers), each made when first read (``CircuitsView``):
    the loop reads the root's, telemetry and the web page read them all, off the loop."""
    P, ids = plan.n_phases, plan.circuit_ids
    if not P:
        return {cid: CircuitStatus(site.circuits[cid].limit_a, h.measured.get(cid), (), (), (), t.circuit_state[cid])
                for cid in ids}
    # limit, non-EV, headroom, allocated: per constraint (the limit per circuit); copies, never written
    columns = (h.cap[::P] + plan.margin, h.non_ev.copy(), h.cap - h.non_ev, plan.per_constraint(may))
    return CircuitsView(plan, columns, h.measured, t.circuit_state)


class CircuitsView(RowsView[CircuitStatus]):
    """Circuit id -> CircuitStatus, each made from the tick's columns on first access (then kept)."""

    def __init__(self, plan: Plan, columns: tuple[FloatArray, FloatArray, FloatArray, FloatArray],
                 measured: Mapping[str, tuple[float, ...]], state: Mapping[str, str]) -> None:
        super().__init__(plan.circuit_ids, plan.circuit_index)
        self._P, self._columns, self._measured, self._state = plan.n_phases, columns, measured, state

    def _make(self, j: int) -> CircuitStatus:
        cid, P = self._ids[j], self._P
        limit, non_ev, head, allocated = self._columns
        return CircuitStatus(
            float(limit[j]), self._measured.get(cid), tuple(non_ev[j * P:(j + 1) * P].tolist()),
            tuple(head[j * P:(j + 1) * P].tolist()), tuple(allocated[j * P:(j + 1) * P].tolist()), self._state[cid])

    def __repr__(self) -> str:
        return f"CircuitsView({dict(self.items())!r})"
