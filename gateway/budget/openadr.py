"""Utility demand response as budget sources: each active OpenADR event is a cap ``openadr:<event id>``.

The protocol clients (`openadr_ven` for 2.0b, `openadr3` for 3.0) turn what the VTN sends into `DREvent`s and
hand them to the `OpenADRStore`, which the budget service owns. Every tick the service asks the store for its
caps (`event_cap_a`, pure: the event, the config, the service and the wall clock):

* an event applies from ``lead_s`` before its (randomised) start, ramping down over its ramp-up period before
  that, so the EVs have followed by the start (they take 5-11 s); inside the event the cap is the lower of the
  interval now and the interval ``lead_s`` ahead, so a deeper interval is reached on time as well;
* an event ends at its end, at ``max_event_h`` after its start, and, open-ended (duration 0), at ``confirm_s``
  past the VTN's last contact: an event that can no longer be confirmed never lasts forever;
* opted out or cancelled events give no cap; a relative signal (a fraction of, or a reduction from, the
  site's demand) is taken against the import measured when the event began (persisted with it).

The store persists its events and the VEN's registration to ``<state_dir>/budget/openadr.json`` (a restart
mid-event keeps the event) and reports them with `status` (the commissioning check, the control socket).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from gateway import electrical
from gateway.model import BudgetCap

if TYPE_CHECKING:
    from gateway.budget.openadr_config import OpenADRConfig
    from gateway.config import ServiceConfig

log = structlog.get_logger(__name__)

STATE_FILE = "openadr.json"
CONTACT_PERSIST_S = 60.0  # the VTN's last contact goes to disk this often
MAX_EVENTS = 64  # a VTN flooding events: those capping nothing go first, then the ones starting last
Kind = Literal["level", "kw", "capacity_fraction", "baseline_fraction", "delta_kw"]
Opt = Literal["optIn", "optOut"]
KINDS: tuple[Kind, ...] = ("level", "kw", "capacity_fraction", "baseline_fraction", "delta_kw")


@dataclass(frozen=True)
class Interval:
    start: float  # wall (UTC epoch s), before randomisation
    end: float  # math.inf: open-ended
    kind: Kind
    value: float


@dataclass(frozen=True)
class DREvent:
    event_id: str
    source: str  # "oadr2" | "oadr3"
    start: float  # wall, as the VTN sent it
    end: float  # wall; math.inf: open-ended (confirmed by the VTN's contact)
    intervals: tuple[Interval, ...]
    received_wall: float
    modification: int = 0
    offset_s: float = 0.0  # start randomisation, drawn once when received
    ramp_up_s: float = 0.0
    opt: Opt = "optIn"
    opt_reason: str = ""
    cancelled: bool = False
    baseline_kw: float | None = None  # the import when the event began (relative signals)
    program: str = ""
    signal: str = ""  # what the VTN called it: "SIMPLE/level", "LOAD_DISPATCH/setpoint", "IMPORT_CAPACITY_LIMIT"


def event_end(ev: DREvent, cfg: OpenADRConfig, last_contact: float | None) -> float:
    """When the event stops applying (randomised like its start), bounded by max_event_h and, open-ended, by
    the VTN's last contact plus confirm_s (no contact since it arrived: its arrival)."""
    start = ev.start + ev.offset_s
    end = min(ev.end + ev.offset_s, start + cfg.max_event_h * 3600.0)
    if math.isinf(ev.end):
        seen = max(ev.received_wall, last_contact if last_contact is not None else -math.inf)
        end = min(end, max(seen, start) + cfg.confirm_s)
    return end


def interval_kw(iv: Interval, cfg: OpenADRConfig, service: ServiceConfig, baseline_kw: float | None) -> float | None:
    """The import cap (kW) an interval asks for; None: no limit (level 0). A relative signal without a baseline
    takes the service's capacity as its base (a fraction of it is still a cap)."""
    capacity = electrical.service_power_w(service, service.limit_a) / 1000.0
    base = baseline_kw if baseline_kw is not None else capacity
    if iv.kind == "level":
        return cfg.level_kw(round(iv.value))
    if iv.kind == "kw":
        return max(iv.value, 0.0)
    if iv.kind == "capacity_fraction":
        return max(min(iv.value, 1.0), 0.0) * capacity
    if iv.kind == "baseline_fraction":
        return max(min(iv.value, 1.0), 0.0) * base
    return max(base - max(iv.value, 0.0), 0.0)  # delta_kw: a reduction from the baseline


