"""The scorecard of one HIL run: overload, response to load steps, energy, fairness, fail-safe time,
lost messages, the gateway's CPU and RSS. Durations are given in wall seconds (what the gateway lived
through, its tick and timers are wall time) and in scenario seconds (wall x time scale).

Definitions:

* overload: a circuit phase's true current above the circuit's ``limit_a`` (not limit - margin);
  ``a_s`` integrates (I - limit) over the samples above it; an *episode* is a run of consecutive
  samples above the limit; its duration runs from its first to its last sample plus one sample period.
* allowed window: one gateway tick + the chargers' response (the slowest EV response delay + the time
  to ramp the largest charger from its maximum to zero + one charger sim tick) + 0.5 s, wall seconds.
* time to compliance after a load step: from the step to the first sample at which no circuit is above
  its limit (0 when the step caused no overload).
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

SATISFIED = 0.99


def jain(xs: list[float]) -> float | None:
    if not xs:
        return None
    s2 = sum(x * x for x in xs)
    return 1.0 if s2 == 0 else (sum(xs) ** 2) / (len(xs) * s2)


def allowed_window_s(rec: Recording) -> float:
    """One tick + the chargers' response + 0.5 s (wall seconds)."""
    sc, site, k = rec.scenario, rec.site, rec.scenario.time_scale
    tick = float(sc.gateway.control.get("tick_s", site.control.tick_s))
    delay = 0.0
    for s in rec.sessions:
        b = sc.behaviour_of(s.arrival.charger)
        delay = max(delay, (b.response_delay_s if b.response_delay_s is not None else s.arrival.response_delay_s) / k)
    ramp = 0.0
    for chid, cfg in site.chargers.items():
        b = sc.behaviour_of(chid)
        if b.ramp_down_per_s:
            ramp = max(ramp, cfg.max_limit / (b.ramp_down_per_s * k))
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


def scorecard(rec: Recording, ideal: Mapping[str, Any] | None = None) -> dict[str, Any]:
    sc, site, k = rec.scenario, rec.site, rec.scenario.time_scale
    t = rec.times
    dt = float(np.median(np.diff(t))) if len(t) > 1 else sc.sample_wall_s
    window = allowed_window_s(rec)
    P = site.service.phases
    overload: dict[str, Any] = {}
    episodes: list[dict[str, Any]] = []
    any_over = np.zeros(len(t), dtype=bool)
    for ci, cid in enumerate(rec.circuit_ids):
        lim = site.circuits[cid].limit_a
        per: dict[str, Any] = {}
        for p in range(P):
            cur = rec.circuit_a[:, ci, p] if len(t) else np.zeros(0)
            over = np.maximum(cur - lim, 0.0)
            any_over |= over > 1e-9
            a_s = float(over.sum() * dt)
            eps = _episodes(t, over, dt)
            per[PHASES[p]] = {
                "peak_a": round(float(cur.max()) if len(cur) else 0.0, 1),
                "peak_over_a": round(float(over.max()) if len(over) else 0.0, 2),
                "a_s_wall": round(a_s, 3), "a_s": round(a_s * k, 1), "episodes": len(eps),
            }
            for i, j in eps:
                d = float(t[j] - t[i]) + dt
                episodes.append({
                    "circuit": cid, "phase": PHASES[p], "start_wall_s": round(float(t[i]), 3),
                    "start_s": round(float(t[i]) * k, 1), "duration_wall_s": round(d, 3),
                    "duration_s": round(d * k, 1), "peak_over_a": round(float(over[i:j + 1].max()), 2),
                    "a_s": round(float(over[i:j + 1].sum() * dt * k), 1), "after": _cause(rec.events, float(t[i])),
                    "within_window": d <= window + 1e-9,
                })
        overload[cid] = {"limit_a": lim, "phases": per}
    steps = []
    for t_s, cid, inc in sc.load_steps():
        tw = t_s / k
        idx = np.nonzero((t >= tw) & ~any_over)[0]
        first_ok = float(t[idx[0]]) if len(idx) else math.inf
        ttc = max(0.0, first_ok - tw)
        ttc = 0.0 if not any_over[(t >= tw) & (t < first_ok)].any() else ttc
        steps.append({"at_s": t_s, "circuit": cid, "step_a": round(inc, 1),
                      "time_to_compliance_wall_s": round(ttc, 3) if math.isfinite(ttc) else None,
                      "time_to_compliance_s": round(ttc * k, 1) if math.isfinite(ttc) else None})

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
                         "delivered_kwh": round(got / 1000, 3), "satisfied": ok, "plugged": s.model is not None})
        if req > 0 and s.model is not None:
            classes.setdefault(prio, []).append(min(1.0, got / req))
    total_kwh = sum(x["delivered_kwh"] for x in sessions)
    plugged = [x for x in sessions if x["plugged"]]
    fairness = {c: round(v, 4) for c, xs in classes.items() if (v := jain(xs)) is not None}

    # fail-safe time (from the gateway's log) and gateway down time (killed .. restarted)
    fs = 0.0
    entered: float | None = None
    n_fs = 0
    for e in rec.gateway_logs:
        if e.get("event") == "failsafe_entered" and entered is None:
            entered, n_fs = float(e["_t"]), n_fs + 1
        elif e.get("event") in ("failsafe_left", "gateway_stopping") and entered is not None:
            fs += float(e["_t"]) - entered
            entered = None
    end = float(t[-1]) if len(t) else 0.0
    if entered is not None:
        fs += max(0.0, end - entered)
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
        "overload": overload, "episodes": episodes[:200], "load_steps": steps,
        "energy_kwh": round(total_kwh, 2),
        "requested_kwh": round(sum(x["requested_kwh"] for x in plugged), 2),
        "sessions": len(plugged),
        "sessions_satisfied_share": round(sum(1 for x in plugged if x["satisfied"]) / len(plugged), 4)
        if plugged else None,
        "fairness_jain": fairness,
        "failsafe_wall_s": round(fs, 2), "failsafe_s": round(fs * k, 1), "failsafe_entries": n_fs,
        "gateway_down_wall_s": round(down, 2),
        "messages": rec.messages, "messages_lost": rec.messages.get("lost"),
        "gateway_process": rec.process,
        "session_detail": sessions,
        "events": [{"wall_s": round(te, 3), "s": round(te * k, 1), "kind": kind, "detail": d}
                   for te, kind, d in rec.events],
    }
    if rec.static_limits:
        card["static_limits"] = {c: round(v, 1) for c, v in rec.static_limits.items()}
    if ideal is not None:
        card["ideal"] = dict(ideal)
        ie = float(ideal.get("energy_kwh") or 0.0)
        card["energy_pct_of_ideal"] = round(100.0 * total_kwh / ie, 2) if ie > 0 else None
    return card


