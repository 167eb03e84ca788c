"""The scorecard of one HIL run: overload, response to load steps, energy, fairness, fail-safe time,
lost messages, the gateway's CPU and RSS. Durations are given in wall seconds (what the gateway lived
through, its tick and timers are wall time) and in scenario seconds (wall x time scale).

Definitions:

* overload: a circuit phase's true current above the circuit's ``limit_a`` (not limit - margin);
  ``a_s`` integrates (I - limit) over the samples above it; an *episode* is a run of consecutive
  samples above the limit; its duration runs from its first to its last sample plus one sample period.
* allowed window: one gateway tick + the chargers' response (the slowest EV response delay + the time
  to ramp the largest charger from its maximum to zero + one charger sim tick) + 0.5 s, wall seconds.
* external overload: a sample above the limit on a circuit within the allowed window after an upward
  base-load (non-EV) step of that circuit or of a circuit beneath it; an external episode must end within
  that window. Self-inflicted overload: every other sample above the limit (the loop's own doing: stale
  reports believed, capacity handed out before it was freed, a fail-safe that raises limits, ...); the
  promise is 0 A*s of it. Both in A*s (scenario time) and peak A per circuit and phase.
* late EVs (the rig's own lateness): a simulated EV still above a lowered limit after its declared response
  (its response delay + its ramp down + one charger sim tick + one sample) broke the promise the gateway
  plans with; on a starved machine the rig's processes run late, and at 90x a 0.1 s wall lag is 9 s of EV
  response. The part of an overload such EVs explain (at most their excess over their limits) is counted
  as ``rig_late`` apart, never as self-inflicted; what they do not explain stays self-inflicted.
* time to compliance after a load step, on the circuits the step loads: to the first sample within the
  limits after the first overload (0 when the step caused none), and to lasting compliance (the end of
  the last overload before the circuits stay within their limits for ``LASTING_S`` scenario seconds or
  the next step comes).
* a session got its requested energy when it received at least 99 % of (soc_target - soc_start) x
  capacity by its departure (sessions still plugged at the end are judged at the end).
* fairness: Jain's index of delivered/requested energy over the sessions of each priority class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from gateway.config import PHASES
from hil.rig.runner import Recording
from hil.scorecard_budget import budget_card, format_budget
from hil.scorecard_dr import chargers_response_wall_s, dr_card, format_dr

SATISFIED = 0.99


def jain(xs: list[float]) -> float | None:
    if not xs:
        return None
    s2 = sum(x * x for x in xs)
    return 1.0 if s2 == 0 else (sum(xs) ** 2) / (len(xs) * s2)


def allowed_window_s(rec: Recording) -> float:
    """One tick + the chargers' response + 0.5 s (wall seconds)."""
    sc, site = rec.scenario, rec.site
    tick = float(sc.gateway.control.get("tick_s", site.control.tick_s))
    delay, ramp = chargers_response_wall_s(rec)
    return tick + delay + ramp + sc.charger_tick_wall_s + 0.5


def _episodes(t: np.ndarray, over: np.ndarray, dt: float) -> list[tuple[int, int]]:
    """Index ranges [i, j] of consecutive samples where ``over`` is positive."""
    out: list[tuple[int, int]] = []
    start = None
    for i, o in enumerate(over > 1e-9):
        if o and start is None:
            start = i
        elif not o and start is not None:
            out.append((start, i - 1))
            start = None
    if start is not None:
        out.append((start, len(over) - 1))
    return out


def _cause(events: list[tuple[float, str, str]], t: float) -> str:
    best = ""
    for te, kind, detail in events:
        if te <= t + 1e-6 and kind not in ("start",):
            best = f"{kind} {detail}".strip() + f" at {te:.2f} s"
    return best


