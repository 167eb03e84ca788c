"""``[budget.solar]``: which chargers charge from the PV surplus, and how the surplus is followed.

::

    [budget.solar]
    grid_meter = "meter-main"          # the meter at the service (default: the service circuit's meter)
    pv_meters = ["pv-roof"]            # role = "pv" meters whose power is published (default: all of them)
    resume_after_s = 120               # a paused surplus charger resumes once its minimum has been there this long
    resume_margin_w = 300              # ... and by this much more (hysteresis against clouds)
    smoothing_s = 20                   # the surplus estimate moves towards each tick's by dt / smoothing_s (0: none)
    pause_after_s = 0                  # a charging one is paused once the surplus has been below its minimum this
                                       # long (meanwhile it keeps its minimum from the grid); 0: at once
    export_limit_w = 0                 # optional: the site's export limit (W); see gateway/budget/solar.py
    [budget.solar.class_modes]         # per priority class: "normal" (default), "surplus", "surplus+min"
    guest = "surplus"
    [budget.solar.charger_modes]       # per charger, over its class
    "garage-1" = "surplus+min"

``parse_solar`` reads the table (strictly: unknown keys and bad modes name their key path); the budget's config
calls it with the site's charger ids, priority classes and meters so that unknown names are refused too.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from gateway.confkit import Table
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import Site

MODES = ("normal", "surplus", "surplus+min")
SOLAR_MODES = ("surplus", "surplus+min")  # the modes that get a ChargerCap


@dataclass(frozen=True)
class SolarConfig:
    grid_meter: str | None = None  # None: the service circuit's meter
    pv_meters: tuple[str, ...] | None = None  # None: every role = "pv" meter
    class_modes: Mapping[str, str] = field(default_factory=dict)
    charger_modes: Mapping[str, str] = field(default_factory=dict)
    resume_after_s: float = 120.0
    resume_margin_w: float = 300.0
    pause_after_s: float = 0.0
    smoothing_s: float = 20.0
    export_limit_w: float | None = None
    key: str = "budget.solar"

    @property
    def enabled(self) -> bool:
        return any(m != "normal" for m in (*self.class_modes.values(), *self.charger_modes.values()))

    def mode_of(self, charger: str, priority: str) -> str:
        return self.charger_modes.get(charger, self.class_modes.get(priority, "normal"))


class SolarFigures(NamedTuple):
    """This tick's solar figures for telemetry (W; None: not known)."""

    pv_w: float | None  # what the PV inverters feed in
    surplus_w: float | None  # export + what the solar-mode chargers draw
    export_w: float | None  # at the service meter
    export_limit_w: float | None
    paused: tuple[str, ...] = ()  # solar-mode chargers with a session the surplus does not carry


def check_solar(site: Site) -> None:
    """The names in [budget.solar] against the site: chargers, priority classes, meters; a grid meter to use."""
    cfg = site.budget.solar
    for chid in cfg.charger_modes:
        if chid not in site.chargers:
            raise ConfigError(f"{cfg.key}.charger_modes.{chid}", f"unknown charger {chid!r}")
    for cls in cfg.class_modes:
        if cls not in site.priorities:
            raise ConfigError(f"{cfg.key}.class_modes.{cls}", f"unknown priority class {cls!r}")
    if cfg.grid_meter is not None and cfg.grid_meter not in site.meters:
        raise ConfigError(f"{cfg.key}.grid_meter", f"unknown meter {cfg.grid_meter!r} (a meter with role = "
                          "\"circuit\")")
    for m in cfg.pv_meters or ():
        if m not in site.pv_meters:
            raise ConfigError(f"{cfg.key}.pv_meters", f"{m!r} is not a meter with role = \"pv\"")
    if cfg.enabled and cfg.grid_meter is None and site.circuits[site.root].meter is None:
        raise ConfigError(f"{cfg.key}", "surplus modes need the export at the service: a meter on the service "
                          "([[meters]] with circuit = the service's id) or grid_meter")
    if cfg.enabled and not site.service.can_export:
        raise ConfigError("service.can_export", "surplus modes need a site that exports: set can_export = true "
                          "(the service meter then reads negative power as export, not as a fault)")


def _modes(t: Table | None, known: Collection[str] | None, what: str) -> dict[str, str]:
    if t is None:
        return {}
    out: dict[str, str] = {}
    for k in list(t.keys()):
        if known is not None and k not in known:
            t.raw(k)
            raise t.error(k, f"unknown {what} {k!r}")
        out[k] = t.choice(k, MODES)
    t.done()
    return out


def parse_solar(
    t: Table | None,
    *,
    chargers: Collection[str] | None = None,
    classes: Collection[str] | None = None,
    meters: Collection[str] | None = None,
    pv_meters: Collection[str] | None = None,
) -> SolarConfig:
    """``[budget.solar]`` -> SolarConfig (absent: every charger "normal")."""
    if t is None:
        return SolarConfig()
    grid = t.opt_str("grid_meter")
    if grid is not None and meters is not None and grid not in meters:
        raise t.error("grid_meter", f"unknown meter {grid!r} (a meter with role = \"circuit\")")
    pv: tuple[str, ...] | None = None
    if t.has("pv_meters"):
        pv = t.str_list("pv_meters")
        for m in pv:
            if pv_meters is not None and m not in pv_meters:
                raise t.error("pv_meters", f"{m!r} is not a meter with role = \"pv\"")
    cfg = SolarConfig(
        grid_meter=grid,
        pv_meters=pv,
        class_modes=_modes(t.table("class_modes"), classes, "priority class"),
        charger_modes=_modes(t.table("charger_modes"), chargers, "charger"),
        resume_after_s=t.float("resume_after_s", 120.0, min=0, max=3600),
        resume_margin_w=t.float("resume_margin_w", 300.0, min=0, max=1_000_000),
        pause_after_s=t.float("pause_after_s", 0.0, min=0, max=3600),
        smoothing_s=t.float("smoothing_s", 20.0, min=0, max=3600),
        export_limit_w=t.opt_float("export_limit_w", min=0, max=1e9),
        key=t.path,
    )
    t.done()
    return cfg
