"""Topic encoding and change detection: what to publish, on which topic, with which payload.

Pure functions of frozen values (no IO, no clock, no logging): each takes the previous per-topic state
(a frozen dataclass, or None the first time) and this tick's values, and returns the next state with what
to publish (``Value``: a topic and its payload) and which events to raise (``Event``: a name and its
fields). :class:`TopicState` only holds those states between ticks (under the caller's lock).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway import electrical
from gateway.budget import Budget
from gateway.config import ChargerConfig, CircuitConfig, Site
from gateway.meters.config import MeterConfig
from gateway.model import Allocation, ChargerLimit, ChargerSnapshot, CircuitStatus, MeterReading, Snapshot

DRAW_DEADBAND_A = 1.0  # a charger's draw must move this much (any phase) to count as a change
DRAW_DEADBAND_W = 1000.0
_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

Value = tuple[str, bytes]  # topic, payload (retained); b"" clears a retained topic
Event = tuple[str, dict[str, object]]  # event name, fields


@dataclass(frozen=True)
class Rates:
    """How often a topic may and must go out (from the [mqtt] section)."""

    heartbeat_s: float  # unchanged values are republished at least this often
    min_interval_s: float  # a changed charger (budget, plan) is published at most this often


# ---------------------------------------------------------------------------------------- encoding helpers
def iso_ts(wall: float) -> str:
    """Wall-clock seconds -> ISO 8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def topic_level(name: str) -> str:
    """An id made safe as one topic level (no '/', '+', '#')."""
    return name.replace("/", "_").replace("+", "_").replace("#", "_") or "_"


def rnd(x: float | None, nd: int = 2) -> float | None:
    """Rounded; non-finite -> None."""
    if x is None or not math.isfinite(x):
        return None
    return round(x, nd)


def rnd_all(xs: tuple[float, ...] | None, nd: int = 2) -> list[float | None] | None:
    return None if xs is None else [rnd(x, nd) for x in xs]


def clean(v: object) -> object:
    """Make a value JSON-safe: non-finite floats -> null, tuples -> lists, others -> str."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [clean(x) for x in v]
    return str(v)


def dumps(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def event_name(name: str) -> str:
    """A valid event name (``[a-z][a-z0-9_]{0,63}``): ``name`` itself, or the closest one."""
    if _EVENT_NAME.match(name):
        return name
    used = re.sub(r"[^a-z0-9_]", "_", name.lower())[:64] or "event"
    return used if used[0].isalpha() else "e_" + used


def event_value(root: str, site_id: str, name: str, fields: Mapping[str, object], ts: str, uid: str) -> Value:
    """``<root>event/<name>``: the fields made JSON-safe, with ts, event, site and a de-duplication id."""
    body: dict[str, object] = {str(k): clean(v) for k, v in fields.items()}
    body.update(ts=ts, event=name, site=site_id, id=uid)
    return root + "event/" + name, dumps(body)


def reply_payload(body: Mapping[str, object], ts: str) -> bytes:
    return dumps({**{k: clean(v) for k, v in body.items()}, "ts": ts})


def cap_state_value(root: str, remote_state: Mapping[str, object], ts: str) -> Value:
    """``<root>site_cap``: the budget's remote cap state."""
    return root + "site_cap", dumps({"ts": ts, **remote_state})


def tariff_state_value(root: str, state: Mapping[str, object] | None, ts: str) -> Value:
    """``<root>tariff``: the budget's tariff state (cleared when there is none)."""
    return root + "tariff", b"" if state is None else dumps({"ts": ts, **state})


# ---------------------------------------------------------------------------------------- per-topic states
@dataclass(frozen=True)
class KeyedPub:
    """A topic published when its payload (``key``, without the timestamp) changes, or on the heartbeat."""

    key: bytes
    pub_at: float


@dataclass(frozen=True)
class ModePub:
    mode: str | None = None
    since: float = 0.0  # when the fail-safe began


@dataclass(frozen=True)
class MeterPub:
    status: str = "unknown"  # unknown | valid | stale
    reading: MeterReading | None = None
    pub_at: float = -math.inf
    stale_since: float | None = None


