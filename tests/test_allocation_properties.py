"""Properties of alloc() over random trees, chargers and measurements.

The oracle here is written independently of the allocator: it recomputes each circuit's
non-EV load and the sum of allocated line currents from the raw snapshot and config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.config import ChargerConfig, Site, site_from_dict
from gateway.errors import ConfigError
from gateway.model import Allocation, ChargerSnapshot, ChargerState, MeterReading, Session, Snapshot
from tests.factories import alloc, site_dict

NOW = 1000.0
TOL = 1e-3
BINDING_PREFIXES = (
    "capped:", "max:ev-", "ramp:", "hold:", "paused:", "idle:", "failsafe:", "offline:", "noncompliant:",
)


@dataclass
class Case:
    site: Site
    snapshot: Snapshot
    stale: set[str]


@st.composite
def cases(draw: st.DrawFn, *, allow_stale: bool = True) -> Case:
    phases = draw(st.sampled_from([1, 3]))
    n_circuits = draw(st.integers(0, 6))
    circuits: list[dict[str, Any]] = []
    ids = ["service"]
    for j in range(n_circuits):
        circuits.append(
            {
                "id": f"c{j}",
                "parent": draw(st.sampled_from(ids)),
                "limit_a": draw(st.floats(16, 400)),
                "margin_a": draw(st.floats(0, 4)),
            }
        )
        ids.append(f"c{j}")
    chargers: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["ac", "ac", "dc"]))
        circuit = draw(st.sampled_from(ids))
        prio = draw(st.sampled_from(["fleet", "guest"]))
        if kind == "ac":
            three = phases == 3 and draw(st.booleans())
            rot = (
                draw(st.sampled_from(["L1L2L3", "L2L3L1", "L3L1L2"]))
                if three
                else (draw(st.sampled_from(["L1", "L2", "L3", "L1-L2", "L2-L3", "L3-L1"])) if phases == 3 else "L1")
            )
            mn = draw(st.sampled_from([6.0, 6.0, 8.0]))
            mx = draw(st.floats(mn, 80))
            chargers.append(
                {
                    "id": f"ch{i}",
                    "kind": "ac",
                    "circuit": circuit,
                    "phases": 3 if three else 1,
                    "phase_rotation": rot,
                    "min_current_a": mn,
                    "max_current_a": mx,
                    "failsafe_current_a": draw(st.sampled_from([0.0, mn])),
                    "priority": prio,
                }
            )
        else:
            mn = draw(st.floats(1000, 8000))
            mx = draw(st.floats(mn, 150_000))
            chargers.append(
                {
                    "id": f"ch{i}",
                    "kind": "dc",
                    "circuit": circuit,
                    "phases": phases,
                    "min_power_w": mn,
                    "max_power_w": mx,
                    "failsafe_power_w": 0.0,
                    "efficiency": draw(st.floats(0.85, 1.0)),
                    "power_factor": draw(st.floats(0.9, 1.0)),
                    "priority": prio,
                }
            )
    metered = ["service"] + [c for c in ids[1:] if draw(st.booleans())]
    meters = [{"id": f"m-{c}", "circuit": c} for c in metered]
    d = site_dict(
        phases=phases,
        limit_a=draw(st.floats(20, 600)),
        margin_a=draw(st.floats(0, 5)),
        circuits=circuits,
        chargers=chargers,
        meters=meters,
        priorities={"fleet": 3.0, "guest": 1.0},
        control={"ramp_up_a_per_s": draw(st.sampled_from([2.0, 1000.0]))},
    )
    try:
        site = site_from_dict(d)
    except ConfigError:
        assume(False)
        raise

    # charger snapshots
    states = list(ChargerState)
    csnaps: dict[str, ChargerSnapshot] = {}
    for ch in site.chargers.values():
        state = draw(st.sampled_from(states))
        draw_a: tuple[float, ...] | None = None
        draw_w: float | None = None
        if state == ChargerState.CHARGING and draw(st.booleans()):
            if ch.kind == "ac":
                v = draw(st.floats(0, ch.max_limit))
                per = [0.0] * phases
                for p in ch.line_phases:
                    per[p] = v
                draw_a = tuple(per)
            else:
                draw_w = draw(st.floats(0, ch.max_limit))
        csnaps[ch.id] = ChargerSnapshot(
            id=ch.id,
            online=True,
            state=state,
            draw_a=draw_a,
            draw_w=draw_w,
            draw_at=NOW,
            session=Session(started_at=draw(st.floats(0, NOW))) if state.has_session else None,
        )
    # meters: measured = own non-EV load + EV draw beneath (physically consistent), or arbitrary
    stale: set[str] = set()
    readings: dict[str, MeterReading | None] = {}
    for m in site.meters.values():
        if allow_stale and draw(st.integers(0, 4)) == 0:
            stale.add(m.id)
            readings[m.id] = draw(
                st.sampled_from(
                    [None, MeterReading(current_a=(0.0,) * phases, at=NOW - 60), MeterReading(
                        current_a=(0.0,) * phases, at=NOW, valid=False, reason="test")]
                )
            )
            continue
        readings[m.id] = MeterReading(
            current_a=tuple(draw(st.floats(0, site.circuits[m.circuit].limit_a * 1.2)) for _ in range(phases)),
            at=NOW,
        )
    snapshot = Snapshot(taken_at=NOW, meters=readings, chargers=csnaps)
    return Case(site, snapshot, stale)


def _ev_draw_per_phase(site: Site, ch_id: str, cs: ChargerSnapshot) -> list[float]:
    ch = site.chargers[ch_id]
    P = site.service.phases
    out = [0.0] * P
    if cs.draw_a is not None:
        for p in ch.line_phases:
            out[p] = cs.draw_a[p]
        if len(ch.line_phases) == 2:
            m = max(out)
            for p in ch.line_phases:
                out[p] = m
    elif cs.draw_w is not None:
        a = cs.draw_w * _line_a_per_w(site, ch)
        for p in ch.line_phases:
            out[p] = a
    # a charger is believed to draw at most its maximum (more is a stale or broken report)
    top = ch.max_limit * (1.0 if ch.kind == "ac" else _line_a_per_w(site, ch))
    return [min(v, top) for v in out]


def _line_a_per_w(site: Site, ch: ChargerConfig) -> float:
    """Line current per W drawn by a DC charger (three-phase on a three-phase service, else one line at V)."""
    P = site.service.phases
    return 1.0 / (ch.efficiency * ch.power_factor * site.service.voltage_ll_v * (math.sqrt(3) if P == 3 else 1))


def _oracle_room(site: Site, s: Snapshot) -> dict[tuple[str, int], float]:
    """limit - margin - non-EV load for each fresh-metered or unmetered circuit and phase."""
    P = site.service.phases
    out: dict[tuple[str, int], float] = {}
    for cid, c in site.circuits.items():
        for p in range(P):
            if c.meter is not None:
                r = s.meters[c.meter]
                assert r is not None
                ev = sum(_ev_draw_per_phase(site, x, s.chargers[x])[p] for x in site.chargers_under[cid])
                non_ev = max(0.0, r.current_a[p] - ev)
            else:
                non_ev = c.worst_case_non_ev_a
            out[(cid, p)] = c.limit_a - c.margin_a - non_ev
    return out


def _allocated(site: Site, a: Allocation, cid: str, p: int) -> float:
    return sum(
        a.limits[x].line_a for x in site.chargers_under[cid] if p in site.chargers[x].line_phases
    )


def _check_basic(site: Site, a: Allocation) -> None:
    for cid, ch in site.chargers.items():
        lim = a.limits[cid]
        assert lim.reason, cid
        # (b) nothing strictly between 0 and the minimum
        assert lim.limit == 0 or lim.limit >= ch.min_limit - 1e-9, (cid, lim)
        # (c) never above the maximum
        assert lim.limit <= ch.max_limit + 1e-9, (cid, lim)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(cases(allow_stale=False))
def test_fresh_meters_never_overload_any_circuit_or_phase(case: Case) -> None:
    site, s = case.site, case.snapshot
    a = alloc(s, site, None, NOW)
    _check_basic(site, a)
    room = _oracle_room(site, s)
    for (cid, p), r in room.items():
        # (a) allocated EV current + non-EV load <= limit - margin (shed to 0 when even that is over)
        assert _allocated(site, a, cid, p) <= max(r, 0.0) + TOL, (cid, p, r, a.limits)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(cases(allow_stale=True))
def test_stale_meter_puts_every_charger_beneath_at_failsafe(case: Case) -> None:
    site, s = case.site, case.snapshot
    a = alloc(s, site, None, NOW)
    _check_basic(site, a)
    for mid in case.stale:
        circuit = site.meters[mid].circuit
        for x in site.chargers_under[circuit]:
            # (d)
            assert a.limits[x].limit == site.chargers[x].failsafe_limit, (mid, x, a.limits[x])
            assert a.limits[x].reason.startswith("failsafe:"), a.limits[x]
    if case.stale:
        assert a.mode in ("failsafe", "partial-failsafe")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(cases(allow_stale=False))
def test_work_conservation_every_shortfall_names_its_binding_constraint(case: Case) -> None:
    site, s = case.site, case.snapshot
    # one tick from no history: the allocator then believes every reported draw up to the charger's maximum,
    # as the oracle does (on later ticks only up to what the charger may draw: more conservative)
    a = alloc(s, site, None, NOW)
    room = _oracle_room(site, s)
    for cid, ch in site.chargers.items():
        lim = a.limits[cid]
        if lim.limit >= ch.max_limit - 0.1:
            continue
        # (e) below its cap: a reason that names what binds
        assert lim.reason.startswith(BINDING_PREFIXES), lim
        if lim.reason.startswith("capped:"):
            circuit, phase = lim.reason.removeprefix("capped:").split("/")
            p = int(phase[1]) - 1
            # what may be drawn there: every charger's reserve (a draw above its new limit stays reserved
            # until it has followed)
            reserved = sum(a.limits[x].may_draw_a for x in site.chargers_under[circuit]
                           if p in site.chargers[x].line_phases)
            # a session whose minimum does not fit in freed capacity yet waits (hold:in-flight): its share
            # stays unused until the others have followed
            waiting = sum(site.to_line_a(site.chargers[x], site.chargers[x].min_limit)
                          for x in site.chargers_under[circuit]
                          if a.limits[x].reason == "hold:in-flight" and p in site.chargers[x].line_phases)
            slack = max(room[(circuit, p)], 0.0) - reserved - waiting
            n_under = len(site.chargers_under[circuit])
            # the named constraint is tight, up to rounding each limit down to 0.1 of its unit
            per_step = max(site.to_line_a(site.chargers[x], 0.1) for x in site.chargers_under[circuit])
            assert slack <= n_under * per_step + TOL, (lim, slack)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(cases(allow_stale=False), st.lists(st.floats(0.2, 3.0), min_size=2, max_size=6))
def test_over_successive_ticks_safety_holds_and_increases_respect_the_ramp(case: Case, dts: list[float]) -> None:
    site, s = case.site, case.snapshot
    prev: Allocation | None = None
    now = NOW
    for dt in dts:
        now += dt
        meters = {
            m: MeterReading(current_a=r.current_a, at=now) if r is not None else None for m, r in s.meters.items()
        }
        cur = Snapshot(taken_at=now, meters=meters, chargers=s.chargers)
        a = alloc(cur, site, prev, now)
        _check_basic(site, a)
        room = _oracle_room(site, cur)
        # the allocator believes a draw only up to what the charger may draw, so its non-EV load is
        # at least the oracle's: the oracle's bound holds on every tick
        for (cid, p), r in room.items():
            assert _allocated(site, a, cid, p) <= max(r, 0.0) + TOL
        if prev is not None:
            for cid, ch in site.chargers.items():
                before, after = prev.limits[cid].limit, a.limits[cid].limit
                if after > before and before >= ch.min_limit:
                    # the ramp is in line current for AC and DC alike: the oracle's own A per W for DC
                    rate = site.control.ramp_up_a_per_s / (1.0 if ch.kind == "ac" else _line_a_per_w(site, ch))
                    assert after - before <= rate * min(dt, 5 * site.control.tick_s) + 0.1 + 1e-6, (cid, before, after)
        prev = a
