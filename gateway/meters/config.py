"""[[meters]] configuration section.

One entry per meter::

    [[meters]]
    id = "meter-ev"
    circuit = "swbd-ev"
    map = "carlo_gavazzi_em24"     # a shipped map (gateway/meters/maps/*.toml) or a path
    transport = "rtu"              # "tcp" | "rtu"
    device = "/dev/ttyUSB0"        # rtu: meters on the same device share one bus task
    baud_rate = 19200
    parity = "N"                   # "N" | "E" | "O"
    stop_bits = 1
    bus_gap_s = 0.1                # rtu: pause between requests (the bus uses its largest)
    # host = "10.0.0.5"; port = 502  (tcp)
    device_id = 1
    poll_interval_s = 1.0
    timeout_s = 0.5
    retries = 1                    # per poll, with backoff
    stale_after_s = 3.0
    ct_ratio = 1.0                 # multiply current, power and energy (meters reading secondary values)
    invert = false                 # the CT is mounted backwards: flip the sign of power
    phase_map = ["L1", "L2", "L3"] # site line of measured phase 1, 2, 3 (split-phase: ["L1", "L2"]; 1 entry: one line)
    # max_current_a = 1600         # plausibility bound; default twice the circuit's limit
    frozen_polls = 10              # identical readings this many polls in a row: invalid (0: off)
    export_tolerance_w = 500       # negative power below -this on a circuit that cannot export: invalid
    role = "circuit"               # "circuit": measures its circuit; "pv": a PV inverter (the AC power it feeds in,
                                   # e.g. map = "sunspec_inverter_int"); read and published, never a circuit measurement
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.confkit import Table, check_host
from gateway.errors import ConfigError, RegisterMapError

SITE_PHASES = ("L1", "L2", "L3")
ROLES = ("circuit", "pv")


@dataclass(frozen=True)
class MeterConfig:
    id: str
    circuit: str
    stale_after_s: float = 3.0
    map: str = "eastron_sdm630"
    transport: str = "tcp"  # "tcp" | "rtu"
    host: str = "127.0.0.1"
    port: int = 502
    device: str = ""
    baud_rate: int = 9600
    parity: str = "N"
    stop_bits: int = 1
    bus_gap_s: float = 0.0
    device_id: int = 1
    poll_interval_s: float = 1.0
    timeout_s: float = 1.0
    retries: int = 1
    ct_ratio: float = 1.0
    invert: bool = False
    phase_map: tuple[int, ...] = (0, 1, 2)  # measured phase i is site phase phase_map[i]
    max_current_a: float | None = None  # None: twice the circuit's limit
    frozen_polls: int = 10
    export_tolerance_w: float = 500.0
    key: str = ""
    role: str = "circuit"  # "circuit" | "pv" (a PV inverter: never a circuit's measurement)

    @property
    def bus_key(self) -> str:
        """Meters with the same bus key are polled one at a time by one task."""
        return f"rtu:{self.device}" if self.transport == "rtu" else f"tcp:{self.id}"

    def char_time_s(self) -> float:
        """RTU: seconds per character on the wire (start + 8 data + parity + stop bits)."""
        bits = 1 + 8 + (0 if self.parity == "N" else 1) + self.stop_bits
        return bits / self.baud_rate


def parse_meter(t: Table) -> MeterConfig:
    from gateway.meters.regmap import load_map

    d = MeterConfig(id="", circuit="")
    mid = t.ident("id", what="meter id")
    circuit = t.str("circuit", required=True)
    map_name = t.str("map", d.map)
    try:
        regmap = load_map(map_name)
    except RegisterMapError as exc:
        raise t.error("map", str(exc)) from exc
    transport = t.choice("transport", ("tcp", "rtu"), "tcp")
    host, port, device = d.host, d.port, ""
    baud, parity, stop_bits, gap = d.baud_rate, d.parity, d.stop_bits, d.bus_gap_s
    if transport == "tcp":
        host = check_host(t, "host")
        port = t.int("port", 502, min=1, max=65535)
        for k in ("device", "baud_rate", "parity", "stop_bits", "bus_gap_s"):
            if t.has(k):
                raise t.error(k, "only for transport = \"rtu\"")
    else:
        device = t.str("device", required=True)
        baud = t.int("baud_rate", 9600, min=300, max=1_000_000)
        parity = t.choice("parity", ("N", "E", "O"), "N")
        stop_bits = t.int("stop_bits", 1, min=1, max=2)
        gap = t.float("bus_gap_s", 0.0, min=0, max=5)
        for k in ("host", "port"):
            if t.has(k):
                raise t.error(k, "only for transport = \"tcp\"")
    raw_pm = t.str_list("phase_map", ())
    if not raw_pm:
        raw_pm = SITE_PHASES[: regmap.phases]
    if not 1 <= len(raw_pm) <= 3 or len(raw_pm) > regmap.phases:
        raise t.error(
            "phase_map",
            f"expected 1 to {regmap.phases} site phases (the map {regmap.name!r} measures {regmap.phases}), "
            f"got {len(raw_pm)}",
        )
    for ph in raw_pm:
        if ph not in SITE_PHASES:
            raise t.error("phase_map", f"unknown phase {ph!r}: use L1, L2 or L3")
    if len(set(raw_pm)) != len(raw_pm):
        raise t.error("phase_map", "a site phase appears twice")
    poll = t.float("poll_interval_s", 1.0, min=0.05, max=60)
    stale = t.float("stale_after_s", 3.0, gt=0, max=3600)
    if stale <= poll:
        raise t.error("stale_after_s", f"must be longer than poll_interval_s ({poll:g} s)")
    m = MeterConfig(
        id=mid,
        circuit=circuit,
        stale_after_s=stale,
        map=map_name,
        transport=transport,
        host=host,
        port=port,
        device=device,
        baud_rate=baud,
        parity=parity,
        stop_bits=stop_bits,
        bus_gap_s=gap,
        device_id=t.int("device_id", 1, min=0, max=247),
        poll_interval_s=poll,
        timeout_s=t.float("timeout_s", 1.0, min=0.01, max=30),
        retries=t.int("retries", 1, min=0, max=10),
        ct_ratio=t.float("ct_ratio", 1.0, gt=0, max=100_000),
        invert=t.bool("invert", False),
        phase_map=tuple(SITE_PHASES.index(p) for p in raw_pm),
        max_current_a=t.opt_float("max_current_a", gt=0, max=1_000_000),
        frozen_polls=t.int("frozen_polls", 10, min=0, max=10_000),
        export_tolerance_w=t.float("export_tolerance_w", 500.0, min=0, max=10_000_000),
        key=t.path,
        role=t.choice("role", ROLES, "circuit"),
    )
    t.done()
    return m


def check_bus_settings(meters: list[MeterConfig]) -> None:
    """Meters sharing one serial device must agree on its line settings."""
    first: dict[str, MeterConfig] = {}
    for m in meters:
        if m.transport != "rtu":
            continue
        f = first.setdefault(m.device, m)
        if (f.baud_rate, f.parity, f.stop_bits) != (m.baud_rate, m.parity, m.stop_bits):
            raise ConfigError(
                f"{m.key}.baud_rate",
                f"meter {m.id!r} shares {m.device} with {f.id!r} but not its line settings "
                f"({m.baud_rate} {m.parity} {m.stop_bits} vs {f.baud_rate} {f.parity} {f.stop_bits})",
            )
        if f.device_id == m.device_id and f.id != m.id:
            raise ConfigError(
                f"{m.key}.device_id", f"meter {f.id!r} on {m.device} already uses device_id {m.device_id}"
            )
