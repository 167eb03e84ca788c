"""Step 3, the simulated-load test: response times from what was recorded (pure).

A sample is one ``status`` answer cut down to what the analysis needs (see :func:`sample_of`): the
daemon's clock, every charger's decided limit, the limit it last accepted and when, its measured draw
and when the charger measured it, and the tested meter's reading. Times in the result are seconds
from the injection (the decision, the acceptance, the draw under the limit) and from the removal
(the recovery).
"""

from __future__ import annotations

from typing import Any

EPS = 1e-6


def draw_of(ch: dict[str, Any], st: dict[str, Any]) -> float | None:
    """The measured draw in the charger's unit: A per phase (AC, the largest phase) or W (DC)."""
    if ch["unit"] == "W":
        w = st.get("draw_w")
        return None if w is None else float(w)
    d = st.get("draw_a")
    return max(d) if d else None


def line_draw_a(ch: dict[str, Any], st: dict[str, Any], n_phases: int) -> list[float]:
    """A charger's draw as line current per site phase (A). DC: its power at the ratio of line current to
    limit the gateway uses for it (a DC charger's own current report is its DC output)."""
    out = [0.0] * n_phases
    if ch["unit"] == "W":
        w, lim, line = st.get("draw_w"), st.get("limit"), st.get("limit_line_a")
        if w is None or not lim or line is None:
            return out
        for p in ch["line_phases"]:
            out[p] = float(w) * float(line) / float(lim)
        return out
    for p, a in enumerate(st.get("draw_a") or ()):
        if p < n_phases:
            out[p] = float(a)
    return out


def sample_of(site: dict[str, Any], status: dict[str, Any], meter: str | None) -> dict[str, Any]:
    chargers = {}
    for ch in site["chargers"]:
        st = status["chargers"].get(ch["id"], {})
        act = st.get("actuation") or {}
        chargers[ch["id"]] = {
            "limit": st.get("limit"),
            "limit_line_a": st.get("limit_line_a"),
            "accepted_limit": act.get("accepted_limit"),
            "accepted_at": act.get("accepted_at"),
            "draw": draw_of(ch, st),
            "draw_at": st.get("draw_at"),
            "online": bool(st.get("online")),
        }
    r = status["meters"].get(meter) if meter else None
    return {
        "t": status["now"],
        "mode": status["mode"],
        "chargers": chargers,
        "meter_a": None if r is None else list(r["current_a"]),
        "meter_at": None if r is None else r["at"],
    }


def tolerance(ch: dict[str, Any], control: dict[str, Any]) -> float:
    return float(control["noncompliance_tolerance_a"]) if ch["unit"] == "A" else 0.05 * float(ch["max_limit"])


def charger_result(
    ch: dict[str, Any], samples: list[dict[str, Any]], t_on: float, t_off: float, control: dict[str, Any]
) -> dict[str, Any]:
    cid = ch["id"]
    tol = tolerance(ch, control)
    before = [s["chargers"][cid] for s in samples if s["t"] <= t_on]
    during = [(s["t"], s["chargers"][cid]) for s in samples if t_on < s["t"] <= t_off]
    after = [(s["t"], s["chargers"][cid]) for s in samples if s["t"] > t_off]
    res: dict[str, Any] = {"charger": cid, "unit": ch["unit"], "status": "idle", "passed": True}
    if not before or not during or before[-1]["limit"] is None:
        res.update(status="no data", passed=False)
        return res
    b = before[-1]
    limit_b, draw_b = float(b["limit"]), b["draw"] or 0.0
    lowered = min((float(c["limit"]) for _, c in during if c["limit"] is not None), default=limit_b)
    res.update(limit_before=limit_b, draw_before=draw_b, limit_lowered=lowered)
    if lowered >= limit_b - EPS:
        res["status"] = "not lowered"
        return res
    if draw_b <= tol:
        res["status"] = "lowered (not drawing)"
        return res
    res["decided_s"] = next(
        (t - t_on for t, c in during if c["limit"] is not None and c["limit"] < limit_b - EPS), None
    )
    acc = [c["accepted_at"] for _, c in during
           if c["accepted_at"] is not None and c["accepted_at"] >= t_on and c["accepted_limit"] is not None
           and c["accepted_limit"] < limit_b - EPS]
    res["accepted_s"] = min(acc) - t_on if acc else None
    if res["decided_s"] is not None and res["accepted_s"] is not None:
        res["decided_s"] = min(res["decided_s"], res["accepted_s"])  # polled: the acceptance is stamped exactly
    since = t_on + (res["accepted_s"] or 0.0)
    under = next((c["draw_at"] for _, c in during
                  if c["draw_at"] is not None and c["draw_at"] >= since and c["draw"] is not None
                  and c["limit"] is not None and c["draw"] <= c["limit"] + tol), None)
    res["under_s"] = under - t_on if under is not None else None
    rec = next((t for t, c in after if c["limit"] is not None and c["limit"] >= limit_b - max(tol, 0.1 * limit_b)),
               None)
    res["recovered_s"] = rec - t_off if rec is not None else None
    res["passed"] = res["accepted_s"] is not None and res["under_s"] is not None
    if res["accepted_s"] is None:
        res["status"] = "FAIL: the lowered limit was not accepted"
    elif res["under_s"] is None:
        res["status"] = "FAIL: it does not follow its limit"
    else:
        res["status"] = "pass"
    return res


def analyse(site: dict[str, Any], test: dict[str, Any]) -> list[dict[str, Any]]:
    circuit = next(c for c in site["circuits"] if c["id"] == test["circuit"])
    chargers = {c["id"]: c for c in site["chargers"]}
    return [
        charger_result(chargers[k], test["samples"], test["t_on"], test["t_off"], site["control"])
        for k in circuit["chargers"]
    ]


SETTLED = frozenset({"pass", "idle", "not lowered", "lowered (not drawing)"})


def all_settled(site: dict[str, Any], test: dict[str, Any], now: float) -> bool:
    """While the load is on: every charger that was drawing is lowered and under its limit (or not lowered)."""
    return all(r["status"] in SETTLED for r in analyse(site, dict(test, t_off=now)))


def all_recovered(site: dict[str, Any], test: dict[str, Any]) -> bool:
    return all(r.get("recovered_s") is not None for r in analyse(site, test) if r["status"] == "pass")
