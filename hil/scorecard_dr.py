"""Scorecard figures for utility demand response (issue 16): per event the rig's VTN issued, its level at the
service, the service's peak during it, how soon the service was under the level, the time above it after that,
and (given the same scenario run without the events, and the ideal bounds) the EV energy lost to the events.

Definitions, per event (wall seconds since scenario time 0, and scenario seconds = wall x time scale):

* the event's *span*: from its start (dtstart as the VTN sent it) to its end, or its cancellation if earlier;
* ``level_a``: the event's import cap in A per line at the service, by the gateway's own mapping (SIMPLE level
  -> ``level<n>_kw``, a LOAD_DISPATCH setpoint in kW; :func:`gateway.electrical.service_line_current_a`);
* ``peak_a``: the service's highest true line current within the span (the recorded samples);
* ``time_to_under``: from the start to the first sample within the span at or below the level (0 when the
  span's first sample is under already: the VEN applies a cap ``lead_s`` before the start);
* ``response_bound``: what that may take: when the gateway can first know the event, the later of its issue
  + the VEN's poll interval (OpenADR 2.0b is polled: the VEN sees an event at its next poll) and its start -
  ``lead_s`` (the cap applies from then), + one gateway tick + the chargers' response (the larger of the
  gateway's ``ev_response_s`` and the slowest EV's response delay, + a charger's ramp from its maximum to zero
  + one charger sim tick), less the start, at least 0; + the gap between the samples either side of the
  crossing (the measurement's own granularity, wider when the sampler ran late on a loaded machine);
* ``above_after``: the samples after the service was first under the level, within the span, above it: split
  into ``external`` (within the allowed window after an upward base-load step: :func:`hil.scorecard.
  external_windows`, the same window as the overload figures) and ``other`` (the promise: 0);
* the gateway's own view from its log: when the VEN received the event (``openadr_event``), when its cap first
  applied (``openadr_event_applied``) and was released, and how many limits it set (a reason naming it:
  ``capped:openadr:<id>/L1``, or ``paused:openadr:<id>/L1`` for an EV paused below its minimum).

Energy: ``ev_energy_kwh`` delivered in this run (the EVs' own counters); with ``baseline`` (the scorecard of the
same scenario without demand response) ``lost_kwh`` = baseline - this run; with the ideal bounds
(:func:`hil.ideal.ideal_energy` without and with the events' levels as service caps) ``ideal_lost_kwh``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from gateway.config import site_from_dict
from hil.dr import DrEventSpec, dr_config
from hil.rig.runner import Recording
from hil.scenario import Scenario


def service_line_a(rec: Recording) -> np.ndarray:
    """Per sample, the service's highest line current (A)."""
    if not len(rec.times):
        return np.zeros(0)
    root = rec.circuit_ids.index(rec.site.root)
    return np.asarray(rec.circuit_a[:, root, :].max(axis=1), dtype=float)


def chargers_response_wall_s(rec: Recording) -> tuple[float, float]:
    """The slowest simulated EV's response delay and the slowest charger's ramp from its maximum to zero
    (wall seconds)."""
    sc, site, k = rec.scenario, rec.site, rec.scenario.time_scale
    delay = 0.0
    for s in rec.sessions:
        b = sc.behaviour_of(s.arrival.charger)
        delay = max(delay, (b.response_delay_s if b.response_delay_s is not None else s.arrival.response_delay_s) / k)
    ramp = 0.0
    for chid, cfg in site.chargers.items():
        b = sc.behaviour_of(chid)
        if b.ramp_down_per_s:
            ramp = max(ramp, cfg.max_limit / (b.ramp_down_per_s * k))
    return delay, ramp


def _charger_response_wall_s(rec: Recording) -> dict[str, float]:
    sc, site = rec.scenario, rec.site
    ev_resp = float(sc.gateway.control.get("ev_response_s", site.control.ev_response_s))
    delay, ramp = chargers_response_wall_s(rec)
    return {"ev_response_wall_s": max(ev_resp, delay), "ramp_wall_s": ramp,
            "charger_tick_wall_s": sc.charger_tick_wall_s}


def level_caps(sc: Scenario) -> list[tuple[float, float, float]]:
    """(start s, end s, level A) of every event (scenario s): the service caps for the ideal bound."""
    if sc.dr is None:
        return []
    cfg, service = dr_config(sc), site_from_dict(sc.site).service
    return [(e.start_s, e.end_s, a) for e in sc.dr.events if (a := e.level_a(cfg, service)) is not None]


