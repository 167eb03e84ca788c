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
from typing import NamedTuple

from gateway.config import ChargerConfig, Site
from gateway.electrical import ac_line_current_a, dc_line_current_a
from gateway.model import Actuation, ChargerSnapshot
from tests.alloc_reference.plan import EPS_A
from tests.alloc_reference.state import NEVER, ChargerMemory, following

# a draw report older than this neither caps an EV nor makes room (buffered MeterValues are not fresh)
REPORT_MAX_AGE_S = 120.0


class View(NamedTuple):
    may_draw_a: float  # line current per loaded phase it may draw now (its reserve)
    base_a: float  # the reserve before any decrease still being followed
    follows: tuple[tuple[float, float], ...]  # decreases being followed: (earlier line A, until)
    raised_at: float


def fresh_reserve(ch: ChargerConfig, cs: ChargerSnapshot, u2l: float) -> float:
    """What a charger the allocator has no memory of may draw: its persistent fail-safe limit (installed by
    the gateway's earlier life), or more if it reports more (capped at its maximum)."""
    drawn = max(cs.draw_a or (0.0,)) if ch.kind == "ac" else (cs.draw_w or 0.0) * u2l
    return min(max(ch.failsafe_limit * u2l, drawn if math.isfinite(drawn) else 0.0), ch.max_limit * u2l)


def follow(
    mem: ChargerMemory | None, start_a: float, base_a: float, changed_at: float, resp: float, now: float
) -> tuple[tuple[tuple[float, float], ...], float]:
    """(follows, raised_at) once the reserve without followers is ``base_a`` (changed at ``changed_at``: when
    the charger accepted the change, or now). A fall keeps the earlier reserve for a response; with no memory
    the earlier reserve is ``start_a`` (``fresh_reserve``)."""
    before, raised = (start_a, NEVER) if mem is None else (mem.base_a, mem.raised_at)
    follows: tuple[tuple[float, float], ...] = () if mem is None else tuple(f for f in mem.follows if now < f[1])
    if base_a < before - EPS_A:
        follows = (*follows, (before, changed_at + resp))
    elif base_a > before + EPS_A:
        raised = changed_at
    return follows, raised


def view(
    mem: ChargerMemory | None, cs: ChargerSnapshot, ch: ChargerConfig, u2l: float, resp: float, now: float
) -> View:
    act = cs.actuation
    fs_a = ch.failsafe_limit * u2l
    if act is None:  # the caller does not model actuation: the decided limit counts as accepted when decided
        base = mem.base_a if mem is not None else fresh_reserve(ch, cs, u2l)
        follows, raised = ((), NEVER) if mem is None else (tuple(f for f in mem.follows if now < f[1]), mem.raised_at)
        if not cs.online:
            base = max(base, fs_a)
    else:
        base = _base(mem, cs, act, ch, u2l, fs_a, resp, now)
        changed_at = act.accepted_at if act.accepted_at is not None and act.accepted_at <= now else now
        start = fresh_reserve(ch, cs, u2l) if mem is None else 0.0
        follows, raised = follow(mem, start, base, changed_at, resp, now)
    may = max(base, following(follows, now))
    return View(may, base, follows, raised)


def _base(
    mem: ChargerMemory | None, cs: ChargerSnapshot, act: Actuation, ch: ChargerConfig, u2l: float, fs_a: float,
    resp: float, now: float,
) -> float:
    """The reserve from the actuation feedback alone (before followers)."""
    accepted = act.accepted_limit * u2l if act.accepted_limit is not None else None
    controlled = cs.online and act.controlled
    if controlled:
        base = accepted or 0.0
    else:
        lease_ok = act.lease_until is not None and now < act.lease_until + resp
        base = max(accepted if (accepted is not None and lease_ok) else 0.0, fs_a)
        if cs.online and not act.failsafe_installed and act.rejected_at is not None:
            base = ch.max_limit * u2l  # it refused our profiles: nothing bounds it below its maximum
    pending = act.pending_limit * u2l if act.pending_limit is not None else 0.0
    if mem is not None:
        pending = max(pending, mem.line_a)  # decided last tick, perhaps not yet queued: as if pending
    return max(base, pending)


def measured_draw(site: Site, ch: ChargerConfig, cs: ChargerSnapshot, P: int) -> list[float] | None:
    """Reported line current per site phase (A), the station's total, or None when it reported none."""
    if cs.draw_a is not None and ch.kind == "ac":
        out = [0.0] * P
        for ph in ch.line_phases:
            if ph < len(cs.draw_a):
                v = cs.draw_a[ph]
                out[ph] = v if math.isfinite(v) and v > 0 else 0.0
        if len(ch.line_phases) == 2:  # line-to-line: one current in two lines
            m = max(out[ph] for ph in ch.line_phases)
            for ph in ch.line_phases:
                out[ph] = m
        return out
    if cs.draw_w is not None and math.isfinite(cs.draw_w):
        w = max(cs.draw_w, 0.0)
        # the least line current that power can be (nominal voltage): a draw subtracted from a meter must not
        # be overstated (the limits, by contrast, convert at the lowest voltage: the most current)
        if ch.kind == "dc":
            a = dc_line_current_a(site.service, ch, w)
        else:
            a = ac_line_current_a(site.service, ch.line_phases, w)
        out = [0.0] * P
        for ph in ch.line_phases:
            out[ph] = a
        return out
    return None


Report = tuple[float, tuple[float, ...], float]  # (measured at, line A per site phase, lowest reserve since)
_KEEP_REPORTS = 3


def reports(mem: ChargerMemory | None, cs: ChargerSnapshot, draw: list[float] | None, v: View) -> tuple[Report, ...]:
    """The charger's recent draw reports with the lowest reserve it has had since each, this one included."""
    kept = mem.reports if mem is not None else ()
    if draw is not None and cs.draw_at is not None and (not kept or cs.draw_at > kept[-1][0]):
        kept = (*kept, (cs.draw_at, tuple(draw), float("inf")))[-_KEEP_REPORTS:]
    base = v.base_a
    if all(low <= base for _, _, low in kept):
        return kept  # nothing lower to note (the common case: no new report, the reserve has not fallen)
    return tuple((at, d, min(low, base)) for at, d, low in kept)


def report_for(history: tuple[Report, ...], reading_at: float) -> Report | None:
    """The newest report measured no later than the meters' readings (what the meters saw it draw)."""
    for r in reversed(history):
        if r[0] <= reading_at + 1e-9:
            return r
    return None


def usable(at: float, cs: ChargerSnapshot, now: float) -> bool:
    """Whether a draw report measured at ``at`` may make room at all: after the charger's last state change
    and not too old. A report that may not can only count as load."""
    if now - at > REPORT_MAX_AGE_S:
        return False
    return cs.state_changed_at is None or at >= cs.state_changed_at
