"""MeterService: polls every configured meter and keeps the latest reading of each.

One task per RS-485 bus (a serial device): its meters are polled one at a time, with the
bus's gap (the largest ``bus_gap_s`` of its meters) between the end of one exchange and the
next request. One task per TCP meter: they run concurrently. A failing meter never stops
the others; failed polls are retried at the poll interval while the last reading is still fresh, then back
off (doubling, capped at the meter's stale timeout); they produce no reading, so the last reading ages
until the meter is stale.

A reload (:meth:`MeterService.update_site`) keeps the tasks and the readings of the buses and meters it
does not change; the pollers of changed buses are cancelled and have ended before their replacements start
(never two Modbus masters on one RS-485 bus). A new or changed meter starts as never read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from gateway import electrical
from gateway.backoff import exponential
from gateway.config import Site
from gateway.errors import MeterError
from gateway.meters.config import MeterConfig, check_bus_settings
from gateway.meters.driver import Bounds, MeterDriver, ModbusReader, raise_if_cancelling
from gateway.meters.regmap import load_map
from gateway.model import MeterReading

log = structlog.get_logger(__name__)


def bounds_for(site: Site, cfg: MeterConfig) -> Bounds:
    circuit = site.circuits[cfg.circuit]
    v_ln = electrical.line_to_neutral_v(site.service)  # meters read line-to-neutral voltages
    return Bounds(
        max_current_a=cfg.max_current_a if cfg.max_current_a is not None else 2.0 * circuit.limit_a,
        can_export=circuit.can_export,
        export_tolerance_w=cfg.export_tolerance_w,
        max_voltage_v=2.0 * v_ln,
    )


class PollerStuckError(MeterError):
    """A cancelled meter poller did not end in time."""


def _buses_of(site: Site) -> dict[str, list[str]]:
    buses: dict[str, list[str]] = {}
    for mid, cfg in site.polled_meters.items():
        buses.setdefault(cfg.bus_key, []).append(mid)
    return buses


def _judged_alike(old: Site, new: Site, mid: str) -> bool:
    """The meter is read and judged exactly as before: its reading (and its poller) may be kept."""
    a, b = old.meters.get(mid), new.meters.get(mid)
    return (
        a is not None
        and a == b
        and b.circuit in old.circuits
        and bounds_for(old, a) == bounds_for(new, b)
        and old.service.phases == new.service.phases
    )


def make_client(cfg: MeterConfig, *, timeout_s: float | None = None) -> ModbusReader:
    """A pymodbus client for the meter's transport; retries are ours, not pymodbus's."""
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

    to = timeout_s if timeout_s is not None else cfg.timeout_s
    if cfg.transport == "tcp":
        c: ModbusReader = AsyncModbusTcpClient(
            cfg.host, port=cfg.port, timeout=to, retries=0, reconnect_delay=0, name=cfg.id
        )
    else:
        c = AsyncModbusSerialClient(
            cfg.device,
            baudrate=cfg.baud_rate,
            parity=cfg.parity,
            stopbits=cfg.stop_bits,
            bytesize=8,
            timeout=to,
            retries=0,
            reconnect_delay=0,
            name=cfg.device,
        )
    return c


async def ensure_connected(client: object) -> None:
    if getattr(client, "connected", True):
        return
    connect = getattr(client, "connect", None)
    if connect is None:
        return
    ok = await connect()
    raise_if_cancelling()  # pymodbus connects through wait_for, which can drop a cancel on 3.11
    if not ok:
        raise MeterError("cannot connect")


@dataclass
class _Slot:
    cfg: MeterConfig
    driver: MeterDriver | None = None
    reading: MeterReading | None = None
    state: str = "never-read"  # last logged state
    fails: int = 0
    next_due: float = 0.0  # loop time
    error: str = ""
    polls: int = 0
    latencies: list[float] = field(default_factory=list)


def next_poll_due(
    cfg: MeterConfig, due: float, started: float, ended: float, fails: int, good_age_s: float | None
) -> float:
    """When a meter's next poll is due (loop time), after one that started at ``started`` and ended at ``ended``.

    A good poll keeps the meter's rhythm. A failed one is retried at the poll interval while the last good
    reading (``good_age_s`` old, None if there is none) is still fresh one interval from now: a backoff then
    would let a reading that one more poll could renew go stale. After that, failures back off (doubling, at
    most the stale timeout), sparing a shared bus a dead meter's timeouts."""
    if fails == 0:
        return max(due + cfg.poll_interval_s, started)
    if good_age_s is not None and good_age_s + cfg.poll_interval_s <= cfg.stale_after_s:
        return ended + cfg.poll_interval_s
    cap = max(cfg.stale_after_s, cfg.poll_interval_s)
    return ended + exponential(cfg.poll_interval_s, fails - 1, cap)


