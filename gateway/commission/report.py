"""Step 5, the report: one HTML page (plots as inline SVG, no external files) and its PDF.

Readable in five minutes: the verdict and what to fix first, then the site (circuit tree, setpoints,
fail-safe budget, load calculation), the measured responses, the inventory, the marking statement
and the signature lines. The PDF is the HTML printed by headless chromium.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def fmt(v: Any, digits: int = 1, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    h = "".join(f"<th>{e(x)}</th>" for x in head)
    body = []
    for r in rows:
        cells = []
        for x in r:
            s = str(x)
            bad = s.startswith(("FAIL", "NO", "MISMATCH")) or s == "✗"
            cells.append(f'<td class="{"bad" if bad else ""}">{e(x) if not s.startswith("<") else s}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# -- plots ---------------------------------------------------------------------------------------
def svg_plot(
    series: Sequence[tuple[str, str, Sequence[tuple[float, float]], bool]],
    *,
    x_label: str,
    y_label: str,
    vlines: Sequence[tuple[float, str]] = (),
    hlines: Sequence[tuple[float, str, str]] = (),
    width: int = 720,
    height: int = 250,
) -> str:
    """A line plot: series are (label, colour, points, dashed)."""
    pts = [p for _, _, ps, _ in series for p in ps]
    if not pts:
        return "<p><i>no data</i></p>"
    xs = [p[0] for p in pts] + [v for v, _ in vlines]
    ys = [p[1] for p in pts] + [h for h, _, _ in hlines] + [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = 0.0, max(ys) * 1.08 or 1.0
    if x1 - x0 < 1e-9:
        x1 = x0 + 1.0
    L, R, T, B = 52, 150, 10, 34
    pw, ph = width - L - R, height - T - B

    def X(x: float) -> float:
        return L + (x - x0) / (x1 - x0) * pw

    def Y(y: float) -> float:
        return T + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="plot" '
           f'viewBox="0 0 {width} {height}">',
           f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for k in range(6):
        yv = y0 + (y1 - y0) * k / 5
        out.append(f'<line x1="{L}" x2="{L + pw}" y1="{Y(yv):.1f}" y2="{Y(yv):.1f}" stroke="#eee"/>'
                   f'<text x="{L - 4}" y="{Y(yv) + 4:.1f}" text-anchor="end" font-size="10">{yv:.0f}</text>')
    xd = 0 if x1 - x0 >= 12 else 1
    for k in range(7):
        xv = x0 + (x1 - x0) * k / 6
        out.append(f'<text x="{X(xv):.1f}" y="{T + ph + 14}" text-anchor="middle" font-size="10">{xv:.{xd}f}</text>')
    out.append(f'<text x="{L + pw / 2}" y="{height - 4}" text-anchor="middle" font-size="11">{e(x_label)}</text>')
    out.append(f'<text x="12" y="{T + ph / 2}" text-anchor="middle" font-size="11" '
               f'transform="rotate(-90 12 {T + ph / 2})">{e(y_label)}</text>')
    for v, label in vlines:
        out.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{T}" y2="{T + ph}" stroke="#555" '
                   f'stroke-dasharray="2,3"/><text x="{X(v) + 3:.1f}" y="{T + 11}" font-size="10">{e(label)}</text>')
    legend = []
    for h, label, color in hlines:
        out.append(f'<line x1="{L}" x2="{L + pw}" y1="{Y(h):.1f}" y2="{Y(h):.1f}" stroke="{color}" '
                   'stroke-width="1.5" stroke-dasharray="6,3"/>')
        legend.append((label, color, True))
    for label, color, ps, dashed in series:
        if not ps:
            continue
        d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in ps)
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')
        legend.append((label, color, dashed))
    for i, (label, color, dashed) in enumerate(legend[:16]):
        y = T + 8 + i * 14
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        out.append(f'<line x1="{L + pw + 8}" x2="{L + pw + 28}" y1="{y}" y2="{y}" stroke="{color}" '
                   f'stroke-width="2"{dash}/><text x="{L + pw + 32}" y="{y + 4}" font-size="10">{e(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def circuit_tree_svg(site: dict[str, Any]) -> str:
    """The circuit tree: one box per circuit (limit, margin, meter and its CTs), chargers counted beneath."""
    circuits = site["circuits"]
    children: dict[str | None, list[dict[str, Any]]] = {}
    for c in circuits:
        children.setdefault(c["parent"], []).append(c)
    meters = {m["id"]: m for m in site["meters"]}
    rows: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str | None, depth: int) -> None:
        for c in children.get(parent, []):
            rows.append((depth, c))
            walk(c["id"], depth + 1)

    walk(None, 0)
    bw, bh, dx, dy = 330, 40, 40, 50
    width = 40 + max((d for d, _ in rows), default=0) * dx + bw + 20
    height = len(rows) * dy + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="tree">']
    pos: dict[str, tuple[float, float]] = {}
    direct = {c["id"]: [ch for ch in site["chargers"] if ch["circuit"] == c["id"]] for c in circuits}
    for i, (d, c) in enumerate(rows):
        x, y = 10 + d * dx, 5 + i * dy
        pos[c["id"]] = (x, y)
        if c["parent"] in pos:
            px, py = pos[c["parent"]]
            out.append(f'<polyline points="{px + 12},{py + bh} {px + 12},{y + bh / 2} {x},{y + bh / 2}" '
                       'fill="none" stroke="#666"/>')
        m = meters.get(c["meter"]) if c.get("meter") else None
        fill = "#eef6ff" if m else "#f7f7f7"
        out.append(f'<rect x="{x}" y="{y}" width="{bw}" height="{bh}" rx="4" fill="{fill}" stroke="#446"/>')
        out.append(f'<text x="{x + 6}" y="{y + 15}" font-size="12" font-weight="bold">{e(c["id"])} '
                   f'<tspan font-weight="normal">({e(c["kind"])}) {c["limit_a"]:g} A, margin {c["margin_a"]:g} A'
                   f'</tspan></text>')
        if m:
            ct = f'meter {m["id"]} ({m["map"]}), CT ratio {m["ct_ratio"]:g}{", inverted" if m["invert"] else ""}, ' \
                 f'CTs {"/".join(m["phase_map"])}'
        else:
            ct = "no meter (bounded by its parent)"
        n = len(direct[c["id"]])
        out.append(f'<text x="{x + 6}" y="{y + 31}" font-size="10">{e(ct)}; {n} charger{"s" if n != 1 else ""}'
                   '</text>')
        if m:  # the CT symbol on the feed into the box
            out.append(f'<circle cx="{x - 5 if d else x + bw + 8}" cy="{y + bh / 2}" r="5" fill="none" '
                       'stroke="#c00" stroke-width="2"/>')
    out.append("</svg>")
    return "".join(out)


# -- the load calculation -------------------------------------------------------------------------
def load_calculation(site: dict[str, Any]) -> list[dict[str, Any]]:
    """Per circuit: with an automatic load management system, the EV load in the load calculation is the
    EMS setpoint (NEC 625.42(A), 750.30): rating - margin - worst-case non-EV load; the connected EVSE load
    beyond it is what the system allows on top of the service."""
    chargers = {c["id"]: c for c in site["chargers"]}
    n = len(site["phases"])
    out = []
    for c in site["circuits"]:
        connected = [0.0] * n
        for k in c["chargers"]:
            ch = chargers[k]
            for p in ch["line_phases"]:
                connected[p] += ch["max_line_a"]
        setpoint = c["limit_a"] - c["margin_a"]
        ev_allowed = max(0.0, setpoint - c["worst_case_non_ev_a"])
        worst = max(connected) if connected else 0.0
        budget = max(c["failsafe_budget_a"]) if c["failsafe_budget_a"] else 0.0
        out.append({
            "circuit": c["id"], "rating_a": c["limit_a"], "setpoint_a": setpoint,
            "non_ev_a": c["worst_case_non_ev_a"], "ev_allowed_a": ev_allowed, "connected_a": worst,
            "beyond_a": max(0.0, worst + c["worst_case_non_ev_a"] - c["limit_a"]),
            "ratio": worst / ev_allowed if ev_allowed > 0 else None,
            "calc_load_a": c["worst_case_non_ev_a"] + min(ev_allowed, worst),
            "failsafe_a": budget, "failsafe_ok": budget <= c["limit_a"] - c["margin_a"] + 1e-9,
        })
    return out


# -- sections -------------------------------------------------------------------------------------
def verdict(r: dict[str, Any]) -> tuple[bool, list[str]]:
    todo: list[str] = []
    for f in (r.get("wiring") or {}).get("findings", []):
        if not f["ok"]:
            fix = f" Fix: {f['fix']}" if f["fix"] else ""
            todo.append(f"Wiring ({f['check']}, meter {f['meter']}): {f['detail']}.{fix}")
    for t in r.get("load_tests", []):
        for res in t.get("results", []):
            if not res["passed"]:
                todo.append(f"Load test on {t['circuit']}: {res['charger']}: {res['status']}")
    for row in r.get("failsafe_test") or []:
        if not row["installed"]:
            todo.append(f"Fail-safe: {row['charger']} has no fail-safe profile installed")
        elif row["tested"] and not row["passed"]:
            todo.append(f"Fail-safe: {row['charger']} did not fall back to {row['failsafe_limit']:g} {row['unit']} "
                        f"(read back {fmt(row.get('during'))})")
    for ch in (r.get("inventory") or {}).get("chargers", []):
        if ch["follows_limit"] == "NO":
            todo.append(f"Charger {ch['id']} does not follow its limit (flagged by the gateway)")
        if not ch["online"]:
            todo.append(f"Charger {ch['id']} is offline")
    for c in load_calculation(r["site"]):
        if not c["failsafe_ok"]:
            todo.append(f"Fail-safe budget of {c['circuit']} ({c['failsafe_a']:.1f} A) exceeds its setpoint")
    for ch in (r.get("verify") or {}).get("changes", []):
        todo.append(f"Changed since the last report: {ch}")
    for s in r.get("steps", []):
        if not s["ok"]:
            todo.append(f"Step {s['step']} did not complete: {s.get('error')}")
    return not todo, todo


def _load_test_section(site: dict[str, Any], t: dict[str, Any]) -> str:
    parts = [f"<h3>Circuit {e(t['circuit'])} (meter {e(t['meter'])})</h3>"]
    if t.get("skipped"):
        return parts[0] + f"<p>Not run: {e(t['skipped'])}</p>"
    t_on, t_off = t["t_on"], t["t_off"]
    parts.append(f"<p>Simulated load {t['load_a']:g} A per phase added to the meter's reading for "
                 f"{t_off - t_on:.1f} s (EV current before: {t['ev_before_a']:.1f} A; limit {t['limit_a']:g} A, "
                 f"setpoint {t['limit_a'] - t['margin_a']:g} A).</p>")
    samples = t["samples"]
    meter_pts = [(s["t"] - t_on, max(s["meter_a"])) for s in samples if s["meter_a"]]
    with_load = [(x, y + (t["load_a"] if 0 <= x <= t_off - t_on else 0.0)) for x, y in meter_pts]
    parts.append(svg_plot(
        [("measured (real)", COLORS[0], meter_pts, False), ("measured + test load", COLORS[1], with_load, True)],
        x_label="s from injection", y_label="A (highest phase)",
        vlines=[(0.0, "load on"), (t_off - t_on, "load off")],
        hlines=[(t["limit_a"] - t["margin_a"], "setpoint", "#000")],
    ))
    chargers = {c["id"]: c for c in site["chargers"]}
    series = []
    shown = [res["charger"] for res in t["results"] if res["status"] not in ("idle", "not lowered")][:8]
    for i, cid in enumerate(shown):
        col = COLORS[i % len(COLORS)]
        ch = chargers[cid]
        lim = [(s["t"] - t_on, s["chargers"][cid]["limit"]) for s in samples if s["chargers"][cid]["limit"] is not None]
        draw = [(s["chargers"][cid]["draw_at"] - t_on, s["chargers"][cid]["draw"]) for s in samples
                if s["chargers"][cid]["draw"] is not None and s["chargers"][cid]["draw_at"] is not None]
        draw = sorted(set(draw))
        if ch["unit"] == "W":
            lim = [(x, y / 1000) for x, y in lim]
            draw = [(x, y / 1000) for x, y in draw]
        series.append((f"{cid} limit", col, lim, True))
        series.append((f"{cid} draw", col, draw, False))
    if series:
        unit = "A per phase (AC) / kW (DC)" if any(chargers[c]["unit"] == "W" for c in shown) else "A per phase"
        parts.append(svg_plot(series, x_label="s from injection", y_label=unit,
                              vlines=[(0.0, "load on"), (t_off - t_on, "load off")]))
    rows = []
    for res in t["results"]:
        u = res["unit"]
        rows.append([res["charger"], fmt(res.get("limit_before"), 0, f" {u}"),
                     fmt(res.get("limit_lowered"), 0, f" {u}"),
                     fmt(res.get("decided_s"), 1, " s"), fmt(res.get("accepted_s"), 1, " s"),
                     fmt(res.get("under_s"), 1, " s"), fmt(res.get("recovered_s"), 1, " s"),
                     "pass" if res["passed"] and res["status"] == "pass" else res["status"]])
    parts.append(table(["charger", "limit before", "lowered to", "decided", "accepted", "draw under limit",
                        "limit recovered", "result"], rows))
    parts.append("<p class='note'>Times from the injection (decided, accepted, draw under the limit: the charger's "
                 "own measurement time) and from the removal (limit recovered).</p>")
    return "".join(parts)


def render_html(r: dict[str, Any]) -> str:
    site = r["site"]
    ok, todo = verdict(r)
    P = site["phases"]
    sec: list[str] = []
    sec.append(f"<h1>Commissioning report: {e(site['name'] or site['id'])}</h1>")
    sec.append(table(["site", "date", "gateway version", "config hash", "mode at start"],
                     [[site["id"], r["date"], r["version"], r["config_hash"], r.get("mode", "")]], "meta"))
    head = "PASS: every check passed" if ok else f"ACTION NEEDED: {len(todo)} item{'s' if len(todo) != 1 else ''}"
    sec.append(f'<div class="verdict {"ok" if ok else "bad"}">{e(head)}</div>')
    if todo:
        sec.append("<ol class='todo'>" + "".join(f"<li>{e(x)}</li>" for x in todo) + "</ol>")
    sec.append("<p>Steps run: " + ", ".join(
        f"{e(s['step'])} ({'done' if s['ok'] else 'FAILED'}, {s['s']:g} s)" for s in r["steps"]) + ".</p>")

    sec.append("<h2>1. Circuit tree, limits, meters and CT placement</h2>")
    sec.append(circuit_tree_svg(site))
    sec.append("<p class='note'>Red circle: current transformers (CTs) of the circuit's meter, on its feed. "
               "An unmetered circuit is bounded by the limits of the chargers beneath and its metered parent.</p>")

    sec.append("<h2>2. Setpoints and fail-safe</h2>")
    ctl, oc = site["control"], site["ocpp"]
    sec.append(table(["circuit", "limit", "margin", "EMS setpoint", "worst-case non-EV",
                      *[f"fail-safe budget {p}" for p in P], "fail-safe within setpoint"],
                     [[c["id"], f"{c['limit_a']:g} A", f"{c['margin_a']:g} A", f"{c['limit_a'] - c['margin_a']:g} A",
                       f"{c['worst_case_non_ev_a']:g} A", *[f"{a:.1f} A" for a in c["failsafe_budget_a"]],
                       "yes" if max(c["failsafe_budget_a"]) <= c["limit_a"] - c["margin_a"] + 1e-9 else "NO"]
                      for c in site["circuits"]]))
    sec.append(f"<p>Control: tick {ctl['tick_s']:g} s, ramp-up {ctl['ramp_up_a_per_s']:g} A/s, EV response allowance "
               f"{ctl['ev_response_s']:g} s, non-compliance tolerance {ctl['noncompliance_tolerance_a']:g} A. "
               f"OCPP: limit profiles leased for {oc['lease_s']:g} s at stack level {oc['limit_stack_level']} above "
               f"a persistent fail-safe profile at stack level {oc['failsafe_stack_level']}: a charger that loses "
               "the gateway falls back to its fail-safe limit when the lease lapses.</p>")
    sec.append(table(["charger", "circuit", "phases", "min", "max", "fail-safe limit", "fail-safe line current"],
                     [[c["id"], c["circuit"], "/".join(P[p] for p in c["line_phases"]),
                       f"{c['min_limit']:g} {c['unit']}", f"{c['max_limit']:g} {c['unit']}",
                       f"{c['failsafe_limit']:g} {c['unit']}", f"{c['failsafe_line_a']:.1f} A"]
                      for c in site["chargers"]]))

    sec.append("<h2>3. Load calculation (NEC 625.42(A), 750.30)</h2>")
    sec.append("<p>With an automatic load management system the EV load in the load calculation is the "
               "maximum the system permits: the EMS setpoint less the worst-case non-EV load. The connected EVSE "
               "load may exceed it; the gateway keeps the sum within the setpoint.</p>")
    rows = [[c["circuit"], f"{c['rating_a']:g} A", f"{c['setpoint_a']:g} A", f"{c['non_ev_a']:g} A",
             f"{c['ev_allowed_a']:.1f} A", f"{c['calc_load_a']:.1f} A", f"{c['connected_a']:.1f} A",
             f"{c['beyond_a']:.1f} A", fmt(c["ratio"], 2, "×")] for c in load_calculation(site)]
    sec.append(table(["circuit", "rating", "EMS setpoint", "non-EV (worst case)", "EV load (EMS setpoint)",
                      "calculated load", "connected EVSE", "connected beyond rating", "connected / EV allowed"], rows))

    if r.get("wiring"):
        sec.append("<h2>4. Meter wiring</h2>")
        rows = [[f["meter"], f["check"], f.get("charger", ""), "ok" if f["ok"] else "MISMATCH", f["detail"],
                 f["fix"]] for f in r["wiring"]["findings"]]
        sec.append(table(["meter", "check", "charger", "result", "observed", "fix"], rows))
        steps = r["wiring"].get("steps", [])
        if steps:
            sec.append(table(["charger", "configured on", "meter step per phase", "charger step"],
                             [[s["charger"], P[s["expected"]],
                               " / ".join(f"{P[i]} {d:+.1f} A" for i, d in enumerate(s["moved"])),
                               f"{s['charger_step_a']:.1f} A"] for s in steps]))

    if r.get("load_tests") is not None:
        sec.append("<h2>5. Simulated-load test: response times</h2>")
        for t in r["load_tests"]:
            sec.append(_load_test_section(site, t))

    if r.get("failsafe_test") is not None:
        sec.append("<h2>6. Fail-safe test</h2>")
        sec.append("<p>Per charger, a short test lease: its limit profile lapses, the charger's composite schedule "
                   "(GetCompositeSchedule) must show the fail-safe limit, then the limit again.</p>")
        rows = [[x["charger"], "yes" if x["installed"] else "NO", f"{x['failsafe_limit']:g} {x['unit']}",
                 fmt(x.get("limit"), 0), fmt(x.get("during"), 0), fmt(x.get("after"), 0),
                 ("pass" if x["passed"] else "FAIL") if x["tested"] else "not tested", x.get("note", "")]
                for x in r["failsafe_test"]]
        sec.append(table(["charger", "fail-safe installed", "fail-safe limit", "limit before", "during lapse",
                          "after", "result", "note"], rows))

    inv = r.get("inventory")
    if inv:
        sec.append("<h2>7. Inventory</h2>")
        sec.append(table(["charger", "vendor", "model", "serial", "firmware", "OCPP", "security profile", "purpose",
                          "profiles accepted", "max stack level", "follows limit", "online"],
                         [[c["id"], c["vendor"], c["model"], c["serial"], c["firmware"], c["ocpp_version"],
                           c["security_profile"], c["purpose"], c["profiles_accepted"], c["max_stack_level"],
                           c["follows_limit"], "yes" if c["online"] else "NO"] for c in inv["chargers"]]))
        sec.append(table(["meter", "circuit", "map", "CT ratio", "direction", "CTs on", *[f"reading {p}" for p in P],
                          "power", "valid"],
                         [[m["id"], m["circuit"], m["map"], f"{m['ct_ratio']:g}",
                           "inverted" if m["invert"] else "normal", "/".join(m["phase_map"]),
                           *([f"{a:.1f} A" for a in m["reading_a"]] if m["reading_a"] else ["—"] * len(P)),
                           fmt(m["total_power_w"], 0, " W"), "yes" if m["valid"] else f"NO {m['reason']}"]
                          for m in inv["meters"]]))
    v = r.get("verify")
    if v:
        sec.append("<h2>8. Compared with the last report</h2>")
        sec.append(f"<p>Last report: {e(v.get('previous_date'))}.</p>")
        sec.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in v["changes"]) + "</ul>" if v["changes"]
                   else "<p>No change.</p>")

    sec.append("<h2>Marking and signatures</h2>")
    lc = {c["circuit"]: c for c in load_calculation(site)}
    root = lc[site["service"]["id"]]
    sec.append(f"<p class='marking'>This installation's electric vehicle supply equipment is controlled by an "
               f"automatic load management system (ems-gateway {e(r['version'])}, configuration {e(r['config_hash'])}) "
               f"per NEC 625.42(A). The maximum EV load it permits on service {e(site['service']['id'])} is "
               f"{root['ev_allowed_a']:.0f} A per phase at {site['service']['voltage_ll_v']:g} V "
               f"(setpoint {root['setpoint_a']:g} A of a {root['rating_a']:g} A rating). On loss of control each "
               "charger falls back to the fail-safe limit listed in section 2.</p>")
    sec.append("<table class='sign'><tr><td>Installer / technician</td><td>Name ____________________</td>"
               "<td>Signature ____________________</td><td>Date __________</td></tr>"
               "<tr><td>Authority having jurisdiction</td><td>Name ____________________</td>"
               "<td>Signature ____________________</td><td>Date __________</td></tr></table>")
    return _PAGE.format(title=e(f"Commissioning report {site['id']}"), body="\n".join(sec))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: "DejaVu Sans", Arial, sans-serif; font-size: 10.5pt; margin: 1.2cm; color: #111; }}
h1 {{ font-size: 17pt; margin: 0 0 6px 0; }} h2 {{ font-size: 13pt; margin: 18px 0 6px 0;
  border-bottom: 1px solid #446; }} h3 {{ font-size: 11pt; margin: 10px 0 4px 0; }}
table {{ border-collapse: collapse; margin: 4px 0 8px 0; }}
th, td {{ border: 1px solid #bbb; padding: 2px 5px; font-size: 9pt; text-align: left; vertical-align: top; }}
th {{ background: #eef; }} td.bad {{ color: #b00; font-weight: bold; }}
.verdict {{ font-size: 13pt; font-weight: bold; padding: 6px 10px; margin: 8px 0; }}
.verdict.ok {{ background: #e3f6e3; color: #060; }} .verdict.bad {{ background: #fde8e8; color: #a00; }}
.note {{ font-size: 8.5pt; color: #555; }} .marking {{ border: 1px solid #444; padding: 6px; }}
table.sign td {{ border: none; padding: 14px 10px 2px 0; font-size: 10pt; }}
svg {{ display: block; margin: 4px 0; }} h2 {{ page-break-after: avoid; }} svg, table {{ page-break-inside: avoid; }}
</style></head><body>
{body}
</body></html>
"""


