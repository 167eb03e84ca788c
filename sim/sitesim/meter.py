"""A Modbus meter simulator for tests, the demo and the HIL rig.

It serves any shipped register map (``gateway/meters/maps/*.toml``) over Modbus TCP and over
Modbus RTU on a serial device (in tests: one end of a socat pty pair). Per-phase currents come
from a load profile (``source(t) -> amps per phase``, evaluated on every request); voltage,
power, frequency and imported energy are derived. Faults can be injected: silence, garbage
bytes, CRC errors, a frozen register image and exception responses.

Python API::

    sim = MeterSimulator("eastron_sdm630", device_id=1, source=LoadProfile.parse("step:0=100,10=300"))
    port = await sim.start_tcp()                       # 127.0.0.1, ephemeral port
    async with SocatPair() as (bus_end, client_end):   # a pty pair
        bus = RtuBus(bus_end, baud_rate=19200)         # several device ids on one bus
        bus.add(sim); bus.add(MeterSimulator("carlo_gavazzi_em24", device_id=2))
        await bus.start()
    sim.silence(); sim.clear_faults()

Command line::

    python -m sitesim.meter --map eastron_sdm630 --tcp 127.0.0.1:5020 --profile "step:0=100,10=300"
    python -m sitesim.meter --map carlo_gavazzi_em24 --rtu-pair /tmp/meter --baud 19200

The socat ptys ignore the baud rate, so the RTU side adds the wire time of the request and
of the response (1 start + 8 data + parity + stop bits per character, plus the 3.5 character
silent interval) before it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import shutil
import struct
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Callable, Sequence

from gateway.meters.regmap import SUNSPEC_MARKER, TYPES, Point, RegisterMap, load_map

Source = Callable[[float], Sequence[float]]


# ----------------------------------------------------------------------------------------
def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame: bytes) -> bytes:
    return frame + struct.pack("<H", crc16(frame))


class LoadProfile:
    """Per-phase currents over time. Spec: segments joined by ';'

    ``const:100`` or ``const:100/120/90`` (per phase), ``step:0=100,10=300`` (value from t on),
    ``ramp:0=0,60=300`` (linear between points), ``noise:2`` (gaussian, sigma in A).
    A value may be per phase: ``step:0=10/20/30,5=40``.
    """

    def __init__(self, points: list[tuple[float, tuple[float, ...]]], *, ramp: bool = False,
                 noise_a: float = 0.0, phases: int = 3, seed: int | None = None) -> None:
        self.points = sorted(points)
        self.ramp = ramp
        self.noise_a = noise_a
        self.phases = phases
        self._rng = random.Random(seed)

    @classmethod
    def parse(cls, spec: str, *, phases: int = 3, seed: int | None = None) -> LoadProfile:
        points: list[tuple[float, tuple[float, ...]]] = []
        ramp = False
        noise = 0.0

        def vals(s: str) -> tuple[float, ...]:
            parts = [float(x) for x in s.split("/")]
            if len(parts) == 1:
                parts = parts * phases
            if len(parts) != phases:
                raise ValueError(f"expected 1 or {phases} values, got {s!r}")
            return tuple(parts)

        for seg in filter(None, (x.strip() for x in spec.split(";"))):
            kind, _, body = seg.partition(":")
            if kind == "const":
                points = [(0.0, vals(body))]
            elif kind in ("step", "ramp"):
                ramp = kind == "ramp"
                points = []
                for item in body.split(","):
                    t, _, v = item.partition("=")
                    points.append((float(t), vals(v)))
            elif kind == "noise":
                noise = float(body)
            else:
                raise ValueError(f"unknown profile segment {seg!r}")
        if not points:
            points = [(0.0, tuple([0.0] * phases))]
        return cls(points, ramp=ramp, noise_a=noise, phases=phases, seed=seed)

    def __call__(self, t: float) -> tuple[float, ...]:
        pts = self.points
        cur = pts[0][1]
        for i, (ti, vi) in enumerate(pts):
            if t >= ti:
                cur = vi
                if self.ramp and i + 1 < len(pts):
                    t1, v1 = pts[i + 1]
                    if t < t1:
                        f = (t - ti) / (t1 - ti)
                        cur = tuple(a + (b - a) * f for a, b in zip(vi, v1, strict=True))
        if self.noise_a:
            cur = tuple(max(0.0, c + self._rng.gauss(0.0, self.noise_a)) for c in cur)
        return cur


# ----------------------------------------------------------------------------------------
class MeterSimulator:
    """One simulated meter: a register image computed from the load on every request."""

    def __init__(
        self,
        map_name: str,
        device_id: int = 1,
        phases: int = 3,
        *,
        source: Source | None = None,
        voltage_v: float = 230.0,
        power_factor: float = 0.98,
        frequency_hz: float = 50.0,
        noise: bool = True,
        sunspec_base: int = 40000,
        sunspec_model: int | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.map: RegisterMap = load_map(map_name)
        self.device_id = device_id
        self.phases = phases
        self.voltage_v = voltage_v
        self.power_factor = power_factor
        self.frequency_hz = frequency_hz
        self.noise = noise
        self._clock = clock
        self._t0 = clock()
        self._rng = random.Random(seed)
        self._source: Source = source or (lambda t: (0.0,) * phases)
        self._fixed: tuple[float, ...] | None = None
        self.energy_wh = 1_000_000.0
        self._last_t: float | None = None
        self.sunspec_base = sunspec_base
        models = self.map.sunspec_models
        wye = next((m for m in models if m % 10 == 3), models[0]) if models else None  # 203 / 213
        self.sunspec_model = sunspec_model or (wye if phases == 3 else (models[0] if models else None))
        self.fault: str | None = None
        self.fault_rate = 1.0
        self.exception_code = 4
        self._frozen: dict[int, int] | None = None
        self.requests = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._writers: set[asyncio.StreamWriter] = set()

    # -- load ---------------------------------------------------------------------------
    def set_currents(self, *amps: float) -> None:
        """Fixed per-phase currents (one value: all phases); NaN serves "not implemented"."""
        if len(amps) == 1:
            amps = amps * self.phases
        self._fixed = tuple(float(a) for a in amps)

    def set_source(self, source: Source) -> None:
        self._fixed = None
        self._source = source

    # -- faults ---------------------------------------------------------------------------
    def silence(self) -> None:
        self.fault = "silence"

    def garbage(self, rate: float = 1.0) -> None:
        self.fault, self.fault_rate = "garbage", rate

    def crc_errors(self, rate: float = 1.0) -> None:
        self.fault, self.fault_rate = "crc", rate

    def exception_responses(self, code: int = 4) -> None:
        self.fault, self.exception_code = "exception", code

    def freeze(self) -> None:
        self._frozen = self.image()

    def clear_faults(self) -> None:
        self.fault = None
        self._frozen = None

    # -- the register image ---------------------------------------------------------------
    def quantities(self) -> dict[str, float]:
        now = self._clock()
        t = now - self._t0
        amps = self._fixed if self._fixed is not None else tuple(self._source(t))

        def n(sigma: float) -> float:
            return self._rng.gauss(0.0, sigma) if self.noise else 0.0

        out: dict[str, float] = {}
        total = 0.0
        for i in range(3):
            a = amps[i] if i < len(amps) else 0.0
            v = self.voltage_v + n(0.3)
            p = a * v * self.power_factor
            out[f"current_l{i + 1}_a"] = a
            out[f"voltage_l{i + 1}_v"] = v
            out[f"power_l{i + 1}_w"] = p
            if not math.isnan(p):
                total += p
        out["total_power_w"] = total
        out["frequency_hz"] = self.frequency_hz + n(0.01)
        if self._last_t is not None and total > 0:
            self.energy_wh += total * (now - self._last_t) / 3600.0
        self._last_t = now
        out["energy_import_wh"] = self.energy_wh
        return out

    def image(self) -> dict[int, int]:
        """Address -> register value for the map's function (all points share one table)."""
        if self._frozen is not None:
            return self._frozen
        q = self.quantities()
        regs: dict[int, int] = {}
        base = 0
        if self.map.is_sunspec:
            base = self._sunspec_layout(regs)
        sfs: dict[int, int] = {}
        for addr, _sfp in self.map.scale_factor_points().items():
            users = [p for p in self.map.points.values() if p.scale_factor == addr]
            sfs[addr] = _choose_sf(users, q)
            regs[base + addr] = sfs[addr] & 0xFFFF
        for p in self.map.points.values():
            words = p.encode(q[p.name], sfs.get(p.scale_factor, 0) if p.scale_factor is not None else 0)
            for i, w in enumerate(words):
                regs[base + p.address + i] = w
        return regs

    def _sunspec_layout(self, regs: dict[int, int]) -> int:
        assert self.sunspec_model is not None
        b = self.sunspec_base
        regs[b], regs[b + 1] = SUNSPEC_MARKER
        # common model 1, length 66: manufacturer, model (strings), ..., device address
        regs[b + 2], regs[b + 3] = 1, 66
        for i, ch in enumerate(_str_regs("ems-gateway", 16) + _str_regs("meter-sim " + self.map.name, 16)):
            regs[b + 4 + i] = ch
        for i in range(32, 66):
            regs.setdefault(b + 4 + i, 0)
        regs[b + 4 + 64] = self.device_id
        start = b + 4 + 66
        length, is_float = sunspec_model_layout(self.sunspec_model)
        regs[start], regs[start + 1] = self.sunspec_model, length
        for i in range(length):
            regs[start + 2 + i] = (0x7FC0 if i % 2 == 0 else 0) if is_float else 0x8000
        end = start + 2 + length
        regs[end], regs[end + 1] = 0xFFFF, 0
        return start

    def _fn_table(self) -> str:
        fns = {p.function for p in self.map.points.values()}
        return fns.pop() if len(fns) == 1 else "holding"

    # -- the protocol ---------------------------------------------------------------------
    def handle_pdu(self, pdu: bytes) -> bytes | None:
        """Request PDU -> response PDU (None: stay silent)."""
        self.requests += 1
        if self.fault == "silence":
            return None
        if not pdu:
            return None
        fn = pdu[0]
        if self.fault == "exception":
            return bytes([fn | 0x80, self.exception_code])
        if fn not in (3, 4) or len(pdu) != 5:
            return bytes([fn | 0x80, 1])
        addr, count = struct.unpack(">HH", pdu[1:5])
        if not 1 <= count <= 125:
            return bytes([fn | 0x80, 3])
        want = "holding" if fn == 3 else "input"
        if want != self._fn_table() and not (want == "holding" and self.map.is_sunspec):
            return bytes([fn | 0x80, 2])
        img = self.image()
        lo, hi = min(img), max(img)
        if addr < lo or addr + count - 1 > hi:
            return bytes([fn | 0x80, 2])
        data = b"".join(struct.pack(">H", img.get(a, 0)) for a in range(addr, addr + count))
        return bytes([fn, len(data)]) + data

    def corrupt(self) -> bool:
        return self.fault in ("garbage", "crc") and self._rng.random() < self.fault_rate

    # -- TCP ------------------------------------------------------------------------------
    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        server = await asyncio.start_server(self._tcp_client, host, port)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readexactly(7)
                tid, proto, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1) if length > 1 else b""
                if unit not in (self.device_id, 0, 255):
                    resp: bytes | None = bytes([pdu[0] | 0x80 if pdu else 0x80, 0x0B])
                else:
                    resp = self.handle_pdu(pdu)
                if resp is None:
                    continue
                if self.corrupt():
                    if self.fault == "garbage":
                        writer.write(bytes(self._rng.getrandbits(8) for _ in range(7 + len(resp))))
                    else:  # no CRC on TCP: a corrupted header instead
                        writer.write(struct.pack(">HHHB", tid, 0xBEEF, len(resp) + 1, unit) + resp)
                else:
                    writer.write(struct.pack(">HHHB", tid, proto, len(resp) + 1, unit) + resp)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        for w in list(self._writers):
            w.close()
        for s in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 2)
        self._servers.clear()


