"""The snapshot's chargers as arrays over the plan's chargers (one pass per field; NaN stands for None)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.allocation.plan import FloatArray, IntArray, Plan
from gateway.allocation.state import BoolArray
from gateway.model import ChargerSnapshot, ChargerState, Snapshot

STATES = tuple(ChargerState)
_CODE = {s: k for k, s in enumerate(STATES)}
NO_EV, CHARGING, SUSPENDED_EV = (_CODE[s] for s in (ChargerState.NO_EV, ChargerState.CHARGING,
                                                    ChargerState.SUSPENDED_EV))
HAS_SESSION = np.array([s.has_session for s in STATES], dtype=bool)
IDLE_REASON = np.array(["idle:no-ev" if s == ChargerState.NO_EV else f"idle:{s.value}" for s in STATES],
                       dtype=object)


@dataclass
class Inputs:
    snaps: list[ChargerSnapshot]  # an offline stand-in for a charger the snapshot lacks
    online: BoolArray
    noncompliant: BoolArray
    state: IntArray  # index in STATES
    active_connectors: FloatArray
    draw_at: FloatArray
    state_changed_at: FloatArray
    raw: FloatArray  # (chargers, phases): the reported draw in line A per site phase (``measured``)
    has_raw: BoolArray
    started_at: FloatArray  # of the session
    has_act: BoolArray  # actuation feedback (the other actuation fields are False / NaN without)
    controlled: BoolArray
    failsafe_installed: BoolArray
    accepted_limit: FloatArray
    accepted_at: FloatArray
    pending_limit: FloatArray
    rejected_at: FloatArray
    lease_until: FloatArray


def inputs(snapshot: Snapshot, plan: Plan) -> Inputs:
    offline = ChargerSnapshot(id="", online=False)
    get = snapshot.chargers.get
    snaps = [get(cid, offline) for cid in plan.ids]
    n = len(snaps)
    sessions = [cs.session for cs in snaps]
    acts = [cs.actuation for cs in snaps]
    has_act = np.array([a is not None for a in acts], dtype=bool).reshape(n)
    raw, has_raw = measured(plan, snaps)

    def floats(values: list[float | None]) -> FloatArray:
        return np.array(values, dtype=np.float64).reshape(n)

    def flags(values: list[bool]) -> BoolArray:
        return np.array(values, dtype=bool).reshape(n)

    def act_floats(name: str) -> FloatArray:
        return floats([getattr(a, name) if a is not None else None for a in acts]) if has_act.any() else np.full(
            n, np.nan)

    def act_flags(name: str) -> BoolArray:
        return flags([bool(getattr(a, name)) if a is not None else False for a in acts]) if has_act.any() else (
            np.zeros(n, dtype=bool))

    return Inputs(
        snaps=snaps,
        online=flags([cs.online for cs in snaps]),
        noncompliant=flags([cs.noncompliant for cs in snaps]),
        state=np.array([_CODE[cs.state] for cs in snaps], dtype=np.intp).reshape(n),
        active_connectors=floats([cs.active_connectors for cs in snaps]),
        draw_at=floats([cs.draw_at for cs in snaps]),
        state_changed_at=floats([cs.state_changed_at for cs in snaps]),
        raw=raw,
        has_raw=has_raw,
        started_at=floats([s.started_at if s is not None else None for s in sessions]),
        has_act=has_act,
        controlled=act_flags("controlled"),
        failsafe_installed=act_flags("failsafe_installed"),
        accepted_limit=act_floats("accepted_limit"),
        accepted_at=act_floats("accepted_at"),
        pending_limit=act_floats("pending_limit"),
        rejected_at=act_floats("rejected_at"),
        lease_until=act_floats("lease_until"),
    )


def measured(plan: Plan, snaps: list[ChargerSnapshot]) -> tuple[FloatArray, BoolArray]:
    """Reported line current per site phase (A), the station's total, and whether it reported one: an AC
    charger's currents on its lines (a line-to-line one: the higher in both), else a power turned into the
    least line current it can be (nominal voltage: a draw subtracted from a meter must not be overstated)."""
    n, P = len(snaps), plan.n_phases
    amps = [cs.draw_a for cs in snaps]
    use_a = plan.is_ac & np.array([a is not None for a in amps], dtype=bool).reshape(n)
    out = np.zeros((n, P))
    if use_a.any():
        zero = (0.0,) * P
        a = _rows([x if x is not None else zero for x in amps], P)
        a = np.where(np.isfinite(a) & (a > 0) & plan.lines, a, 0.0)
        ll = plan.line_to_line
        a[ll] = np.where(plan.lines[ll], a[ll].max(axis=1, initial=0.0)[:, None], 0.0)
        out[use_a] = a[use_a]
    watts = np.array([cs.draw_w for cs in snaps], dtype=np.float64).reshape(n)
    use_w = ~use_a & np.isfinite(watts)
    if use_w.any():
        line_a = np.maximum(np.where(use_w, watts, 0.0), 0.0) / plan.w_per_a
        out[use_w] = np.where(plan.lines[use_w], line_a[use_w, None], 0.0)
    return out, use_a | use_w


def _rows(values: list[tuple[float, ...]], P: int) -> FloatArray:
    """(chargers, P) from per-charger tuples (a shorter one padded with 0, a longer one cut)."""
    try:
        a = np.array(values, dtype=np.float64)
        if a.shape == (len(values), P):
            return a
    except ValueError:
        pass
    return np.array([(tuple(v) + (0.0,) * P)[:P] for v in values], dtype=np.float64).reshape(len(values), P)