def external_windows(rec: Recording, window: float) -> list[tuple[float, float, frozenset[str], str]]:
    """(wall start, wall end, circuits it loads, cause) of every external event: an upward base-load step of
    a circuit loads that circuit and every circuit above it, for one allowed window."""
    site, k = rec.site, rec.scenario.time_scale
    out: list[tuple[float, float, frozenset[str], str]] = []
    for t_s, cid, inc in rec.scenario.load_steps():
        tw = t_s / k
        out.append((tw, tw + window, frozenset(site.path_to_root[cid]), f"load_step {cid} +{inc:.0f} A"))
    return out


def _masks(rec: Recording, windows: list[tuple[float, float, frozenset[str], str]]) -> list[np.ndarray]:
    """Per circuit, the samples within an external window of that circuit."""
    t = rec.times
    masks = []
    for cid in rec.circuit_ids:
        m = np.zeros(len(t), dtype=bool)
        for t0, t1, cids, _ in windows:
            if cid in cids:
                m |= (t >= t0 - 1e-9) & (t <= t1 + 1e-9)
        masks.append(m)
    return masks


def _charger_allowance_wall_s(rec: Recording, chid: str) -> tuple[float, float]:
    """(response delay, ramp-down rate in A per wall s) the scenario promises for a charger's EVs: the slowest
    of its sessions' delays (or its behaviour's), in wall seconds."""
    sc, k = rec.scenario, rec.scenario.time_scale
    b = sc.behaviour_of(chid)
    delays = [s.arrival.response_delay_s for s in rec.sessions if s.arrival.charger == chid]
    delay = b.response_delay_s if b.response_delay_s is not None else max(delays, default=0.0)
    ramp = b.ramp_down_per_s * k if b.ramp_down_per_s else math.inf
    return delay / k, ramp


def late_excess_a(rec: Recording, dt: float) -> np.ndarray:
    """[sample, circuit, phase] the line current by which EVs exceed their limits after their declared response
    to a decrease (see the module docstring): the rig's lateness, not the gateway's allocation."""
    site, t = rec.site, rec.times
    P = site.service.phases
    out = np.zeros((len(t), len(rec.circuit_ids), P))
    if not len(t) or not len(rec.charger_ids):
        return out
    col = {c: i for i, c in enumerate(rec.circuit_ids)}
    tick = rec.scenario.charger_tick_wall_s
    # a charger scripted to ignore its limit is the gateway's to handle: never an excuse
    ignoring = {f.target for f in rec.scenario.faults if f.kind == "noncompliant"}
    for j, chid in enumerate(rec.charger_ids):
        cfg = site.chargers.get(chid)
        if cfg is None or chid in ignoring:
            continue
        delay, ramp = _charger_allowance_wall_s(rec, chid)
        lim, draw = rec.charger_limit_a[:, j], rec.charger_draw_a[:, j]
        cols = [col[c] for c in site.path_to_root[cfg.circuit] if c in col]
        since = math.nan  # when the limit last fell below the draw, and from what
        start_draw = 0.0
        for i in range(len(t)):
            excess = draw[i] - lim[i]
            if excess <= 1e-9:
                since = math.nan
                continue
            if math.isnan(since) or (i and lim[i] < lim[i - 1] - 1e-9):
                since, start_draw = float(t[i]), float(draw[i - 1] if i else draw[i])
            allowance = delay + max(0.0, start_draw - lim[i]) / ramp + tick + dt
            if t[i] - since > allowance + 1e-9:
                for c in cols:
                    for p in cfg.line_phases:
                        out[i, c, p] += excess
    return out