@dataclass(frozen=True)
class ChargerPub:
    """What was last published for a charger, and what the last tick saw."""

    key: tuple[object, ...] = ()
    draw_a: tuple[float, ...] | None = None
    draw_w: float | None = None
    pub_at: float = -math.inf
    dirty: bool = False  # a change waits for charger_min_interval_s
    snap: ChargerSnapshot | None = None
    lim: ChargerLimit | None = None
    noncompliant: bool = False


# ---------------------------------------------------------------------------------------- one topic each
def mode_step(prev: ModePub, allocation: Allocation, now: float) -> tuple[ModePub, tuple[Event, ...]]:
    """failsafe_entered / failsafe_left when the allocation's mode changes."""
    mode, was = allocation.mode, prev.mode
    if mode == was:
        return prev, ()
    if mode != "normal":
        ev: Event = ("failsafe_entered", {"mode": mode, "previous_mode": was,
                                          "meters": list(allocation.failsafe_meters)})
        return ModePub(mode, now if was in (None, "normal") else prev.since), (ev,)
    if was is not None:
        return ModePub(mode, prev.since), (
            ("failsafe_left", {"previous_mode": was, "duration_s": rnd(now - prev.since, 1)}),)
    return ModePub(mode, prev.since), ()


def site_value(root: str, site: Site, snapshot: Snapshot, allocation: Allocation, ts: str) -> Value:
    """``<root>site``, every tick: the service's state, limit and its source, the chargers' counts."""
    svc = site.service
    st = allocation.circuits.get(site.root)
    online = charging = 0
    for ch in snapshot.chargers.values():
        online += ch.online
        charging += ch.state == "charging"
    caps = {c.name: min(c.limit_a, default=math.inf) for c in snapshot.caps}
    remote = [a for n, a in caps.items() if n == "remote" or n.startswith("remote:")]
    limit_a = st.limit_a if st is not None else min([svc.limit_a, *caps.values()])
    binding = min(caps, key=lambda n: caps[n], default=None)
    if binding is not None and caps[binding] >= svc.limit_a:
        binding = None
    body: dict[str, object] = {
        "ts": ts,
        "mode": allocation.mode,
        "state": st.state if st is not None else "unknown",
        "current_a": rnd_all(st.measured_a) if st is not None else None,
        "limit_a": rnd(limit_a),
        "limit_w": rnd(electrical.service_power_w(svc, limit_a), 0),
        "service_limit_a": svc.limit_a,
        "site_cap_a": rnd(min(remote)) if remote else None,
        "caps": {n: rnd(a) for n, a in caps.items()},
        "limit_source": binding or "service",
        "headroom_a": rnd_all(st.headroom_a) if st is not None else None,
        "allocated_a": rnd_all(st.allocated_a) if st is not None else None,
        "non_ev_a": rnd_all(st.non_ev_a) if st is not None else None,
        "failsafe_meters": list(allocation.failsafe_meters),
        "chargers_online": online,
        "chargers_charging": charging,
    }
    return root + "site", dumps(body)


def circuit_step(
    prev: KeyedPub | None, root: str, cid: str, st: CircuitStatus, cc: CircuitConfig | None, ts: str, now: float,
    hb: float,
) -> tuple[KeyedPub, Value | None]:
    """``<root>circuit/<id>``: when its figures change, else on the heartbeat."""
    body: dict[str, object] = {
        "limit_a": rnd(st.limit_a),
        "configured_limit_a": None if cc is None else cc.limit_a,
        "current_a": rnd_all(st.measured_a, 1),
        "non_ev_a": rnd_all(st.non_ev_a, 1),
        "headroom_a": rnd_all(st.headroom_a, 1),
        "allocated_a": rnd_all(st.allocated_a, 1),
        "state": st.state,
    }
    key = dumps(body)
    if prev is not None and key == prev.key and now - prev.pub_at < hb:
        return prev, None
    body["ts"] = ts
    return KeyedPub(key, now), (root + "circuit/" + topic_level(cid), dumps(body))


