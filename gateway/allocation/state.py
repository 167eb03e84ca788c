"""The allocator's memory between ticks: explicit, frozen state (``allocate`` returns the next one).

Every charger's memory is held as arrays over the plan's chargers (``Memory``, one row per charger), so
that a tick at 1000 chargers does no per-charger Python work for it; ``AllocatorState.chargers`` reads it
as one ``ChargerMemory`` per charger (made on first access), and a state built from such a mapping (a
reload's ``keeping``, a test) is turned back into arrays once.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from gateway.allocation.narrow import row_max
from gateway.model import ChargerLimit

NEVER = float("-inf")
KEEP_REPORTS = 3  # draw reports kept per charger

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]


class ChargerMemory(NamedTuple):
    """One charger's memory, as ``AllocatorState.chargers`` shows it."""

    limit: float  # the limit decided last (charger unit)
    line_a: float  # its line current per loaded phase
    reason: str
    paused_since: float | None = None  # when its session was paused (rotation)
    running_since: float | None = None  # when it last got its minimum or more
    # its reserve before followers (line A): what it accepted, or may draw offline / uncontrolled
    base_a: float = 0.0
    # a decrease takes the EV up to ev_response_s to follow: (line A it may still draw, until when), one pair
    # per decrease not yet followed
    follows: tuple[tuple[float, float], ...] = ()
    # when the accepted limit last rose: an EV's draw says something about its demand only a response later
    raised_at: float = NEVER
    # the last draw reports seen, oldest first: (measured at, line A per site phase, the lowest reserve the
    # charger has had since): the meters may read later than the last report, so the report subtracted is
    # the newest one measured before the meter's reading; and once the charger has followed, it draws no
    # more than that lowest reserve, whatever the report says (a report from before a pause is not believed
    # again when the limit rises)
    reports: tuple[tuple[float, tuple[float, ...], float], ...] = ()


_SPARE = 2  # slots a compaction or a widening leaves free beyond the fullest row