def _overload(rec: Recording, window: float, dt: float) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """Overload per circuit and phase, split into external (within the allowed window after a base-load step
    of that circuit) and self-inflicted (any other), in A*s (scenario time) and peak A; the episodes."""
    site, k, t = rec.site, rec.scenario.time_scale, rec.times
    P = site.service.phases
    windows = external_windows(rec, window)
    masks = _masks(rec, windows)
    late = late_excess_a(rec, dt)
    overload: dict[str, Any] = {}
    episodes: list[dict[str, Any]] = []
    any_over = np.zeros((len(rec.circuit_ids), len(t)), dtype=bool)
    for ci, cid in enumerate(rec.circuit_ids):
        lim = site.circuits[cid].limit_a
        ext = masks[ci]
        per: dict[str, Any] = {}
        for p in range(P):
            cur = rec.circuit_a[:, ci, p] if len(t) else np.zeros(0)
            over = np.maximum(cur - lim, 0.0)
            any_over[ci] |= over > 1e-9
            excused = np.minimum(over, late[:, ci, p]) if len(t) else np.zeros(0)
            own, outside = np.where(ext, 0.0, over - excused), np.where(ext, over, 0.0)
            rig_late = np.where(ext, 0.0, excused)
            a_s = float(over.sum() * dt)
            eps = _episodes(t, over, dt)
            per[PHASES[p]] = {
                "peak_a": round(float(cur.max()) if len(cur) else 0.0, 1),
                "peak_over_a": round(float(over.max()) if len(over) else 0.0, 2),
                "a_s_wall": round(a_s, 3), "a_s": round(a_s * k, 1), "episodes": len(eps),
                "self_inflicted_a_s": round(float(own.sum() * dt * k), 1),
                "self_inflicted_peak_a": round(float(np.where(own > 0, cur, 0.0).max()) if len(cur) else 0.0, 1),
                "self_inflicted_peak_over_a": round(float(own.max()) if len(own) else 0.0, 2),
                "external_a_s": round(float(outside.sum() * dt * k), 1),
                "external_peak_a": round(float(np.where(outside > 0, cur, 0.0).max()) if len(cur) else 0.0, 1),
                "external_peak_over_a": round(float(outside.max()) if len(outside) else 0.0, 2),
                "rig_late_a_s": round(float(rig_late.sum() * dt * k), 1),
                "rig_late_peak_over_a": round(float(rig_late.max()) if len(rig_late) else 0.0, 2),
            }
            for i, j in eps:
                d = float(t[j] - t[i]) + dt
                start = float(t[i])
                cause = next((w for w in windows if cid in w[2] and w[0] - 1e-9 <= start <= w[1] + 1e-9), None)
                episodes.append({
                    "circuit": cid, "phase": PHASES[p], "start_wall_s": round(start, 3),
                    "start_s": round(start * k, 1), "duration_wall_s": round(d, 3),
                    "duration_s": round(d * k, 1), "peak_over_a": round(float(over[i:j + 1].max()), 2),
                    "a_s": round(float(over[i:j + 1].sum() * dt * k), 1), "after": _cause(rec.events, start),
                    "kind": "external" if cause is not None
                    else "self-inflicted" if own[i:j + 1].max() > 1e-9 else "rig-late",
                    "external_cause": None if cause is None else cause[3],
                    # an external episode must end within the window of its step; a self-inflicted one has none
                    "within_window": cause is not None and float(t[j]) <= cause[1] + 1e-9,
                })
        overload[cid] = {"limit_a": lim, "phases": per}
    return overload, episodes, any_over


LASTING_S = 300.0  # scenario seconds within the limits after which compliance counts as lasting