def meter_step(
    prev: MeterPub | None, root: str, meter_id: str, rd: MeterReading | None, mc: MeterConfig | None,
    ts: str, now: float, hb: float,
) -> tuple[MeterPub, Value | None, Event | None]:
    """``<root>meter/<id>``: on a new reading or the heartbeat; meter_stale / meter_back on a status change."""
    mp = prev if prev is not None else MeterPub()
    status = "unknown" if rd is None and mp.status == "unknown" else (
        "valid" if rd is not None and rd.valid else "stale"
    )
    ev: Event | None = None
    stale_since = mp.stale_since
    if status != mp.status:
        if status == "stale":
            stale_since = now
            ev = ("meter_stale", {"meter": meter_id, "reason": "no reading" if rd is None else rd.reason})
        elif status == "valid" and mp.status == "stale":
            gap = None if mp.stale_since is None else rnd(now - mp.stale_since, 1)
            ev = ("meter_back", {"meter": meter_id, "stale_for_s": gap})
    elif rd is mp.reading and now - mp.pub_at < hb:
        return mp, None, None
    body: dict[str, object] = {"ts": ts, "circuit": None if mc is None else mc.circuit}
    if rd is None:
        body.update(valid=False, reason="no reading", age_s=None, current_a=None)
    else:
        body.update(
            valid=rd.valid,
            reason=rd.reason,
            age_s=rnd(now - rd.at, 3),
            current_a=rnd_all(rd.current_a),
            voltage_v=rnd_all(rd.voltage_v, 1),
            power_w=rnd_all(rd.power_w, 0),
            total_power_w=rnd(rd.total_power_w, 0),
            frequency_hz=rnd(rd.frequency_hz, 3),
            energy_import_wh=rnd(rd.energy_import_wh, 0),
        )
    return MeterPub(status, rd, now, stale_since), (root + "meter/" + topic_level(meter_id), dumps(body)), ev


def _moved(a: tuple[float, ...] | None, b: tuple[float, ...] | None, band: float) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    if len(a) != len(b):
        return True
    return any(abs(x - y) > band for x, y in zip(a, b, strict=True))