def _kw_at(ev: DREvent, t: float, cfg: OpenADRConfig, service: ServiceConfig) -> float | None:
    out: float | None = None
    for iv in ev.intervals:
        if iv.start + ev.offset_s <= t < iv.end + ev.offset_s:
            kw = interval_kw(iv, cfg, service, ev.baseline_kw)
            if kw is not None:
                out = kw if out is None else min(out, kw)
    return out


def event_cap_a(
    ev: DREvent, cfg: OpenADRConfig, service: ServiceConfig, now_wall: float, last_contact: float | None
) -> float | None:
    """The event's cap now, A per line at the service (never above the service limit); None: none now."""
    if ev.opt != "optIn" or ev.cancelled:
        return None
    start, end = ev.start + ev.offset_s, event_end(ev, cfg, last_contact)
    if now_wall >= end or now_wall < start - cfg.lead_s - ev.ramp_up_s:
        return None
    ahead = min(max(now_wall + cfg.lead_s, start), end - 1e-6)  # the interval the EVs must have reached by then
    kws = [k for k in (_kw_at(ev, max(now_wall, start), cfg, service) if now_wall >= start else None,
                       _kw_at(ev, ahead, cfg, service)) if k is not None]
    if not kws:
        return None
    target = min(electrical.service_line_current_a(service, min(kws) * 1000.0), service.limit_a)
    ramp_end = start - cfg.lead_s
    if now_wall < ramp_end and ev.ramp_up_s > 0:  # linear from the service limit to the target
        frac = (ramp_end - now_wall) / ev.ramp_up_s
        return target + (service.limit_a - target) * min(max(frac, 0.0), 1.0)
    return target


def event_caps(
    events: Mapping[str, DREvent], cfg: OpenADRConfig, service: ServiceConfig, now_wall: float,
    last_contact: float | None,
) -> tuple[BudgetCap, ...]:
    out = []
    for eid, ev in sorted(events.items()):
        a = event_cap_a(ev, cfg, service, now_wall, last_contact)
        if a is not None:
            out.append(BudgetCap(f"openadr:{eid}", (max(a, 0.0),) * service.phases))
    return tuple(out)


def decide_opt(cfg: OpenADRConfig, ev: DREvent, at_risk: bool | None) -> tuple[Opt, str]:
    """The opt decision for a new (or modified) event: ``at_risk`` is the fleet hook's answer (None: no hook)."""
    if not ev.intervals:
        return "optOut", "no signal this gateway can follow"
    if cfg.opt_policy == "opt-out-if-sessions-at-risk" and at_risk:
        return "optOut", "sessions would miss their departure"
    if cfg.opt_policy == "opt-out-if-sessions-at-risk" and at_risk is None:
        return "optIn", "no fleet hook: sessions unknown"
    return "optIn", cfg.opt_policy


# --------------------------------------------------------------------------------------------- the store
class Writer(Protocol):
    def put(self, name: str, text: str | None) -> None: ...

    def read(self, name: str) -> str | None: ...


SessionsAtRisk = Callable[[DREvent], bool]


@dataclass
class VenState:
    """The VEN's registration with its VTN (persisted: a restart re-registers with the same ids)."""

    ven_id: str | None = None
    registration_id: str | None = None
    vtn_id: str | None = None
    registered: bool = False
    last_contact: float | None = None  # wall of the VTN's last valid answer
    last_error: str | None = None
    last_event_id: str | None = None
    last_event_wall: float | None = None
    poll_interval_s: float | None = None
    vtn_url: str | None = None


