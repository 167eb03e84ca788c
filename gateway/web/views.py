"""JSON documents built from the control loop's frozen values (pure: no IO, no clock of its own).

Every function takes the site, the latest snapshot and allocation (or None before the first tick) and
``now`` (monotonic), and returns plain dicts/lists ready for ``json.dumps``. Nothing here decides a limit.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.config import PHASES, Site
from gateway.model import Allocation, ChargerSnapshot, Snapshot

_SECRET_KEY = re.compile(r"password|secret|token|passphrase|auth_key|credential", re.IGNORECASE)
MASK = "***"


def _r(v: float | None, nd: int = 2) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return round(v, nd)


def _rt(vs: Iterable[float] | None, nd: int = 2) -> list[float | None] | None:
    return None if vs is None else [_r(v, nd) for v in vs]


def caps_of(snapshot: Snapshot | None, site: Site) -> list[tuple[str, tuple[float, ...]]]:
    """The budget caps on the service in this snapshot: (name, per-phase A)."""
    if snapshot is None:
        return []
    return [(cap.name, tuple(float(a) for a in cap.limit_a)) for cap in snapshot.caps]


def budget_source(snapshot: Snapshot | None, site: Site) -> dict[str, Any]:
    """Per phase, which budget binds the service: the service limit itself or the lowest cap (its name)."""
    svc = site.service
    per: list[dict[str, Any]] = []
    caps = caps_of(snapshot, site)
    for p in range(svc.phases):
        name, lim = "service", svc.limit_a
        for cname, limits in caps:
            if p < len(limits) and limits[p] < lim:
                name, lim = cname, limits[p]
        per.append({"phase": PHASES[p], "source": name, "limit_a": _r(lim)})
    binding = min(per, key=lambda d: d["limit_a"] if d["limit_a"] is not None else math.inf)
    return {
        "source": binding["source"],
        "per_phase": per,
        "caps": [{"name": n, "limit_a": _rt(v)} for n, v in caps],
    }


def binding_reasons(allocation: Allocation | None) -> dict[str, int]:
    """How many chargers each constraint caps ("capped:<name>/L<n>" reasons), most first."""
    counts: dict[str, int] = {}
    if allocation is None:
        return counts
    for lim in allocation.limits.values():
        if lim.reason.startswith("capped:"):
            k = lim.reason[len("capped:"):]
            counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def site_view(site: Site, snapshot: Snapshot | None, allocation: Allocation | None, now: float) -> dict[str, Any]:
    svc = site.service
    root = allocation.circuits.get(site.root) if allocation is not None else None
    chargers = snapshot.chargers if snapshot is not None else {}
    online = sum(1 for c in chargers.values() if c.online)
    charging = sum(1 for c in chargers.values() if c.state == "charging")
    return {
        "id": site.id,
        "name": site.name,
        "wiring": svc.wiring,
        "phases": list(PHASES[: svc.phases]),
        "mode": allocation.mode if allocation is not None else "starting",
        "failsafe_meters": list(allocation.failsafe_meters) if allocation is not None else [],
        "tick_age_s": _r(now - allocation.at, 3) if allocation is not None else None,
        "service": {
            "limit_a": svc.limit_a,
            "margin_a": svc.margin_a,
            "effective_limit_a": _r(root.limit_a) if root is not None else None,
            "measured_a": _rt(root.measured_a) if root is not None else None,
            "allocated_a": _rt(root.allocated_a) if root is not None else None,
            "headroom_a": _rt(root.headroom_a) if root is not None else None,
            "non_ev_a": _rt(root.non_ev_a) if root is not None else None,
            "state": root.state if root is not None else "unknown",
        },
        "budget": budget_source(snapshot, site),
        "binding": binding_reasons(allocation),
        "chargers": {"configured": len(site.chargers), "online": online, "charging": charging},
    }


def circuits_view(site: Site, allocation: Allocation | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for cid, c in site.circuits.items():
        st = allocation.circuits.get(cid) if allocation is not None else None
        out.append({
            "id": cid,
            "kind": c.kind,
            "parent": c.parent,
            "meter": c.meter,
            "limit_a": _r(st.limit_a) if st is not None else c.limit_a,
            "margin_a": c.margin_a,
            "measured_a": _rt(st.measured_a) if st is not None else None,
            "allocated_a": _rt(st.allocated_a) if st is not None else None,
            "headroom_a": _rt(st.headroom_a) if st is not None else None,
            "non_ev_a": _rt(st.non_ev_a) if st is not None else None,
            "state": st.state if st is not None else "unknown",
        })
    return out


def _charger_row(site: Site, cid: str, snap: ChargerSnapshot | None, allocation: Allocation | None) -> dict[str, Any]:
    cfg = site.chargers[cid]
    lim = allocation.limits.get(cid) if allocation is not None else None
    act = snap.actuation if snap is not None else None
    draw_a = snap.draw_a if snap is not None else None
    return {
        "id": cid,
        "circuit": cfg.circuit,
        "kind": cfg.kind,
        "unit": cfg.unit,
        "online": bool(snap.online) if snap is not None else False,
        "state": str(snap.state) if snap is not None else "unknown",
        "controlled": bool(act.controlled) if act is not None else None,
        "limit": _r(lim.limit) if lim is not None else None,
        "line_a": _r(lim.line_a) if lim is not None else None,
        "may_draw_a": _r(lim.may_draw_a) if lim is not None else None,
        "reason": lim.reason if lim is not None else None,
        "draw_a": _rt(draw_a),
        "draw_w": _r(snap.draw_w, 0) if snap is not None else None,
        "session_energy_wh": _r(snap.session.energy_wh, 0) if snap is not None and snap.session else None,
        "noncompliant": bool(snap.noncompliant) if snap is not None else False,
    }


def chargers_view(site: Site, snapshot: Snapshot | None, allocation: Allocation | None) -> list[dict[str, Any]]:
    snaps = snapshot.chargers if snapshot is not None else {}
    return [_charger_row(site, cid, snaps.get(cid), allocation) for cid in site.chargers]


def meter_health(site: Site, mid: str, snapshot: Snapshot | None, now: float) -> str:
    r = snapshot.meters.get(mid) if snapshot is not None else None
    if r is None:
        return "missing"
    if not r.valid:
        return "invalid"
    if now - r.at > site.polled_meters[mid].stale_after_s:
        return "stale"
    return "ok"


def meters_view(site: Site, snapshot: Snapshot | None, now: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for mid, m in site.polled_meters.items():  # the circuit meters and the PV inverters
        r = snapshot.meters.get(mid) if snapshot is not None else None
        out.append({
            "id": mid,
            "circuit": m.circuit,
            "role": m.role,
            "health": meter_health(site, mid, snapshot, now),
            "reason": r.reason if r is not None else "never read",
            "age_s": _r(now - r.at, 3) if r is not None else None,
            "current_a": _rt(r.current_a) if r is not None else None,
            "stale_after_s": m.stale_after_s,
        })
    return out


def failsafe_view(site: Site, allocation: Allocation | None) -> dict[str, Any]:
    mode = allocation.mode if allocation is not None else "starting"
    return {
        "mode": mode,
        "meters": list(allocation.failsafe_meters) if allocation is not None else [],
        "budget_a": {cid: _rt(v) for cid, v in site.failsafe_budget().items()},
    }


def ticks_view(records: Iterable[Any], now: float, n: int = 60) -> list[dict[str, Any]]:
    rows = list(records)[-n:]
    return [{
        "age_s": _r(now - r.at, 3),
        "trigger": r.trigger,
        "snapshot_age_s": _r(r.snapshot_age_s, 3),
        "allocation_ms": _r(r.allocation_s * 1000, 3),
        "actuation_ms": _r(r.actuation_s * 1000, 3),
        "publish_ms": _r(r.publish_s * 1000, 3),
        "reading_to_actuated_ms": _r(r.reading_to_actuated_s * 1000, 3) if r.reading_to_actuated_s is not None
        else None,
    } for r in rows]


def live_view(site: Site, snapshot: Snapshot | None, allocation: Allocation | None, now: float) -> dict[str, Any]:
    """Everything the live page shows, in one document (one SSE message a second)."""
    return {
        "site": site_view(site, snapshot, allocation, now),
        "circuits": circuits_view(site, allocation),
        "chargers": chargers_view(site, snapshot, allocation),
        "meters": meters_view(site, snapshot, now),
    }


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def mask_secrets(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: (MASK if _SECRET_KEY.search(k) and x is not None else mask_secrets(x)) for k, x in v.items()}
    if isinstance(v, list):
        return [mask_secrets(x) for x in v]
    return v


def config_view(site: Site) -> dict[str, Any]:
    """The active configuration as parsed (derived topology left out), every secret masked."""
    d = _plain(site)
    for k in ("children", "path_to_root", "chargers_under"):
        d.pop(k, None)
    out: dict[str, Any] = mask_secrets(d)
    return out
