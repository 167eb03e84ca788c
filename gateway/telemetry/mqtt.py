"""MQTT telemetry: site, circuit, charger, meter and budget topics, events, and the commands.

The control loop calls :meth:`Telemetry.publish_tick` and :meth:`Telemetry.event`; they only touch
in-memory structures (and, for events, one SQLite insert), never the network, and never raise.
:meth:`Telemetry.run` is a separate asyncio task: the link. The parts, each given what it needs:

* :mod:`gateway.telemetry.topics`: what to publish, on which topic, with which payload, given the
  previous per-topic state (pure functions of frozen values);
* :mod:`gateway.telemetry.outbox`: what waits for the broker (bounded; events persisted until acknowledged);
* :mod:`gateway.telemetry.link`: the paho-mqtt client, reconnects with backoff, the command subscription.

Commands (``<root>cmd/site_limit``: the remote cap, ``<root>cmd/tariff``: the time-of-use schedule) go to
the budget service (`gateway.budget.service`), which validates, holds and persists them (the remote cap is a
control input there); ``<root>cmd/session_needs`` goes to the planner. Telemetry sends the reply and publishes
the budget's state (``site_cap``, ``tariff``, ``budget``); it holds none of it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from gateway.budget.remote import request_id_of
from gateway.budget.service import BudgetService
from gateway.config import Site
from gateway.errors import StoreError
from gateway.model import Allocation, Snapshot
from gateway.telemetry import topics
from gateway.telemetry.config import MqttConfig
from gateway.telemetry.link import Command, Link
from gateway.telemetry.outbox import Outbox, Stats
from gateway.telemetry.store import EVENTS_FILE, EventStore
from gateway.telemetry.topics import Tick, TopicState, iso_ts, rnd

log = structlog.get_logger(__name__)

_LEGACY_CAP_KEY = "site_cap"  # where versions before the budget service kept the remote cap

__all__ = ["PlannerSink", "Stats", "Telemetry"]


class PlannerSink(Protocol):
    def command(self, payload: bytes, *, require_ts: bool) -> dict[str, object]: ...

    def telemetry(self) -> dict[str, Any]: ...

    def take_events(self) -> list[tuple[str, Mapping[str, object]]]: ...


class Telemetry:
    """The gateway's MQTT telemetry: topics, outbox and link. Every method is safe to call from the control loop."""

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
        sd = Path(state_dir) if state_dir is not None else Path(site.state_dir)
        self.outbox = Outbox(EventStore(sd / EVENTS_FILE), queue_max=cfg.queue_max, qos=cfg.qos, clock=clock)
        self.topics = TopicState(self.root, site, topics.Rates(cfg.heartbeat_s, cfg.charger_min_interval_s))
        # the budget: commands go to it, its events and state come back
        self._owns_budget = budget is None
        self.budget = budget if budget is not None else BudgetService(site, clock=clock, wall_clock=wall_clock,
                                                                      state_dir=sd)
        self._planner: PlannerSink | None = None
        self.link = Link(
            cfg, client_id=cfg.client_id_for(site.id), root=self.root, outbox=self.outbox,
            handlers={"site_limit": self._budget_command, "tariff": self._budget_command},
            fallback=self._budget_command, on_reconnected=self._reconnected, clock=clock, wall_clock=wall_clock,
        )
        self.status_topic = self.link.status_topic
        self.cmd_prefix = self.link.cmd_prefix
        self._adopt_legacy_cap()
        self.budget.listen(self)
        if self.budget.remote_restored:
            self.budget_changed("remote")
        if self.budget.tariff() is not None:
            self.budget_changed("tariff")
        # ticks built on a worker thread: the per-topic state under a lock, the output delivered on the loop
        self._tick_lock = threading.Lock()
        self._undelivered: list[Tick] = []

    @property
    def planner(self) -> PlannerSink | None:
        """The departure-aware planner (gateway.planner.service.PlannerService), set by the daemon when configured:
        cmd/session_needs goes to it; its projections (topic ``plan``) and session_at_risk events come back."""
        return self._planner

    @planner.setter
    def planner(self, planner: PlannerSink | None) -> None:
        self._planner = planner
        if planner is None:
            self.link.handlers.pop("session_needs", None)
        else:
            self.link.handlers["session_needs"] = self._needs_command

    # ================================================================== control-loop API
    def publish_tick(self, snapshot: Snapshot, allocation: Allocation) -> None:
        """Build this tick's topics and queue them; O(changed chargers) encoding work. Never raises.

        Safe on the event loop or on a worker thread (the control loop hands its ticks to one): the
        payloads are built by the caller, the outbox and the events are touched on the event loop only."""
        out = Tick([], [])
        with self._tick_lock:  # the per-topic state: this tick against another, or a reload
            try:
                planner = self._planner
                plan = None
                if planner is not None:
                    evs = [(n, dict(f)) for n, f in planner.take_events()]
                    plan = (planner.telemetry(), evs)
                out = self.topics.tick(snapshot, allocation, self.budget.last, plan, iso_ts(self._wall()),
                                       self._clock())
            except Exception as exc:  # a telemetry bug must never take the control loop down
                log.exception("mqtt_publish_tick_failed", error=str(exc))
        link = self.link
        on_loop = threading.get_ident() == link.loop_thread
        before_run = link.loop is None and threading.current_thread() is threading.main_thread()
        if on_loop or before_run:
            self._deliver(out)
        elif link.loop is None:
            with self._tick_lock:
                self._undelivered.append(out)  # the link is not running yet: delivered when it starts
        else:
            link.call_soon(self._deliver, out)

    def _deliver(self, out: Tick) -> None:
        """On the event loop: a tick's values into the outbox, its events queued."""
        try:
            for topic, payload in out.values:
                self.outbox.put_value(topic, payload)
            for name, fields in out.events:
                self.event(name, **fields)
        except Exception as exc:
            log.exception("mqtt_publish_tick_failed", error=str(exc))
        self.link.wake()

    def event(self, name: str, **fields: object) -> None:
        """Queue and persist an event on ``<root>event/<name>``. Never blocks or raises."""
        try:
            used = topics.event_name(name)
            if used != name:
                log.warning("mqtt_event_name_invalid", name=name, used=used)
            topic, payload = topics.event_value(self.root, self._site.id, used, fields, iso_ts(self._wall()),
                                                uuid.uuid4().hex)
            self.outbox.put_event(topic, payload)
        except Exception as exc:
            log.exception("mqtt_event_failed", event_name=name, error=str(exc))
        self.link.wake()

    def budget_changed(self, what: str) -> None:
        """The budget service's remote cap or tariff changed: publish its state."""
        try:
            ts = iso_ts(self._wall())
            if what == "remote":
                self.outbox.put_value(*topics.cap_state_value(self.root, self.budget.remote_state(), ts))
            elif what == "tariff":
                self.outbox.put_value(*topics.tariff_state_value(self.root, self.budget.tariff_state(), ts))
        except Exception as exc:
            log.exception("mqtt_budget_state_failed", error=str(exc))
        self.link.wake()

    def update_site(self, site: Site) -> None:
        """A reloaded configuration: forget removed chargers/circuits/meters, emit config_reloaded."""
        try:
            old = self._site
            self._site = site
            if site.id != old.id:
                log.warning("mqtt_site_id_changed", old=old.id, new=site.id, note="topic root kept until restart")
            with self._tick_lock:  # a tick being built on the worker thread uses these
                for topic, payload in self.topics.forget(site):
                    self.outbox.put_value(topic, payload)
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
        s = self.outbox.stats
        s.connected = self.link.connected
        s.queued_values = len(self.outbox.values)
        s.queued_events = self.outbox.queued_events()
        s.inflight = len(self.outbox.inflight)
        return s

    @property
    def connected(self) -> bool:
        return self.link.connected

    # ================================================================== commands and the link's news
    def _budget_command(self, cmd: Command) -> dict[str, object]:
        return self.budget.command(cmd.name, cmd.payload, retained=cmd.retained, require_ts=cmd.require_ts)

    def _needs_command(self, cmd: Command) -> dict[str, object]:
        """``cmd/session_needs`` to the planner (validated there like the remote cap); retained ones refused."""
        planner = self._planner
        if planner is None:
            return self._budget_command(cmd)
        if cmd.retained:
            return {"id": request_id_of(cmd.payload), "ok": False,
                    "reason": "retained commands are refused: publish commands with retain=false"}
        return planner.command(cmd.payload, require_ts=cmd.require_ts)

    def _reconnected(self, gap_s: float, down_since_wall: float | None) -> None:
        self.event("mqtt_reconnected", gap_s=rnd(gap_s, 3),
                   down_since=None if down_since_wall is None else iso_ts(down_since_wall))

    def _adopt_legacy_cap(self) -> None:
        """A remote cap kept in the event store by versions before the budget service: handed over, once."""
        store = self.outbox.store
        try:
            text = store.get(_LEGACY_CAP_KEY)
            if text is not None:
                self.budget.adopt_legacy_remote(text)
                store.put(_LEGACY_CAP_KEY, None)
        except StoreError as exc:
            log.error("mqtt_legacy_site_cap_unreadable", error=str(exc))

    # ================================================================== the link task
    async def run(self) -> None:
        """Connect, reconnect with backoff and drain the outbox until cancelled (see :class:`Link`)."""
        await self.link.run(self._start)

    def _start(self) -> None:
        with self._tick_lock:
            early, self._undelivered = self._undelivered, []
        for out in early:
            self._deliver(out)

    def close(self) -> None:
        """Release the event store (after run() ended), and the budget service if it is telemetry's own."""
        self.outbox.flush_acked()
        self.outbox.store.close()
        if self._owns_budget:
            self.budget.close()
