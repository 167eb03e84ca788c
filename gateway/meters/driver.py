"""The generic meter driver: reads one meter through a register map and judges the reading.

The driver receives its Modbus client (a pymodbus async client, TCP or serial); it never
opens connections of its own. ``poll()`` returns a :class:`MeterReading` (valid or not) or
raises :class:`MeterError` when the meter could not be read at all (timeout, exception
response, malformed frame, no SunSpec model): those polls produce no reading, so the last
reading ages until it is stale.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gateway.backoff import exponential
from gateway.errors import MeterError
from gateway.meters.config import MeterConfig
from gateway.meters.regmap import SUNSPEC_MARKER, Block, Point, RegisterMap, plan_blocks
from gateway.model import MeterReading

log = structlog.get_logger(__name__)


class MeterTimeout(MeterError):
    """No (valid) answer within the timeout: silence, CRC errors, garbage."""


class MeterExceptionResponse(MeterError):
    """The meter answered with a Modbus exception."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


class ModbusReader(Protocol):
    """What the driver needs of a client (pymodbus AsyncModbusTcpClient / AsyncModbusSerialClient)."""

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]: ...

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class Bounds:
    """Physical plausibility limits for one meter's readings (site units, CT ratio applied)."""

    max_current_a: float
    can_export: bool
    export_tolerance_w: float = 500.0
    max_voltage_v: float = 1000.0  # line-to-neutral
    min_frequency_hz: float = 40.0
    max_frequency_hz: float = 70.0