# SunSpec model id -> (length L, float encoding): meters 201-204 / 211-214, inverters 101-103 / 111-113
# (sunspec/models json/model_<id>.json)
SUNSPEC_MODEL_LENGTHS: dict[int, tuple[int, bool]] = {
    **{m: (105, False) for m in (201, 202, 203, 204)},
    **{m: (124, True) for m in (211, 212, 213, 214)},
    **{m: (50, False) for m in (101, 102, 103)},
    **{m: (60, True) for m in (111, 112, 113)},
}


def sunspec_model_layout(model: int) -> tuple[int, bool]:
    """(L, float encoding) of a SunSpec model the simulator serves."""
    try:
        return SUNSPEC_MODEL_LENGTHS[model]
    except KeyError:
        raise ValueError(f"the simulator does not serve SunSpec model {model}") from None


def _str_regs(s: str, n: int) -> list[int]:
    b = s.encode()[: 2 * n].ljust(2 * n, b"\0")
    return [int.from_bytes(b[2 * i : 2 * i + 2], "big") for i in range(n)]


def _choose_sf(points: list[Point], q: dict[str, float]) -> int:
    """The finest SunSpec scale factor that lets every point sharing it fit its type."""
    for sf in range(-3, 10):
        ok = True
        for p in points:
            v = q[p.name]
            if math.isnan(v):
                continue
            raw = round(v / p.scale / 10.0**sf)
            bits = 16 * TYPES[p.type][0]
            lo, hi = (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1) if p.type.startswith("int") else (0, 2**bits - 2)
            if not lo <= raw <= hi:
                ok = False
                break
        if ok:
            return sf
    return 9