REQUIRED_KEYS = ("overload", "episodes", "load_steps", "energy_kwh", "sessions_satisfied_share", "fairness_jain",
                 "failsafe_wall_s", "messages_lost", "gateway_process", "allowed_window_wall_s")


def format_card(card: Mapping[str, Any]) -> str:
    """The scorecard as a few lines of text."""
    lines = [f"scenario {card['scenario']} ({card['mode']}): {card['chargers']} chargers, "
             f"{card['duration_s'] / 3600:.2f} h at {card['time_scale']:g}x ({card['duration_wall_s']:g} s wall)"]
    lines.append(f"  overload: {card['overload_episodes']} episode(s), peak {card['overload_peak_over_a']:.1f} A over, "
                 f"{card['overload_a_s']:.1f} A*s, longest {card['overload_longest_wall_s']:.2f} s wall "
                 f"(window {card['allowed_window_wall_s']:.2f} s); beyond window: "
                 f"{card['overload_episodes_beyond_window']}")
    for e in card["episodes"][:8]:
        lines.append(f"    {e['circuit']} {e['phase']} at {e['start_wall_s']:.2f} s: {e['duration_wall_s']:.2f} s wall "
                     f"({e['duration_s']:.0f} s), +{e['peak_over_a']:.1f} A, after {e['after'] or '-'}")
    for s in card["load_steps"]:
        ttc = s["time_to_compliance_wall_s"]
        lines.append(f"  load step {s['circuit']} +{s['step_a']:.0f} A at {s['at_s']:g} s: compliant after "
                     + ("never" if ttc is None else f"{ttc:.2f} s wall ({s['time_to_compliance_s']:.0f} s)"))
    share = card["sessions_satisfied_share"]
    lines.append(f"  energy: {card['energy_kwh']:.1f} kWh delivered of {card['requested_kwh']:.1f} kWh requested; "
                 f"{card['sessions']} sessions, "
                 + (f"{100 * share:.0f} % got their energy" if share is not None else "none"))
    if "energy_pct_of_ideal" in card:
        lines.append(f"  ideal bound: {card['ideal'].get('energy_kwh')} kWh -> {card['energy_pct_of_ideal']} % of it")
    lines.append(f"  fairness (Jain, per class): {card['fairness_jain']}")
    lines.append(f"  fail-safe: {card['failsafe_wall_s']:.1f} s wall ({card['failsafe_entries']} entries); "
                 f"gateway down {card['gateway_down_wall_s']:.1f} s")
    m = card["messages"]
    lines.append(f"  messages: {m.get('tx_messages_sent')} transaction messages sent, "
                 f"{m.get('tx_messages_received_by_cms')} at the CMS, lost {m.get('lost')}, "
                 f"unacknowledged at end {m.get('unacknowledged_at_end')}")
    gp = card["gateway_process"]
    if gp:
        lines.append(f"  gateway process: CPU {gp['cpu_pct']} % of one core ({gp['cpu_s']} s), "
                     f"RSS peak {gp['rss_peak_mb']} MB, mean {gp['rss_mean_mb']} MB, {gp['starts']} start(s)")
    return "\n".join(lines)
