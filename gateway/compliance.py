"""Non-compliance: a charger that stays above its limit once it has had time to follow it.

The rule, for a draw report taken at ``t`` that shows the line current ``D`` (per loaded phase, the
station's total over its connectors; a DC draw converted by the site's electrical model): the charger is
non-compliant when every limit in force during ``[t - grace, t]`` is below ``D - tolerance``. So the grace
period runs from the first decrease the charger has not followed; further decreases, however small, do not
restart it, and an increase the charger is within ends it. A limit is in force from the moment the charger
accepted it (``actuation.accepted_at``); without actuation feedback, from the tick it was decided.

A flagged charger stays flagged while new reports confirm it (over the limit in force when each was taken).
It is cleared by a report within that limit plus the tolerance, or when no report newer than the last
confirmation has confirmed it within the grace period: one absurd report never flags a charger for good.

Pure bookkeeping: the caller passes the charger snapshots, the allocation in force and the time. The daemon
passes the same (frozen) ChargerSnapshot object for a charger until something about it changes
(gateway/ocpp_proxy/state.py): a charger with actuation feedback whose snapshot is the one of the last call is
skipped, since recording and judging it again change nothing (its limit is recorded already, its report
judged already). tests/test_compliance.py holds this to the monitor that reads every snapshot.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from gateway.config import ChargerConfig, Site
from gateway.model import Allocation, ChargerSnapshot

# how long the limit history reaches back beyond the grace period (reports may be up to a minute old)
HISTORY_S = 180.0

History = list[tuple[float, float]]  # (in force since, limit in the charger's unit), in time order


def limit_in_force(history: History, at: float) -> float | None:
    """The limit in force at ``at`` (None: before the first known limit)."""
    i = bisect.bisect_right(history, at, key=lambda e: e[0])
    return None if i == 0 else history[i - 1][1]


def highest_limit_over(history: History, start: float, end: float) -> float | None:
    """The highest limit in force at any time in ``[start, end]`` (None: the history does not reach back to start)."""
    i = bisect.bisect_right(history, start, key=lambda e: e[0])
    if i == 0:
        return None
    j = bisect.bisect_right(history, end, key=lambda e: e[0])
    return max(limit for _, limit in history[i - 1 : max(j, i)])


def record_limit(history: History, limit: float, since: float, keep_after: float) -> None:
    """Append a limit that came into force at ``since`` (not before the last one) and forget what no report needs."""
    if history and history[-1][1] == limit:
        return
    if history and since < history[-1][0]:
        since = history[-1][0]
    if history and history[-1][0] == since:
        history[-1] = (since, limit)
    else:
        history.append((since, limit))
    # keep the entry in force at keep_after and everything after it
    i = bisect.bisect_right(history, keep_after, key=lambda e: e[0])
    if i > 1:
        del history[: i - 1]


def draw_line_a(site: Site, ch: ChargerConfig, cs: ChargerSnapshot) -> float | None:
    """The reported draw as line current per loaded phase (A), or None if the report has none."""
    if ch.kind == "ac":
        if cs.draw_a is None:
            return None
        return max((cs.draw_a[p] for p in ch.line_phases if p < len(cs.draw_a)), default=0.0)
    if cs.draw_w is None:
        return None
    return site.to_line_a(ch, cs.draw_w)


class ComplianceMonitor:
    """Flags chargers whose reported draw stays above their limits once they have had time to follow them."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self._history: dict[str, History] = {}
        self._seen: dict[str, float] = {}  # charger -> timestamp of the last report judged
        self._confirmed: dict[str, float] = {}  # flagged charger -> when its flag was last confirmed
        self.flagged: dict[str, float] = {}  # charger -> flagged at
        self._last: dict[str, ChargerSnapshot] = {}  # charger -> the snapshot of the last call

    def update(
        self, chargers: Mapping[str, ChargerSnapshot], previous: Allocation | None, now: float
    ) -> tuple[list[str], list[str]]:
        """Judge the reports that are new since the last call. Returns (newly flagged, newly cleared)."""
        flagged: list[str] = []
        cleared: list[str] = []
        last, self._last = self._last, dict(chargers)
        for cid, cs in chargers.items():
            if cs is last.get(cid) and cs.actuation is not None:
                continue  # nothing about it changed (without feedback, the decided limit may have)
            ch = self.site.chargers.get(cid)
            if ch is None:
                continue
            self._record(cid, cs, previous, now)
            verdict = self._judge(ch, cs, previous)
            if verdict == "flag":
                flagged.append(cid)
                self.flagged[cid] = now
                self._confirmed[cid] = now
            elif verdict == "clear":
                cleared.append(cid)
        grace = self.site.control.noncompliance_grace_s
        slack = self.site.control.tick_s  # a report is seen at the first tick after it arrives
        for cid in list(self.flagged):
            if cid not in cleared and now - self._confirmed[cid] > grace + slack:
                cleared.append(cid)  # the over-limit draw was not repeated: it expires
        for cid in cleared:
            self.flagged.pop(cid, None)
            self._confirmed.pop(cid, None)
        return flagged, cleared

    def _record(self, cid: str, cs: ChargerSnapshot, previous: Allocation | None, now: float) -> None:
        """Note the limit in force: the one the charger accepted, or (no actuation feedback) the one decided."""
        act = cs.actuation
        if act is not None:
            if act.accepted_limit is None:
                return
            limit, since = act.accepted_limit, act.accepted_at if act.accepted_at is not None else now
        else:
            decided = previous.limits.get(cid) if previous is not None else None
            if decided is None or previous is None:
                return
            limit, since = decided.limit, previous.at
        keep_after = now - self.site.control.noncompliance_grace_s - HISTORY_S
        record_limit(self._history.setdefault(cid, []), limit, since, keep_after)

    def _judge(self, ch: ChargerConfig, cs: ChargerSnapshot, previous: Allocation | None) -> str:
        """"flag", "clear", "confirm" or "" for the charger's report, if it is new."""
        at = cs.draw_at
        if not cs.online or at is None or at <= self._seen.get(ch.id, float("-inf")):
            return ""
        draw = draw_line_a(self.site, ch, cs)
        if draw is None:
            return ""
        self._seen[ch.id] = at
        act = cs.actuation
        if act is not None and act.lease_until is not None and at > act.lease_until:
            return ""  # its limit profile had lapsed: the charger was under its own fail-safe profile
        history = self._history.get(ch.id, [])
        ctl = self.site.control
        tol = ctl.noncompliance_tolerance_a
        if ch.id in self.flagged:
            limit = limit_in_force(history, at)
            if limit is None:
                return ""
            if draw > self.site.to_line_a(ch, limit) + tol:
                self._confirmed[ch.id] = max(self._confirmed[ch.id], at)
                return "confirm"
            return "clear"
        decided = previous.limits.get(ch.id) if previous is not None else None
        if decided is not None and decided.reason.startswith(("failsafe:", "offline:")):
            return ""
        highest = highest_limit_over(history, at - ctl.noncompliance_grace_s, at)
        if highest is not None and draw > self.site.to_line_a(ch, highest) + tol:
            return "flag"
        return ""

    def update_site(self, site: Site) -> None:
        self.site = site
        self._last = {}  # every snapshot read again against the new site
        for store in (self.flagged, self._confirmed, self._history, self._seen):
            for cid in [c for c in store if c not in site.chargers]:
                del store[cid]