class MeterService:
    def __init__(
        self,
        site: Site,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_reading: Callable[[str, MeterReading], None] | None = None,
        on_stale: Callable[[str], None] | None = None,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.site = site
        self._clock = clock
        self._on_reading = on_reading
        self._on_stale = on_stale  # a meter just went stale: the control loop acts now, not at its next tick
        check_bus_settings(list(site.polled_meters.values()))
        self._slots: dict[str, _Slot] = {mid: _Slot(cfg) for mid, cfg in site.polled_meters.items()}
        self._maps = {mid: load_map(cfg.map) for mid, cfg in site.polled_meters.items()}
        self._buses = _buses_of(site)
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}  # bus -> its poller, while run() runs
        self.stop_timeout_s = stop_timeout_s

    # -- the daemon's view -----------------------------------------------------------
    def readings(self) -> dict[str, MeterReading | None]:
        return {mid: s.reading for mid, s in self._slots.items()}

    def status(self) -> dict[str, str]:
        return {mid: self._status_of(s) for mid, s in self._slots.items()}

    def buses(self) -> dict[str, tuple[str, ...]]:
        return {k: tuple(v) for k, v in self._buses.items()}

    def _status_of(self, s: _Slot) -> str:
        r = s.reading
        if r is None:
            return "never-read"
        if self._clock() - r.at > s.cfg.stale_after_s:
            return "stale"
        if not r.valid:
            return f"invalid:{r.reason}"
        return "ok"

    # -- polling ---------------------------------------------------------------------
    async def run(self) -> None:
        """Poll all meters until cancelled (with no meters, wait for a reload to bring some)."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for key in self._buses:
                    self._start_bus(key)
                tg.create_task(self._watch(), name="meters-watch")
        finally:
            self._tg = None
            self._tasks.clear()

    def _start_bus(self, key: str) -> None:
        if self._tg is None:
            return  # not running: run() starts every bus
        mids = list(self._buses[key])
        try:
            self._tasks[key] = self._tg.create_task(self._run_bus(key, mids), name=f"meters-{key}")
        except RuntimeError:  # run() is being cancelled: nothing is polled any more
            log.warning("meter_poller_not_started", bus=key, reason="meter service stopping")

    async def update_site(self, site: Site) -> None:
        """Swap in a reloaded site, keeping the pollers and readings of what did not change.

        Raises ConfigError (nothing changed) if the new meters cannot be set up, and PollerStuckError if a
        replaced poller did not end within ``stop_timeout_s`` (then nothing new was started: the caller must
        not carry on with a second master possibly on the bus)."""
        check_bus_settings(list(site.polled_meters.values()))
        maps = {
            mid: self._maps[mid] if mid in self._maps and self._slots[mid].cfg.map == cfg.map else load_map(cfg.map)
            for mid, cfg in site.polled_meters.items()
        }
        buses = _buses_of(site)
        kept_meters = {m for m in site.polled_meters if m in self._slots and _judged_alike(self.site, site, m)}
        kept_buses = {k for k, mids in buses.items() if self._buses.get(k) == mids and set(mids) <= kept_meters}
        stopping = [t for k, t in self._tasks.items() if k not in kept_buses]
        for task in stopping:
            task.cancel()
        if stopping:
            _, pending = await asyncio.wait(stopping, timeout=self.stop_timeout_s)
            if pending:
                names = sorted(t.get_name() for t in pending)
                log.error("meter_poller_not_stopped", tasks=names, timeout_s=self.stop_timeout_s)
                raise PollerStuckError(f"meter pollers did not stop within {self.stop_timeout_s} s: {', '.join(names)}")
        for key in [k for k in self._tasks if k not in kept_buses]:
            del self._tasks[key]
        slots: dict[str, _Slot] = {}
        for mid, cfg in site.polled_meters.items():
            slot = self._slots[mid] if mid in kept_meters else _Slot(cfg)
            if cfg.bus_key not in kept_buses:  # a new poller: a new driver, no backoff inherited
                slot.driver, slot.fails, slot.next_due = None, 0, 0.0
            slots[mid] = slot
        self.site, self._slots, self._maps, self._buses = site, slots, maps, buses
        started = [k for k in buses if k not in kept_buses]
        for key in started:
            self._start_bus(key)
        log.info("meters_updated", kept_buses=len(kept_buses), restarted_buses=len(started),
                 kept_readings=len(kept_meters), new_meters=len(site.polled_meters) - len(kept_meters))

    async def _watch(self) -> None:
        """Log a meter going stale when it does, even while its poller waits out a timeout or backoff."""
        while True:
            stale_after = min((s.cfg.stale_after_s for s in self._slots.values()), default=5.0)
            await asyncio.sleep(min(0.5, max(0.05, stale_after / 10)))
            for slot in list(self._slots.values()):
                if slot.state != "stale" and self._status_of(slot) == "stale":
                    self._log_state(slot, failed=slot.fails > 0)

    async def _run_bus(self, key: str, mids: list[str]) -> None:
        cfgs = [self._slots[m].cfg for m in mids]
        timeout = max(c.timeout_s for c in cfgs)
        gap = max(c.bus_gap_s for c in cfgs)
        client = make_client(cfgs[0], timeout_s=timeout)
        for m in mids:
            s = self._slots[m]
            s.driver = MeterDriver(
                s.cfg,
                self._maps[m],
                client,
                bounds_for(self.site, s.cfg),
                site_phases=self.site.service.phases,
                clock=self._clock,
            )
        loop = asyncio.get_running_loop()
        last_end = -1e9
        try:
            while True:
                slot = min((self._slots[m] for m in mids), key=lambda s: s.next_due)
                wait = max(slot.next_due - loop.time(), last_end + gap - loop.time())
                if wait > 0:
                    await asyncio.sleep(wait)
                started = loop.time()
                await self._poll(slot, client)
                raise_if_cancelling()  # never poll on after a cancel, wherever it was lost
                last_end = loop.time()
                slot.latencies.append(last_end - started)
                del slot.latencies[:-50]
                r = slot.reading
                age = None if r is None or not r.valid else self._clock() - r.at
                slot.next_due = next_poll_due(slot.cfg, slot.next_due, started, last_end, slot.fails, age)
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()

    async def _poll(self, slot: _Slot, client: object) -> None:
        assert slot.driver is not None
        slot.polls += 1
        try:
            await ensure_connected(client)
            reading = await slot.driver.poll()
        except MeterError as exc:
            slot.fails += 1
            slot.error = str(exc)
            self._log_state(slot, failed=True)
            return
        except Exception as exc:  # a bug or a library surprise must not stop the other meters
            slot.fails += 1
            slot.error = f"{type(exc).__name__}: {exc}"
            log.exception("meter_poll_crashed", meter=slot.cfg.id)
            return
        slot.fails = 0
        slot.error = ""
        slot.reading = reading
        self._log_state(slot, failed=False)
        if self._on_reading is not None:
            try:
                self._on_reading(slot.cfg.id, reading)
            except Exception:
                log.exception("on_reading_failed", meter=slot.cfg.id)

    def _log_state(self, slot: _Slot, *, failed: bool) -> None:
        status = self._status_of(slot)
        state = status.split(":", 1)[0]
        if failed and state in ("ok", "invalid"):
            state = "failing"  # the last reading is still fresh, but the meter stopped answering
        if failed and state == "never-read":
            state = "failing"
        if state == slot.state:
            return
        prev, slot.state = slot.state, state
        mid = slot.cfg.id
        if state == "ok":
            log.info("meter_ok", meter=mid, previous=prev)
        elif state == "invalid":
            assert slot.reading is not None
            log.warning("meter_invalid", meter=mid, reason=slot.reading.reason, previous=prev)
        elif state == "failing":
            log.warning("meter_read_failed", meter=mid, error=slot.error, previous=prev)
        elif state == "stale":
            age = None if slot.reading is None else round(self._clock() - slot.reading.at, 2)
            log.error("meter_stale", meter=mid, age_s=age, error=slot.error, previous=prev)
            if self._on_stale is not None:
                try:
                    self._on_stale(mid)
                except Exception:
                    log.exception("on_stale_failed", meter=mid)