def _steps(rec: Recording, any_over: np.ndarray) -> list[dict[str, Any]]:
    """Per base-load step, on the circuits it loads: the time to the first sample within the limits, and the
    time to lasting compliance (the end of the last overload that is followed by LASTING_S within the limits,
    looking until the next step of any of those circuits)."""
    sc, site, k, t = rec.scenario, rec.site, rec.scenario.time_scale, rec.times
    col = {c: i for i, c in enumerate(rec.circuit_ids)}
    all_steps = sc.load_steps()
    out = []
    for t_s, cid, inc in all_steps:
        tw = t_s / k
        affected = [col[c] for c in site.path_to_root[cid]]
        nxt = min((t2 / k for t2, c2, _ in all_steps if t2 > t_s and set(site.path_to_root[c2]) & set(
            site.path_to_root[cid])), default=math.inf)
        over = any_over[affected].any(axis=0) if len(t) else np.zeros(0, dtype=bool)
        span = (t >= tw) & (t < nxt)
        idx = np.flatnonzero(span & over)
        first_ok = lasting = 0.0
        if len(idx):
            ok = np.flatnonzero(span & ~over & (t >= t[idx[0]]))
            first_ok = float(t[ok[0]]) - tw if len(ok) else math.inf
            gap = np.diff(np.concatenate((t[idx], [math.inf])))  # the last overload before the next step ends it
            last = next((int(idx[n]) for n in range(len(idx)) if gap[n] >= LASTING_S / k - 1e-9), len(t) - 1)
            # compliance from the sample after the last overload (never, if the run ends overloaded)
            lasting = float(t[last + 1]) - tw if last + 1 < len(t) else math.inf
        steps = {"at_s": t_s, "circuit": cid, "step_a": round(inc, 1)}
        for key, v in (("time_to_compliance", first_ok), ("time_to_lasting_compliance", lasting)):
            steps[f"{key}_wall_s"] = round(v, 3) if math.isfinite(v) else None
            steps[f"{key}_s"] = round(v * k, 1) if math.isfinite(v) else None
        out.append(steps)
    return out


