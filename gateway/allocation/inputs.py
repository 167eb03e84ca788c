"""The snapshot's chargers as arrays over the plan's chargers (one pass per field; NaN stands for None).

The daemon hands the allocator the same ChargerSnapshot object for a charger until something about it changes
(gateway/ocpp_proxy/state.py), so from MIN_KEPT chargers on the last tick's rows are kept
(``AllocatorState.inputs``) and only the chargers whose snapshot is another object than last time are read
again: a row is a function of its (frozen) snapshot alone, and the old snapshots are held with the rows, so an
identity cannot be reused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain, repeat
from operator import attrgetter, is_not
from typing import Any

import numpy as np

from gateway.allocation.narrow import row_max
from gateway.allocation.plan import FloatArray, IntArray, Plan
from gateway.allocation.state import BoolArray
from gateway.model import ChargerSnapshot, ChargerState, Session, Snapshot

STATES = tuple(ChargerState)
_CODE = {s: k for k, s in enumerate(STATES)}
NO_EV, CHARGING, SUSPENDED_EV = (_CODE[s] for s in (ChargerState.NO_EV, ChargerState.CHARGING,
                                                    ChargerState.SUSPENDED_EV))
HAS_SESSION = np.array([s.has_session for s in STATES], dtype=bool)
IDLE_REASON = np.array(["idle:no-ev" if s == ChargerState.NO_EV else f"idle:{s.value}" for s in STATES],
                       dtype=object)


@dataclass(frozen=True)
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
    sessions: list[Session | None]
    priority: list[str | None]  # the session's own class
    departure_at: FloatArray  # the session's departure (NO_DEPARTURE: none told, or no session)
    has_act: BoolArray  # actuation feedback (the other actuation fields are False / NaN without)
    controlled: BoolArray
    failsafe_installed: BoolArray
    accepted_limit: FloatArray
    accepted_at: FloatArray
    pending_limit: FloatArray
    rejected_at: FloatArray
    lease_until: FloatArray

    def started_at(self) -> FloatArray:
        """When each session started (NaN: none); only chargers without memory need it."""
        return _floats([s.started_at if s is not None else None for s in self.sessions], len(self.sessions))


# the per-charger arrays (all but the snapshots and the per-session lists)
_ARRAYS = ("online", "noncompliant", "state", "active_connectors", "draw_at", "state_changed_at", "raw", "has_raw",
           "departure_at", "has_act", "controlled", "failsafe_installed", "accepted_limit", "accepted_at",
           "pending_limit", "rejected_at", "lease_until")
NO_DEPARTURE = 1e18  # a session that told no departure leaves last
_REREAD_SHARE = 0.5  # more changed snapshots than this share: every row is read again
MIN_KEPT = 100  # fewer chargers than this: every row is read again (as fast as comparing and merging)


def inputs(snapshot: Snapshot, plan: Plan, before: Inputs | None = None) -> Inputs:
    """The snapshot's rows; with the last tick's (made for this plan), only the changed snapshots are read."""
    snaps = _in_plan_order(snapshot, plan)
    n = len(snaps)
    if before is None or len(before.snaps) != n or n < MIN_KEPT:
        return _read(snaps, plan, None)
    changed = np.flatnonzero(np.fromiter(map(is_not, snaps, before.snaps), np.bool_, n))
    if not changed.size:
        return before  # never written: shared with the last tick
    if changed.size > _REREAD_SHARE * n:
        return _read(snaps, plan, None)
    new = _read([snaps[i] for i in changed.tolist()], plan, changed)
    return _merged(before, new, changed, snaps)


def _merged(before: Inputs, new: Inputs, rows: IntArray, snaps: list[ChargerSnapshot]) -> Inputs:
    """The last tick's rows with ``rows`` replaced by ``new`` (copies: ``before`` is not written)."""
    values: dict[str, Any] = {}
    for name in _ARRAYS:
        a = getattr(before, name).copy()
        a[rows] = getattr(new, name)
        values[name] = a
    sessions, priority = before.sessions.copy(), before.priority.copy()
    for i, session, prio in zip(rows.tolist(), new.sessions, new.priority, strict=True):
        sessions[i], priority[i] = session, prio
    return Inputs(snaps=snaps, sessions=sessions, priority=priority, **values)


def _read(snaps: list[ChargerSnapshot], plan: Plan, rows: IntArray | None) -> Inputs:
    """The rows of these snapshots: every plan charger's (``rows`` None), else those of the plan's ``rows``."""
    n = len(snaps)
    acts = list(map(_ACTUATION, snaps))
    has_act = _present(acts, n)
    sessions = list(map(_SESSION, snaps))
    raw, has_raw = measured(plan, snaps, rows)
    any_act = bool(has_act.any())
    none = np.full(n, np.nan)

    every_act = bool(has_act.all())

    def act_values(name: str) -> list[Any]:
        get = attrgetter(name)
        return list(map(get, acts)) if every_act else [get(a) if a is not None else None for a in acts]

    def act_floats(name: str) -> FloatArray:
        return _floats(act_values(name), n) if any_act else none

    def act_flags(name: str) -> BoolArray:
        return _flags(map(bool, act_values(name)), n) if any_act else none < 0

    return Inputs(
        snaps=snaps,
        online=_flags(map(_ONLINE, snaps), n),
        noncompliant=_flags(map(_NONCOMPLIANT, snaps), n),
        state=_states(list(map(_STATE, snaps)), n),
        active_connectors=_counts(list(map(_CONNECTORS, snaps)), n),
        draw_at=_floats(list(map(_DRAW_AT, snaps)), n),
        state_changed_at=_floats(list(map(_CHANGED_AT, snaps)), n),
        raw=raw,
        has_raw=has_raw,
        sessions=sessions,
        priority=[s.priority if s is not None else None for s in sessions],
        departure_at=np.fromiter([NO_DEPARTURE if s is None or (d := s.departure_at) is None else d
                                  for s in sessions], np.float64, n),
        has_act=has_act,
        controlled=act_flags("controlled"),
        failsafe_installed=act_flags("failsafe_installed"),
        accepted_limit=act_floats("accepted_limit"),
        accepted_at=act_floats("accepted_at"),
        pending_limit=act_floats("pending_limit"),
        rejected_at=act_floats("rejected_at"),
        lease_until=act_floats("lease_until"),
    )


