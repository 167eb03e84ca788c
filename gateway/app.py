"""The daemon: one root TaskGroup owns meters, the OCPP controller, telemetry and the control loop.

Start-up order: the config has been validated before this module sees it (nothing touches a
charger before that). READY=1 goes to systemd after the first complete snapshot: every meter has
answered once or had its staleness timeout to do so. SIGHUP reads and validates the file again off
the event loop and swaps the new site in (RELOADING=1 ... READY=1); a file that cannot be read,
decoded, parsed or validated, for whatever reason, is logged as ``config_reload_failed`` and the old
site keeps running. A reload keeps the meter pollers and readings that did not change.

Crash-only: every way out goes through one path. SIGTERM/SIGINT (in any state, before READY too), a
task that fails (the OCPP listener that cannot bind, the control loop failing repeatedly, any error
outside supervision) or a start that is not READY within ``start_timeout_s``: STOPPING=1, reloads and
the control loop stop, every connected charger is set to its fail-safe limit (bounded by the OCPP
``failsafe_timeout_s``), then everything stops. After a failure :meth:`App.run` raises
:class:`FatalError` and the process exits 1, so systemd restarts it; a process that does not manage
to end within ``hard_exit_after_s`` of the decision is ended with ``os._exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway import ctl, logs
from gateway.budget.openadr_app import run_openadr
from gateway.budget.service import BudgetService
from gateway.config import Site, load_site
from gateway.control import ControlLoop, TelemetrySink
from gateway.errors import ConfigError
from gateway.gcpolicy import GcPolicy
from gateway.meters.service import MeterService, PollerStuckError
from gateway.model import MeterReading
from gateway.ocpp_proxy.controller import OcppController
from gateway.supervise import FatalError, supervise
from gateway.systemd import Notifier

log = structlog.get_logger(__name__)

T = TypeVar("T")

# OCPP events worth an MQTT event (the rest, e.g. one per replayed message, stay in the log)
_PUBLISHED_OCPP_EVENTS = frozenset(
    {"cms_link_down", "cms_link_up", "charger_connected", "charger_disconnected", "profile_rejected",
     "charger_firmware_changed"}
)

CONTROL_GIVE_UP_AFTER = 3  # quick control-loop failures in a row before the daemon fails safe and exits
_REASON_CHARS = 500  # a reload error's reason is cut to this length in the log


class App:
    def __init__(
        self,
        site: Site,
        *,
        config_path: str | Path | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        restart_delay_s: float = 1.0,
        start_timeout_s: float = 45.0,  # below the unit's TimeoutStartSec=60s
        hard_exit_after_s: float | None = 25.0,  # below the unit's TimeoutStopSec=30s; None: never
        tune_gc: bool = False,  # the daemon's collector settings once READY (gateway/gcpolicy.py)
    ) -> None:
        self.site = site
        self.config_path = Path(config_path) if config_path is not None else None
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.restart_delay_s = restart_delay_s
        self.start_timeout_s = start_timeout_s
        self.hard_exit_after_s = hard_exit_after_s
        self.gc_policy = GcPolicy(clock) if tune_gc else None
        Path(site.state_dir).mkdir(parents=True, exist_ok=True)
        self.budget = BudgetService(site, clock=clock, state_dir=Path(site.state_dir))
        self.telemetry: Any = None
        if site.mqtt is not None:
            from gateway.telemetry.mqtt import Telemetry

            self.telemetry = Telemetry(
                site.mqtt, site, clock=clock, state_dir=Path(site.state_dir), budget=self.budget
            )
        self.ocpp = OcppController(site, clock=clock, on_event=self._ocpp_event)
        self.meters = MeterService(site, clock=clock, on_reading=self._on_reading, on_stale=self._on_stale)
        sink: TelemetrySink | None = self.telemetry
        self.planner: Any = None
        if site.planner.enabled:  # [planner]: departure-aware charging, in a worker thread (gateway.planner)
            from gateway.planner.service import PlannerService

            self.planner = PlannerService(site, site.planner, needs_of=lambda cid: self.ocpp.tracker(cid).needs())
            if self.telemetry is not None:  # cmd/session_needs in, the plan's projections and events out
                self.telemetry.planner = self.planner
            # OpenADR's opt-out-if-sessions-at-risk: the plan says whether a session would miss its departure
            self.budget.openadr.sessions_at_risk = lambda _event: self.planner.any_at_risk()
        self.control = ControlLoop(
            site, self.meters, self.ocpp, telemetry=sink, budget=self.budget, planner=self.planner,
            notifier=self.notifier, clock=clock,
        )
        # the control socket's handler: served by _serve_ctl, and called in-process by the web's commissioning
        self.ctl_handler = ctl.CtlHandler(self.control, self.ocpp, self.meters, config_path=self.config_path,
                                          clock=clock)
        self.web: Any = _make_web(site, self.control, self.budget, clock, self.ctl_handler)  # [web]: page and API
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failure: str | None = None  # why the daemon is ending, if it is not a signal
        self._hard_exit: threading.Timer | None = None
        self.ready = asyncio.Event()
        self.started_at = clock()
        self.verify_delay_s = 60.0  # after a charger came back with a new firmware: `commission --verify`
        self._verify: asyncio.Task[None] | None = None
        self._ctl: Any = None

    # -- callbacks from components -----------------------------------------------------------
    def _on_reading(self, meter_id: str, reading: MeterReading) -> None:
        self.control.on_meter_reading(meter_id, reading)

    def _on_stale(self, meter_id: str) -> None:
        self.control.wake(f"meter-stale:{meter_id}")

    def _ocpp_event(self, name: str, fields: dict[str, object]) -> None:
        log.info("ocpp_event", event_name=name, **{k: v for k, v in fields.items() if k != "event_name"})
        if self.telemetry is not None and name in _PUBLISHED_OCPP_EVENTS:
            self.telemetry.event(name, **fields)
        if self.web is not None and name in _PUBLISHED_OCPP_EVENTS:
            self.web.event(name, **fields)
        idle = self._verify is None or self._verify.done()
        if name == "charger_firmware_changed" and self._ctl is not None and idle:
            self._verify = asyncio.get_running_loop().create_task(self._verify_later(), name="commission-verify")

    # -- lifecycle ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def fail(self, reason: str, exc: BaseException | None = None) -> None:
        """End the daemon after a failure: fail-safe, then exit non-zero. The first reason is kept."""
        if self.failure is None:
            self.failure = reason
            log.critical("gateway_failed", reason=reason, exc_info=exc)
        self._stop.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    async def run(self) -> None:
        """Run until stopped. Raises FatalError (after the fail-safe) if the daemon ended on a failure."""
        log.info(
            "gateway_starting",
            site=self.site.id,
            chargers=len(self.site.chargers),
            meters=len(self.site.meters),
            pid=os.getpid(),
        )
        self._install_signals()  # first: SIGTERM is honoured from here on, in every state
        self.notifier.status("starting")
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._spawn("ocpp", self.ocpp.run)  # not restarted: a listener that fails ends the daemon
                delay = self.restart_delay_s
                self._spawn("meters", lambda: supervise("meters", self.meters.run, restart_delay_s=delay))
                if self.telemetry is not None:
                    self._spawn(
                        "telemetry",
                        lambda: supervise("telemetry", self.telemetry.run, restart_delay_s=self.restart_delay_s),
                    )
                if self.web is not None:  # restarted while it fails; never ends the daemon
                    self._spawn("web", lambda: supervise("web", self.web.run, restart_delay_s=self.restart_delay_s))
                self._spawn("openadr", lambda: supervise(  # utility demand response (idle unless configured)
                    "openadr", lambda: run_openadr(self.budget.openadr), restart_delay_s=self.restart_delay_s))
                self._spawn("start", self._start_then_serve)
                self._spawn("ctl", lambda: supervise("ctl", self._serve_ctl, restart_delay_s=self.restart_delay_s))
                await self._stop.wait()
                await self._shutdown()
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            if self._hard_exit is not None:
                self._hard_exit.cancel()  # the process goes on (the demo, tests): it ended in time
            self.notifier.close()
            if self.telemetry is not None:
                self.telemetry.close()
            if self.web is not None:
                self.web.close()
            self.budget.close()
            if self.planner is not None:
                self.planner.close()
        log.info("gateway_stopped", failure=self.failure)
        if self.failure is not None:
            raise FatalError(self.failure)

    def _spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        assert self._tg is not None
        self._tasks[name] = self._tg.create_task(self._guarded(name, factory), name=name)

    async def _guarded(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run one of the daemon's tasks: its failure, or its end, ends the daemon (crash-only)."""
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(f"{name}: {exc!r}" if not isinstance(exc, FatalError) else f"{name}: {exc}", exc)
            return
        if not self._stop.is_set():
            self.fail(f"{name}: ended")

    async def _serve_ctl(self) -> None:
        """The local control socket (``ems-gateway commission``)."""
        self._ctl = self.ctl_handler
        await ctl.serve(self.ctl_handler, ctl.socket_path(self.site.state_dir))

    async def _verify_later(self) -> None:
        """`commission --verify` in-process once the charger's profiles are back: its findings become events."""
        from gateway.commission.runner import Options, commission

        try:
            await asyncio.sleep(self.verify_delay_s)
            result, files = await commission(self._ctl, Options(), verify=True, pdf=False)
            log.info("commission_verified", changes=result["verify"]["changes"], report=files.get("html"))
        except Exception as exc:  # a failing check never touches the daemon
            log.warning("commission_verify_failed", error=repr(exc))

    async def _start_then_serve(self) -> None:
        """Start (bounded by start_timeout_s: a stuck start ends the daemon), then serve reloads."""
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await self.ocpp.wait_started()
                self._spawn(
                    "control",
                    lambda: supervise(
                        "control",
                        self.control.run,
                        restart_delay_s=self.restart_delay_s,
                        give_up_after=CONTROL_GIVE_UP_AFTER,
                    ),
                )
                await self._readiness()
        except TimeoutError as exc:
            missing = [m for m, r in self.meters.readings().items() if r is None]
            stage = "ocpp listener" if "control" not in self._tasks else "first snapshot"
            log.error("start_timeout", timeout_s=self.start_timeout_s, waiting_for=stage, meters_missing=missing)
            raise FatalError(f"not ready within {self.start_timeout_s:g} s (waiting for the {stage})") from exc
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload()

    async def _readiness(self) -> None:
        """READY=1 after the first complete snapshot (or once every meter had its staleness timeout)."""
        stale = max((m.stale_after_s for m in self.site.meters.values()), default=0.0)
        patience = min(stale, self.start_timeout_s / 2)
        while True:
            await self.control.ticked.wait()
            readings = self.meters.readings()
            complete = all(r is not None for r in readings.values())
            if complete or self.clock() - self.started_at >= patience:
                break
        self.ready.set()
        if self.gc_policy is not None:
            self.gc_policy.start()
            self.control.subscribe(self.gc_policy)
        self.notifier.ready(self.control.summary())
        log.info(
            "gateway_ready",
            port=self.ocpp.port,
            mode=self.control.allocation.mode if self.control.allocation else None,
            meters_missing=[m for m, r in self.meters.readings().items() if r is None],
        )

    async def _shutdown(self) -> None:
        log.info("gateway_stopping", reason=self.failure or "signal")
        self.notifier.stopping()
        self._arm_hard_exit()  # bounds the whole way out, so the watchdog may be kept quiet meanwhile
        pinger = asyncio.get_running_loop().create_task(self._ping_watchdog(), name="stop-watchdog")
        try:
            await self._stop_and_failsafe()
        finally:
            pinger.cancel()

    async def _ping_watchdog(self) -> None:
        """The control loop pings no more: the fail-safe may take longer than WatchdogSec."""
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(1.0)

    async def _stop_and_failsafe(self) -> None:
        # nothing may change a limit any more: stop reloads and the loop, then set every charger to its fail-safe
        if self._verify is not None:
            self._verify.cancel()
        if self.web is not None and self.web.commissioning is not None:  # its test inputs cleared on the way out
            await self.web.commissioning.cancel(timeout_s=5.0)
        busy = [t for n in ("start", "control") if (t := self._tasks.get(n)) is not None and not t.done()]
        for t in busy:
            t.cancel()
        if busy:
            _, pending = await asyncio.wait(busy, timeout=5.0)
            if pending:
                log.error("tasks_not_stopped", tasks=sorted(t.get_name() for t in pending))
        ocpp = self._tasks.get("ocpp")
        if ocpp is not None and not ocpp.done():
            bound = self.site.ocpp.failsafe_timeout_s + 5.0
            try:
                async with asyncio.timeout(bound):
                    await self.ocpp.apply_failsafe()
                log.info("failsafe_limits_applied", chargers=len(self.ocpp.sessions))
            except Exception as exc:  # TimeoutError included: go on, the chargers' own fail-safe profiles remain
                log.error("failsafe_on_stop_failed", error=repr(exc), timeout_s=bound)
        else:
            log.error("failsafe_on_stop_failed", error="the OCPP controller is not running")
        if self.telemetry is not None:
            with contextlib.suppress(Exception):
                self.telemetry.event("gateway_stopping", reason=self.failure or "signal")

    def _arm_hard_exit(self) -> None:
        """A last resort for a process that does not manage to end (a daemon thread: a blocked loop cannot stop it)."""
        if self.hard_exit_after_s is None or self._hard_exit is not None:
            return
        code = 1

        def hard_exit() -> None:
            with contextlib.suppress(Exception):
                logs.flush(1.0)  # the lines logged before (written by their thread; os._exit skips atexit)
                sys.stderr.write(f"ems-gateway: did not end within {self.hard_exit_after_s:g} s of stopping; exiting\n")
                sys.stderr.flush()
            os._exit(code)

        self._hard_exit = threading.Timer(self.hard_exit_after_s, hard_exit)
        self._hard_exit.daemon = True
        self._hard_exit.start()

    # -- reload ------------------------------------------------------------------------------
    async def reload(self) -> None:
        self.notifier.reloading()
        if self.config_path is None:
            log.warning("config_reload_skipped", reason="no config file")
            self.notifier.ready(self.control.summary())
            return
        try:
            new = await off_loop(load_site, self.config_path)
            await self.meters.update_site(new)  # keeps what did not change; raises before changing anything
        except PollerStuckError as exc:
            raise FatalError(f"reload: {exc}") from exc
        except ConfigError as exc:
            self._reload_failed(exc.path, exc.reason)
            return
        except Exception as exc:  # undecodable, too deep, too large a number, any surprise: keep the old config
            self._reload_failed("", f"{type(exc).__name__}: {exc}")
            return
        old, self.site = self.site, new
        if new.logging != old.logging:  # [logging]: the levels at once; the format and journal mode on restart
            logs.apply_levels(new.logging.level, new.logging.loggers)
            if (new.logging.format, new.logging.journal) != (old.logging.format, old.logging.journal):
                log.warning("logging_format_changed_needs_restart")
        self.ocpp.update_site(new)
        self.budget.update_site(new)
        if new.planner != old.planner:
            log.warning("planner_config_changed_needs_restart")  # the planner keeps its settings until a restart
        if self.telemetry is not None:
            self.telemetry.update_site(new)
        self.control.update_site(new)
        if self.web is not None:
            self.web.update_site(new)
            self.web.event("config_reloaded", chargers=len(new.chargers), meters=len(new.meters))
        log.info("config_reloaded", file=str(self.config_path), chargers=len(new.chargers), meters=len(new.meters))
        self.notifier.ready(self.control.summary())

    def _reload_failed(self, key: str, reason: str) -> None:
        reason = reason[:_REASON_CHARS]
        log.error("config_reload_failed", file=str(self.config_path), key=key, reason=reason)
        if self.telemetry is not None:
            with contextlib.suppress(Exception):
                self.telemetry.event("config_reload_failed", key=key, reason=reason)
        if self.web is not None:
            self.web.event("config_reload_failed", key=key, reason=reason)
        self.notifier.ready(self.control.summary())