# ----------------------------------------------------------------------------------------
LATE_S = 0.02  # an RTU answer this much later than its wire time counts as late (the simulator's own delay)


class RtuBus:
    """Modbus RTU on a serial device (a pty end): several simulated meters, one per device id.

    Unknown device ids get no answer, as on a real bus. ``late_max_s`` and ``late_frames`` say how much the
    simulator itself delayed its answers beyond the wire time (a starved process)."""

    def __init__(self, path: str, *, baud_rate: int = 9600, parity: str = "N", stop_bits: int = 1,
                 wire_delay: bool = True) -> None:
        self.path = path
        self.baud_rate = baud_rate
        self.parity = parity
        self.stop_bits = stop_bits
        self.wire_delay = wire_delay
        self.meters: dict[int, MeterSimulator] = {}
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.frames = 0
        self.late_max_s = 0.0  # how much later than its wire time the latest-answered frame went out
        self.late_frames = 0  # frames answered more than LATE_S late

    @property
    def char_time_s(self) -> float:
        return (1 + 8 + (0 if self.parity == "N" else 1) + self.stop_bits) / self.baud_rate

    def wire_time_s(self, n_bytes: float) -> float:
        return n_bytes * self.char_time_s

    def add(self, sim: MeterSimulator) -> None:
        self.meters[sim.device_id] = sim

    async def start(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._fd = fd
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._on_readable)
        self._task = asyncio.create_task(self._serve(), name=f"rtu-sim-{self.path}")

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if data:
            self._queue.put_nowait((asyncio.get_running_loop().time(), data))

    async def _serve(self) -> None:
        buf = b""
        last_rx = 0.0
        while True:
            now, data = await self._queue.get()
            if buf and now - last_rx > max(0.05, 3.5 * self.char_time_s):
                buf = b""  # an inter-frame silence ends whatever came before
            last_rx = now
            buf += data
            while len(buf) >= 8:
                frame = buf[:8]
                if crc16(frame[:6]) != struct.unpack("<H", frame[6:8])[0] or frame[1] not in (3, 4):
                    buf = buf[1:]  # resynchronise
                    continue
                buf = buf[8:]
                self.frames += 1
                await self._answer(frame, now)

    async def _answer(self, frame: bytes, rx_at: float | None = None) -> None:
        """Answer one request frame, read at loop time ``rx_at``: the response goes out the wire time of the
        request, the response and the silent interval after it came in (the sim's own delays absorbed)."""
        loop = asyncio.get_running_loop()
        rx_at = loop.time() if rx_at is None else rx_at
        sim = self.meters.get(frame[0])
        if sim is None:
            return
        pdu = sim.handle_pdu(frame[1:6])
        if pdu is None:
            return
        out = with_crc(bytes([frame[0]]) + pdu)
        if sim.corrupt():
            if sim.fault == "garbage":
                out = bytes(sim._rng.getrandbits(8) for _ in range(len(out)))
            else:
                out = out[:-2] + bytes([out[-2] ^ 0xFF, out[-1]])
        due = rx_at + (self.wire_time_s(len(frame) + len(out) + 3.5) if self.wire_delay else 0.0)
        if due > loop.time():
            # the request's and the response's time on the wire, and the silent interval
            await asyncio.sleep(due - loop.time())
        late = loop.time() - due
        self.late_max_s = max(self.late_max_s, late)
        self.late_frames += late > LATE_S
        assert self._fd is not None
        view = memoryview(out)
        while view:
            try:
                n = os.write(self._fd, view)
                view = view[n:]
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None


