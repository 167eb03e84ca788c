"""The electrical model: the one home of every conversion between amperes and watts.

Three kinds of service (``[service] wiring``), each with its lines and its voltages:

* ``three-phase``: lines L1, L2, L3; ``voltage_ll_v`` is line-to-line, line-to-neutral is V_LL / sqrt(3).
* ``single-phase``: one line, L1; ``voltage_ll_v`` is the voltage across the load (L-N).
* ``split-phase`` (North American 120/240 V): two legs, L1 and L2; ``voltage_ll_v`` is leg-to-leg
  (240 V), each leg is V_LL / 2 (120 V) to the neutral.

A load is wired across the lines it names (``line_phases``, site line indices):

* three lines: a three-phase load; P = sqrt(3) x V_LL x I x pf, the same current I in each line;
* two lines: line-to-line (L1-L2 at 240 V on a split-phase service, or e.g. L2-L3 at 400 V on a
  three-phase one); P = V_LL x I x pf, the same current I in both lines;
* one line: line-to-neutral; P = V_LN x I x pf, the current in that line only.

A DC charger's limit is its DC output power: its AC input is P / efficiency of active power and
P / (efficiency x power factor) of apparent power. Limits are turned into line current at the lowest
voltage the service may have (nominal x (1 - voltage_tolerance_pct / 100)), where a given power
draws the most current; reported AC draws are turned into amperes at the nominal voltage.

Everything here is a pure function of frozen values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol

SQRT3 = math.sqrt(3.0)

Wiring = Literal["three-phase", "single-phase", "split-phase"]
LoadWiring = Literal["three-phase", "line-to-line", "line-to-neutral"]
WIRINGS: tuple[Wiring, ...] = ("three-phase", "single-phase", "split-phase")
LINE_NAMES = ("L1", "L2", "L3")
_LINES: dict[str, int] = {"three-phase": 3, "single-phase": 1, "split-phase": 2}


class Service(Protocol):
    """What a conversion needs of the service (``gateway.config.ServiceConfig`` has it)."""

    @property
    def wiring(self) -> str: ...
    @property
    def voltage_ll_v(self) -> float: ...
    @property
    def voltage_tolerance_pct(self) -> float: ...


class Load(Protocol):
    """What a conversion needs of a charger (``gateway.config.ChargerConfig`` has it)."""

    @property
    def kind(self) -> str: ...
    @property
    def line_phases(self) -> tuple[int, ...]: ...
    @property
    def efficiency(self) -> float: ...
    @property
    def power_factor(self) -> float: ...


def n_lines(wiring: str) -> int:
    """How many lines (phases, legs) a service of this wiring has: 3, 1 or 2."""
    try:
        return _LINES[wiring]
    except KeyError:
        raise ValueError(f"unknown wiring {wiring!r}") from None


def line_names(wiring: str) -> tuple[str, ...]:
    """The names of the service's lines: ("L1", "L2", "L3"), ("L1",) or ("L1", "L2")."""
    return LINE_NAMES[: n_lines(wiring)]


def line_to_neutral_v(service: Service) -> float:
    """The nominal voltage from one line to the neutral: V_LL/sqrt(3), V, or V_LL/2 (split-phase legs)."""
    v = service.voltage_ll_v
    if service.wiring == "three-phase":
        return v / SQRT3
    if service.wiring == "split-phase":
        return v / 2.0
    return v


def load_wiring(service: Service, line_phases: Sequence[int]) -> LoadWiring:
    """How a load across ``line_phases`` is connected."""
    n, lines = len(line_phases), n_lines(service.wiring)
    if n < 1 or len(set(line_phases)) != n or any(not 0 <= p < lines for p in line_phases):
        raise ValueError(f"a {service.wiring} service cannot feed a load on lines {tuple(line_phases)}")
    if n == 3:
        return "three-phase"
    if n == 2:
        return "line-to-line"
    return "line-to-neutral"


def load_voltage_v(service: Service, line_phases: Sequence[int]) -> float:
    """The nominal voltage across each of the load's elements: V_LN for three-phase (wye) and
    line-to-neutral loads, V_LL for a line-to-line load (240 V across L1-L2 on a split-phase service)."""
    if load_wiring(service, line_phases) == "line-to-line":
        return service.voltage_ll_v
    return line_to_neutral_v(service)


