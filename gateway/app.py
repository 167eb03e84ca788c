"""The daemon: one root TaskGroup owns meters, the OCPP controller, telemetry and the control loop.

Start-up order: the config has been validated before this module sees it (nothing touches a
charger before that). READY=1 goes to systemd after the first complete snapshot: every meter has
answered once or had its staleness timeout to do so. SIGHUP validates the file again and swaps
the new site in atomically (RELOADING=1 ... READY=1); a bad file leaves the old site running.
SIGTERM/SIGINT: STOPPING=1, every charger is set to its fail-safe limit, then everything stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from gateway.config import Site, load_site
from gateway.control import ControlLoop, TelemetrySink
from gateway.errors import ConfigError
from gateway.meters.service import MeterService
from gateway.model import MeterReading
from gateway.ocpp_proxy.controller import OcppController
from gateway.supervise import supervise
from gateway.systemd import Notifier

log = structlog.get_logger(__name__)

# OCPP events worth an MQTT event (the rest, e.g. one per replayed message, stay in the log)
_PUBLISHED_OCPP_EVENTS = frozenset(
    {"cms_link_down", "cms_link_up", "charger_connected", "charger_disconnected", "profile_rejected"}
)


class App:
    def __init__(
        self,
        site: Site,
        *,
        config_path: str | Path | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        restart_delay_s: float = 1.0,
    ) -> None:
        self.site = site
        self.config_path = Path(config_path) if config_path is not None else None
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.restart_delay_s = restart_delay_s
        Path(site.state_dir).mkdir(parents=True, exist_ok=True)
        self.telemetry: Any = None
        if site.mqtt is not None:
            from gateway.telemetry.mqtt import Telemetry

            self.telemetry = Telemetry(site.mqtt, site, clock=clock, state_dir=Path(site.state_dir))
        self.ocpp = OcppController(site, clock=clock, on_event=self._ocpp_event)
        self.meters = MeterService(site, clock=clock, on_reading=self._on_reading)
        sink: TelemetrySink | None = self.telemetry
        self.control = ControlLoop(site, self.meters, self.ocpp, telemetry=sink, notifier=self.notifier, clock=clock)
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._meter_task: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self.ready = asyncio.Event()
        self.started_at = clock()

    # -- callbacks from components -----------------------------------------------------------
    def _on_reading(self, meter_id: str, reading: MeterReading) -> None:
        self.control.on_meter_reading(meter_id, reading)

    def _ocpp_event(self, name: str, fields: dict[str, object]) -> None:
        log.info("ocpp_event", event_name=name, **{k: v for k, v in fields.items() if k != "event_name"})
        if self.telemetry is not None and name in _PUBLISHED_OCPP_EVENTS:
            self.telemetry.event(name, **fields)

    # -- lifecycle ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    async def run(self) -> None:
        log.info(
            "gateway_starting",
            site=self.site.id,
            chargers=len(self.site.chargers),
            meters=len(self.site.meters),
            pid=os.getpid(),
        )
        self._install_signals()
        self.notifier.status("starting")
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(supervise("ocpp", self.ocpp.run, restart_delay_s=self.restart_delay_s), name="ocpp")
                self._meter_task = tg.create_task(self._supervised_meters(), name="meters")
                if self.telemetry is not None:
                    tg.create_task(
                        supervise("telemetry", self.telemetry.run, restart_delay_s=self.restart_delay_s),
                        name="telemetry",
                    )
                await self.ocpp.wait_started()
                control = tg.create_task(
                    supervise("control", self.control.run, restart_delay_s=self.restart_delay_s), name="control"
                )
                tg.create_task(self._readiness(), name="readiness")
                while not self._stop.is_set():
                    stop = asyncio.ensure_future(self._stop.wait())
                    reload = asyncio.ensure_future(self._reload.wait())
                    await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                    for f in (stop, reload):
                        f.cancel()
                    if self._reload.is_set() and not self._stop.is_set():
                        self._reload.clear()
                        await self.reload()
                await self._shutdown(control)
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            self.notifier.close()
            if self.telemetry is not None:
                self.telemetry.close()
        log.info("gateway_stopped")

    async def _supervised_meters(self) -> None:
        if not self.site.meters:  # nothing to poll: wait to be cancelled (a reload may bring meters)
            await asyncio.Event().wait()
        await supervise("meters", self.meters.run, restart_delay_s=self.restart_delay_s)

    async def _readiness(self) -> None:
        """READY=1 after the first complete snapshot."""
        patience = max((m.stale_after_s for m in self.site.meters.values()), default=0.0)
        while True:
            await self.control.ticked.wait()
            readings = self.meters.readings()
            complete = all(r is not None for r in readings.values())
            if complete or self.clock() - self.started_at >= patience:
                break
        self.ready.set()
        self.notifier.ready(self.control.summary())
        log.info(
            "gateway_ready",
            port=self.ocpp.port,
            mode=self.control.allocation.mode if self.control.allocation else None,
            meters_missing=[m for m, r in self.meters.readings().items() if r is None],
        )

    async def _shutdown(self, control: asyncio.Task[None]) -> None:
        log.info("gateway_stopping")
        self.notifier.stopping()
        control.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await control
        try:
            await asyncio.wait_for(self.ocpp.apply_failsafe(), timeout=15.0)
            log.info("failsafe_limits_applied", chargers=len(self.site.chargers))
        except Exception as exc:
            log.error("failsafe_on_stop_failed", error=repr(exc))
        if self.telemetry is not None:
            self.telemetry.event("gateway_stopping")

    async def reload(self) -> None:
        self.notifier.reloading()
        if self.config_path is None:
            log.warning("config_reload_skipped", reason="no config file")
            self.notifier.ready(self.control.summary())
            return
        try:
            new = load_site(self.config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", file=str(self.config_path), key=exc.path, reason=exc.reason)
            if self.telemetry is not None:
                self.telemetry.event("config_reload_failed", key=exc.path, reason=exc.reason)
            self.notifier.ready(self.control.summary())
            return
        old = self.site
        self.site = new
        self.ocpp.update_site(new)
        if self.telemetry is not None:
            self.telemetry.update_site(new)
        if new.meters != old.meters and self._tg is not None and self._meter_task is not None:
            self._meter_task.cancel()
            self.meters = MeterService(new, clock=self.clock, on_reading=self._on_reading)
            self.control.meters = self.meters
            self._meter_task = self._tg.create_task(self._supervised_meters(), name="meters")
        self.control.update_site(new)
        log.info("config_reloaded", file=str(self.config_path), chargers=len(new.chargers), meters=len(new.meters))
        self.notifier.ready(self.control.summary())


class _Stopped(Exception):
    """Raised inside the TaskGroup to cancel the remaining tasks on a clean stop."""