def _gateway_view(rec: Recording, eid: str) -> dict[str, Any]:
    def first(event: str, **match: str) -> float | None:
        for e in rec.gateway_logs:
            if e.get("event") == event and all(str(e.get(k)) == v for k, v in match.items()):
                return round(float(e["_t"]), 3)
        return None

    capped = [e for e in rec.gateway_logs if e.get("event") == "limit_changed"
              and f"openadr:{eid}/" in str(e.get("reason", ""))]  # capped:openadr:<id>/L1, paused:openadr:...
    return {"received_wall_s": first("openadr_event", event_id=eid),
            "opt": next((str(e.get("opt")) for e in rec.gateway_logs
                         if e.get("event") == "openadr_event" and e.get("event_id") == eid), None),
            "applied_wall_s": first("openadr_event_applied", event_id=eid),
            "released_wall_s": first("openadr_event_released", event_id=eid),
            "first_capped_limit_wall_s": round(float(capped[0]["_t"]), 3) if capped else None,
            "capped_limits": len(capped)}


def event_figures(rec: Recording, ev: DrEventSpec, sent: Mapping[str, Any]) -> dict[str, Any]:
    from hil.scorecard import allowed_window_s, external_windows

    sc, site, k, t = rec.scenario, rec.site, rec.scenario.time_scale, rec.times
    cfg = dr_config(sc)
    level = ev.level_a(cfg, site.service)
    kw = ev.kw(cfg, site.service)
    out: dict[str, Any] = {"id": ev.id, "signal": ev.signal, "value": ev.value, "level_kw": kw,
                           "level_a": None if level is None else round(level, 2), **dict(sent)}
    if sent.get("issued_wall_s") is None or level is None or not len(t):
        out["judged"] = False
        return out
    start = float(sent["start_wall_s"])
    end = float(sent["end_wall_s"])
    if sent.get("cancelled_wall_s") is not None:
        end = min(end, float(sent["cancelled_wall_s"]))
    svc = service_line_a(rec)
    dt = np.diff(t, append=t[-1] + float(np.median(np.diff(t)))) if len(t) > 1 else np.full(len(t), sc.sample_wall_s)
    span = (t >= start - 1e-9) & (t < end)
    out.update({"span_wall_s": [round(start, 3), round(end, 3)], "span_s": [round(start * k, 1), round(end * k, 1)],
                "judged": bool(span.any())})
    if not span.any():
        return out
    first = int(np.flatnonzero(span)[0])
    under_idx = np.flatnonzero(span & (svc <= level + 1e-9))
    t_under = float(t[under_idx[0]]) if len(under_idx) else math.inf
    at_start = bool(len(under_idx) and under_idx[0] == first)  # the span's first sample is under already
    to_under = 0.0 if at_start else max(0.0, t_under - start)
    # the measurement's granularity: the crossing happened between the sample before t_under and t_under
    i = int(under_idx[0]) if len(under_idx) else first
    sample = float(t[i] - t[i - 1]) if i > 0 else sc.sample_wall_s
    tick = float(sc.gateway.control.get("tick_s", site.control.tick_s))
    poll = min(float(cfg.poll_interval_s), float(sc.dr.poll_s if sc.dr else cfg.poll_interval_s))
    resp = _charger_response_wall_s(rec)
    known = max(float(sent["issued_wall_s"]) + poll, start - cfg.lead_s)
    bound = max(0.0, known + tick + resp["ev_response_wall_s"] + resp["ramp_wall_s"] + resp["charger_tick_wall_s"]
                - start) + sample
    window = allowed_window_s(rec)
    ext = np.zeros(len(t), dtype=bool)
    for w0, w1, cids, _ in external_windows(rec, window):
        if site.root in cids:
            ext |= (t >= w0 - 1e-9) & (t <= w1 + 1e-9)
    after = span & (t >= t_under) & (svc > level + 1e-9)
    above_ext = float(dt[after & ext].sum())
    above_other = float(dt[after & ~ext].sum())
    peak = float(np.asarray(svc[span]).max())
    out.update({
        "peak_a": round(peak, 2), "peak_over_level_a": round(max(0.0, peak - level), 2),
        "under_at_start": at_start,
        "time_to_under_wall_s": round(to_under, 3) if math.isfinite(to_under) else None,
        "time_to_under_s": round(to_under * k, 1) if math.isfinite(to_under) else None,
        "response_bound_wall_s": round(bound, 3), "response_bound_s": round(bound * k, 1),
        "response_bound_parts_wall_s": {"known_from": round(known - start, 3), "poll": poll, "lead": cfg.lead_s,
                                        "tick": tick, **{k2: round(v, 3) for k2, v in resp.items()},
                                        "sample": round(sample, 3)},
        "within_bound": bool(math.isfinite(to_under) and to_under <= bound + 1e-9),
        "above_after_external_wall_s": round(above_ext, 3), "above_after_external_s": round(above_ext * k, 1),
        "above_after_other_wall_s": round(above_other, 3), "above_after_other_s": round(above_other * k, 1),
        "peak_after_under_other_a": round(float(svc[after & ~ext].max()), 2) if (after & ~ext).any() else None,
        "gateway": _gateway_view(rec, ev.id),
    })
    return out


