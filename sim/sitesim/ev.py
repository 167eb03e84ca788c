"""Pure EV + charger-outlet physics: no IO, time passed in, deterministic.

An :class:`EvModel` is one EV (:class:`EvSpec`) plugged into one charger outlet (:class:`Outlet`).
The charger tells it the limit it offers (``set_limit``, in the outlet's native unit: A per phase for
AC, W for DC); the EV follows the new limit after its response delay (real EVs take 5-11 s), ramping
at the outlet's ramp rate, and never draws more than its own charging curve allows at its present
state of charge (flat, then tapering linearly above ``taper_start_soc``). An AC limit below the
outlet's minimum (6 A, IEC 61851) pauses the EV. A non-compliant model ignores every limit.

``step(now)`` integrates energy and SoC up to ``now`` in sub-steps of at most ``MAX_SUBSTEP_S`` on an
absolute time grid, so the result hardly depends on how often it is called. ``draw_a`` (per outlet
phase, A) and ``draw_w`` report the present draw.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from sitesim import SimError

Kind = Literal["ac", "dc"]

MAX_SUBSTEP_S = 1.0


@dataclass(frozen=True)
class ChargingCurve:
    """Fraction of the EV's maximum rate against SoC: 1 up to ``taper_start_soc``, then linear down to
    ``end_fraction`` at SoC 1.0."""

    taper_start_soc: float = 0.8
    end_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.taper_start_soc <= 1.0:
            raise SimError(f"taper_start_soc {self.taper_start_soc} outside 0..1")
        if not 0.0 <= self.end_fraction <= 1.0:
            raise SimError(f"end_fraction {self.end_fraction} outside 0..1")

    def fraction(self, soc: float) -> float:
        if soc <= self.taper_start_soc or self.taper_start_soc >= 1.0:
            return 1.0
        x = (min(soc, 1.0) - self.taper_start_soc) / (1.0 - self.taper_start_soc)
        return 1.0 - (1.0 - self.end_fraction) * x


@dataclass(frozen=True)
class EvSpec:
    """One EV. Times (``arrival_at``, ``departure_at``) are clock times (epoch seconds in the rig)."""

    capacity_kwh: float = 60.0
    soc_start: float = 0.2
    soc_target: float = 1.0  # the EV stops drawing (SuspendedEV) once it gets there
    max_ac_a: float = 32.0  # on-board charger, per phase
    ac_phases: int = 3  # phases the on-board charger uses (1-phase EVs exist)
    max_dc_w: float = 150_000.0
    curve: ChargingCurve = field(default_factory=ChargingCurve)
    response_delay_s: float = 8.0  # before a new limit takes effect
    arrival_at: float | None = None
    departure_at: float | None = None
    id_tag: str | None = None  # the driver's token; None: wait for a remote start
    name: str = "ev"
    # the EV speaks ISO 15118: on an OCPP 2.0.1 charger it sends NotifyEVChargingNeeds (its departure time and
    # the energy to its target) once its transaction starts
    iso15118: bool = False

    @property
    def energy_wanted_wh(self) -> float:
        """The energy from ``soc_start`` to ``soc_target``."""
        return max(0.0, self.soc_target - self.soc_start) * self.capacity_kwh * 1000.0

    def __post_init__(self) -> None:
        if self.capacity_kwh <= 0:
            raise SimError(f"capacity_kwh must be > 0, got {self.capacity_kwh}")
        if not 0.0 <= self.soc_start <= 1.0 or not 0.0 <= self.soc_target <= 1.0:
            raise SimError("soc_start and soc_target must be within 0..1")
        if self.ac_phases not in (1, 2, 3):
            raise SimError(f"ac_phases must be 1, 2 or 3, got {self.ac_phases}")
        if self.max_ac_a < 0 or self.max_dc_w < 0 or self.response_delay_s < 0:
            raise SimError("max_ac_a, max_dc_w and response_delay_s must be >= 0")

    @classmethod
    def random(
        cls,
        rng: random.Random,
        *,
        now: float = 0.0,
        arrival_window_s: float = 0.0,
        dwell_s: tuple[float, float] = (1800.0, 14400.0),
        delay_s: tuple[float, float] = (5.0, 11.0),
        id_tag: str | None = None,
        name: str = "ev",
    ) -> EvSpec:
        """A plausible EV drawn from ``rng`` (deterministic for a given seed)."""
        arrival = now + rng.uniform(0.0, arrival_window_s)
        return cls(
            capacity_kwh=rng.choice((40.0, 58.0, 77.0, 100.0)),
            soc_start=round(rng.uniform(0.05, 0.6), 3),
            soc_target=rng.choice((0.8, 0.9, 1.0)),
            max_ac_a=rng.choice((16.0, 32.0)),
            ac_phases=rng.choice((1, 3, 3, 3)),
            max_dc_w=rng.choice((50_000.0, 100_000.0, 150_000.0, 250_000.0)),
            curve=ChargingCurve(taper_start_soc=rng.choice((0.7, 0.8, 0.85)), end_fraction=0.1),
            response_delay_s=round(rng.uniform(*delay_s), 2),
            arrival_at=arrival,
            departure_at=arrival + rng.uniform(*dwell_s),
            id_tag=id_tag,
            name=name,
        )


@dataclass(frozen=True)
class Outlet:
    """The charger's side. ``max_a``/``min_a`` per phase (AC); ``max_w`` (DC). Ramp rates are in the
    native unit per second (A/s for AC, W/s for DC); None means a step change."""

    kind: Kind = "ac"
    phases: int = 3
    max_a: float = 32.0
    min_a: float = 6.0
    max_w: float = 150_000.0
    min_w: float = 0.0
    voltage_v: float = 230.0  # AC phase-to-neutral voltage
    dc_voltage_v: float = 400.0  # battery voltage, for the DC output current
    ramp_up_per_s: float | None = None
    ramp_down_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("ac", "dc"):
            raise SimError(f"kind must be 'ac' or 'dc', got {self.kind!r}")
        if self.phases not in (1, 3):
            raise SimError(f"phases must be 1 or 3, got {self.phases}")
        for name in ("ramp_up_per_s", "ramp_down_per_s"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise SimError(f"{name} must be > 0 or None, got {v}")

    @property
    def native_max(self) -> float:
        return self.max_a if self.kind == "ac" else self.max_w


@dataclass(frozen=True)
class _Pending:
    at: float
    limit: float
    phases: int | None


class EvModel:
    """One EV plugged into one outlet. ``now`` values must not go backwards (earlier ones are ignored)."""

    def __init__(
        self,
        ev: EvSpec,
        outlet: Outlet,
        now: float,
        *,
        limit: float | None = None,
        phases: int | None = None,
        noncompliant: bool = False,
        enabled: bool = True,
    ) -> None:
        self.ev = ev
        self.outlet = outlet
        self.noncompliant = noncompliant
        self.enabled = enabled  # the charger energises the outlet (a transaction runs)
        self.soc = ev.soc_start
        self.energy_wh = 0.0
        self.plugged_at = now
        self._t = now
        self._limit = outlet.native_max if limit is None else max(0.0, limit)
        self._limit_phases = phases
        self._pending: deque[_Pending] = deque()
        self._level = 0.0  # present draw in native unit (A per phase / W)
        self._level = self._target()

    # ---- inputs -------------------------------------------------------------------------------
    def set_limit(self, limit: float, now: float, phases: int | None = None) -> None:
        """The charger offers ``limit`` (native unit) from ``now``; the EV follows after its delay."""
        self.step(now)
        self._pending.append(_Pending(max(now, self._t) + self.ev.response_delay_s, max(0.0, limit), phases))
        self._apply_due(self._t)

    def set_enabled(self, enabled: bool, now: float) -> None:
        self.step(now)
        self.enabled = enabled
        if not enabled:
            self._level = 0.0
        self._settle()

    # ---- outputs ------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self._t

    @property
    def applied_limit(self) -> float:
        """The limit the EV follows now (native unit), after its response delay."""
        return self._limit

    @property
    def full(self) -> bool:
        return self.soc >= self.ev.soc_target - 1e-9

    @property
    def phases_used(self) -> int:
        if self.outlet.kind == "dc":
            return 0
        n = min(self.outlet.phases, self.ev.ac_phases)
        if self._limit_phases is not None and not self.noncompliant:
            n = min(n, max(1, self._limit_phases))
        return n

    @property
    def level(self) -> float:
        """Present draw in the native unit: A per used phase (AC) or W (DC)."""
        return self._level

    @property
    def draw_a(self) -> tuple[float, ...]:
        """Current per outlet phase (AC). DC outlets report ``()`` (see ``dc_current_a``)."""
        if self.outlet.kind == "dc":
            return ()
        n = self.phases_used
        return tuple(self._level if i < n else 0.0 for i in range(self.outlet.phases))

    @property
    def dc_current_a(self) -> float:
        return self._level / self.outlet.dc_voltage_v if self.outlet.kind == "dc" else 0.0

    @property
    def draw_w(self) -> float:
        if self.outlet.kind == "dc":
            return self._level
        return self._level * self.outlet.voltage_v * self.phases_used

    @property
    def state(self) -> str:
        """``ev_connected`` (not energised), ``charging``, ``suspended_ev`` or ``suspended_evse``."""
        if not self.enabled:
            return "ev_connected"
        if self.full:
            return "suspended_ev"
        if self._level > 0.0:
            return "charging"
        if self._paused_by_limit():
            return "suspended_evse"
        return "suspended_ev" if self._ev_max() <= 0.0 else "charging"

    # ---- physics ------------------------------------------------------------------------------
    def _ev_max(self) -> float:
        frac = self.ev.curve.fraction(self.soc)
        if self.outlet.kind == "ac":
            return min(self.outlet.max_a, self.ev.max_ac_a * frac)
        return min(self.outlet.max_w, self.ev.max_dc_w * frac)

    def _paused_by_limit(self) -> bool:
        if self.noncompliant:
            return False
        if self.outlet.kind == "ac":
            return self._limit < self.outlet.min_a
        return self._limit <= self.outlet.min_w if self.outlet.min_w > 0 else self._limit <= 0.0

    def _target(self) -> float:
        if not self.enabled or self.full or self._paused_by_limit():
            return 0.0
        cap = self._ev_max()
        return cap if self.noncompliant else min(cap, self._limit)

    def _apply_due(self, t: float) -> None:
        changed = False
        while self._pending and self._pending[0].at <= t:
            p = self._pending.popleft()
            self._limit = p.limit
            self._limit_phases = p.phases
            changed = True
        if changed:
            self._settle()

    def _settle(self) -> None:
        """Snap the draw to the target in the directions that have no ramp."""
        target = self._target()
        down = self._level > target and self.outlet.ramp_down_per_s is None
        up = self._level < target and self.outlet.ramp_up_per_s is None
        if down or up:
            self._level = target

    def _power_w(self, level: float) -> float:
        if self.outlet.kind == "dc":
            return level
        return level * self.outlet.voltage_v * self.phases_used

    def step(self, now: float) -> None:
        """Advance to ``now``: integrate energy, SoC, ramps and due limit changes."""
        t = self._t
        while t < now:
            self._apply_due(t)
            nxt = min(now, (math.floor(t / MAX_SUBSTEP_S) + 1) * MAX_SUBSTEP_S)
            if self._pending and t < self._pending[0].at < nxt:
                nxt = self._pending[0].at
            dt = nxt - t
            target = self._target()
            start = self._level
            # Ramp towards the target; the draw is piecewise linear within the sub-step.
            rate = self.outlet.ramp_up_per_s if target > start else self.outlet.ramp_down_per_s
            if rate is None or target == start:
                end, t_ramp = target, 0.0
                area = target * dt
            else:
                t_ramp = min(dt, abs(target - start) / rate)
                end = start + math.copysign(rate * t_ramp, target - start)
                area = (start + end) / 2.0 * t_ramp + end * (dt - t_ramp)
            energy = self._power_w(area) / 3600.0
            room_wh = max(0.0, (self.ev.soc_target - self.soc) * self.ev.capacity_kwh * 1000.0)
            if energy >= room_wh:
                energy = room_wh
                self.soc = self.ev.soc_target
                end = 0.0
            else:
                self.soc += energy / (self.ev.capacity_kwh * 1000.0)
            self.energy_wh += energy
            self._level = end
            t = nxt
        if now > self._t:
            self._t = now
            self._apply_due(now)
            self._settle()