_ONLINE, _NONCOMPLIANT, _STATE, _CONNECTORS, _DRAW_AT, _CHANGED_AT, _DRAW_A, _DRAW_W, _ACTUATION, _SESSION = (
    attrgetter(k) for k in ("online", "noncompliant", "state", "active_connectors", "draw_at", "state_changed_at",
                            "draw_a", "draw_w", "actuation", "session"))


def _in_plan_order(snapshot: Snapshot, plan: Plan) -> list[ChargerSnapshot]:
    """Each plan charger's snapshot (an offline stand-in where there is none); the snapshot's own order when
    it is the plan's (the daemon builds it from the site)."""
    chargers = snapshot.chargers
    if len(chargers) == len(plan.ids) and tuple(chargers) == plan.ids:
        return list(chargers.values())
    return [chargers.get(cid, _OFFLINE) for cid in plan.ids]


_OFFLINE = ChargerSnapshot(id="", online=False)


def _floats(values: list[float | None], n: int) -> FloatArray:
    """An array of floats, NaN for None."""
    missing = values.count(None)
    if not missing:
        return np.fromiter(values, np.float64, n)
    if missing == n:
        return np.full(n, np.nan)
    return np.array(values, dtype=np.float64).reshape(n)  # None: NaN


def _flags(values: Iterable[bool], n: int) -> BoolArray:
    return np.fromiter(values, np.bool_, n)


def _counts(values: list[int], n: int) -> FloatArray:
    """Small whole numbers as floats (most often all 1)."""
    return np.ones(n) if values.count(1) == n else np.fromiter(values, np.float64, n)


def _present(values: list[Any], n: int) -> BoolArray:
    """Which values are not None."""
    missing = values.count(None)
    if missing in (0, n):
        return np.full(n, not missing)
    return np.fromiter(map(is_not, values, repeat(None)), np.bool_, n)


_IDS = np.array(sorted(id(s) for s in STATES), dtype=np.intp)  # the members are singletons: by identity
_ID_CODE = np.array([_CODE[next(s for s in STATES if id(s) == i)] for i in _IDS.tolist()], dtype=np.intp)


def _states(values: list[ChargerState], n: int) -> IntArray:
    """Each state's index in STATES (looked up by the members' identities, which is faster than hashing)."""
    ids = np.fromiter(map(id, values), np.intp, n)
    j = np.minimum(np.searchsorted(_IDS, ids), _IDS.size - 1)
    if (_IDS[j] == ids).all():
        return _ID_CODE[j]
    return np.fromiter([_CODE[s] for s in values], np.intp, n)


def measured(
    plan: Plan, snaps: list[ChargerSnapshot], rows: IntArray | None = None
) -> tuple[FloatArray, BoolArray]:
    """Reported line current per site phase (A), the station's total, and whether it reported one: an AC
    charger's currents on its lines (a line-to-line one: the higher in both), else a power turned into the
    least line current it can be (nominal voltage: a draw subtracted from a meter must not be overstated).
    ``snaps`` are those of the plan's ``rows`` (None: of every plan charger)."""
    n, P = len(snaps), plan.n_phases
    sel: IntArray | slice = slice(None) if rows is None else rows
    is_ac, lines, line_to_line, w_per_a = plan.is_ac[sel], plan.lines[sel], plan.line_to_line[sel], plan.w_per_a[sel]
    amps = list(map(_DRAW_A, snaps))
    use_a = is_ac & _present(amps, n)
    out = np.zeros((n, P))
    if use_a.any():
        zero = (0.0,) * P
        a = _rows([x if x is not None else zero for x in amps], P)
        a = np.where(np.isfinite(a) & (a > 0) & lines, a, 0.0)
        ll = line_to_line
        if ll.any():
            a[ll] = np.where(lines[ll], row_max(a[ll])[:, None], 0.0)
        out[use_a] = a[use_a]
    watts_all = list(map(_DRAW_W, snaps))
    powered = [] if watts_all.count(None) == n else [
        i for i, w in enumerate(watts_all) if w is not None and not use_a[i]]
    if powered:
        watts = _floats([watts_all[i] for i in powered], len(powered))
        ok = np.isfinite(watts)
        idx = np.array(powered, dtype=np.intp)[ok]
        line_a = np.maximum(watts[ok], 0.0) / w_per_a[idx]
        out[idx] = np.where(lines[idx], line_a[:, None], 0.0)
        use_a[idx] = True
    return out, use_a


def _rows(values: list[tuple[float, ...]], P: int) -> FloatArray:
    """(chargers, P) from per-charger tuples (a shorter one padded with 0, a longer one cut)."""
    n = len(values)
    if not values or set(map(len, values)) == {P}:
        return np.fromiter(chain.from_iterable(values), np.float64, n * P).reshape(n, P)
    return np.array([(tuple(v) + (0.0,) * P)[:P] for v in values], dtype=np.float64).reshape(n, P)