@dataclass
class OpenADRStore:
    """The events the VTN sent and the VEN's registration; the budget service asks it for caps each tick."""

    writer: Writer
    cfg: OpenADRConfig | None
    emit: Callable[..., None] = field(default=lambda name, **kw: None)
    sessions_at_risk: SessionsAtRisk | None = None  # the fleet planner's hook (opt-out-if-sessions-at-risk)
    events: dict[str, DREvent] = field(default_factory=dict)
    ven: VenState = field(default_factory=VenState)
    last_import_w: float | None = None  # the service's import at the last tick (the VTN's usage report)
    _applied: set[str] = field(default_factory=set)
    _contact_saved: float = -math.inf

    def __post_init__(self) -> None:
        self._restore()

    # ---------------------------------------------------------------- the budget service's tick
    def caps(self, service: ServiceConfig, now_wall: float, import_w: float | None) -> tuple[BudgetCap, ...]:
        cfg = self.cfg
        self.last_import_w = import_w
        if cfg is None or not self.events:
            return ()
        self._baselines(cfg, now_wall, import_w)
        caps = event_caps(self.events, cfg, service, now_wall, self.ven.last_contact)
        names = {c.name for c in caps}
        for name in names - self._applied:
            self.emit("openadr_event_applied", event_id=name.removeprefix("openadr:"),
                      cap_a=round(min(next(c.limit_a for c in caps if c.name == name)), 2))
        for name in self._applied - names:
            self.emit("openadr_event_released", event_id=name.removeprefix("openadr:"))
        self._applied = names
        self._prune(cfg, now_wall)
        return caps

    def _baselines(self, cfg: OpenADRConfig, now_wall: float, import_w: float | None) -> None:
        if import_w is None:
            return
        for eid, ev in list(self.events.items()):
            relative = any(iv.kind in ("baseline_fraction", "delta_kw") for iv in ev.intervals)
            if relative and ev.baseline_kw is None and now_wall >= ev.start + ev.offset_s - cfg.lead_s:
                self.events[eid] = replace(ev, baseline_kw=max(import_w, 0.0) / 1000.0)
                self._persist()

    def _prune(self, cfg: OpenADRConfig, now_wall: float) -> None:
        gone = [eid for eid, ev in self.events.items()
                if ev.cancelled or now_wall >= event_end(ev, cfg, self.ven.last_contact)]
        for eid in gone:
            ev = self.events.pop(eid)
            why = "cancelled" if ev.cancelled else "ended"
            unconfirmed = math.isinf(ev.end) and not ev.cancelled
            self.emit("openadr_event_ended", event_id=eid, reason="unconfirmed" if unconfirmed else why)
        if gone:
            self._persist()

    # ---------------------------------------------------------------- the protocol clients
    def offer(self, ev: DREvent) -> Opt:
        """A new or modified event from the VTN: decided by the policy, kept, persisted; the opt to answer."""
        old = self.events.get(ev.event_id)
        if old is not None:  # a modification keeps the randomisation drawn and the baseline taken
            ev = replace(ev, offset_s=old.offset_s, baseline_kw=old.baseline_kw)
        at_risk: bool | None = None
        if self.cfg is not None and self.cfg.opt_policy == "opt-out-if-sessions-at-risk" and self.sessions_at_risk:
            try:
                at_risk = bool(self.sessions_at_risk(ev))
            except Exception:
                log.exception("openadr_risk_hook_failed", event_id=ev.event_id)
                at_risk = None
        opt, reason = decide_opt(self.cfg, ev, at_risk) if self.cfg is not None else ("optOut", "not configured")
        ev = replace(ev, opt=opt, opt_reason=reason)
        self.events[ev.event_id] = ev
        if len(self.events) > MAX_EVENTS:  # a flood: drop one that caps nothing, else the one starting last
            drop = min(self.events.values(), key=lambda e: (e.opt == "optIn" and not e.cancelled, -e.start))
            self.events.pop(drop.event_id)
            log.warning("openadr_events_dropped", event_id=drop.event_id, held=len(self.events))
        self.ven.last_event_id, self.ven.last_event_wall = ev.event_id, ev.received_wall
        self.emit("openadr_event", event_id=ev.event_id, source=ev.source, opt=opt, reason=reason,
                  start=iso(ev.start + ev.offset_s), end=iso(ev.end + ev.offset_s), signal=ev.signal,
                  modification=ev.modification)
        self._persist()
        return opt

    def reconsider(self, now_wall: float) -> list[DREvent]:
        """Opted-in events not over yet, asked of the fleet hook again (opt-out-if-sessions-at-risk): those now
        at risk are opted out (their cap ends) and returned, for the client to tell the VTN."""
        cfg, hook = self.cfg, self.sessions_at_risk
        if cfg is None or hook is None or cfg.opt_policy != "opt-out-if-sessions-at-risk":
            return []
        out: list[DREvent] = []
        for eid, ev in list(self.events.items()):
            if ev.opt != "optIn" or ev.cancelled or now_wall >= event_end(ev, cfg, self.ven.last_contact):
                continue
            try:
                at_risk = bool(hook(ev))
            except Exception:
                log.exception("openadr_risk_hook_failed", event_id=eid)
                continue
            if at_risk:
                ev = replace(ev, opt="optOut", opt_reason="sessions would miss their departure (during the event)")
                self.events[eid] = ev
                self.emit("openadr_opt_changed", event_id=eid, opt="optOut", reason=ev.opt_reason)
                out.append(ev)
        if out:
            self._persist()
        return out

    def cancel(self, event_id: str) -> bool:
        ev = self.events.get(event_id)
        if ev is None or ev.cancelled:
            return False
        self.events[event_id] = replace(ev, cancelled=True)
        self.emit("openadr_event_cancelled", event_id=event_id)
        self._persist()
        return True

    def contact(self, wall: float) -> None:
        """The VTN answered (a valid message): the events it has not cancelled stand."""
        self.ven.last_contact = wall
        self.ven.last_error = None
        if not 0 <= wall - self._contact_saved < CONTACT_PERSIST_S:  # on disk for the status of another process
            self._contact_saved = wall
            self._persist()

    def registration(self, **fields: Any) -> None:
        for k, v in fields.items():
            setattr(self.ven, k, v)
        self._persist()

    def update_config(self, cfg: OpenADRConfig | None) -> None:
        self.cfg = cfg

    # ---------------------------------------------------------------- persistence and status
    def _persist(self) -> None:
        doc = {"ven": asdict(self.ven), "events": [_event_json(e) for e in self.events.values()]}
        self.writer.put(STATE_FILE, json.dumps(doc))

    def _restore(self) -> None:
        text = self.writer.read(STATE_FILE)
        if text is None:
            return
        try:
            doc = json.loads(text)
            known = VenState.__dataclass_fields__
            self.ven = VenState(**{k: v for k, v in doc.get("ven", {}).items() if k in known})
            self.ven.registered = False  # until the VTN confirms it again
            for d in doc.get("events", []):
                ev = _event_from_json(d)
                self.events[ev.event_id] = ev
        except (ValueError, TypeError, KeyError) as exc:
            log.error("openadr_state_restore_failed", error=str(exc)[:200])
            return
        if self.events:
            log.info("openadr_events_restored", events=sorted(self.events))

    def status(self, now_wall: float, service: ServiceConfig | None = None) -> dict[str, object]:
        """The commissioning check: registration, the VTN's last contact, the last event, the events held."""
        cfg, v = self.cfg, self.ven
        out: dict[str, object] = {
            "configured": cfg is not None,
            "protocol": None if cfg is None else cfg.protocol,
            "vtn_url": None if cfg is None else cfg.vtn_url,
            "ven_name": None if cfg is None else cfg.ven_name,
            "registered": v.registered, "ven_id": v.ven_id, "registration_id": v.registration_id,
            "vtn_id": v.vtn_id, "poll_interval_s": v.poll_interval_s,
            "last_contact": None if v.last_contact is None else iso(v.last_contact),
            "last_contact_age_s": None if v.last_contact is None else round(now_wall - v.last_contact, 1),
            "last_error": v.last_error,
            "last_event": None if v.last_event_id is None else {
                "event_id": v.last_event_id, "received": iso(v.last_event_wall or 0.0)},
            "events": [],
        }
        events: list[dict[str, object]] = []
        for ev in sorted(self.events.values(), key=lambda e: e.start):
            d: dict[str, object] = {
                "event_id": ev.event_id, "source": ev.source, "signal": ev.signal, "opt": ev.opt,
                "opt_reason": ev.opt_reason, "cancelled": ev.cancelled, "start": iso(ev.start + ev.offset_s),
                "end": iso(ev.end + ev.offset_s),
            }
            if cfg is not None:
                d["ends"] = iso(event_end(ev, cfg, v.last_contact))
                if service is not None:
                    a = event_cap_a(ev, cfg, service, now_wall, v.last_contact)
                    d["cap_a"] = None if a is None else round(a, 2)
            events.append(d)
        out["events"] = events
        return out