def raise_if_cancelling() -> None:
    """Raise CancelledError if the current task was cancelled and the cancel got lost on the way.

    On Python 3.11, ``asyncio.wait_for`` (pymodbus uses it for connects and transactions) returns an answer
    that arrives in the same loop iteration as a cancel and drops the cancel; the task's cancellation
    count still says it was asked to stop. Called after every await on the client."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def read_block(client: ModbusReader, block: Block, device_id: int, timeout_s: float) -> list[int]:
    """One read request; every failure becomes a MeterError subclass."""
    from pymodbus.exceptions import ModbusException

    fn = client.read_input_registers if block.function == "input" else client.read_holding_registers
    try:
        # pymodbus enforces its own timeout; this guard only catches a client that hangs. asyncio.timeout,
        # never wait_for: on 3.11 wait_for returns an answer that races a cancel and swallows the cancel,
        # so a poller stopped by a reload kept polling beside its replacement (two masters on one bus).
        async with asyncio.timeout(3 * timeout_s + 1.0):
            rr = await fn(block.address, count=block.count, device_id=device_id)
            raise_if_cancelling()  # pymodbus's own wait_for may have swallowed it (or our timeout's)
    except (TimeoutError, ModbusException) as exc:
        raise MeterTimeout(f"no answer to {block.function} {block.address}+{block.count}: {exc}") from exc
    if rr is None:
        raise MeterTimeout(f"no answer to {block.function} {block.address}+{block.count}")
    if rr.isError():
        code = getattr(rr, "exception_code", None)
        raise MeterExceptionResponse(
            f"exception response {code} to {block.function} {block.address}+{block.count}", code
        )
    fc = getattr(rr, "function_code", None)
    want = 4 if block.function == "input" else 3
    if isinstance(fc, int) and fc != want:
        raise MeterError(f"wrong function code {fc} in the answer to {block.function} {block.address}+{block.count}"
                         f" (expected {want})")
    regs = list(getattr(rr, "registers", []) or [])
    if len(regs) != block.count:
        what = "short" if len(regs) < block.count else "long"
        raise MeterError(f"{what} response: {len(regs)} of {block.count} registers at {block.address}")
    return regs


class MeterDriver:
    def __init__(
        self,
        cfg: MeterConfig,
        regmap: RegisterMap,
        client: ModbusReader,
        bounds: Bounds,
        *,
        site_phases: int = 3,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.cfg = cfg
        self.regmap = regmap
        self.client = client
        self.bounds = bounds
        self.site_phases = site_phases
        self._clock = clock
        self._sleep = sleep
        self._base: int | None = None if regmap.is_sunspec else 0
        self.sunspec_model: int | None = None
        self._blocks: list[Block] | None = None
        self._points = self._wanted_points()
        self._last_fp: tuple[float, ...] | None = None
        self._same = 0
        self._runs: dict[str, _Run] = {}  # per current register: its run of identical values

    # -- what to read ----------------------------------------------------------------
    def _wanted_points(self) -> list[Point]:
        measured = {i + 1 for i in range(len(self.cfg.phase_map))}
        out = []
        for name, p in self.regmap.points.items():
            if name.startswith(("current_l", "voltage_l", "power_l")) and int(name.split("_")[1][1]) not in measured:
                continue
            out.append(p)
        return out

    def _plan(self) -> list[Block]:
        if self._blocks is None:
            assert self._base is not None
            used = {q.scale_factor for q in self._points}
            sfs = [p for a, p in self.regmap.scale_factor_points().items() if a in used]
            self._blocks = plan_blocks(
                [*self._points, *sfs], base=self._base, max_block=self.regmap.max_block, max_gap=self.regmap.max_gap
            )
        return self._blocks

    async def discover(self) -> int:
        """SunSpec: find "SunS" at one of the bases, walk the model headers to a wanted model."""
        if self._base is not None:
            return self._base
        dev, to = self.cfg.device_id, self.cfg.timeout_s
        for base in self.regmap.sunspec_bases:
            try:
                marker = await read_block(self.client, Block("holding", base, 2), dev, to)
            except MeterExceptionResponse:
                continue  # nothing there: illegal address
            if tuple(marker) != SUNSPEC_MARKER:
                continue
            addr = base + 2
            for _ in range(64):
                mid, length = await read_block(self.client, Block("holding", addr, 2), dev, to)
                if mid == 0xFFFF:
                    break
                if mid in self.regmap.sunspec_models:
                    self._base, self.sunspec_model, self._blocks = addr, mid, None
                    log.info("sunspec_model_found", meter=self.cfg.id, model=mid, address=addr, base=base)
                    return addr
                addr += 2 + length
            raise MeterError(
                f"SunSpec device at base {base} has none of the models {list(self.regmap.sunspec_models)}"
            )
        raise MeterError(f"no SunSpec marker at {', '.join(str(b) for b in self.regmap.sunspec_bases)}")

    # -- reading ---------------------------------------------------------------------
    async def read_values(self) -> dict[str, float]:
        """One pass over the blocks: point name -> engineering value (NaN: no value)."""
        base = await self.discover()
        regs: dict[int, int] = {}
        for b in self._plan():
            data = await read_block(self.client, b, self.cfg.device_id, self.cfg.timeout_s)
            for i, v in enumerate(data):
                regs[(0 if b.function == "input" else 0x10000) + b.address + i] = v
        out: dict[str, float] = {}
        for p in self._points:
            off = 0 if p.function == "input" else 0x10000
            words = [regs[off + base + p.address + i] for i in range(p.count)]
            sf = None
            if p.scale_factor is not None:
                sfw = regs[off + base + p.scale_factor]
                sf = sfw - 0x10000 if sfw >= 0x8000 else sfw
            out[p.name] = p.decode(words, sf)
        return out

    async def poll(self) -> MeterReading:
        """Read with retries and backoff; judge the values. MeterError if every attempt failed."""
        attempts = 1 + self.cfg.retries
        last: MeterError | None = None
        for k in range(attempts):
            at = self._clock()
            try:
                values = await self.read_values()
            except MeterError as exc:
                last = exc
                if k + 1 < attempts:
                    await self._sleep(exponential(0.05, k, self.cfg.poll_interval_s))
                continue
            return self.evaluate(values, at)
        assert last is not None
        raise last

    # -- judging ---------------------------------------------------------------------
    def evaluate(self, values: Mapping[str, float], at: float) -> MeterReading:
        cfg, b = self.cfg, self.bounds
        sign = -1.0 if cfg.invert else 1.0
        ct = cfg.ct_ratio
        reasons: list[str] = []
        for name, v in values.items():
            if math.isnan(v) or math.isinf(v):
                reasons.append(f"not_implemented:{name}")
        n = self.site_phases

        def per_phase(q: str, factor: float, absolute: bool = False) -> tuple[float, ...] | None:
            unit = {"current": "a", "voltage": "v", "power": "w"}[q]
            keys = [f"{q}_l{i + 1}_{unit}" for i in range(len(cfg.phase_map))]
            if not all(k in values for k in keys):
                return None
            site = [0.0] * n
            for k, sp in zip(keys, cfg.phase_map, strict=True):
                if sp < n:
                    v = values[k] * factor
                    site[sp] = abs(v) if absolute else v
            return tuple(site)

        current = per_phase("current", ct, absolute=True) or tuple([math.nan] * n)
        voltage = per_phase("voltage", 1.0)
        power = per_phase("power", ct * sign)
        total: float | None = None
        if "total_power_w" in values:
            total = values["total_power_w"] * ct * sign
        elif power is not None:
            total = sum(power)
        freq = values.get("frequency_hz")
        energy = values.get("energy_import_wh")
        energy = None if energy is None or cfg.invert else energy * ct  # inverted CT: that register is export

        if not reasons:
            for i, a in enumerate(current):
                if a > b.max_current_a:
                    reasons.append(f"implausible:current_l{i + 1}={a:.1f}A>{b.max_current_a:g}A")
            if voltage is not None:
                for i, v in enumerate(voltage):
                    if not -1.0 <= v <= b.max_voltage_v:
                        reasons.append(f"implausible:voltage_l{i + 1}={v:.1f}V")
            if freq is not None and not b.min_frequency_hz <= freq <= b.max_frequency_hz:
                reasons.append(f"implausible:frequency={freq:.2f}Hz")
            if not b.can_export:
                worst = min([*(power or ()), *(() if total is None else (total,))], default=0.0)
                if worst < -b.export_tolerance_w:
                    reasons.append(f"export_on_non_exporting_circuit:{worst:.0f}W")
            if energy is not None and energy < 0:
                reasons.append(f"implausible:energy_import={energy:.0f}Wh")

        fp = tuple(values[k] for k in sorted(values))
        if fp == self._last_fp:
            self._same += 1
        else:
            self._same, self._last_fp = 1, fp
        stuck = self._frozen_currents(values) if cfg.frozen_polls else []  # counted on every poll
        if cfg.frozen_polls and self._same >= cfg.frozen_polls:
            reasons.append(f"frozen:{self._same}_polls")
        else:
            reasons.extend(stuck)

        return MeterReading(
            current_a=current,
            at=at,
            valid=not reasons,
            reason=";".join(reasons),
            voltage_v=voltage,
            power_w=power,
            total_power_w=total,
            frequency_hz=freq,
            energy_import_wh=energy,
        )

    def _frozen_currents(self, values: Mapping[str, float]) -> list[str]:
        counts = _frozen_quantity(self._runs, values)
        return [f"frozen:{k}:{n}_polls" for k, n in sorted(counts.items()) if n >= self.cfg.frozen_polls]


FROZEN_POWER_SPREAD = 0.05  # a current register stuck while its phase's power moves more than this fraction...
FROZEN_POWER_MIN_W = 100.0  # ...and more than this (W) is frozen, not a steady load


@dataclass
class _Run:
    """One current register's run of identical values, and the range its phase's power covered meanwhile."""

    value: float
    polls: int
    p_lo: float
    p_hi: float


def _frozen_quantity(runs: dict[str, _Run], values: Mapping[str, float]) -> dict[str, int]:
    """Per current register: the polls it has read exactly the same value while the power on its phase (or the
    total) moved: a stuck register. A steady load keeps both still; an idle phase reads 0 A and about 0 W."""
    out: dict[str, int] = {}
    for k, v in values.items():
        if not (k.startswith("current_l") and k.endswith("_a")):
            continue
        pw = values.get(f"power_{k[len('current_'):-2]}_w", values.get("total_power_w"))
        if pw is None or math.isnan(pw) or math.isnan(v):
            runs.pop(k, None)
            continue
        r = runs.get(k)
        if r is None or r.value != v:
            runs[k] = _Run(v, 1, pw, pw)
            continue
        r.polls += 1
        r.p_lo, r.p_hi = min(r.p_lo, pw), max(r.p_hi, pw)
        mid = (abs(r.p_lo) + abs(r.p_hi)) / 2
        if r.p_hi - r.p_lo > max(FROZEN_POWER_SPREAD * mid, FROZEN_POWER_MIN_W):
            out[k] = r.polls
    return out


def fmt_phases(values: Sequence[float] | None, unit: str) -> str:
    if values is None:
        return "-"
    return " ".join(f"L{i + 1} {v:.2f} {unit}" for i, v in enumerate(values))
