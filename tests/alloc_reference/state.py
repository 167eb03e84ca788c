"""The allocator's memory between ticks: explicit, frozen state (``allocate`` returns the next one)."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

NEVER = float("-inf")


def following(follows: tuple[tuple[float, float], ...], now: float) -> float:
    """The highest earlier limit a charger may still draw while it follows decreases (0: none)."""
    if not follows:
        return 0.0
    return max((a for a, until in follows if now < until), default=0.0)


class ChargerMemory(NamedTuple):
    """One charger's memory (a NamedTuple: the allocator makes one per charger per tick)."""

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


@dataclass(frozen=True)
class CircuitMemory:
    """Per phase: the non-EV estimate in use, the highest current measured since the estimate was last
    confirmed, and since when a drop below it waits for newer reports (None: none waits)."""

    non_ev_a: tuple[float, ...] = ()
    peak_a: tuple[float, ...] = ()
    held_since: tuple[float | None, ...] = ()
    measured_a: tuple[float, ...] = ()  # the reading at the last tick


@dataclass(frozen=True)
class AllocatorState:
    at: float | None = None  # when the allocator last ran
    chargers: Mapping[str, ChargerMemory] = field(default_factory=dict)
    circuits: Mapping[str, CircuitMemory] = field(default_factory=dict)

    def keeping(self, charger_ids: Container[str], circuit_ids: Container[str]) -> AllocatorState:
        """The state for a reloaded site: what still exists is kept (estimates and holds included)."""
        return AllocatorState(
            at=self.at,
            chargers={k: v for k, v in self.chargers.items() if k in charger_ids},
            circuits={k: v for k, v in self.circuits.items() if k in circuit_ids},
        )