def scorecard(rec: Recording, ideal: Mapping[str, Any] | None = None) -> dict[str, Any]:
    sc, site, k = rec.scenario, rec.site, rec.scenario.time_scale
    t = rec.times
    dt = float(np.median(np.diff(t))) if len(t) > 1 else sc.sample_wall_s
    window = allowed_window_s(rec)
    overload, episodes, any_over = _overload(rec, window, dt)
    steps = _steps(rec, any_over)

    # energy and sessions
    sessions: list[dict[str, Any]] = []
    classes: dict[str, list[float]] = {}
    for s in rec.sessions:
        a = s.arrival
        req = a.requested_wh
        got = s.delivered_wh(k)
        prio = site.chargers[a.charger].priority
        ok = got >= SATISFIED * req - 1e-6
        sessions.append({"charger": a.charger, "priority": prio, "arrival_s": a.at_s, "departure_s": a.departure_s,
                         "open_at_end": a.departure_s > sc.duration_s, "requested_kwh": round(req / 1000, 3),
                         "delivered_kwh": round(got / 1000, 3), "satisfied": ok, "plugged": s.plugged})
        if req > 0 and s.plugged:
            classes.setdefault(prio, []).append(min(1.0, got / req))
    total_kwh = sum(x["delivered_kwh"] for x in sessions)
    plugged = [x for x in sessions if x["plugged"]]
    fairness = {c: round(v, 4) for c, xs in classes.items() if (v := jain(xs)) is not None}

    # fail-safe time (from the gateway's log) and gateway down time (killed .. restarted)
    end = float(t[-1]) if len(t) else 0.0
    stays = failsafe_intervals(rec, end)
    fs, n_fs = sum(b - a for a, b, _ in stays), len(stays)
    down = 0.0
    killed: float | None = None
    for te, kind, _ in rec.events:
        if kind == "gateway_killed":
            killed = te
        elif kind == "gateway_restarted" and killed is not None:
            down += te - killed
            killed = None
    card: dict[str, Any] = {
        "scenario": sc.name, "mode": rec.mode, "time_scale": k, "duration_s": sc.duration_s,
        "duration_wall_s": round(sc.wall_duration_s, 1), "samples": len(t), "sample_wall_s": round(dt, 4),
        "chargers": len(site.chargers), "circuits": len(site.circuits),
        "allowed_window_wall_s": round(window, 3), "allowed_window_s": round(window * k, 1),
        "overload_peak_over_a": round(max((e["peak_over_a"] for e in episodes), default=0.0), 2),
        "overload_a_s": round(sum(e["a_s"] for e in episodes), 1),
        "overload_longest_wall_s": round(max((e["duration_wall_s"] for e in episodes), default=0.0), 3),
        "overload_episodes": len(episodes),
        "overload_episodes_beyond_window": sum(1 for e in episodes if not e["within_window"]),
        "self_inflicted_a_s": round(sum(ph["self_inflicted_a_s"] for c in overload.values()
                                        for ph in c["phases"].values()), 1),
        "self_inflicted_peak_over_a": max((ph["self_inflicted_peak_over_a"] for c in overload.values()
                                           for ph in c["phases"].values()), default=0.0),
        "self_inflicted_episodes": sum(1 for e in episodes if e["kind"] == "self-inflicted"),
        "external_a_s": round(sum(ph["external_a_s"] for c in overload.values() for ph in c["phases"].values()), 1),
        # overload the rig's late EVs explain (see the module docstring): reported, not the gateway's
        "rig_late_a_s": round(sum(ph["rig_late_a_s"] for c in overload.values() for ph in c["phases"].values()), 1),
        "rig_late_peak_over_a": max((ph["rig_late_peak_over_a"] for c in overload.values()
                                     for ph in c["phases"].values()), default=0.0),
        "external_peak_over_a": max((ph["external_peak_over_a"] for c in overload.values()
                                     for ph in c["phases"].values()), default=0.0),
        "external_episodes_beyond_window": sum(1 for e in episodes if e["kind"] == "external"
                                               and not e["within_window"]),
        "meter_interval_s": _meter_interval(rec),
        "overload": overload, "episodes": episodes[:200], "load_steps": steps,
        "energy_kwh": round(total_kwh, 2),
        "requested_kwh": round(sum(x["requested_kwh"] for x in plugged), 2),
        "sessions": len(plugged),
        "sessions_satisfied_share": round(sum(1 for x in plugged if x["satisfied"]) / len(plugged), 4)
        if plugged else None,
        "fairness_jain": fairness,
        "failsafe_wall_s": round(fs, 2), "failsafe_s": round(fs * k, 1), "failsafe_entries": n_fs,
        **failsafe_split(rec, end),
        "gateway_down_wall_s": round(down, 2),
        "messages": rec.messages, "messages_lost": rec.messages.get("lost"),
        **message_fields(rec),
        "gateway_process": rec.process, "rig_process": rec.rig_process,
        "session_detail": sessions,
        "events": [{"wall_s": round(te, 3), "s": round(te * k, 1), "kind": kind, "detail": d}
                   for te, kind, d in rec.events],
    }
    if rec.static_limits:
        card["static_limits"] = {c: round(v, 1) for c, v in rec.static_limits.items()}
    card.update(budget_card(rec))  # demand, cost and solar figures (issue 14)
    if (dr := dr_card(rec)) is not None:  # demand-response events (issue 16)
        card["dr"] = dr
    if ideal is not None:
        card["ideal"] = dict(ideal)
        ie = float(ideal.get("energy_kwh") or 0.0)
        card["energy_pct_of_ideal"] = round(100.0 * total_kwh / ie, 2) if ie > 0 else None
    return card


# ---- fail-safe: scripted faults against any other cause ----------------------------------------------
def failsafe_intervals(rec: Recording, end: float) -> list[tuple[float, float, frozenset[str]]]:
    """(wall start, wall end, meters named) of every stay in fail-safe (full or partial) in the gateway's log:
    from ``failsafe_entered`` to ``failsafe_left`` or ``gateway_stopping`` (or the end of the run); the meters
    are those named by every ``failsafe_entered`` on the way (a partial fail-safe that spreads logs again).
    A stay over before scenario time 0 (the gateway's start, before its first readings) is left out; one
    that began before it counts from 0."""
    out: list[tuple[float, float, frozenset[str]]] = []
    entered: float | None = None
    meters: set[str] = set()
    for e in rec.gateway_logs:
        ev = e.get("event")
        if ev == "failsafe_entered":
            if entered is None:
                entered, meters = float(e["_t"]), set()
            meters.update(str(m) for m in e.get("meters") or ())
        elif ev in ("failsafe_left", "gateway_stopping") and entered is not None:
            out.append((entered, float(e["_t"]), frozenset(meters)))
            entered = None
    if entered is not None:
        out.append((entered, max(entered, end), frozenset(meters)))
    return [(max(0.0, a), b, m) for a, b, m in out if b > 0.0]