def dr_card(rec: Recording) -> dict[str, Any] | None:
    """The demand-response figures of a run with [openadr]; None without."""
    sc = rec.scenario
    if sc.dr is None:
        return None
    sent = {e["id"]: e for e in rec.dr.get("events", [])}
    events = [event_figures(rec, ev, sent.get(ev.id, {"id": ev.id, "issued_wall_s": None})) for ev in sc.dr.events]
    judged = [e for e in events if e.get("judged")]
    return {
        "vtn": {k: v for k, v in rec.dr.items() if k != "events"},
        "events": events,
        "all_within_bound": bool(judged) and all(e["within_bound"] for e in judged),
        "above_after_other_wall_s": round(sum(e["above_after_other_wall_s"] for e in judged), 3),
        "ev_energy_kwh": round(sum(s.delivered_wh(sc.time_scale) for s in rec.sessions) / 1000.0, 3),
    }


def energy_lost(card: dict[str, Any], baseline: Mapping[str, Any] | None,
                ideal_without: Mapping[str, Any] | None = None, ideal_with: Mapping[str, Any] | None = None) -> None:
    """Put the energy lost to the events into ``card["dr"]``: against the run without them, and the ideal's."""
    dr = card.get("dr")
    if dr is None:
        return
    if baseline is not None:
        base = float(baseline.get("energy_kwh") or 0.0)
        dr["baseline_ev_energy_kwh"] = base
        dr["lost_kwh"] = round(base - float(card.get("energy_kwh") or 0.0), 3)
        dr["lost_pct"] = round(100.0 * dr["lost_kwh"] / base, 2) if base > 0 else None
    if ideal_without is not None and ideal_with is not None:
        a, b = ideal_without.get("energy_kwh"), ideal_with.get("energy_kwh")
        if a is not None and b is not None:
            dr["ideal_without_kwh"], dr["ideal_with_kwh"] = a, b
            dr["ideal_lost_kwh"] = round(float(a) - float(b), 3)


def dr_problems(card: Mapping[str, Any]) -> list[str]:
    """What ``--check`` fails on: an event not judged (the VTN could not issue it, no samples in its span), the
    service under a level later than its bound, or above a level after it was under (load steps aside)."""
    dr = card.get("dr")
    if not dr:
        return []
    out = [f"DR event {e['id']}: not judged ({e.get('error') or 'no samples in its span'})"
           for e in dr["events"] if not e.get("judged")]
    out += [f"DR event {e['id']}: under the level after {e['time_to_under_s']} s, bound {e['response_bound_s']} s"
            for e in dr["events"] if e.get("judged") and not e["within_bound"]]
    out += [f"DR event {e['id']}: {e['above_after_other_s']} s above the level after it was under"
            for e in dr["events"] if e.get("judged") and e["above_after_other_wall_s"] > 0]
    return out


def format_dr(card: Mapping[str, Any]) -> list[str]:
    dr = card.get("dr")
    if not dr:
        return []
    lines = []
    for e in dr["events"]:
        if not e.get("judged"):
            lines.append(f"  DR event {e['id']}: not judged ({e.get('error') or 'no samples in its span'})")
            continue
        g = e["gateway"]
        lines.append(
            f"  DR event {e['id']} ({e['signal']} {e['value']:g}: {e['level_kw']:g} kW = {e['level_a']:.1f} A/line), "
            f"span {e['span_s'][0]:.0f}-{e['span_s'][1]:.0f} s, issued at {e['issued_wall_s'] * card['time_scale']:.0f}"
            f" s: peak {e['peak_a']:.1f} A; under the level "
            + ("at the start" if e["under_at_start"] else f"after {e['time_to_under_s']} s")
            + f" (bound {e['response_bound_s']:.0f} s: {'ok' if e['within_bound'] else 'MISSED'}); above it after: "
            f"{e['above_after_other_s']:.1f} s other, {e['above_after_external_s']:.1f} s after load steps; gateway: "
            f"received {g['received_wall_s']} s, applied {g['applied_wall_s']} s wall, {g['capped_limits']} capped "
            "limits")
    if "lost_kwh" in dr:
        lines.append(f"  DR energy: {dr['ev_energy_kwh']:.2f} kWh with the events, {dr['baseline_ev_energy_kwh']:.2f}"
                     f" kWh without: lost {dr['lost_kwh']:.2f} kWh ({dr['lost_pct']} %)"
                     + (f"; ideal {dr['ideal_without_kwh']} -> {dr['ideal_with_kwh']} kWh (lost "
                        f"{dr['ideal_lost_kwh']} kWh)" if "ideal_lost_kwh" in dr else ""))
    return lines


__all__ = ["dr_card", "dr_problems", "energy_lost", "event_figures", "format_dr", "level_caps", "service_line_a"]
