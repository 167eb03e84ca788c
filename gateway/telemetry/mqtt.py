"""MQTT telemetry: site, circuit, charger, meter and budget topics, events, and the commands.

The control loop calls :meth:`Telemetry.publish_tick` and :meth:`Telemetry.event`; they only touch
in-memory structures (and, for events, one SQLite insert), never the network, and never raise.
Commands (``<root>cmd/site_limit``: the remote cap, ``<root>cmd/tariff``: the time-of-use schedule) are
received here and handed to the budget service (`gateway.budget.service`), which validates, holds and
persists them; telemetry sends its reply and publishes its state (``site_cap``, ``tariff``, ``budget``).
:meth:`Telemetry.run` is a separate
asyncio task that owns the paho-mqtt client (its network thread connects, reconnects with
backoff and does all socket I/O) and drains a bounded outbox into it:

* values (site, circuits, chargers, meters, cap, budget, tariff): the latest payload per topic, oldest topic
  dropped when ``queue_max`` topics wait;
* events: persisted first, sent with QoS 1, deleted once the broker acknowledged them, so
  none is lost across a broker outage or a gateway restart (at least once; every event has
  an ``id`` for de-duplication);
* replies to commands.

At most ``INFLIGHT_WINDOW`` messages are handed to paho at a time, so its own queue stays
bounded while the broker is away (paho re-sends those on reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import ssl
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway import electrical
from gateway.budget import Budget
from gateway.budget.remote import request_id_of
from gateway.budget.service import BudgetService
from gateway.config import ChargerConfig, Site
from gateway.errors import StoreError
from gateway.model import Allocation, ChargerLimit, ChargerSnapshot, MeterReading, Snapshot
from gateway.telemetry.config import MqttConfig
from gateway.telemetry.store import EVENTS_FILE, EventStore

log = structlog.get_logger(__name__)

INFLIGHT_WINDOW = 100  # messages handed to paho and not yet acknowledged
PUMP_BATCH = 50  # messages handed over per event-loop turn, so a backlog never hogs the loop
DRAW_DEADBAND_A = 1.0  # a charger's draw must move this much (any phase) to count as a change
DRAW_DEADBAND_W = 1000.0
SHUTDOWN_TIMEOUT_S = 2.0
RECONNECT_FAST_MAX_S = 2  # reconnect attempts at most this far apart while an outage is young...
RECONNECT_FAST_FOR_S = 120.0  # ...this young; then the backoff grows to reconnect_max_s
CHECKPOINT_EVERY_S = 30.0  # the event store's WAL is folded back by a worker thread this often
_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_LEGACY_CAP_KEY = "site_cap"  # where versions before the budget service kept the remote cap


def iso_ts(wall: float) -> str:
    """Wall-clock seconds -> ISO 8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def topic_level(name: str) -> str:
    """An id made safe as one topic level (no '/', '+', '#')."""
    return name.replace("/", "_").replace("+", "_").replace("#", "_") or "_"


def _r(x: float | None, nd: int = 2) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(x, nd)


def _rt(xs: tuple[float, ...] | None, nd: int = 2) -> list[float | None] | None:
    return None if xs is None else [_r(x, nd) for x in xs]