def recovery_wall_s(rec: Recording) -> float:
    """What the gateway legitimately needs, after a meter answers again, to trust it: the pollers' backoff
    (at most ``stale_after_s``), a poll and its timeouts (with the retries), a tick, and 0.5 s (wall seconds)."""
    sc, site = rec.scenario, rec.site
    ov = sc.gateway.meters
    worst = 0.0
    for m in site.meters.values():
        stale = float(ov.get("stale_after_s", m.stale_after_s))
        poll = float(ov.get("poll_interval_s", m.poll_interval_s))
        timeout = float(ov.get("timeout_s", m.timeout_s))
        worst = max(worst, max(stale, poll) + poll + timeout * (m.retries + 1))
    return worst + float(sc.gateway.control.get("tick_s", site.control.tick_s)) + 0.5


def scripted_windows(rec: Recording, end: float) -> list[tuple[float, float, str, str]]:
    """(wall start, wall end, fault kind, target) of every scripted fault that may put the gateway in
    fail-safe, recovery included: a silent meter (from its silence to its return + the recovery) and a gateway
    restart (from the kill to the restarted gateway's readiness, as the rig's events say, + the recovery)."""
    sc, k = rec.scenario, rec.scenario.time_scale
    rec_s = recovery_wall_s(rec)
    out: list[tuple[float, float, str, str]] = []
    restarted = sorted(te for te, kind, _ in rec.events if kind == "gateway_restarted")
    for f in sc.faults:
        t0 = f.at_s / k
        t1 = (f.at_s + f.duration_s) / k if f.duration_s > 0 else end
        if f.kind == "meter_silent":
            out.append((t0, t1 + rec_s, f.kind, f.target))
        elif f.kind == "gateway_restart":
            back = next((te for te in restarted if te >= t0 - 1e-9), t1 if f.duration_s > 0 else end)
            out.append((t0, max(t1, back) + rec_s, f.kind, f.target))
    return out


def _overlap(a: float, b: float, spans: list[tuple[float, float]]) -> float:
    """The length of [a, b] covered by the union of ``spans``."""
    total, cur = 0.0, a
    for s, e in sorted(spans):
        s, e = max(s, cur), min(e, b)
        if e > s:
            total += e - s
            cur = e
    return total


def stale_cause(rec: Recording, at: float, before_s: float = 5.0) -> str:
    """Why the meters went stale just before ``at``, from the gateway's ``meter_stale`` lines: ``no_poll`` when
    none of them had a failed read (the gateway polled too late: its own loop or process starved),
    ``read_failed`` when one had (no answer in time: the simulator, or the gateway reading late), ``unknown``."""
    errors = [str(e.get("error") or "") for e in rec.gateway_logs
              if e.get("event") == "meter_stale" and at - before_s <= float(e["_t"]) <= at + 0.1]
    if not errors:
        return "unknown"
    return "read_failed" if any(errors) else "no_poll"


