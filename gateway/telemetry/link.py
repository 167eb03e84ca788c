"""The link: one paho-mqtt 2 client (CallbackAPIVersion.VERSION2) and the task that drains the outbox into it.

paho's network thread connects, reconnects and does all socket I/O; the delay before each reconnect comes
from :class:`gateway.backoff.Backoff` (with jitter): at most ``RECONNECT_FAST_MAX_S`` while an outage is
younger than ``RECONNECT_FAST_FOR_S`` (a broker restarting is back within seconds), then up to
``reconnect_max_s``. On connect the status (``online``, retained; the will says ``offline``) and the
command subscription (``<root>cmd/+``) go out first. A command is routed by its name to its handler and
the handler's reply is queued on ``<root>cmd/<name>/reply``.

At most ``INFLIGHT_WINDOW`` messages are handed to paho at a time, so its own queue stays bounded while the
broker is away (paho re-sends those on reconnect). paho's callbacks hand over to the event loop; everything
else runs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.backoff import Backoff
from gateway.budget.remote import request_id_of
from gateway.telemetry.config import MqttConfig
from gateway.telemetry.outbox import Msg, Outbox
from gateway.telemetry.topics import iso_ts, reply_payload, topic_level

log = structlog.get_logger(__name__)

INFLIGHT_WINDOW = 100  # messages handed to paho and not yet acknowledged
PUMP_BATCH = 50  # messages handed over per event-loop turn, so a backlog never hogs the loop
SHUTDOWN_TIMEOUT_S = 2.0
RECONNECT_FAST_MAX_S = 2  # reconnect attempts at most this far apart while an outage is young...
RECONNECT_FAST_FOR_S = 120.0  # ...this young; then the backoff grows to reconnect_max_s
CHECKPOINT_EVERY_S = 30.0  # the event store's WAL is folded back by a worker thread this often


@dataclass(frozen=True)
class Command:
    """A message on ``<root>cmd/<name>``."""

    name: str
    payload: bytes
    retained: bool
    require_ts: bool  # MQTT 3.1.1 has no message expiry: the command must carry its own timestamp


Handler = Callable[[Command], dict[str, object]]  # -> the reply's body (``ok``, ``id``, outcome or ``reason``)


class Link:
    """The paho client and the outbox pump. ``handlers``: command name -> handler; ``fallback`` answers the
    others. ``on_reconnected(gap_s, down_since_wall)`` is told of a reconnect after an outage."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        root: str,
        outbox: Outbox,
        handlers: Mapping[str, Handler],
        fallback: Handler,
        on_reconnected: Callable[[float, float | None], None],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.root = root
        self.status_topic = root + "status"
        self.cmd_prefix = root + "cmd/"
        self.outbox = outbox
        self.handlers = dict(handlers)
        self.fallback = fallback
        self._on_reconnected = on_reconnected
        self._clock = clock
        self._wall = wall_clock
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self._wake = asyncio.Event()
        self.connected = False
        self._stopping = False
        self._down_since: float | None = None
        self._down_since_wall: float | None = None
        self._backoff = Backoff(1.0, float(min(cfg.reconnect_max_s, RECONNECT_FAST_MAX_S)))

    # ================================================================== for the owner
    def wake(self) -> None:
        """Something was queued: pump (on the event loop)."""
        self._wake.set()

    def call_soon(self, fn: Callable[..., None], *args: object) -> None:
        """Run ``fn(*args)`` on the link's event loop (from any thread); dropped when it is not running."""
        loop = self.loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(fn, *args)

    async def run(self, on_start: Callable[[], None]) -> None:
        """Connect, reconnect with backoff and drain the outbox until cancelled; ``on_start`` runs first, on
        the loop. On cancellation, publishes ``status`` = ``offline`` (retained) and disconnects cleanly."""
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        on_start()
        self._stopping = False
        self._wake.set()
        client: mqtt.Client | None = None
        checkpoint: asyncio.Future[None] | None = None
        next_checkpoint = time.monotonic() + CHECKPOINT_EVERY_S
        setup = Backoff(1.0, float(self.cfg.reconnect_max_s))
        try:
            while client is None:
                try:
                    client = self._start_client()
                except (OSError, ValueError, ssl.SSLError) as exc:
                    client = None
                    delay = setup.next_delay()
                    log.error("mqtt_client_setup_failed", error=str(exc), retry_s=round(delay, 1))
                    await asyncio.sleep(delay)
            while True:
                with contextlib.suppress(TimeoutError):
                    # not wait_for: on 3.11 it can swallow a cancel that races the event being set
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                self._wake.clear()
                if (checkpoint is None or checkpoint.done()) and time.monotonic() >= next_checkpoint:
                    next_checkpoint = time.monotonic() + CHECKPOINT_EVERY_S
                    checkpoint = asyncio.ensure_future(asyncio.to_thread(self.outbox.store.checkpoint))
                if self._pump(client):
                    self._wake.set()
                    await asyncio.sleep(0)
        finally:
            if client is not None:
                await self._shutdown(client)
            if checkpoint is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await checkpoint
            await asyncio.to_thread(self.outbox.store.checkpoint)
            self.connected = False

    # ================================================================== the client
    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        proto = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=proto)
        if cfg.tls is not None:
            client.tls_set(ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file, keyfile=cfg.tls.key_file,
                           cert_reqs=ssl.CERT_REQUIRED)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        self._backoff.reset()
        self._set_reconnect_delay(client)
        client.max_inflight_messages_set(INFLIGHT_WINDOW + 20)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _start_client(self) -> mqtt.Client:
        client = self._make_client()
        cfg = self.cfg
        if cfg.protocol == "5":
            client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, clean_start=True)
        else:
            client.connect_async(cfg.host, cfg.port, cfg.keepalive_s)
        client.loop_start()
        return client

    def _set_reconnect_delay(self, client: mqtt.Client) -> None:
        """The wait before paho's next attempt, from the backoff (paho doubles from min_delay; min = max
        pins it). A young outage stays at RECONNECT_FAST_MAX_S at most; an older one grows to reconnect_max_s.
        Called in paho's thread (before it waits), and before the client starts."""
        down = self._down_since
        fast = down is None or self._clock() - down < RECONNECT_FAST_FOR_S
        self._backoff.max_s = float(min(self.cfg.reconnect_max_s, RECONNECT_FAST_MAX_S) if fast
                                    else self.cfg.reconnect_max_s)
        delay = max(1, round(self._backoff.next_delay()))
        client.reconnect_delay_set(min_delay=delay, max_delay=delay)

    def _pump(self, client: mqtt.Client) -> bool:
        """Hand queued messages to paho; True when more is waiting than one batch took."""
        ob = self.outbox
        ob.flush_acked()
        n = 0
        while self.connected and len(ob.inflight) < INFLIGHT_WINDOW and n < PUMP_BATCH:
            m = ob.next_msg()
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
                ob.stats.published += 1
                ob.sent(info.mid, m)
            else:
                ob.requeue(m)
                return False
        return n >= PUMP_BATCH

    async def _drain(self, client: mqtt.Client) -> None:
        """On the way out: hand the queued events and replies (gateway_stopping among them) to the broker and
        wait, within SHUTDOWN_TIMEOUT_S, for their acknowledgements."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                while self.connected:
                    self._pump(client)
                    if not self.outbox.waiting_on_shutdown():
                        return
                    await asyncio.sleep(0.02)

    async def _shutdown(self, client: mqtt.Client) -> None:
        self._stopping = True
        try:
            if self.connected:
                await self._drain(client)
                done = asyncio.Event()
                info = client.publish(self.status_topic, b"offline", qos=1, retain=True)
                self.outbox.sent(info.mid, Msg(self.status_topic, b"offline", 1, True), done)
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
        self.outbox.flush_acked()

    # ================================================================== paho callbacks (its network thread)
    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: Any, _p: object = None) -> None:
        if getattr(rc, "is_failure", False):
            self.call_soon(self._link_refused, str(rc))
            return
        self._backoff.reset()
        # the status and the subscription go out before anything else
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        if self.cfg.protocol == "5":
            # retain-as-published: a retained command keeps its flag on live delivery too, and is refused
            client.subscribe(self.cmd_prefix + "+", options=SubscribeOptions(qos=1, retainAsPublished=True))
        else:
            client.subscribe(self.cmd_prefix + "+", qos=1)
        self.call_soon(self._link_up)

    def _on_connect_fail(self, client: mqtt.Client, _u: object) -> None:
        self._set_reconnect_delay(client)

    def _on_disconnect(self, client: mqtt.Client, _u: object, _f: object, rc: Any, _p: object = None) -> None:
        self._set_reconnect_delay(client)
        self.call_soon(self._link_down, str(rc))

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, rc: Any, _p: object = None) -> None:
        self.call_soon(self._acked, mid, str(rc), bool(getattr(rc, "is_failure", False)))

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.call_soon(self.command, msg.topic, bytes(msg.payload), bool(msg.retain))

    # ================================================================== on the event loop
    def _link_up(self) -> None:
        self.connected = True
        self.outbox.stats.connects += 1
        if self._down_since is not None:
            gap = self._clock() - self._down_since
            log.info("mqtt_reconnected", gap_s=round(gap, 3))
            down_wall = self._down_since_wall
            self._down_since = self._down_since_wall = None
            self._on_reconnected(gap, down_wall)
        else:
            log.info("mqtt_connected", host=self.cfg.host, port=self.cfg.port, root=self.root)
        self._wake.set()

    def _link_down(self, reason: str) -> None:
        if self.connected and not self._stopping:
            self._down_since = self._clock()
            self._down_since_wall = self._wall()
            log.warning("mqtt_disconnected", reason=reason)
        self.connected = False

    def _link_refused(self, reason: str) -> None:
        log.error("mqtt_connect_refused", reason=reason, host=self.cfg.host, port=self.cfg.port)

    def _acked(self, mid: int, reason: str, failed: bool) -> None:
        if self.outbox.acked(mid, reason, failed):
            self._wake.set()

    def command(self, topic: str, payload: bytes, retained: bool) -> None:
        """A message on a command topic: routed to its handler, the reply queued. Never raises."""
        name = topic[len(self.cmd_prefix):] if topic.startswith(self.cmd_prefix) else topic
        if not payload:  # a zero-length message clears a retained command on the broker: no command
            log.debug("mqtt_command_empty", command=name)
            return
        reply_topic = self.cmd_prefix + topic_level(name) + "/reply"
        wall = self._wall()
        cmd = Command(name, payload, retained, require_ts=self.cfg.protocol != "5")
        try:
            body = self.handlers.get(name, self.fallback)(cmd)
        except Exception as exc:  # never let a payload take the link down
            log.exception("mqtt_command_failed", command=name, error=str(exc))
            body = {"id": request_id_of(payload), "ok": False, "reason": "internal error"}
        if body.get("ok") is False:
            log.warning("mqtt_command_rejected", command=name, reason=body.get("reason"), request_id=body.get("id"))
        self.outbox.put_reply(reply_topic, reply_payload(body, iso_ts(wall)))
        self._wake.set()