def iso(wall: float) -> str:
    if not math.isfinite(wall):
        return "open-ended"
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _event_json(ev: DREvent) -> dict[str, object]:
    d = asdict(ev)
    d["end"] = None if math.isinf(ev.end) else ev.end
    d["intervals"] = [{**asdict(iv), "end": None if math.isinf(iv.end) else iv.end} for iv in ev.intervals]
    return d


def _event_from_json(d: Mapping[str, Any]) -> DREvent:
    ivs = []
    for x in d["intervals"]:
        if x["kind"] not in KINDS:
            raise ValueError(f"interval kind {x['kind']!r}")
        ivs.append(Interval(float(x["start"]), math.inf if x["end"] is None else float(x["end"]), x["kind"],
                            float(x["value"])))
    known = DREvent.__dataclass_fields__
    fields = {k: v for k, v in d.items() if k in known}
    fields["end"] = math.inf if d["end"] is None else float(d["end"])
    fields["intervals"] = tuple(ivs)
    ev = DREvent(**fields)
    if not all(math.isfinite(x) for x in (ev.start, ev.received_wall, ev.offset_s, ev.ramp_up_s)):
        raise ValueError("non-finite time")
    return ev


__all__ = ["DREvent", "Interval", "OpenADRStore", "VenState", "decide_opt", "event_cap_a", "event_caps",
           "event_end", "iso"]