def failsafe_split(rec: Recording, end: float) -> dict[str, Any]:
    """Fail-safe time within the window of a scripted fault that explains it (a silent meter the gateway names,
    or a gateway restart) against any other (what the rig's promise is about: none), each other entry with
    the cause the gateway's log gives (:func:`stale_cause`)."""
    k = rec.scenario.time_scale
    windows = scripted_windows(rec, end)
    scripted = other = 0.0
    other_entries = 0
    causes: dict[str, int] = {}
    stays: list[dict[str, Any]] = []
    for a, b, meters in failsafe_intervals(rec, end):
        spans = [(s, e) for s, e, kind, target in windows
                 if kind == "gateway_restart" or not meters or target in meters]
        inside = _overlap(a, b, spans)
        scripted += inside
        other += max(0.0, (b - a) - inside)
        cause = "scripted"
        if not any(s - 1e-9 <= a <= e + 1e-9 for s, e in spans):
            other_entries += 1
            cause = stale_cause(rec, a)
            causes[cause] = causes.get(cause, 0) + 1
        if len(stays) < 50:
            stays.append({"start_wall_s": round(a, 3), "end_wall_s": round(b, 3), "meters": sorted(meters),
                          "scripted_wall_s": round(inside, 3), "other_wall_s": round(max(0.0, b - a - inside), 3),
                          "cause": cause})
    return {"failsafe_scripted_wall_s": round(scripted, 2), "failsafe_scripted_s": round(scripted * k, 1),
            "failsafe_other_wall_s": round(other, 2), "failsafe_other_s": round(other * k, 1),
            "failsafe_other_entries": other_entries, "failsafe_other_causes": causes,
            "failsafe_recovery_wall_s": round(recovery_wall_s(rec), 3),
            "failsafe_windows": [{"kind": kind, "target": tg, "start_wall_s": round(s, 3), "end_wall_s": round(e, 3)}
                                 for s, e, kind, tg in windows],
            "failsafe_stays": stays}


def message_fields(rec: Recording) -> dict[str, Any]:
    """Duplicated transaction messages at the CMS beside the lost ones (see :mod:`hil.rig.messages`)."""
    m = rec.messages
    return {"messages_duplicated": m.get("duplicates"), "messages_duplicated_same_id": m.get("duplicates_same_id"),
            "messages_duplicated_same_event": m.get("duplicates_same_event"),
            "messages_resent_after_kill": m.get("resent_after_kill")}


def _meter_interval(rec: Recording) -> float | str:
    """The chargers' MeterValues interval in scenario seconds (0: none), or "mixed"."""
    vals = {round(rec.scenario.meter_interval_wall_of(c) * rec.scenario.time_scale, 3) for c in rec.charger_ids}
    return vals.pop() if len(vals) == 1 else "mixed"


REQUIRED_KEYS = ("overload", "episodes", "load_steps", "energy_kwh", "sessions_satisfied_share", "fairness_jain",
                 "failsafe_wall_s", "messages_lost", "gateway_process", "allowed_window_wall_s",
                 "self_inflicted_a_s", "external_a_s", "external_episodes_beyond_window")