def _all_exist(*paths: str) -> bool:
    return all(os.path.exists(p) for p in paths)


class SocatPair:
    """Two linked ptys from ``socat -d -d pty,raw,echo=0,link=A pty,raw,echo=0,link=B``."""

    def __init__(self, prefix: str | None = None) -> None:
        self._dir = None if prefix else tempfile.mkdtemp(prefix="ems-pty-")
        p = prefix or os.path.join(self._dir or "", "pty")
        self.a = f"{p}-a"
        self.b = f"{p}-b"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> tuple[str, str]:
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("socat is not installed (apt-get install socat)")
        self.proc = await asyncio.create_subprocess_exec(
            socat, "-d", "-d", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not _all_exist(self.a, self.b):
            if self.proc.returncode is not None or loop.time() > deadline:
                raise RuntimeError("socat did not create the pty pair")
            await asyncio.sleep(0.02)
        return self.a, self.b

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)
        self.proc = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def __aenter__(self) -> tuple[str, str]:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ----------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sitesim.meter", description=__doc__.split("\n\n")[0])
    ap.add_argument("--map", required=True, help="a shipped map name or a TOML path")
    ap.add_argument("--device-id", type=int, default=1)
    ap.add_argument("--tcp", metavar="HOST:PORT", help="serve Modbus TCP")
    ap.add_argument("--rtu", metavar="DEVICE", help="serve Modbus RTU on a serial device / pty")
    ap.add_argument("--rtu-pair", metavar="PREFIX", help="create a socat pty pair PREFIX-a (sim) / PREFIX-b (client)")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--parity", default="N", choices=("N", "E", "O"))
    ap.add_argument("--stop-bits", type=int, default=1)
    ap.add_argument("--profile", default="const:10", help='e.g. "step:0=100,10=300;noise:1"')
    ap.add_argument("--sunspec-base", type=int, default=40000)
    args = ap.parse_args(argv)
    if not (args.tcp or args.rtu or args.rtu_pair):
        ap.error("give --tcp, --rtu or --rtu-pair")

    async def run() -> None:
        sim = MeterSimulator(args.map, args.device_id, source=LoadProfile.parse(args.profile),
                             sunspec_base=args.sunspec_base)
        pair = None
        bus = None
        if args.tcp:
            host, _, port = args.tcp.rpartition(":")
            p = await sim.start_tcp(host or "127.0.0.1", int(port))
            print(f"meter_sim: {args.map} id {args.device_id} on tcp {host}:{p}", flush=True)
        dev = args.rtu
        if args.rtu_pair:
            pair = SocatPair(args.rtu_pair)
            dev, client_end = await pair.start()
            print(f"meter_sim: client end of the pty pair: {client_end}", flush=True)
        if dev:
            bus = RtuBus(dev, baud_rate=args.baud, parity=args.parity, stop_bits=args.stop_bits)
            bus.add(sim)
            await bus.start()
            print(f"meter_sim: {args.map} id {args.device_id} on rtu {dev} {args.baud} 8{args.parity}{args.stop_bits}",
                  flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            if bus:
                await bus.stop()
            if pair:
                await pair.stop()
            await sim.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["LoadProfile", "MeterSimulator", "RtuBus", "SocatPair", "crc16", "main"]
