"""What each charger may still draw at this instant, from what it accepted (actuation feedback).

A limit counts from the moment the charger accepted it. While a decrease is followed the EV may draw the
earlier limit for ``ev_response_s`` after the acceptance; while an increase is pending the charger may take
it at any moment; offline or uncontrolled, it may draw its last leased limit until the lease lapses (plus a
response), and its persistent fail-safe limit after that; a charger that refused our profiles may draw its
maximum. This "may draw" is each charger's reserve: increases for others come only out of capacity that no
reserve holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gateway.allocation.inputs import Inputs
from gateway.allocation.narrow import row_any
from gateway.allocation.plan import EPS_A, FloatArray, Plan
from gateway.allocation.state import KEEP_REPORTS, NEVER, BoolArray, Follows, Memory, Reports
from gateway.config import ChargerConfig
from gateway.model import ChargerSnapshot

# a draw report older than this neither caps an EV nor makes room (buffered MeterValues are not fresh)
REPORT_MAX_AGE_S = 120.0


@dataclass
class Views:
    """Per charger (arrays over the plan's chargers)."""

    may_draw_a: FloatArray  # line current per loaded phase it may draw now (its reserve)
    base_a: FloatArray  # the reserve before any decrease still being followed
    follows: Follows  # decreases being followed: (earlier line A, until)
    raised_at: FloatArray


def fresh_reserve(ch: ChargerConfig, cs: ChargerSnapshot, u2l: float) -> float:
    """What a charger the allocator has no memory of may draw: its persistent fail-safe limit (installed by
    the gateway's earlier life), or more if it reports more (capped at its maximum)."""
    drawn = max(cs.draw_a or (0.0,)) if ch.kind == "ac" else (cs.draw_w or 0.0) * u2l
    return min(max(ch.failsafe_limit * u2l, drawn if math.isfinite(drawn) else 0.0), ch.max_limit * u2l)


def fresh_reserves(plan: Plan, inp: Inputs, mem: Memory) -> FloatArray:
    """``fresh_reserve`` of every charger without memory (0 for the others)."""
    out = np.zeros(len(plan.ids))
    if mem.has.all():
        return out
    for i in np.flatnonzero(~mem.has).tolist():
        out[i] = fresh_reserve(plan.chargers[i], inp.snaps[i], plan.unit_to_line[i])
    return out


def views(plan: Plan, inp: Inputs, mem: Memory, resp: float, now: float) -> Views:
    """Each charger's reserve from what it accepted (a limit counts from its acceptance; a fall keeps the
    earlier reserve for a response, so it joins the follows); without actuation feedback the decided limit
    counts as accepted when decided (``remember``)."""
    fresh = fresh_reserves(plan, inp, mem)
    follows = mem.follows.live(now)
    before = np.where(mem.has, mem.base_a, fresh)  # with no memory the earlier reserve is the fresh one
    raised = np.where(mem.has, mem.raised_at, NEVER)
    base = np.where(inp.online, before, np.maximum(before, plan.failsafe_a))  # no feedback
    if inp.has_act.any():
        fed = _base(plan, inp, mem, resp, now)
        changed_at = np.where(inp.accepted_at <= now, inp.accepted_at, now)  # when it accepted, or now
        fall = inp.has_act & (fed < before - EPS_A)
        rise = inp.has_act & ~fall & (fed > before + EPS_A)
        follows.add(fall, before, changed_at + resp)
        raised = np.where(rise, changed_at, raised)
        base = np.where(inp.has_act, fed, base)
    return Views(np.maximum(base, follows.highest(now)), base, follows, raised)


def _base(plan: Plan, inp: Inputs, mem: Memory, resp: float, now: float) -> FloatArray:
    """The reserve from the actuation feedback alone (before followers)."""
    accepted = inp.accepted_limit * plan.u2l
    known = ~np.isnan(accepted)
    controlled = np.where(known, accepted, 0.0)
    lease_ok = now < inp.lease_until + resp
    uncontrolled = np.maximum(np.where(known & lease_ok, accepted, 0.0), plan.failsafe_a)
    # it refused our profiles: nothing bounds it below its maximum
    refused = inp.online & ~inp.failsafe_installed & ~np.isnan(inp.rejected_at)
    uncontrolled = np.where(refused, plan.max_a, uncontrolled)
    base = np.where(inp.online & inp.controlled, controlled, uncontrolled)
    pending = np.where(np.isnan(inp.pending_limit), 0.0, inp.pending_limit * plan.u2l)
    pending = np.where(mem.has, np.maximum(pending, mem.line_a), pending)  # decided last tick: as if pending
    return np.asarray(np.maximum(base, pending), dtype=np.float64)


def reports(mem: Memory, inp: Inputs, base_a: FloatArray) -> Reports:
    """The chargers' recent draw reports with the lowest reserve each has had since, this one included."""
    r = mem.reports
    new = inp.has_raw & ~np.isnan(inp.draw_at) & ((r.n == 0) | (inp.draw_at > r.at[:, -1]))
    at, draw, low, n = r.at, r.draw, r.low, r.n  # shared with the last memory where unchanged (never written)
    if new.any():  # each new report goes into the last slot, the oldest drops out
        at = np.concatenate([at[:, 1:], inp.draw_at[:, None]], axis=1)
        draw = np.concatenate([draw[:, 1:], inp.raw[:, None]], axis=1)
        low = np.concatenate([low[:, 1:], np.full((len(n), 1), np.inf)], axis=1)
        if new.all():
            n = np.minimum(n + 1, KEEP_REPORTS)
        else:  # the other rows as they were (whole-array selects: faster than writing the new rows)
            m = new[:, None]
            at, draw, low = np.where(m, at, r.at), np.where(m[:, :, None], draw, r.draw), np.where(m, low, r.low)
            n = np.where(new, np.minimum(n + 1, KEEP_REPORTS), n)
    used = np.arange(KEEP_REPORTS) >= KEEP_REPORTS - n[:, None]
    return Reports(at, draw, np.where(used, np.minimum(low, base_a[:, None]), low), n)


@dataclass
class Report:
    """Per charger, the report the meters saw (``usable``: one that may make room)."""

    usable: BoolArray
    at: FloatArray
    draw: FloatArray  # (chargers, phases)
    low: FloatArray


def report_for(r: Reports, reading_at: FloatArray, inp: Inputs, now: float) -> Report:
    """The newest report measured no later than the meters' readings (what the meters saw it draw), and
    whether it may make room at all: measured after the charger's last state change and not too old. A
    report that may not can only count as load."""
    used = np.arange(KEEP_REPORTS) >= KEEP_REPORTS - r.n[:, None]
    seen = used & (r.at <= reading_at[:, None] + 1e-9)
    # the last slot seen (the last slot when none is), column by column: faster than an argmax along rows of 3
    j = np.full(len(r.n), KEEP_REPORTS - 1, dtype=np.intp)
    for col in range(KEEP_REPORTS):
        j[seen[:, col]] = col
    flat = np.arange(len(j)) * KEEP_REPORTS + j  # (row, j) in the (rows, slots) arrays
    at = r.at.ravel().take(flat)
    sca = inp.state_changed_at
    ok = row_any(seen) & ~(now - at > REPORT_MAX_AGE_S) & (np.isnan(sca) | (at >= sca))
    return Report(ok, at, r.draw.reshape(-1, r.draw.shape[2]).take(flat, axis=0), r.low.ravel().take(flat))