def format_card(card: Mapping[str, Any]) -> str:
    """The scorecard as a few lines of text."""
    lines = [f"scenario {card['scenario']} ({card['mode']}): {card['chargers']} chargers, "
             f"{card['duration_s'] / 3600:.2f} h at {card['time_scale']:g}x ({card['duration_wall_s']:g} s wall)"]
    lines.append(f"  overload: {card['overload_episodes']} episode(s), peak {card['overload_peak_over_a']:.1f} A over, "
                 f"{card['overload_a_s']:.1f} A*s, longest {card['overload_longest_wall_s']:.2f} s wall "
                 f"(window {card['allowed_window_wall_s']:.2f} s); beyond window: "
                 f"{card['overload_episodes_beyond_window']}")
    lines.append(f"  self-inflicted overload: {card['self_inflicted_a_s']:.1f} A*s, peak "
                 f"{card['self_inflicted_peak_over_a']:.1f} A over, {card['self_inflicted_episodes']} episode(s); "
                 f"external (after a base-load step): {card['external_a_s']:.1f} A*s, peak "
                 f"{card['external_peak_over_a']:.1f} A over, beyond the window: "
                 f"{card['external_episodes_beyond_window']}; chargers report every {card['meter_interval_s']} s")
    if card.get("rig_late_a_s"):
        lines.append(f"  the rig's late EVs (above a lowered limit after their declared response): "
                     f"{card['rig_late_a_s']:.1f} A*s of the overload, peak {card['rig_late_peak_over_a']:.1f} A over "
                     "(not the gateway's: the machine was too busy for the time scale)")
    for e in card["episodes"][:8]:
        lines.append(f"    {e['circuit']} {e['phase']} at {e['start_wall_s']:.2f} s: {e['duration_wall_s']:.2f} s wall "
                     f"({e['duration_s']:.0f} s), +{e['peak_over_a']:.1f} A, {e['kind']}, after {e['after'] or '-'}")
    for s in card["load_steps"]:
        ttc = s["time_to_compliance_wall_s"]
        lasting = s["time_to_lasting_compliance_s"]
        lines.append(f"  load step {s['circuit']} +{s['step_a']:.0f} A at {s['at_s']:g} s: compliant after "
                     + ("never" if ttc is None else f"{ttc:.2f} s wall ({s['time_to_compliance_s']:.0f} s)")
                     + ", lasting after " + ("never" if lasting is None else f"{lasting:.0f} s"))
    share = card["sessions_satisfied_share"]
    lines.append(f"  energy: {card['energy_kwh']:.1f} kWh delivered of {card['requested_kwh']:.1f} kWh requested; "
                 f"{card['sessions']} sessions, "
                 + (f"{100 * share:.0f} % got their energy" if share is not None else "none"))
    if "energy_pct_of_ideal" in card:
        lines.append(f"  ideal bound: {card['ideal'].get('energy_kwh')} kWh -> {card['energy_pct_of_ideal']} % of it")
    lines.append(f"  fairness (Jain, per class): {card['fairness_jain']}")
    lines.append(f"  fail-safe: {card['failsafe_wall_s']:.1f} s wall ({card['failsafe_entries']} entries); "
                 f"gateway down {card['gateway_down_wall_s']:.1f} s")
    lines.append(f"    of it in scripted faults (+ {card['failsafe_recovery_wall_s']:.2f} s recovery): "
                 f"{card['failsafe_scripted_wall_s']:.1f} s wall; any other: "
                 f"{card['failsafe_other_wall_s']:.1f} s wall ({card['failsafe_other_entries']} entries"
                 + "".join(f", {n} {c.replace('_', ' ')}" for c, n in card["failsafe_other_causes"].items()) + ")")
    m = card["messages"]
    lines.append(f"  messages: {m.get('tx_messages_sent')} transaction messages sent, "
                 f"{m.get('tx_messages_received_by_cms')} at the CMS, lost {m.get('lost')}, "
                 f"duplicated {m.get('duplicates')} (same id {m.get('duplicates_same_id')}, same event "
                 f"{m.get('duplicates_same_event')}), resent after a gateway kill {m.get('resent_after_kill')}, "
                 f"unacknowledged at end {m.get('unacknowledged_at_end')}")
    lines.extend(format_budget(card))
    lines.extend(format_dr(card))
    gp = card["gateway_process"]
    if gp:
        lines.append(f"  gateway process: CPU {gp['cpu_pct']} % of one core ({gp['cpu_s']} s), "
                     f"RSS peak {gp['rss_peak_mb']} MB, mean {gp['rss_mean_mb']} MB, {gp['starts']} start(s)")
    rp = card.get("rig_process") or {}
    if rp:
        lines.append(f"  rig: {rp['workers']} charger worker(s) of up to {rp['chargers_per_worker']} chargers; "
                     f"CPU % of one core: {rp['cpu_pct']}; EVs plugged in late by up to "
                     f"{rp.get('arrival_late_max_s', 0.0):.3f} s wall")
        ms = rp.get("meters") or {}
        if ms:
            lines.append(f"  meter simulators: {ms['requests']} requests, loop lag max {ms['loop_lag_max_ms']} ms "
                         f"({ms['loop_lags_over_50ms']} over 50 ms); RTU answers late by up to "
                         f"{ms['rtu_late_max_ms']} ms ({ms['rtu_late_frames']} of {ms['rtu_frames']} over 20 ms); "
                         f"nice {ms['nice']}")
    return "\n".join(lines)