def watts_per_line_a(service: Service, line_phases: Sequence[int]) -> float:
    """Active power (W) at unity power factor per ampere in each loaded line, at the nominal voltage:
    sqrt(3) x V_LL (three-phase), V_LL (line-to-line), V_LN (line-to-neutral)."""
    w = load_wiring(service, line_phases)
    if w == "three-phase":
        return SQRT3 * service.voltage_ll_v
    if w == "line-to-line":
        return service.voltage_ll_v
    return line_to_neutral_v(service)


def _derate(service: Service, conservative: bool) -> float:
    return 1.0 - service.voltage_tolerance_pct / 100.0 if conservative else 1.0


def line_current_a(
    service: Service,
    line_phases: Sequence[int],
    power_w: float,
    *,
    efficiency: float = 1.0,
    power_factor: float = 1.0,
    conservative: bool = False,
) -> float:
    """The current (A) in each loaded line for a power ``power_w`` delivered by the load.

    The load takes power_w / efficiency of active power at ``power_factor``; ``conservative`` takes the
    lowest voltage the service may have (nominal minus its tolerance), where that power draws the most.
    """
    v_per_a = watts_per_line_a(service, line_phases) * _derate(service, conservative)
    return power_w / (efficiency * power_factor * v_per_a)


def power_w(
    service: Service,
    line_phases: Sequence[int],
    line_a: float,
    *,
    efficiency: float = 1.0,
    power_factor: float = 1.0,
    conservative: bool = False,
) -> float:
    """The inverse of `line_current_a`: the power (W) a load delivers drawing ``line_a`` in each loaded line."""
    v_per_a = watts_per_line_a(service, line_phases) * _derate(service, conservative)
    return line_a * efficiency * power_factor * v_per_a


def ac_line_current_a(service: Service, line_phases: Sequence[int], power_w: float) -> float:
    """The current (A) in each loaded line for an AC active power (W) at unity power factor and the nominal
    voltage (a reported AC draw, a cap given in kW). At a lower power factor the real current is higher."""
    return power_w / watts_per_line_a(service, line_phases)


def ac_power_w(service: Service, line_phases: Sequence[int], line_a: float) -> float:
    """The inverse of `ac_line_current_a`: active power (W) at unity power factor, nominal voltage."""
    return line_a * watts_per_line_a(service, line_phases)


def per_line_a(service: Service, line_phases: Sequence[int], line_a: float) -> tuple[float, ...]:
    """A load's current on every line of the service: ``line_a`` on each line it loads, 0 A elsewhere
    (a line-to-line load draws the same current in both its lines)."""
    load_wiring(service, line_phases)  # refuses lines the service does not have
    return tuple(line_a if p in line_phases else 0.0 for p in range(n_lines(service.wiring)))


def all_lines(service: Service) -> tuple[int, ...]:
    """Every line of the service, as a load across them all (the whole service at one current per line)."""
    return tuple(range(n_lines(service.wiring)))


def service_power_w(service: Service, line_a: float) -> float:
    """Active power (W, unity pf, nominal voltage) of the whole service with ``line_a`` in every line."""
    return ac_power_w(service, all_lines(service), line_a)


def service_line_current_a(service: Service, power_w: float) -> float:
    """The current per line (A) for an active power (W) spread evenly over every line of the service."""
    return ac_line_current_a(service, all_lines(service), power_w)


def limit_to_line_a(service: Service, charger: Load, limit: float) -> float:
    """A charger limit in its own unit (A per phase for AC, W of DC output for DC) -> line current (A)
    in each loaded line. DC: with its efficiency and power factor, at the conservative voltage."""
    if charger.kind == "ac":
        return limit
    return line_current_a(
        service,
        charger.line_phases,
        limit,
        efficiency=charger.efficiency,
        power_factor=charger.power_factor,
        conservative=True,
    )


def line_a_to_limit(service: Service, charger: Load, line_a: float) -> float:
    """The inverse of `limit_to_line_a`: line current (A) -> a limit in the charger's unit."""
    if charger.kind == "ac":
        return line_a
    return power_w(
        service,
        charger.line_phases,
        line_a,
        efficiency=charger.efficiency,
        power_factor=charger.power_factor,
        conservative=True,
    )


def dc_line_current_a(service: Service, charger: Load, dc_power_w: float) -> float:
    """What a DC charger delivering ``dc_power_w`` really draws in each loaded line at the nominal
    voltage (the simulators' physics): P / (efficiency x pf x W per line A)."""
    return line_current_a(
        service,
        charger.line_phases,
        dc_power_w,
        efficiency=charger.efficiency,
        power_factor=charger.power_factor,
    )