def _make_web(site: Site, control: ControlLoop, budget: Any, clock: Callable[[], float], ctl_handler: Any) -> Any:
    """The web page and API when [web] is enabled (aiohttp imported only then)."""
    if site.web is None or not site.web.enabled:
        return None
    from gateway.web.actions import commissioning_runner, remote_cap_setter
    from gateway.web.server import WebService

    return WebService(
        site.web, site, control, state_dir=site.state_dir, cap_setter=remote_cap_setter(budget),
        commissioning=commissioning_runner(ctl_handler), clock=clock,
    )


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a daemon thread, awaited without blocking the loop.

    Like ``asyncio.to_thread``, but the thread is a daemon thread of its own: on Python 3.11 the default
    executor is joined without a timeout when ``asyncio.run`` ends, so a parse still running (a huge file)
    would keep a stopping daemon alive. A cancelled caller leaves the thread to finish and drops its result.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def work() -> None:
        try:
            result: Any = fn(*args)
            ok = True
        except Exception as exc:
            result, ok = exc, False
        except BaseException as exc:  # not raised into the loop as such, but never left unanswered
            result, ok = RuntimeError(f"{type(exc).__name__} in {getattr(fn, '__name__', fn)!r}"), False
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=work, name="off-loop", daemon=True).start()
    return await fut


class _Stopped(Exception):
    """Raised inside the TaskGroup to cancel the remaining tasks on a clean stop."""