@dataclass
class Follows:
    """Per charger, the decreases being followed, oldest first: ``a[i, j]`` (line A it may still draw) until
    ``until[i, j]`` for the slots j < n[i] whose until is not -inf (a lapsed one is marked so, and the slots
    are compacted only when a row needs room: then two slots beyond the fullest row are left free)."""

    a: FloatArray
    until: FloatArray
    n: IntArray

    @classmethod
    def empty(cls, rows: int) -> Follows:
        return cls(np.zeros((rows, 0)), np.full((rows, 0), NEVER), np.zeros(rows, dtype=np.intp))

    def copy(self) -> Follows:
        return Follows(self.a.copy(), self.until.copy(), self.n.copy())

    def live(self, now: float) -> Follows:
        """Those still being followed at ``now`` (in their order)."""
        lapsed = (self.until <= now) & (self.until > NEVER)
        if not lapsed.any():
            return self.copy()
        return Follows(np.where(lapsed, 0.0, self.a), np.where(lapsed, NEVER, self.until), self.n.copy())

    def add(self, rows: BoolArray, a: FloatArray, until: FloatArray) -> None:
        """Append (a, until) to the rows selected (in place)."""
        idx = np.flatnonzero(rows)
        if not idx.size:
            return
        if int(self.n[idx].max()) >= self.a.shape[1] and np.count_nonzero(self.until > NEVER) < self.n.sum():
            self._compact()  # lapsed slots to reuse
        if int(self.n[idx].max()) >= self.a.shape[1]:  # room for this and the next (fewer compactions)
            self.a = np.hstack([self.a, np.zeros((len(self.n), _SPARE))])
            self.until = np.hstack([self.until, np.full((len(self.n), _SPARE), NEVER)])
        slot = self.n[idx]
        flat = idx * self.a.shape[1] + slot  # (row, slot) in the flattened arrays
        np.put(self.a, flat, a[idx])
        np.put(self.until, flat, until[idx])
        self.n[idx] += 1

    def _compact(self) -> None:
        """Every row's followed decreases to its first slots, in their order, in arrays as wide as the fullest row
        and two free slots."""
        keep = self.until > NEVER
        src = np.flatnonzero(keep)  # row by row, in slot order
        n = np.bincount(src // max(keep.shape[1], 1), minlength=keep.shape[0])  # (faster than a row sum)
        width = int(n.max(initial=0)) + _SPARE
        rows = np.repeat(np.arange(len(n)), n)
        dst = rows * width + (np.arange(src.size) - (np.cumsum(n) - n)[rows])  # each row's from its first slot
        a, until = np.zeros(len(n) * width), np.full(len(n) * width, NEVER)
        a[dst], until[dst] = self.a.ravel()[src], self.until.ravel()[src]
        self.a, self.until, self.n = a.reshape(len(n), width), until.reshape(len(n), width), n.astype(np.intp)

    def highest(self, now: float) -> FloatArray:
        """Per charger, the highest earlier limit it may still draw while it follows (0: none)."""
        if not self.a.shape[1]:
            return np.zeros(len(self.n))
        return row_max(self.a * (self.until > now))  # every a > 0

    def row(self, i: int) -> tuple[tuple[float, float], ...]:
        k = int(self.n[i])
        return tuple((a, u) for a, u in zip(self.a[i, :k].tolist(), self.until[i, :k].tolist(), strict=True)
                     if u != NEVER)


@dataclass
class Reports:
    """Per charger, its last draw reports, newest in the last slot: measured ``at[i, j]``, line A per site
    phase ``draw[i, j]``, the lowest reserve since ``low[i, j]``; the last ``n[i]`` slots are used."""

    at: FloatArray
    draw: FloatArray  # (chargers, KEEP_REPORTS, phases)
    low: FloatArray
    n: IntArray

    @classmethod
    def empty(cls, rows: int, phases: int) -> Reports:
        k = KEEP_REPORTS
        return cls(np.full((rows, k), np.nan), np.zeros((rows, k, phases)), np.full((rows, k), np.inf),
                   np.zeros(rows, dtype=np.intp))

    def row(self, i: int) -> tuple[tuple[float, tuple[float, ...], float], ...]:
        k = int(self.n[i])
        if not k:
            return ()
        at, low, draw = self.at[i, -k:].tolist(), self.low[i, -k:].tolist(), self.draw[i, -k:].tolist()
        return tuple((a, tuple(d), lo) for a, d, lo in zip(at, draw, low, strict=True))


@dataclass
class Memory:
    """Every plan charger's memory as arrays (one row per charger, in the plan's order); NaN: None."""

    ids: tuple[str, ...]
    has: BoolArray  # False: no memory yet (a fresh start)
    limit: FloatArray
    line_a: FloatArray
    reason: npt.NDArray[np.object_]
    paused_since: FloatArray
    running_since: FloatArray
    base_a: FloatArray
    raised_at: FloatArray
    follows: Follows
    reports: Reports

    def row(self, i: int) -> ChargerMemory:
        ps, rs = float(self.paused_since[i]), float(self.running_since[i])
        return ChargerMemory(
            float(self.limit[i]), float(self.line_a[i]), str(self.reason[i]),
            None if math.isnan(ps) else ps, None if math.isnan(rs) else rs, float(self.base_a[i]),
            self.follows.row(i), float(self.raised_at[i]), self.reports.row(i),
        )

    @classmethod
    def of(cls, ids: tuple[str, ...], chargers: Mapping[str, ChargerMemory], phases: int) -> Memory:
        """From one ChargerMemory per charger (a state the allocator did not make this way)."""
        n = len(ids)
        mems = [chargers.get(cid) for cid in ids]
        m = cls(ids, np.zeros(n, dtype=bool), np.zeros(n), np.zeros(n), np.full(n, "", dtype=object),
                np.full(n, np.nan), np.full(n, np.nan), np.zeros(n), np.full(n, NEVER),
                Follows.empty(n), Reports.empty(n, phases))
        width = max((len(mem.follows) for mem in mems if mem is not None), default=0)
        m.follows = Follows(np.zeros((n, width)), np.full((n, width), NEVER), np.zeros(n, dtype=np.intp))
        for i, mem in enumerate(mems):
            if mem is not None:
                _set_row(m, i, mem)
        return m


def _set_row(m: Memory, i: int, mem: ChargerMemory) -> None:
    m.has[i] = True
    m.limit[i], m.line_a[i], m.reason[i], m.base_a[i], m.raised_at[i] = (
        mem.limit, mem.line_a, mem.reason, mem.base_a, mem.raised_at)
    m.paused_since[i] = np.nan if mem.paused_since is None else mem.paused_since
    m.running_since[i] = np.nan if mem.running_since is None else mem.running_since
    f = m.follows
    for j, (a, until) in enumerate(mem.follows):
        f.a[i, j], f.until[i, j] = a, until
    f.n[i] = len(mem.follows)
    kept = mem.reports[-KEEP_REPORTS:]
    r = m.reports
    for j, (at, draw, low) in enumerate(kept, start=KEEP_REPORTS - len(kept)):
        r.at[i, j], r.draw[i, j], r.low[i, j] = at, draw, low
    r.n[i] = len(kept)


V = TypeVar("V")


class RowsView(Mapping[str, V]):
    """Ids to values, each made from its row on first access and then kept (``_make``); the ids' index is
    made on first access too (most states are never read)."""

    def __init__(self, ids: tuple[str, ...], index: Mapping[str, int] | None = None) -> None:
        self._ids, self._index = ids, index
        self._made: dict[str, V] = {}

    @property
    def index(self) -> Mapping[str, int]:
        if self._index is None:
            self._index = {cid: i for i, cid in enumerate(self._ids)}
        return self._index

    def _make(self, i: int) -> V:
        raise NotImplementedError

    def __getitem__(self, key: str) -> V:
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self._make(self.index[key])  # KeyError: not one of the ids
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return key in self.index


class MemoryView(RowsView[ChargerMemory]):
    """``Memory`` read as one ChargerMemory per charger id."""

    def __init__(self, memory: Memory) -> None:
        super().__init__(memory.ids)
        self.memory = memory

    def _make(self, i: int) -> ChargerMemory:
        return self.memory.row(i)


@dataclass(frozen=True)
class CircuitMemory:
    """Per phase: the non-EV estimate in use, the highest current measured since the estimate was last
    confirmed, and since when a drop below it waits for newer reports (None: none waits)."""

    non_ev_a: tuple[float, ...] = ()
    peak_a: tuple[float, ...] = ()
    held_since: tuple[float | None, ...] = ()
    measured_a: tuple[float, ...] = ()  # the reading at the last tick


@dataclass(frozen=True)
class CircuitRows:
    """The metered circuits' memory as arrays, one row per circuit in ``ids`` (those read this tick, in the
    plan's order), one column per phase; NaN in ``since``: no drop waits."""

    ids: tuple[str, ...]
    non_ev_a: FloatArray
    peak_a: FloatArray
    since: FloatArray
    measured_a: FloatArray


class CircuitMemoryView(RowsView[CircuitMemory]):
    """``CircuitRows`` read as one CircuitMemory per circuit id; the next tick reads the arrays themselves."""

    def __init__(self, rows: CircuitRows) -> None:
        super().__init__(rows.ids)
        self.rows = rows

    def _make(self, i: int) -> CircuitMemory:
        r = self.rows
        return CircuitMemory(tuple(r.non_ev_a[i].tolist()), tuple(r.peak_a[i].tolist()),
                             tuple(None if math.isnan(h) else h for h in r.since[i].tolist()),
                             tuple(r.measured_a[i].tolist()))


@dataclass(frozen=True)
class AllocatorState:
    at: float | None = None  # when the allocator last ran
    chargers: Mapping[str, ChargerMemory] = field(default_factory=dict)
    circuits: Mapping[str, CircuitMemory] = field(default_factory=dict)
    # the same memory as arrays, for the plan it was made with (None: rebuilt from ``chargers``)
    memory: Memory | None = field(default=None, compare=False, repr=False)
    plan_key: Any = field(default=None, compare=False, repr=False)
    # the snapshot's rows as read this tick (allocation.inputs.Inputs, for the same plan): the next tick reads
    # again only the chargers whose snapshot is another object
    inputs: object = field(default=None, compare=False, repr=False)
    # the limits made with ``memory`` and what each charger may draw (a limit is the same object while its
    # values are: fewer objects made per tick)
    limits: Mapping[str, ChargerLimit] | None = field(default=None, compare=False, repr=False)
    may_a: FloatArray | None = field(default=None, compare=False, repr=False)

    def keeping(self, charger_ids: Container[str], circuit_ids: Container[str]) -> AllocatorState:
        """The state for a reloaded site: what still exists is kept (estimates and holds included)."""
        return AllocatorState(
            at=self.at,
            chargers={k: v for k, v in self.chargers.items() if k in charger_ids},
            circuits={k: v for k, v in self.circuits.items() if k in circuit_ids},
        )
