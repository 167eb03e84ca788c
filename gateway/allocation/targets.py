"""The planner's shares (Snapshot.targets) in the allocator: one hook, inside the same safety rules.

* A held target (``hold``: deferred to a cheaper period), and any target below half the charger's minimum (the
  plan gives the room to sessions that need it more), is a cap on the charger like a budget's
  (Snapshot.charger_caps, the lower of the two): it lowers the charger's upper bound; below half its minimum
  the session pauses with the plan's reason, between half and the minimum it gets the minimum.
* The other targets (``plan:deadline``) order the filling: first every growing session fills up to its
  target (sessions without one stay at their minimum), by the same max-min filling within the same room; then
  every growing session shares what is left by max-min fairness, from there up to its usual cap.

Both fillings run in the same room (limit - margin - non-EV - fixed loads), with the same bounds, so the plan
never takes a limit above what the allocator would allow: it only chooses who gets the room first. Without
targets the filling is the allocator's own, unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway.allocation.plan import TOL_A, FloatArray, Plan
from gateway.config import Site
from gateway.model import ChargerCap, Snapshot

FillFn = Callable[[Plan, np.ndarray, FloatArray, FloatArray, FloatArray, FloatArray], tuple[FloatArray, Any]]


def with_hold_caps(snapshot: Snapshot, site: Site) -> Snapshot:
    """Held targets as charger caps (the lower of a budget's cap and the plan's)."""
    if not snapshot.targets:
        return snapshot
    caps = dict(snapshot.charger_caps)
    for cid, t in snapshot.targets.items():
        ch = site.chargers.get(cid)
        if ch is None:
            continue
        lo = site.to_line_a(ch, ch.min_limit)
        lim = t.target_a if t.target_a == t.target_a else 0.0  # NaN: 0 (lowers, never raises)
        if not t.hold and lim >= lo / 2:
            continue  # a deadline share: filled first (fill_toward), not a cap
        lim = 0.0 if lim < lo / 2 else max(lim, lo)
        old = caps.get(cid)
        if old is None or lim < old.limit_a:
            caps[cid] = ChargerCap(lim, t.reason)
    return dataclasses.replace(snapshot, charger_caps=caps)


def fill_toward(
    plan: Plan, grow: np.ndarray, lo: FloatArray, hi: FloatArray, weight: FloatArray, room: FloatArray,
    snapshot: Snapshot, hi_reason: Any, fill: FillFn,
) -> tuple[FloatArray, Any]:
    """The filling with the plan's (non-held) targets first; ``fill`` is the allocator's filling."""
    targets = snapshot.targets
    if not targets:
        return fill(plan, grow, lo, hi, weight, room)
    tgt = np.full(len(plan.ids), np.nan)
    for i, cid in enumerate(plan.ids):
        t = targets.get(cid)
        if t is not None and not t.hold and grow[i] and t.target_a == t.target_a:
            tgt[i] = t.target_a
    has = ~np.isnan(tgt)
    if not has.any():
        return fill(plan, grow, lo, hi, weight, room)
    hi1 = np.where(has, np.clip(np.nan_to_num(tgt), lo, hi), lo)
    x1, _ = fill(plan, grow, lo, np.minimum(hi1, hi), weight, room)
    x, frozen_by = fill(plan, grow, np.minimum(x1, hi), hi, weight, room)
    for i in np.flatnonzero(has).tolist():
        want = float(np.clip(tgt[i], lo[i], hi[i]))
        # it follows the plan: at its target (not above by the rest's sharing), and the target is above its minimum
        if tgt[i] >= lo[i] - TOL_A and abs(float(x[i]) - want) <= 10 * TOL_A and want < hi[i] - 10 * TOL_A:
            hi_reason[i] = targets[plan.ids[i]].reason
            frozen_by = _unfreeze(frozen_by, i)
    return x, frozen_by


def _unfreeze(frozen_by: Any, i: int) -> Any:
    """Drop charger i from the filling's frozen-by record (a dict, or an array with -1 for none)."""
    if isinstance(frozen_by, dict):
        frozen_by.pop(i, None)
    else:
        frozen_by[i] = -1
    return frozen_by