def _moved_w(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return abs(a - b) > DRAW_DEADBAND_W


def charger_step(
    prev: ChargerPub | None, root: str, cid: str, chs: ChargerSnapshot, lim: ChargerLimit | None,
    cfg: ChargerConfig | None, ts: str, now: float, rates: Rates,
) -> tuple[ChargerPub, Value | None, Event | None]:
    """``<root>charger/<id>``: on a change (state, limit, draw beyond the deadbands) at most every
    min_interval_s, else on the heartbeat; noncompliance / noncompliance_cleared when the flag changes."""
    cp = prev if prev is not None else ChargerPub()
    if prev is not None and unchanged(prev, chs, lim, now, rates):
        return prev, None, None
    ev = noncompliance_event(chs, lim, cfg) if chs.noncompliant != cp.noncompliant else None
    key = (chs.online, chs.state, None if lim is None else rnd(lim.limit, 1),
           None if lim is None else lim.reason, chs.noncompliant)
    changed = key != cp.key or _moved(cp.draw_a, chs.draw_a, DRAW_DEADBAND_A) or _moved_w(cp.draw_w, chs.draw_w)
    since = now - cp.pub_at
    if not ((changed or cp.dirty) and since >= rates.min_interval_s) and since < rates.heartbeat_s:
        # (the constructor, not dataclasses.replace: several times faster, and this runs per changed charger)
        return ChargerPub(cp.key, cp.draw_a, cp.draw_w, cp.pub_at, cp.dirty or changed, chs, lim,
                          chs.noncompliant), None, ev
    nxt = ChargerPub(key, chs.draw_a, chs.draw_w, now, False, chs, lim, chs.noncompliant)
    return nxt, (root + "charger/" + topic_level(cid), dumps(charger_body(chs, lim, cfg, ts))), ev


def unchanged(prev: ChargerPub, chs: ChargerSnapshot, lim: ChargerLimit | None, now: float, rates: Rates) -> bool:
    """The same snapshot and limit objects as last tick, within the heartbeat (and, with a change waiting, within
    the minimum interval): nothing to do. The fast path for most of 1000 chargers."""
    if chs is not prev.snap or lim is not prev.lim:
        return False
    since = now - prev.pub_at
    return since < min(rates.min_interval_s, rates.heartbeat_s) if prev.dirty else since < rates.heartbeat_s


def noncompliance_event(chs: ChargerSnapshot, lim: ChargerLimit | None, cfg: ChargerConfig | None) -> Event:
    if not chs.noncompliant:
        return "noncompliance_cleared", {"charger": chs.id}
    dc = cfg is not None and cfg.kind == "dc"
    return "noncompliance", {
        "charger": chs.id,
        "limit_w": None if lim is None or not dc else rnd(lim.limit, 0),
        "limit_a": None if lim is None or dc else rnd(lim.limit),
        "line_limit_a": None if lim is None else rnd(lim.line_a),
        "current_a": rnd_all(chs.draw_a),
        "power_w": rnd(chs.draw_w, 0),
    }


def charger_body(
    chs: ChargerSnapshot, lim: ChargerLimit | None, cfg: ChargerConfig | None, ts: str
) -> dict[str, object]:
    dc = cfg is not None and cfg.kind == "dc"
    body: dict[str, object] = {
        "ts": ts,
        "online": chs.online,
        "state": str(chs.state),
        "circuit": None if cfg is None else cfg.circuit,
        "limit_w" if dc else "limit_a": None if lim is None else rnd(lim.limit, 0 if dc else 2),
        "line_a": None if lim is None else rnd(lim.line_a),
        "reason": None if lim is None else lim.reason,
        "current_a": rnd_all(chs.draw_a),
        "power_w": rnd(chs.draw_w, 0),
        "noncompliant": chs.noncompliant,
    }
    s = chs.session
    if s is not None:
        body["transaction_id"] = s.transaction_id
        body["energy_wh"] = rnd(s.energy_wh, 0)
    return body


def budget_body(b: Budget, service_limit_a: float) -> dict[str, object]:
    """``<root>budget``: every source's cap, the demand window's figures, the tariff period and price."""
    body: dict[str, object] = {"caps": {c.name: rnd_all(c.limit_a) for c in b.caps}}
    low = b.binding()
    body["binding"] = None if low is None or min(low.limit_a) >= service_limit_a else low.name
    d = b.demand
    if d is not None:
        body["demand"] = {
            "interval_start": iso_ts(d.interval_start), "interval_end": iso_ts(d.interval_end),
            "energy_kwh": rnd(d.energy_wh / 1000.0, 3), "projected_kw": rnd(d.projected_kw, 2),
            "target_kw": rnd(d.target_kw, 3), "effective_target_kw": rnd(d.effective_target_kw, 3),
            "month_peak_kw": rnd(d.month_peak_kw, 2), "allowed_ev_kw": rnd(d.allowed_ev_kw, 2),
            "forecast_non_ev_kw": rnd(d.forecast_non_ev_kw, 2), "cap_a": rnd(d.cap_a, 1),
            "measurement": d.measurement, "estimated_s": rnd(d.estimated_s, 0),
        }
    t = b.tariff
    if t is not None:
        body["tariff"] = {"season": t.season, "period": t.period, "price_per_kwh": t.price_per_kwh,
                          "cap_kw": t.cap_kw, "until": iso_ts(t.until), "source": t.source}
    sol = b.solar
    if sol is not None:
        body["solar"] = {"pv_w": rnd(sol.pv_w, 0), "surplus_w": rnd(sol.surplus_w, 0),
                         "export_w": rnd(sol.export_w, 0), "export_limit_w": sol.export_limit_w,
                         "paused": list(sol.paused)}
    return body


def keyed_step(prev: KeyedPub | None, body: Mapping[str, object], now: float, rates: Rates) -> KeyedPub | None:
    """A whole-site topic (budget, plan): its next state when it is to be published now (on a change at most
    every min_interval_s, else on the heartbeat), None when it is not."""
    key = dumps(body)
    if prev is not None:
        since = now - prev.pub_at
        if (key == prev.key and since < rates.heartbeat_s) or since < rates.min_interval_s:
            return None
    return KeyedPub(key, now)


# ---------------------------------------------------------------------------------------- the states held
@dataclass
class Tick:
    """What one tick publishes and raises, in order."""

    values: list[Value]
    events: list[Event]


class TopicState:
    """The per-topic states between ticks: :meth:`tick` folds one tick into them (the caller holds the lock)."""

    def __init__(self, root: str, site: Site, rates: Rates) -> None:
        self.root = root
        self.site = site
        self.rates = rates
        self.mode = ModePub()
        self.chargers: dict[str, ChargerPub] = {}
        self.meters: dict[str, MeterPub] = {}
        self.circuits: dict[str, KeyedPub] = {}
        self.budget: KeyedPub | None = None
        self.plan: KeyedPub | None = None

    def tick(
        self, snapshot: Snapshot, allocation: Allocation, budget: Budget | None,
        plan: tuple[Mapping[str, object], list[Event]] | None, ts: str, now: float,
    ) -> Tick:
        out = Tick([], [])
        self.mode, evs = mode_step(self.mode, allocation, now)
        out.events.extend(evs)
        out.values.append(site_value(self.root, self.site, snapshot, allocation, ts))
        if budget is not None:
            body = budget_body(budget, self.site.service.limit_a)
            if (nxt := keyed_step(self.budget, body, now, self.rates)) is not None:
                self.budget = nxt
                out.values.append((self.root + "budget", dumps({**body, "ts": ts})))
        if plan is not None:
            plan_body, events = plan
            out.events.extend(events)
            if (nxt := keyed_step(self.plan, plan_body, now, self.rates)) is not None:
                self.plan = nxt
                out.values.append((self.root + "plan", dumps({"ts": ts, **plan_body})))
        self._circuits(allocation, ts, now, out)
        self._meters(snapshot, ts, now, out)
        self._chargers(snapshot, allocation, ts, now, out)
        return out

    def _circuits(self, allocation: Allocation, ts: str, now: float, out: Tick) -> None:
        hb = self.rates.heartbeat_s
        for cid, st in allocation.circuits.items():
            nxt, v = circuit_step(self.circuits.get(cid), self.root, cid, st, self.site.circuits.get(cid), ts, now, hb)
            if v is not None:
                self.circuits[cid] = nxt
                out.values.append(v)

    def _meters(self, snapshot: Snapshot, ts: str, now: float, out: Tick) -> None:
        hb = self.rates.heartbeat_s
        for mid, rd in snapshot.meters.items():
            prev = self.meters.get(mid)
            nxt, v, ev = meter_step(prev, self.root, mid, rd, self.site.meters.get(mid), ts, now, hb)
            if nxt is not prev:
                self.meters[mid] = nxt
            if ev is not None:
                out.events.append(ev)
            if v is not None:
                out.values.append(v)

    def _chargers(self, snapshot: Snapshot, allocation: Allocation, ts: str, now: float, out: Tick) -> None:
        limits, chargers, chs_state = allocation.limits, self.site.chargers, self.chargers
        hb = self.rates.heartbeat_s
        waiting = min(self.rates.min_interval_s, hb)
        for cid, chs in snapshot.chargers.items():
            prev = chs_state.get(cid)
            lim = limits.get(cid)
            if (prev is not None and chs is prev.snap and lim is prev.lim
                    and now - prev.pub_at < (waiting if prev.dirty else hb)):
                continue  # unchanged(), inlined: this runs for every charger on every tick
            nxt, v, ev = charger_step(prev, self.root, cid, chs, lim, chargers.get(cid), ts, now, self.rates)
            chs_state[cid] = nxt
            if ev is not None:
                out.events.append(ev)
            if v is not None:
                out.values.append(v)

    def forget(self, site: Site) -> list[Value]:
        """A reloaded site: drop the states of removed chargers, meters and circuits; their topics cleared."""
        self.site = site
        gone: list[Value] = []
        for cid in [c for c in self.chargers if c not in site.chargers]:
            del self.chargers[cid]
            gone.append((self.root + "charger/" + topic_level(cid), b""))
        for mid in [m for m in self.meters if m not in site.meters]:
            del self.meters[mid]
            gone.append((self.root + "meter/" + topic_level(mid), b""))
        for cid in [c for c in self.circuits if c not in site.circuits]:
            del self.circuits[cid]
            gone.append((self.root + "circuit/" + topic_level(cid), b""))
        return gone
