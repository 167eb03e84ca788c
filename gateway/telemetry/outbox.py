"""The outbox: what waits for the broker, bounded, and what survives an outage.

* values (site, circuits, chargers, meters, cap, budget, tariff, plan): the latest payload per topic, the
  oldest topic dropped when ``queue_max`` topics wait;
* events: persisted first (:class:`~gateway.telemetry.store.EventStore`), sent with QoS 1, deleted once the
  broker acknowledged them, so none is lost across a broker outage or a gateway restart (at least once;
  every event has an ``id`` for de-duplication); beyond ``queue_max`` in memory they wait in the store;
* replies to commands (the last 1000).

Messages handed to the client wait in ``inflight`` until acknowledged. Touched on the event loop only.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gateway.errors import StoreError
from gateway.telemetry.store import EventStore

log = structlog.get_logger(__name__)

REPLIES_MAX = 1000
DROP_LOG_EVERY_S = 10.0


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    event_key: int | None = None  # events: their row in the store
    reply: bool = False


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


class Outbox:
    def __init__(self, store: EventStore, *, queue_max: int, qos: int, clock: Callable[[], float]) -> None:
        self.store = store
        self.queue_max = queue_max
        self.qos = qos
        self._clock = clock
        self.values: OrderedDict[str, Msg] = OrderedDict()
        self.events: deque[Msg] = deque()
        self.replies: deque[Msg] = deque(maxlen=REPLIES_MAX)
        self.inflight: dict[int, Msg] = {}
        self.stats = Stats()
        self._events_spilled = True  # events of an earlier run may wait in the store
        self._events_hi = 0  # highest store key loaded into memory
        self._acked_keys: list[int] = []
        self._on_ack: dict[int, asyncio.Event] = {}
        self._last_drop_log = -math.inf

    # ---------------------------------------------------------------- in
    def put_value(self, topic: str, payload: bytes) -> None:
        q = self.values
        if topic in q:
            q[topic] = Msg(topic, payload, self.qos, True)
            return
        if len(q) >= self.queue_max:
            q.popitem(last=False)
            self.stats.dropped_values += 1
            now = self._clock()
            if now - self._last_drop_log > DROP_LOG_EVERY_S:
                self._last_drop_log = now
                log.warning("mqtt_queue_full", queue_max=self.queue_max, dropped=self.stats.dropped_values)
        q[topic] = Msg(topic, payload, self.qos, True)

    def put_event(self, topic: str, payload: bytes) -> None:
        key: int | None
        try:
            key = self.store.add(topic, payload)
        except StoreError as exc:
            log.error("mqtt_event_not_persisted", topic=topic, error=str(exc))
            key = None
        if key is not None and (self._events_spilled or len(self.events) >= self.queue_max):
            self._events_spilled = True  # it waits in the store; loaded when memory has room
            return
        if key is None and len(self.events) >= self.queue_max:
            log.error("mqtt_event_dropped", topic=topic, reason="queue full and store unavailable")
            return
        if key is not None:
            self._events_hi = key
        self.events.append(Msg(topic, payload, 1, False, key))

    def put_reply(self, topic: str, payload: bytes) -> None:
        self.replies.append(Msg(topic, payload, 1, False, reply=True))

    # ---------------------------------------------------------------- out
    def next_msg(self) -> Msg | None:
        """The next message to send: replies first, then events, then values (oldest topic first)."""
        if self.replies:
            return self.replies.popleft()
        self._refill_events()
        if self.events:
            return self.events.popleft()
        if self.values:
            return self.values.popitem(last=False)[1]
        return None

    def requeue(self, m: Msg) -> None:
        """A message the client would not take: first in line again (a value only if no newer one waits)."""
        if m.event_key is not None:
            self.events.appendleft(m)
        elif m.reply:
            self.replies.appendleft(m)
        elif m.topic not in self.values:
            self.values[m.topic] = m
            self.values.move_to_end(m.topic, last=False)

    def sent(self, mid: int, m: Msg, done: asyncio.Event | None = None) -> None:
        """Handed to the client as message ``mid``; ``done`` is set when it is acknowledged."""
        self.inflight[mid] = m
        if done is not None:
            self._on_ack[mid] = done

    def acked(self, mid: int, reason: str, failed: bool) -> bool:
        """The broker acknowledged (or, MQTT 5, refused) ``mid``; False: not one of ours."""
        m = self.inflight.pop(mid, None)
        if m is None:
            return False
        waiter = self._on_ack.pop(mid, None)
        if waiter is not None:
            waiter.set()
        if failed:  # MQTT 5: the broker refused it (e.g. not authorised)
            log.error("mqtt_publish_rejected", topic=m.topic, reason=reason)
        else:
            self.stats.acked += 1
        if m.event_key is not None:
            self._acked_keys.append(m.event_key)  # a refused one would be refused again
        return True

    def waiting_on_shutdown(self) -> bool:
        """Events or replies still queued or unacknowledged (what a clean stop waits for)."""
        return bool(self.replies or self.events) or any(
            m.event_key is not None or not m.retain for m in self.inflight.values()
        )

    def flush_acked(self) -> None:
        """Delete the acknowledged events from the store."""
        if self._acked_keys:
            keys, self._acked_keys = self._acked_keys, []
            try:
                self.store.delete(keys)
            except StoreError as exc:
                log.error("mqtt_event_delete_failed", error=str(exc))

    def queued_events(self) -> int:
        try:
            return (self.store.count() - len(self._acked_keys)
                    - sum(1 for m in self.inflight.values() if m.event_key is not None))
        except Exception:
            return len(self.events)

    def _refill_events(self) -> None:
        if self.events or not self._events_spilled:
            return
        try:
            rows = self.store.load(self._events_hi, self.queue_max)
        except StoreError as exc:
            log.error("mqtt_event_store_read_failed", error=str(exc))
            self._events_spilled = False
            return
        inflight = {m.event_key for m in self.inflight.values()}
        for key, topic, payload in rows:
            self._events_hi = key
            if key not in inflight:
                self.events.append(Msg(topic, payload, 1, False, key))
        if len(rows) < self.queue_max:
            self._events_spilled = False