def _clean(v: object) -> object:
    """Make a value JSON-safe: non-finite floats -> null, tuples -> lists, others -> str."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [_clean(x) for x in v]
    return str(v)


def _dumps(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


@dataclass
class _Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    event_key: int | None = None  # events: their row in the store


@dataclass
class _ChargerPub:
    """What was last published for a charger, and what the last tick saw."""

    key: tuple[object, ...] = ()
    draw_a: tuple[float, ...] | None = None
    draw_w: float | None = None
    pub_at: float = -math.inf
    dirty: bool = False
    snap: ChargerSnapshot | None = None
    lim: ChargerLimit | None = None
    noncompliant: bool = False


@dataclass
class _MeterPub:
    status: str = "unknown"  # unknown | valid | stale
    reading: MeterReading | None = None
    pub_at: float = -math.inf
    stale_since: float | None = None


@dataclass
class Stats:
    connected: bool = False
    queued_values: int = 0
    queued_events: int = 0  # in memory and still on disk
    inflight: int = 0
    published: int = 0  # handed to paho
    acked: int = 0
    dropped_values: int = 0  # superseded by the queue bound
    connects: int = 0


class PlannerSink(Protocol):
    def command(self, payload: bytes, *, require_ts: bool) -> dict[str, object]: ...

    def telemetry(self) -> dict[str, Any]: ...

    def take_events(self) -> list[tuple[str, Mapping[str, object]]]: ...


class Telemetry:
    """The gateway's MQTT link. Every method is safe to call from the control loop."""

    def __init__(
        self,
        cfg: MqttConfig,
        site: Site,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        state_dir: Path | None = None,
        budget: BudgetService | None = None,
    ) -> None:
        self.cfg = cfg
        self._site = site
        self._clock = clock
        self._wall = wall_clock
        self.root = cfg.root_for(site.id)
        self.status_topic = self.root + "status"
        self.cmd_prefix = self.root + "cmd/"
        sd = Path(state_dir) if state_dir is not None else Path(site.state_dir)
        self._store = EventStore(sd / EVENTS_FILE)
        # outbox
        self._values: OrderedDict[str, _Msg] = OrderedDict()
        self._events: deque[_Msg] = deque()
        self._events_spilled = True  # events of an earlier run may wait in the store
        self._events_hi = 0  # highest store key loaded into memory
        self._direct: deque[_Msg] = deque(maxlen=1000)  # replies
        self._inflight: dict[int, _Msg] = {}
        self._acked_keys: list[int] = []
        self._on_ack: dict[int, asyncio.Event] = {}
        self._stats = Stats()
        self._last_drop_log = -math.inf
        # link state (touched on the event loop only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._connected = False
        self._stopping = False
        self._backoff_fast = True
        self._down_since: float | None = None
        self._down_since_wall: float | None = None
        # per-topic state
        self._chargers: dict[str, _ChargerPub] = {}
        self._meters: dict[str, _MeterPub] = {}
        self._circuits: dict[str, bytes] = {}
        self._circuit_pub_at: dict[str, float] = {}
        self._mode: str | None = None
        self._mode_since = 0.0
        self._budget_key: bytes | None = None
        self._planner_key: bytes | None = None
        self._planner_pub_at = -math.inf
        # the departure-aware planner (gateway.planner.service.PlannerService), set by the daemon when configured:
        # cmd/session_needs goes to it; its projections (topic `plan`) and session_at_risk events come back
        self.planner: PlannerSink | None = None
        self._budget_pub_at = -math.inf
        # the budget: commands go to it, its events and state come back
        self._owns_budget = budget is None
        self.budget = budget if budget is not None else BudgetService(site, clock=clock, wall_clock=wall_clock,
                                                                      state_dir=sd)
        self._adopt_legacy_cap()
        self.budget.listen(self)
        if self.budget.remote_restored:
            self._publish_cap_state(iso_ts(self._wall()))
        if self.budget.tariff() is not None:
            self._publish_tariff_state(iso_ts(self._wall()))
        # ticks built on a worker thread: the per-topic state under a lock, the output delivered on the loop
        self._tick_lock = threading.Lock()
        self._tick_out: list[tuple[str, Any, Any]] | None = None
        self._undelivered: list[tuple[str, Any, Any]] = []
        self._loop_thread: int | None = None

    # ================================================================== control-loop API
    def publish_tick(self, snapshot: Snapshot, allocation: Allocation) -> None:
        """Build this tick's topics and queue them; O(changed chargers) encoding work. Never raises.

        Safe on the event loop or on a worker thread (the control loop hands its ticks to one): the
        payloads are built by the caller, the outbox and the events are touched on the event loop only."""
        out: list[tuple[str, Any, Any]] = []
        with self._tick_lock:  # the per-topic state: this tick against another, or a reload
            self._tick_out = out
            try:
                now = self._clock()
                wall = self._wall()
                ts = iso_ts(wall)
                self._tick_mode(allocation, now)
                self._tick_site(snapshot, allocation, ts)
                self._tick_budget(self.budget.last, ts, now)
                self._tick_planner(ts, now)
                self._tick_circuits(allocation, ts, now)
                self._tick_meters(snapshot, ts, now)
                self._tick_chargers(snapshot, allocation, ts, now)
            except Exception as exc:  # a telemetry bug must never take the control loop down
                log.exception("mqtt_publish_tick_failed", error=str(exc))
            finally:
                self._tick_out = None
        on_loop = threading.get_ident() == self._loop_thread
        before_run = self._loop is None and threading.current_thread() is threading.main_thread()
        if on_loop or before_run:
            self._deliver(out)
        elif self._loop is None:
            with self._tick_lock:
                self._undelivered.extend(out)  # the link is not running yet: delivered when it starts
        else:
            self._call(self._deliver, out)

    def _tick_value(self, topic: str, payload: bytes) -> None:
        assert self._tick_out is not None
        self._tick_out.append(("value", topic, payload))

    def _tick_event(self, name: str, **fields: object) -> None:
        assert self._tick_out is not None
        self._tick_out.append(("event", name, fields))

    def _deliver(self, out: list[tuple[str, Any, Any]]) -> None:
        """On the event loop: a tick's values into the outbox, its events queued."""
        try:
            for kind, a, b in out:
                if kind == "value":
                    self._put_value(a, b)
                else:
                    self.event(a, **b)
        except Exception as exc:
            log.exception("mqtt_publish_tick_failed", error=str(exc))
        self._wake.set()

    def event(self, name: str, **fields: object) -> None:
        """Queue and persist an event on ``<root>event/<name>``. Never blocks or raises."""
        try:
            if not _EVENT_NAME.match(name):
                bad = name
                name = re.sub(r"[^a-z0-9_]", "_", name.lower())[:64] or "event"
                if not name[0].isalpha():
                    name = "e_" + name
                log.warning("mqtt_event_name_invalid", name=bad, used=name)
            body: dict[str, object] = {str(k): _clean(v) for k, v in fields.items()}
            body.update(ts=iso_ts(self._wall()), event=name, site=self._site.id, id=uuid.uuid4().hex)
            self._queue_event(self.root + "event/" + name, _dumps(body))
        except Exception as exc:
            log.exception("mqtt_event_failed", event_name=name, error=str(exc))
        self._wake.set()

    def site_cap_a(self, now: float) -> float | None:
        """The active remote cap in A per phase, or None (the budget service holds it)."""
        return self.budget.remote_cap_a(now)

    def budget_changed(self, what: str) -> None:
        """The budget service's remote cap or tariff changed: publish its state."""
        try:
            ts = iso_ts(self._wall())
            if what == "remote":
                self._publish_cap_state(ts)
            elif what == "tariff":
                self._publish_tariff_state(ts)
        except Exception as exc:
            log.exception("mqtt_budget_state_failed", error=str(exc))
        self._wake.set()

    def update_site(self, site: Site) -> None:
        """A reloaded configuration: forget removed chargers/circuits/meters, emit config_reloaded."""
        try:
            old = self._site
            self._site = site
            if site.id != old.id:
                log.warning("mqtt_site_id_changed", old=old.id, new=site.id, note="topic root kept until restart")
            with self._tick_lock:  # a tick being built on the worker thread uses these
                for cid in [c for c in self._chargers if c not in site.chargers]:
                    del self._chargers[cid]
                    self._put_value(self.root + "charger/" + topic_level(cid), b"")
                for mid in [m for m in self._meters if m not in site.meters]:
                    del self._meters[mid]
                    self._put_value(self.root + "meter/" + topic_level(mid), b"")
                for cid in [c for c in self._circuits if c not in site.circuits]:
                    del self._circuits[cid]
                    self._circuit_pub_at.pop(cid, None)
                    self._put_value(self.root + "circuit/" + topic_level(cid), b"")
            if self._owns_budget:
                self.budget.update_site(site)
            if site.mqtt is not None and site.mqtt != self.cfg:
                log.warning("mqtt_config_changed", note="the [mqtt] section takes effect on restart")
            self.event(
                "config_reloaded",
                source=site.source,
                chargers=len(site.chargers),
                circuits=len(site.circuits),
                meters=len(site.meters),
                service_limit_a=site.service.limit_a,
            )
        except Exception as exc:
            log.exception("mqtt_update_site_failed", error=str(exc))

    def stats(self) -> Stats:
        s = self._stats
        s.connected = self._connected
        s.queued_values = len(self._values)
        try:
            s.queued_events = (
                self._store.count()
                - len(self._acked_keys)
                - sum(1 for m in self._inflight.values() if m.event_key is not None)
            )
        except Exception:
            s.queued_events = len(self._events)
        s.inflight = len(self._inflight)
        return s

    @property
    def connected(self) -> bool:
        return self._connected

    # ================================================================== tick -> topics
    def _tick_mode(self, allocation: Allocation, now: float) -> None:
        mode = allocation.mode
        prev = self._mode
        if mode == prev:
            return
        self._mode = mode
        if mode != "normal":
            self._tick_event(
                "failsafe_entered",
                mode=mode,
                previous_mode=prev,
                meters=list(allocation.failsafe_meters),
            )
            if prev in (None, "normal"):
                self._mode_since = now
        elif prev is not None:
            self._tick_event("failsafe_left", previous_mode=prev, duration_s=_r(now - self._mode_since, 1))

    def _tick_site(self, snapshot: Snapshot, allocation: Allocation, ts: str) -> None:
        svc = self._site.service
        st = allocation.circuits.get(self._site.root)
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
            "current_a": _rt(st.measured_a) if st is not None else None,
            "limit_a": _r(limit_a),
            "limit_w": _r(electrical.service_power_w(svc, limit_a), 0),
            "service_limit_a": svc.limit_a,
            "site_cap_a": _r(min(remote)) if remote else None,
            "caps": {n: _r(a) for n, a in caps.items()},
            "limit_source": binding or "service",
            "headroom_a": _rt(st.headroom_a) if st is not None else None,
            "allocated_a": _rt(st.allocated_a) if st is not None else None,
            "non_ev_a": _rt(st.non_ev_a) if st is not None else None,
            "failsafe_meters": list(allocation.failsafe_meters),
            "chargers_online": online,
            "chargers_charging": charging,
        }
        self._tick_value(self.root + "site", _dumps(body))

    def _tick_circuits(self, allocation: Allocation, ts: str, now: float) -> None:
        hb = self.cfg.heartbeat_s
        for cid, st in allocation.circuits.items():
            cc = self._site.circuits.get(cid)
            body: dict[str, object] = {
                "limit_a": _r(st.limit_a),
                "configured_limit_a": None if cc is None else cc.limit_a,
                "current_a": _rt(st.measured_a, 1),
                "non_ev_a": _rt(st.non_ev_a, 1),
                "headroom_a": _rt(st.headroom_a, 1),
                "allocated_a": _rt(st.allocated_a, 1),
                "state": st.state,
            }
            key = _dumps(body)
            if key == self._circuits.get(cid) and now - self._circuit_pub_at.get(cid, -math.inf) < hb:
                continue
            self._circuits[cid] = key
            self._circuit_pub_at[cid] = now
            body["ts"] = ts
            self._tick_value(self.root + "circuit/" + topic_level(cid), _dumps(body))

    def _tick_meters(self, snapshot: Snapshot, ts: str, now: float) -> None:
        hb = self.cfg.heartbeat_s
        for mid, rd in snapshot.meters.items():
            mp = self._meters.get(mid)
            if mp is None:
                mp = self._meters[mid] = _MeterPub()
            status = "unknown" if rd is None and mp.status == "unknown" else (
                "valid" if rd is not None and rd.valid else "stale"
            )
            if status != mp.status:
                if status == "stale":
                    mp.stale_since = now
                    self._tick_event("meter_stale", meter=mid, reason="no reading" if rd is None else rd.reason)
                elif status == "valid" and mp.status == "stale":
                    gap = None if mp.stale_since is None else _r(now - mp.stale_since, 1)
                    self._tick_event("meter_back", meter=mid, stale_for_s=gap)
                mp.status = status
            elif rd is mp.reading and now - mp.pub_at < hb:
                continue
            mp.reading = rd
            mp.pub_at = now
            mc = self._site.meters.get(mid)
            body: dict[str, object] = {"ts": ts, "circuit": None if mc is None else mc.circuit}
            if rd is None:
                body.update(valid=False, reason="no reading", age_s=None, current_a=None)
            else:
                body.update(
                    valid=rd.valid,
                    reason=rd.reason,
                    age_s=_r(now - rd.at, 3),
                    current_a=_rt(rd.current_a),
                    voltage_v=_rt(rd.voltage_v, 1),
                    power_w=_rt(rd.power_w, 0),
                    total_power_w=_r(rd.total_power_w, 0),
                    frequency_hz=_r(rd.frequency_hz, 3),
                    energy_import_wh=_r(rd.energy_import_wh, 0),
                )
            self._tick_value(self.root + "meter/" + topic_level(mid), _dumps(body))

    def _tick_chargers(self, snapshot: Snapshot, allocation: Allocation, ts: str, now: float) -> None:
        hb = self.cfg.heartbeat_s
        min_iv = self.cfg.charger_min_interval_s
        limits = allocation.limits
        chargers = self._site.chargers
        for cid, chs in snapshot.chargers.items():
            lim = limits.get(cid)
            cp = self._chargers.get(cid)
            if cp is None:
                cp = self._chargers[cid] = _ChargerPub()
            elif chs is cp.snap and lim is cp.lim and not cp.dirty and now - cp.pub_at < hb:
                continue  # nothing new: the fast path for most of 1000 chargers
            cfg = chargers.get(cid)
            if chs.noncompliant != cp.noncompliant:
                cp.noncompliant = chs.noncompliant
                self._noncompliance_event(chs, lim, cfg)
            cp.snap, cp.lim = chs, lim
            key = (chs.online, chs.state, None if lim is None else _r(lim.limit, 1),
                   None if lim is None else lim.reason, chs.noncompliant)
            changed = key != cp.key or _moved(cp.draw_a, chs.draw_a, DRAW_DEADBAND_A) or _moved_w(
                cp.draw_w, chs.draw_w
            )
            since = now - cp.pub_at
            if not ((changed or cp.dirty) and since >= min_iv) and since < hb:
                cp.dirty = cp.dirty or changed
                continue
            cp.key, cp.draw_a, cp.draw_w, cp.pub_at, cp.dirty = key, chs.draw_a, chs.draw_w, now, False
            self._tick_value(self.root + "charger/" + topic_level(cid), _dumps(_charger_body(chs, lim, cfg, ts)))

    def _noncompliance_event(self, chs: ChargerSnapshot, lim: ChargerLimit | None, cfg: ChargerConfig | None) -> None:
        unit = "W" if cfg is not None and cfg.kind == "dc" else "A"
        if chs.noncompliant:
            self._tick_event(
                "noncompliance",
                charger=chs.id,
                limit_w=None if lim is None or unit == "A" else _r(lim.limit, 0),
                limit_a=None if lim is None or unit == "W" else _r(lim.limit),
                line_limit_a=None if lim is None else _r(lim.line_a),
                current_a=_rt(chs.draw_a),
                power_w=_r(chs.draw_w, 0),
            )
        else:
            self._tick_event("noncompliance_cleared", charger=chs.id)

    # ================================================================== outbox
    def _put_value(self, topic: str, payload: bytes) -> None:
        q = self._values
        if topic in q:
            q[topic] = _Msg(topic, payload, self.cfg.qos, True)
            return
        if len(q) >= self.cfg.queue_max:
            q.popitem(last=False)
            self._stats.dropped_values += 1
            now = self._clock()
            if now - self._last_drop_log > 10.0:
                self._last_drop_log = now
                log.warning("mqtt_queue_full", queue_max=self.cfg.queue_max, dropped=self._stats.dropped_values)
        q[topic] = _Msg(topic, payload, self.cfg.qos, True)

    def _queue_event(self, topic: str, payload: bytes) -> None:
        key: int | None
        try:
            key = self._store.add(topic, payload)
        except StoreError as exc:
            log.error("mqtt_event_not_persisted", topic=topic, error=str(exc))
            key = None
        if key is not None and (self._events_spilled or len(self._events) >= self.cfg.queue_max):
            self._events_spilled = True  # it waits in the store; loaded when memory has room
            return
        if key is None and len(self._events) >= self.cfg.queue_max:
            log.error("mqtt_event_dropped", topic=topic, reason="queue full and store unavailable")
            return
        if key is not None:
            self._events_hi = key
        self._events.append(_Msg(topic, payload, 1, False, key))

    def _refill_events(self) -> None:
        if self._events or not self._events_spilled:
            return
        try:
            rows = self._store.load(self._events_hi, self.cfg.queue_max)
        except StoreError as exc:
            log.error("mqtt_event_store_read_failed", error=str(exc))
            self._events_spilled = False
            return
        inflight = {m.event_key for m in self._inflight.values()}
        for key, topic, payload in rows:
            self._events_hi = key
            if key not in inflight:
                self._events.append(_Msg(topic, payload, 1, False, key))
        if len(rows) < self.cfg.queue_max:
            self._events_spilled = False

    def _next_msg(self) -> _Msg | None:
        if self._direct:
            return self._direct.popleft()
        self._refill_events()
        if self._events:
            return self._events.popleft()
        if self._values:
            return self._values.popitem(last=False)[1]
        return None

    def _requeue(self, m: _Msg) -> None:
        if m.event_key is not None or m.topic.startswith(self.cmd_prefix):
            (self._events if m.event_key is not None else self._direct).appendleft(m)
        elif m.topic not in self._values:
            self._values[m.topic] = m
            self._values.move_to_end(m.topic, last=False)

    def _pump(self, client: mqtt.Client) -> bool:
        """Hand queued messages to paho; True when more is waiting than one batch took."""
        self._flush_acked()
        n = 0
        while self._connected and len(self._inflight) < INFLIGHT_WINDOW and n < PUMP_BATCH:
            m = self._next_msg()
            if m is None:
                return False
            n += 1
            try:
                info = client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            except (ValueError, OSError) as exc:
                log.error("mqtt_publish_refused", topic=m.topic, error=str(exc))
                continue
            rc = info.rc
            if rc == mqtt.MQTT_ERR_SUCCESS or (rc == mqtt.MQTT_ERR_NO_CONN and m.qos > 0):
                # paho holds it now (and re-sends a QoS 1 message after a reconnect)
                self._stats.published += 1
                self._inflight[info.mid] = m
            else:
                self._requeue(m)
                return False
        return n >= PUMP_BATCH

    def _flush_acked(self) -> None:
        if self._acked_keys:
            keys, self._acked_keys = self._acked_keys, []
            try:
                self._store.delete(keys)
            except StoreError as exc:
                log.error("mqtt_event_delete_failed", error=str(exc))

    # ================================================================== paho callbacks
    def _call(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: Any, _p: object = None) -> None:
        if getattr(rc, "is_failure", False):
            self._call(self._link_refused, str(rc))
            return
        # in the network thread: the status and the subscription go out before anything else
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        if self.cfg.protocol == "5":
            # retain-as-published: a retained command keeps its flag on live delivery too, and is refused
            client.subscribe(self.cmd_prefix + "+", options=SubscribeOptions(qos=1, retainAsPublished=True))
        else:
            client.subscribe(self.cmd_prefix + "+", qos=1)
        self._call(self._link_up)

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, rc: Any, _p: object = None) -> None:
        self._call(self._link_down, str(rc))

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, rc: Any, _p: object = None) -> None:
        self._call(self._acked, mid, str(rc), bool(getattr(rc, "is_failure", False)))

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self._call(self._command, msg.topic, bytes(msg.payload), bool(msg.retain))

    # ---- on the event loop
    def _link_up(self) -> None:
        self._connected = True
        self._stats.connects += 1
        if self._down_since is not None:
            gap = self._clock() - self._down_since
            log.info("mqtt_reconnected", gap_s=round(gap, 3))
            self.event(
                "mqtt_reconnected",
                gap_s=_r(gap, 3),
                down_since=None if self._down_since_wall is None else iso_ts(self._down_since_wall),
            )
            self._down_since = self._down_since_wall = None
        else:
            log.info("mqtt_connected", host=self.cfg.host, port=self.cfg.port, root=self.root)
        self._wake.set()

    def _link_down(self, reason: str) -> None:
        if self._connected and not self._stopping:
            self._down_since = self._clock()
            self._down_since_wall = self._wall()
            log.warning("mqtt_disconnected", reason=reason)
        self._connected = False

    def _link_refused(self, reason: str) -> None:
        log.error("mqtt_connect_refused", reason=reason, host=self.cfg.host, port=self.cfg.port)

    def _acked(self, mid: int, reason: str, failed: bool) -> None:
        m = self._inflight.pop(mid, None)
        if m is None:
            return
        waiter = self._on_ack.pop(mid, None)
        if waiter is not None:
            waiter.set()
        if failed:  # MQTT 5: the broker refused it (e.g. not authorised)
            log.error("mqtt_publish_rejected", topic=m.topic, reason=reason)
            if m.event_key is not None:
                self._acked_keys.append(m.event_key)  # re-sending would be refused again
        else:
            self._stats.acked += 1
            if m.event_key is not None:
                self._acked_keys.append(m.event_key)
        self._wake.set()

    # ================================================================== budget: commands and state
    def _command(self, topic: str, payload: bytes, retained: bool) -> None:
        name = topic[len(self.cmd_prefix):] if topic.startswith(self.cmd_prefix) else topic
        if not payload:  # a zero-length message clears a retained command on the broker: no command
            log.debug("mqtt_command_empty", command=name)
            return
        reply_topic = self.cmd_prefix + topic_level(name) + "/reply"
        wall = self._wall()
        try:
            if name == "session_needs" and self.planner is not None:
                body = self._needs_command(payload, retained)
            else:
                body = self.budget.command(name, payload, retained=retained, require_ts=self.cfg.protocol != "5")
        except Exception as exc:  # never let a payload take the link down
            log.exception("mqtt_command_failed", command=name, error=str(exc))
            body = {"id": request_id_of(payload), "ok": False, "reason": "internal error"}
        if body.get("ok") is False:
            log.warning("mqtt_command_rejected", command=name, reason=body.get("reason"), request_id=body.get("id"))
        self._reply(reply_topic, body, wall)
        self._wake.set()

    def _needs_command(self, payload: bytes, retained: bool) -> dict[str, object]:
        """``cmd/session_needs`` to the planner (validated there like the remote cap); retained ones refused."""
        assert self.planner is not None
        if retained:
            return {"id": request_id_of(payload), "ok": False,
                    "reason": "retained commands are refused: publish commands with retain=false"}
        return self.planner.command(payload, require_ts=self.cfg.protocol != "5")

    def _tick_planner(self, ts: str, now: float) -> None:
        """``<root>plan``: per session the projected energy at departure and whether it is at risk; the plan's
        events (``session_at_risk``). On the tick's worker thread, like the other topics."""
        if self.planner is None:
            return
        for name, fields in self.planner.take_events():
            self._tick_event(name, **fields)
        body = self.planner.telemetry()
        key = _dumps(body)
        since = now - self._planner_pub_at
        if (key == self._planner_key and since < self.cfg.heartbeat_s) or (
            since < self.cfg.charger_min_interval_s and self._planner_key is not None
        ):
            return
        self._planner_key, self._planner_pub_at = key, now
        self._tick_value(self.root + "plan", _dumps({"ts": ts, **body}))

    def _reply(self, topic: str, body: dict[str, object], wall: float) -> None:
        body["ts"] = iso_ts(wall)
        self._direct.append(_Msg(topic, _dumps({k: _clean(v) for k, v in body.items()}), 1, False))

    def _publish_cap_state(self, ts: str) -> None:
        body: dict[str, object] = {"ts": ts, **self.budget.remote_state()}
        self._put_value(self.root + "site_cap", _dumps(body))

    def _publish_tariff_state(self, ts: str) -> None:
        st = self.budget.tariff_state()
        self._put_value(self.root + "tariff", b"" if st is None else _dumps({"ts": ts, **st}))

    def _tick_budget(self, b: Budget | None, ts: str, now: float) -> None:
        """``<root>budget``: every source's cap, the demand window's figures, the tariff period and price."""
        if b is None:
            return
        body: dict[str, object] = {"caps": {c.name: _rt(c.limit_a) for c in b.caps}}
        low = b.binding()
        body["binding"] = None if low is None or min(low.limit_a) >= self._site.service.limit_a else low.name
        d = b.demand
        if d is not None:
            body["demand"] = {
                "interval_start": iso_ts(d.interval_start), "interval_end": iso_ts(d.interval_end),
                "energy_kwh": _r(d.energy_wh / 1000.0, 3), "projected_kw": _r(d.projected_kw, 2),
                "target_kw": _r(d.target_kw, 3), "effective_target_kw": _r(d.effective_target_kw, 3),
                "month_peak_kw": _r(d.month_peak_kw, 2), "allowed_ev_kw": _r(d.allowed_ev_kw, 2),
                "forecast_non_ev_kw": _r(d.forecast_non_ev_kw, 2), "cap_a": _r(d.cap_a, 1),
                "measurement": d.measurement, "estimated_s": _r(d.estimated_s, 0),
            }
        t = b.tariff
        if t is not None:
            body["tariff"] = {"season": t.season, "period": t.period, "price_per_kwh": t.price_per_kwh,
                              "cap_kw": t.cap_kw, "until": iso_ts(t.until), "source": t.source}
        sol = b.solar
        if sol is not None:
            body["solar"] = {"pv_w": _r(sol.pv_w, 0), "surplus_w": _r(sol.surplus_w, 0),
                             "export_w": _r(sol.export_w, 0), "export_limit_w": sol.export_limit_w,
                             "paused": list(sol.paused)}
        key = _dumps(body)
        since = now - self._budget_pub_at
        if key == self._budget_key and since < self.cfg.heartbeat_s:
            return
        if since < self.cfg.charger_min_interval_s and self._budget_key is not None:
            return
        self._budget_key, self._budget_pub_at = key, now
        body["ts"] = ts
        self._tick_value(self.root + "budget", _dumps(body))

    def _adopt_legacy_cap(self) -> None:
        try:
            text = self._store.get(_LEGACY_CAP_KEY)
            if text is not None:
                self.budget.adopt_legacy_remote(text)
                self._store.put(_LEGACY_CAP_KEY, None)
        except StoreError as exc:
            log.error("mqtt_legacy_site_cap_unreadable", error=str(exc))

    # ================================================================== the link task
    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        proto = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id_for(self._site.id),
            protocol=proto,
        )
        if cfg.tls is not None:
            client.tls_set(
                ca_certs=cfg.tls.ca_file,
                certfile=cfg.tls.cert_file,
                keyfile=cfg.tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=min(cfg.reconnect_max_s, RECONNECT_FAST_MAX_S))
        client.max_inflight_messages_set(INFLIGHT_WINDOW + 20)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    async def run(self) -> None:
        """Connect, reconnect with backoff and drain the outbox until cancelled.

        On cancellation, publishes ``status`` = ``offline`` (retained) and disconnects cleanly.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        with self._tick_lock:
            early, self._undelivered = self._undelivered, []
        self._deliver(early)
        self._stopping = False
        self._backoff_fast = True  # _make_client sets the fast backoff
        self._wake = asyncio.Event()
        self._wake.set()
        client: mqtt.Client | None = None
        checkpoint: asyncio.Future[None] | None = None
        next_checkpoint = time.monotonic() + CHECKPOINT_EVERY_S
        try:
            while client is None:
                try:
                    client = self._make_client()
                    if self.cfg.protocol == "5":
                        client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=True)
                    else:
                        client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
                    client.loop_start()
                except (OSError, ValueError, ssl.SSLError) as exc:
                    client = None
                    log.error("mqtt_client_setup_failed", error=str(exc), retry_s=self.cfg.reconnect_max_s)
                    await asyncio.sleep(self.cfg.reconnect_max_s)
            while True:
                with contextlib.suppress(TimeoutError):
                    # not wait_for: on 3.11 it can swallow a cancel that races the event being set
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                self._wake.clear()
                if (checkpoint is None or checkpoint.done()) and time.monotonic() >= next_checkpoint:
                    next_checkpoint = time.monotonic() + CHECKPOINT_EVERY_S
                    checkpoint = asyncio.ensure_future(asyncio.to_thread(self._store.checkpoint))
                self._widen_backoff(client)
                if self._pump(client):
                    self._wake.set()
                    await asyncio.sleep(0)
        finally:
            if client is not None:
                await self._shutdown(client)
            if checkpoint is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await checkpoint
            await asyncio.to_thread(self._store.checkpoint)
            self._connected = False

    async def _drain_events(self, client: mqtt.Client) -> None:
        """On the way out: hand the queued events and replies (gateway_stopping among them) to the broker and
        wait, within SHUTDOWN_TIMEOUT_S, for their acknowledgements."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                while self._connected:
                    self._pump(client)
                    waiting = any(m.event_key is not None or not m.retain for m in self._inflight.values())
                    if not (self._direct or self._events or waiting):
                        return
                    await asyncio.sleep(0.02)

    def _widen_backoff(self, client: mqtt.Client) -> None:
        """A young outage is retried every RECONNECT_FAST_MAX_S at most (the broker restarting: back within
        seconds); one older than RECONNECT_FAST_FOR_S backs off up to reconnect_max_s."""
        down = self._down_since
        fast = down is None or self._clock() - down < RECONNECT_FAST_FOR_S
        if fast != self._backoff_fast:
            self._backoff_fast = fast
            top = min(self.cfg.reconnect_max_s, RECONNECT_FAST_MAX_S) if fast else self.cfg.reconnect_max_s
            client.reconnect_delay_set(min_delay=1, max_delay=top)

    async def _shutdown(self, client: mqtt.Client) -> None:
        self._stopping = True
        try:
            if self._connected:
                await self._drain_events(client)
                done = asyncio.Event()
                info = client.publish(self.status_topic, b"offline", qos=1, retain=True)
                self._inflight[info.mid] = _Msg(self.status_topic, b"offline", 1, True)
                self._on_ack[info.mid] = done
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                        await done.wait()
            client.disconnect()
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S + 3):
                await asyncio.to_thread(client.loop_stop)
            await asyncio.sleep(0)  # acknowledgements the network thread handed over last
            log.info("mqtt_stopped")
        except (Exception, asyncio.CancelledError) as exc:
            log.warning("mqtt_shutdown_unclean", error=str(exc))
        self._flush_acked()

    def close(self) -> None:
        """Release the event store (after run() ended), and the budget service if it is telemetry's own."""
        self._flush_acked()
        self._store.close()
        if self._owns_budget:
            self.budget.close()


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


def _charger_body(
    chs: ChargerSnapshot, lim: ChargerLimit | None, cfg: ChargerConfig | None, ts: str
) -> dict[str, object]:
    dc = cfg is not None and cfg.kind == "dc"
    body: dict[str, object] = {
        "ts": ts,
        "online": chs.online,
        "state": str(chs.state),
        "circuit": None if cfg is None else cfg.circuit,
        "limit_w" if dc else "limit_a": None if lim is None else _r(lim.limit, 0 if dc else 2),
        "line_a": None if lim is None else _r(lim.line_a),
        "reason": None if lim is None else lim.reason,
        "current_a": _rt(chs.draw_a),
        "power_w": _r(chs.draw_w, 0),
        "noncompliant": chs.noncompliant,
    }
    s = chs.session
    if s is not None:
        body["transaction_id"] = s.transaction_id
        body["energy_wh"] = _r(s.energy_wh, 0)
    return body
