"""A utility demand-response event during a busy hour, as a pure simulation through allocate() (no rig process).

A 160 A three-phase 400 V depot, ten three-phase 32 A chargers all charging, a non-EV load drifting between
about 30 and 45 A; an OpenADR SIMPLE level-2 event (40 kW = 57.7 A per line) from minute 20 to minute 50 of the
hour. Each second: the event's cap from `gateway.budget.openadr.event_caps`, the allocator's limits, the EVs
following each new limit after 5-11 s (drawn per EV and change), the service meter = non-EV + EVs.

Reports: the service's highest line current from the event's start to its end against the event's level, when
the service first went under the level (seconds before the start: the lead), the EV energy delivered over the
hour with and without the event, and the energy lost to the event.
Run: python hil/bench/bench_dr_event.py [--lead-s 30] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.allocation import AllocatorState, allocate
from gateway.budget.openadr import DREvent, Interval, event_caps
from gateway.config import Site, site_from_dict
from gateway.electrical import service_line_current_a
from gateway.model import Actuation, ChargerSnapshot, ChargerState, MeterReading, Session, Snapshot

HOUR_S = 3600
T0 = 1_800_000_000.0  # wall clock of the hour's start (17:00 somewhere)
EVENT = (20 * 60, 50 * 60)  # seconds into the hour
LEVEL2_KW = 40.0
N = 10
V_LN = 400 / math.sqrt(3)


def depot(lead_s: float) -> Site:
    return site_from_dict({
        "site": {"id": "dr-depot"},
        "service": {"voltage_ll_v": 400, "phases": 3, "limit_a": 160, "margin_a": 3, "voltage_tolerance_pct": 0,
                    "worst_case_non_ev_a": 50},
        "meters": [{"id": "m-main", "circuit": "service", "host": "127.0.0.1"}],
        "chargers": [{"id": f"CP{i}", "kind": "ac", "circuit": "service", "phases": 3, "max_current_a": 32,
                      "min_current_a": 6, "failsafe_current_a": 6} for i in range(N)],
        "control": {"ev_response_s": 11},  # the EVs below follow 5-11 s after the charger accepted a limit
        "budget": {"openadr": {"vtn_url": "http://127.0.0.1:8080/OpenADR2/Simple/2.0b", "ven_name": "dr-depot",
                               "level1_kw": 80, "level2_kw": LEVEL2_KW, "level3_kw": 20, "lead_s": lead_s}},
    })


ACCEPT_S = 1.0  # the charger answers SetChargingProfile this long after it was decided


@dataclass
class Ev:
    draw_a: float = 0.0
    accepted_a: float = 6.0  # the limit profile the charger accepted (its fail-safe at the start)
    accepted_at: float = -600.0
    pending_a: float | None = None
    pending_since: float = 0.0
    due: float = 0.0  # when the EV follows the accepted limit

    def actuation(self) -> Actuation:
        return Actuation(controlled=True, failsafe_installed=True, accepted_limit=self.accepted_a,
                         accepted_at=self.accepted_at, pending_limit=self.pending_a,
                         pending_since=self.pending_since if self.pending_a is not None else None)


@dataclass(frozen=True)
class Result:
    delivered_kwh: float
    max_in_event_a: float  # the service's highest line current from the event's start to its end
    under_from_s: float | None  # seconds into the hour from which the service stayed under the level until the end
    level_a: float
    reasons: frozenset[str]


def base_a(t: float, rng: random.Random) -> float:
    return 37.5 + 7.5 * math.sin(2 * math.pi * t / 1800.0) + rng.uniform(-0.3, 0.3)


def simulate(with_event: bool, lead_s: float = 30.0, seed: int = 1) -> Result:
    site = depot(lead_s)
    cfg = site.budget.openadr
    assert cfg is not None
    rng = random.Random(seed)
    ev = DREvent("dr-1", "oadr2", T0 + EVENT[0], T0 + EVENT[1],
                 (Interval(T0 + EVENT[0], T0 + EVENT[1], "level", 2),), T0)
    level_a = service_line_current_a(site.service, LEVEL2_KW * 1000.0)
    evs = {f"CP{i}": Ev() for i in range(N)}
    state: AllocatorState | None = None
    delivered_wh, max_in = 0.0, 0.0
    last_over: float | None = None
    reasons: set[str] = set()
    for s in range(HOUR_S):
        now = float(s)
        for e in evs.values():
            if e.pending_a is not None and now >= e.pending_since + ACCEPT_S:
                e.accepted_a, e.accepted_at, e.pending_a = e.pending_a, now, None
                e.due = now + rng.uniform(5.0, 11.0)
            if now >= e.due:
                e.draw_a = e.accepted_a
        service_a = base_a(now, rng) + sum(e.draw_a for e in evs.values())
        if EVENT[0] <= s < EVENT[1]:
            max_in = max(max_in, service_a)
        if service_a > level_a and s < EVENT[1]:
            last_over = now
        delivered_wh += sum(e.draw_a for e in evs.values()) * 3 * V_LN / 3600.0
        caps = event_caps({"dr-1": ev}, cfg, site.service, T0 + now, T0 + now) if with_event else ()
        chargers = {cid: ChargerSnapshot(cid, True, ChargerState.CHARGING, (e.draw_a,) * 3, draw_at=now,
                                         session=Session(started_at=-600.0), actuation=e.actuation())
                    for cid, e in evs.items()}
        snap = Snapshot(taken_at=now, meters={"m-main": MeterReading(current_a=(service_a,) * 3, at=now)},
                        chargers=chargers, caps=caps)
        alloc, state = allocate(snap, site, state, now)
        for cid, lim in alloc.limits.items():
            e = evs[cid]
            reasons.add(lim.reason.split("/")[0])
            if abs(lim.limit - (e.pending_a if e.pending_a is not None else e.accepted_a)) > 1e-6:
                e.pending_a, e.pending_since = lim.limit, now
    under: float | None = None
    if with_event and (last_over is None or last_over < EVENT[0]):
        under = 0.0 if last_over is None else last_over + 1.0
    return Result(delivered_wh / 1000.0, max_in, under, level_a, frozenset(reasons))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lead-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    base = simulate(False, args.lead_s, args.seed)
    dr = simulate(True, args.lead_s, args.seed)
    print(f"event level 2 = {LEVEL2_KW:g} kW = {dr.level_a:.1f} A per line, minutes {EVENT[0] // 60}-{EVENT[1] // 60}, "
          f"lead {args.lead_s:g} s, EVs follow in 5-11 s")
    print(f"service max during the event: {dr.max_in_event_a:.1f} A (level {dr.level_a:.1f} A)")
    if dr.under_from_s is not None:
        print(f"service under the level from {EVENT[0] - dr.under_from_s:.0f} s before the event's start")
    else:
        print("service NOT under the level for the whole event")
    print(f"EV energy over the hour: {base.delivered_kwh:.2f} kWh without the event, {dr.delivered_kwh:.2f} kWh "
          f"with it; lost to the event: {base.delivered_kwh - dr.delivered_kwh:.2f} kWh")
    print(f"limit reasons seen: {', '.join(sorted(dr.reasons))}")


if __name__ == "__main__":
    main()
