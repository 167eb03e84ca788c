"""Meter register maps: TOML files that say where a meter keeps each quantity.

A map file has a ``[meter]`` table (name, source document, defaults for every point:
``function`` "input"|"holding", ``type``, ``word_order`` "high_first"|"low_first", read
blocking) and a ``[points]`` table, one entry per quantity, keyed with the unit in the name:

    current_l1_a current_l2_a current_l3_a    voltage_l1_v ...    power_l1_w ...
    total_power_w    frequency_hz    energy_import_wh

Each point is ``{ address = N, type = ..., scale = k, scale_factor = M, invalid = [...] }``:
the engineering value is ``raw * scale * 10**int16(register M)``. SunSpec maps set
``sunspec_models``; their addresses are then offsets from the model's ID register, and the
driver finds the model by walking the model headers behind the "SunS" marker.

Adding a meter is a new TOML file in ``gateway/meters/maps/``; no code.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.confkit import Table, read_toml
from gateway.errors import ConfigError, RegisterMapError

MAPS_DIR = Path(__file__).parent / "maps"

TYPES: dict[str, tuple[int, str]] = {  # type -> (registers, struct code)
    "int16": (1, ">h"),
    "uint16": (1, ">H"),
    "int32": (2, ">i"),
    "uint32": (2, ">I"),
    "int64": (4, ">q"),
    "uint64": (4, ">Q"),
    "float32": (2, ">f"),
}
# The "not implemented" marker of each type (SunSpec and most vendors): the raw register
# pattern, compared before decoding. Floats: any NaN.
NOT_IMPLEMENTED: dict[str, int] = {
    "int16": 0x8000,
    "uint16": 0xFFFF,
    "int32": 0x80000000,
    "uint32": 0xFFFFFFFF,
    "int64": 0x8000000000000000,
    "uint64": 0xFFFFFFFFFFFFFFFF,
}
FUNCTIONS = ("input", "holding")
WORD_ORDERS = ("high_first", "low_first")
SUNSPEC_BASES = (40000, 0, 50000)
SUNSPEC_MARKER = (0x5375, 0x6E53)  # "SunS"

PHASE_QUANTITIES = ("current", "voltage", "power")
POINT_NAMES = (
    *(f"current_l{i}_a" for i in (1, 2, 3)),
    *(f"voltage_l{i}_v" for i in (1, 2, 3)),
    *(f"power_l{i}_w" for i in (1, 2, 3)),
    "total_power_w",
    "frequency_hz",
    "energy_import_wh",
)


@dataclass(frozen=True)
class Point:
    name: str
    address: int  # absolute, or the offset from the SunSpec model ID register
    type: str
    function: str
    word_order: str
    scale: float = 1.0
    scale_factor: int | None = None  # address (or offset) of a SunSpec sunssf register
    invalid: tuple[int, ...] = ()  # extra raw "no value" markers

    @property
    def count(self) -> int:
        return TYPES[self.type][0]

    def decode(self, regs: Sequence[int], sf: int | None = None) -> float:
        """Registers (as read, in wire word order) -> engineering value; NaN for "no value"."""
        if len(regs) != self.count:
            raise RegisterMapError(f"{self.name}: need {self.count} registers, got {len(regs)}")
        words = list(regs) if self.word_order == "high_first" else list(reversed(regs))
        raw = 0
        for w in words:
            raw = (raw << 16) | (w & 0xFFFF)
        if self.type != "float32" and raw == NOT_IMPLEMENTED[self.type]:
            return math.nan
        if raw in self.invalid:
            return math.nan
        code = TYPES[self.type][1]
        value = float(struct.unpack(code, raw.to_bytes(2 * self.count, "big"))[0])
        if self.scale_factor is not None:
            if sf is None or sf == -0x8000:
                return math.nan
            value *= 10.0**sf
        return value * self.scale

    def encode(self, value: float, sf: int = 0) -> list[int]:
        """Engineering value -> registers in wire word order (the simulator's side).

        NaN encodes the type's "not implemented" marker. Integers that do not fit raise
        RegisterMapError."""
        code = TYPES[self.type][1]
        n = self.count
        if math.isnan(value):
            raw_bytes = struct.pack(">f", math.nan) if self.type == "float32" else NOT_IMPLEMENTED[
                self.type
            ].to_bytes(2 * n, "big")
        else:
            v = value / self.scale / (10.0**sf if self.scale_factor is not None else 1.0)
            if self.type == "float32":
                raw_bytes = struct.pack(code, v)
            else:
                try:
                    raw_bytes = struct.pack(code, round(v))
                except struct.error as exc:
                    raise RegisterMapError(f"{self.name}: {value!r} does not fit {self.type}") from exc
        words = [int.from_bytes(raw_bytes[2 * i : 2 * i + 2], "big") for i in range(n)]
        return words if self.word_order == "high_first" else list(reversed(words))


@dataclass(frozen=True)
class RegisterMap:
    name: str  # the file stem, e.g. "eastron_sdm630"
    title: str
    source: str
    points: Mapping[str, Point]
    sunspec_models: tuple[int, ...] = ()
    sunspec_bases: tuple[int, ...] = SUNSPEC_BASES
    max_block: int = 100  # registers per read request
    max_gap: int = 16  # unused registers a block may span between two points
    path: str = ""
    phases: int = field(default=3)

    @property
    def is_sunspec(self) -> bool:
        return bool(self.sunspec_models)

    def has(self, name: str) -> bool:
        return name in self.points

    def scale_factor_points(self) -> dict[int, Point]:
        """SunSpec: the sunssf registers the points refer to, as int16 points."""
        out: dict[int, Point] = {}
        for p in self.points.values():
            if p.scale_factor is not None and p.scale_factor not in out:
                out[p.scale_factor] = Point(
                    name=f"sf@{p.scale_factor}",
                    address=p.scale_factor,
                    type="int16",
                    function=p.function,
                    word_order="high_first",
                )
        return out


@dataclass(frozen=True)
class Block:
    function: str
    address: int
    count: int


def plan_blocks(points: Sequence[Point], *, base: int = 0, max_block: int = 100, max_gap: int = 16) -> list[Block]:
    """Group points into as few read requests as the block size and gap limits allow."""
    out: list[Block] = []
    for fn in FUNCTIONS:
        spans = sorted((base + p.address, base + p.address + p.count) for p in points if p.function == fn)
        cur: list[int] | None = None
        for start, end in spans:
            if cur is not None and start - cur[1] <= max_gap and max(end, cur[1]) - cur[0] <= max_block:
                cur[1] = max(cur[1], end)
                continue
            if cur is not None:
                out.append(Block(fn, cur[0], cur[1] - cur[0]))
            cur = [start, end]
        if cur is not None:
            out.append(Block(fn, cur[0], cur[1] - cur[0]))
    return out


# --------------------------------------------------------------------------------------
def shipped_maps() -> list[str]:
    return sorted(p.stem for p in MAPS_DIR.glob("*.toml"))


def resolve_map_path(name: str, *, relative_to: str | Path | None = None) -> Path:
    """A shipped map name ("eastron_sdm630") or a path to a TOML file."""
    if "/" not in name and not name.endswith(".toml"):
        p = MAPS_DIR / f"{name}.toml"
        if not p.is_file():
            raise RegisterMapError(f"unknown register map {name!r} (shipped: {', '.join(shipped_maps())})")
        return p
    p = Path(name)
    if not p.is_absolute() and relative_to is not None:
        p = Path(relative_to).parent / p
    if not p.is_file():
        raise RegisterMapError(f"register map file {str(p)!r} does not exist")
    return p


_CACHE: dict[str, RegisterMap] = {}


def load_map(name: str, *, relative_to: str | Path | None = None) -> RegisterMap:
    path = resolve_map_path(name, relative_to=relative_to)
    key = str(path.resolve())
    if key not in _CACHE:
        _CACHE[key] = parse_map(path)
    return _CACHE[key]


def parse_map(path: str | Path) -> RegisterMap:
    p = Path(path)
    try:
        data = read_toml(p)
        return _parse(Table(data), stem=p.stem, path=str(p))
    except ConfigError as exc:
        raise RegisterMapError(f"{p}: {exc.path}: {exc.reason}" if exc.path else f"{p}: {exc.reason}") from exc


def _parse(root: Table, *, stem: str, path: str) -> RegisterMap:
    m = root.table("meter")
    if m is None:
        raise ConfigError("meter", "required table is missing")
    title = m.str("name", required=True)
    source = m.str("source", required=True)
    d_function = m.choice("function", FUNCTIONS, "holding")
    d_type = m.choice("type", tuple(TYPES), "float32")
    d_order = m.choice("word_order", WORD_ORDERS, "high_first")
    max_block = m.int("max_block", 100, min=1, max=125)
    max_gap = m.int("max_gap", 16, min=0, max=125)
    models_raw = m.raw("sunspec_models")
    models: tuple[int, ...] = ()
    if models_raw is not None:
        if not isinstance(models_raw, list) or not all(isinstance(x, int) for x in models_raw) or not models_raw:
            raise m.error("sunspec_models", "expected a non-empty array of model ids")
        models = tuple(models_raw)
    bases_raw = m.raw("sunspec_bases")
    bases = SUNSPEC_BASES
    if bases_raw is not None:
        if not isinstance(bases_raw, list) or not all(isinstance(x, int) for x in bases_raw):
            raise m.error("sunspec_bases", "expected an array of register addresses")
        bases = tuple(bases_raw)
    m.done()

    pts_t = root.table("points")
    if pts_t is None:
        raise ConfigError("points", "required table is missing")
    points: dict[str, Point] = {}
    for key in list(pts_t.keys()):
        if key not in POINT_NAMES:
            pts_t.raw(key)
            raise pts_t.error(key, f"unknown quantity (known: {', '.join(POINT_NAMES)})")
        t = pts_t.table(key)
        assert t is not None
        typ = t.choice("type", tuple(TYPES), d_type)
        sf = t.raw("scale_factor")
        if sf is not None and (isinstance(sf, bool) or not isinstance(sf, int)):
            raise t.error("scale_factor", "expected the register address (integer) of the scale factor")
        inv = t.raw("invalid")
        if inv is not None and (not isinstance(inv, list) or not all(isinstance(x, int) for x in inv)):
            raise t.error("invalid", "expected an array of raw register values")
        points[key] = Point(
            name=key,
            address=t.int("address", min=0, max=65535),
            type=typ,
            function=t.choice("function", FUNCTIONS, d_function),
            word_order=t.choice("word_order", WORD_ORDERS, d_order),
            scale=t.float("scale", 1.0),
            scale_factor=sf,
            invalid=tuple(inv or ()),
        )
        if points[key].scale == 0:
            raise t.error("scale", "must not be 0")
        t.done()
    pts_t.done()
    root.done()
    if "current_l1_a" not in points:
        raise ConfigError("points.current_l1_a", "a meter map must at least give the L1 current")
    phases = 3 if all(f"current_l{i}_a" in points for i in (1, 2, 3)) else 1
    return RegisterMap(
        name=stem,
        title=title,
        source=source,
        points=points,
        sunspec_models=models,
        sunspec_bases=bases,
        max_block=max_block,
        max_gap=max_gap,
        path=path,
        phases=phases,
    )