# -- files ----------------------------------------------------------------------------------------
def chromium() -> str | None:
    for name in CHROMIUM:
        path = shutil.which(name)
        if path:
            return path
    return None


async def render_pdf(html_path: Path, pdf_path: Path, timeout_s: float = 90.0) -> str | None:
    """Print the HTML to PDF with headless chromium. None when done, else why not."""
    exe = chromium()
    if exe is None:
        return "chromium not found: the HTML report is complete, print it to PDF from a browser"
    with tempfile.TemporaryDirectory(prefix="ems-commission-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
            f"--user-data-dir={profile}", f"--print-to-pdf={pdf_path}", _uri(html_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": profile},
        )
        try:
            async with asyncio.timeout(timeout_s):
                _, err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return f"chromium did not finish within {timeout_s:g} s"
    if proc.returncode != 0 or not _exists(pdf_path):
        return f"chromium failed ({proc.returncode}): {err.decode(errors='replace')[-300:]}"
    return None


def _exists(path: Path) -> bool:
    return path.exists()


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


def _write_html(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(result), encoding="utf-8")
    write_json(result, out_dir / "report.json")
    return html_path


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)


async def write_report(result: dict[str, Any], out_dir: Path, *, pdf: bool = True) -> dict[str, Any]:
    """report.html, report.json and (with chromium) report.pdf in out_dir; returns the paths and PDF problem."""
    html_path = await asyncio.to_thread(_write_html, result, out_dir)  # off the loop: the daemon runs in it
    files: dict[str, Any] = {"html": str(html_path), "json": str(out_dir / "report.json")}
    if pdf:
        problem = await render_pdf(html_path, out_dir / "report.pdf")
        files["pdf"] = None if problem else str(out_dir / "report.pdf")
        files["pdf_problem"] = problem
    return files

