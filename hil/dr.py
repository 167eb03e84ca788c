"""Utility demand response in a HIL scenario (``[openadr]``): the rig's VTN and the events it issues.

The rig starts a real openleadr VTN (:class:`hil.rig.vtn.RigVtn`) on loopback, in its own process and event
loop (beside the simulated CMS), and points the gateway's VEN at it: the scenario's ``[gateway.budget.openadr]``
is the gateway's own table (levels, ``poll_interval_s``, ``lead_s``, ``confirm_s``: wall seconds, like every
``[gateway.*]`` timer) without ``vtn_url``, which the rig fills in. The VTN issues each event at its scenario
time::

    [openadr]
    poll_s = 1                 # the VTN's requested poll frequency (wall s, whole; the VEN polls at the shorter
                               # of it and its poll_interval_s)
    [[openadr.events]]
    id = "dr-1"                # the event id (the gateway's cap: capped:openadr:dr-1)
    signal = "SIMPLE"          # "SIMPLE" (value: level 1-3) | "LOAD_DISPATCH" (value: a setpoint in kW)
    value = 2
    issue_at_s = 300           # scenario s: the VTN queues it; the VEN receives it at its next poll
    start_s = 600              # scenario s: the event's start (dtstart)
    duration_s = 1200          # scenario s (duration_s / time_scale whole wall seconds: OpenADR durations are)
    cancel_at_s = 1500         # optional: the VTN cancels it then

Time compression applies to the VTN as to the rest of the world around the gateway: an event's dtstart is the
wall clock of its scenario time (``t0 + start_s / time_scale``) and its duration ``duration_s / time_scale`` wall
seconds; the gateway lives in wall time with its timers (the VEN's poll, the lead) set for the compression.

:func:`without_dr` is the same scenario without demand response (no VTN, no ``[budget.openadr]``): the run
the energy lost to the events is measured against (``python -m hil dr``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway import electrical
from gateway.budget.openadr import Interval, Kind, interval_kw
from gateway.budget.openadr_config import OpenADRConfig, parse_openadr
from gateway.confkit import Table
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config import ServiceConfig
    from hil.scenario import Scenario

SIGNALS = ("SIMPLE", "LOAD_DISPATCH")
PLACEHOLDER_URL = "http://127.0.0.1:9/OpenADR2/Simple/2.0b"  # the rig's VTN's URL is known only once it runs


@dataclass(frozen=True)
class DrEventSpec:
    id: str
    signal: str  # SIMPLE | LOAD_DISPATCH
    value: float  # the level (SIMPLE) or the kW setpoint (LOAD_DISPATCH)
    issue_at_s: float
    start_s: float
    duration_s: float
    cancel_at_s: float | None = None

    @property
    def signal_type(self) -> str:
        return "level" if self.signal == "SIMPLE" else "setpoint"

    @property
    def end_s(self) -> float:
        """When it stops applying (scenario s): its end, or its cancellation before that."""
        end = self.start_s + self.duration_s
        return end if self.cancel_at_s is None else min(end, self.cancel_at_s)

    def kw(self, cfg: OpenADRConfig, service: ServiceConfig) -> float | None:
        """The site's import cap (kW) the event asks for, by the gateway's own mapping (None: level 0)."""
        kind: Kind = "level" if self.signal == "SIMPLE" else "kw"
        return interval_kw(Interval(0.0, math.inf, kind, self.value), cfg, service, None)

    def level_a(self, cfg: OpenADRConfig, service: ServiceConfig) -> float | None:
        """The event's level in A per line at the service (never above the service limit)."""
        kw = self.kw(cfg, service)
        if kw is None:
            return None
        return min(electrical.service_line_current_a(service, kw * 1000.0), service.limit_a)


@dataclass(frozen=True)
class DrSpec:
    poll_s: int
    events: tuple[DrEventSpec, ...]


def parse_dr(t: Table | None, duration_s: float, time_scale: float) -> DrSpec | None:
    if t is None:
        return None
    poll = t.int("poll_s", 1, min=1, max=3600)
    events: list[DrEventSpec] = []
    seen: set[str] = set()
    for et in t.tables("events"):
        ev = DrEventSpec(
            id=et.ident("id", what="event id"), signal=et.choice("signal", SIGNALS, "SIMPLE"),
            value=et.float("value", min=0), issue_at_s=et.float("issue_at_s", min=0),
            start_s=et.float("start_s", min=0), duration_s=et.float("duration_s", gt=0),
            cancel_at_s=et.float("cancel_at_s", min=0) if et.has("cancel_at_s") else None,
        )
        if ev.id in seen:
            raise et.error("id", f"event {ev.id!r} twice")
        seen.add(ev.id)
        if ev.signal == "SIMPLE" and ev.value not in (0, 1, 2, 3):
            raise et.error("value", "a SIMPLE level is 0, 1, 2 or 3")
        if ev.issue_at_s > ev.start_s:
            raise et.error("issue_at_s", "after start_s: the VTN issues an event at its start at the latest")
        if ev.start_s >= duration_s:
            raise et.error("start_s", f"after the end of the scenario ({duration_s:g} s)")
        wall = ev.duration_s / time_scale
        if abs(wall - round(wall)) > 1e-9 or round(wall) < 1:
            raise et.error("duration_s", f"{ev.duration_s:g} s at {time_scale:g}x is {wall:g} wall s: OpenADR "
                           "durations are whole seconds (make it a multiple of the time scale)")
        if ev.cancel_at_s is not None and not ev.issue_at_s <= ev.cancel_at_s:
            raise et.error("cancel_at_s", "before issue_at_s")
        et.done()
        events.append(ev)
    t.done()
    if not events:
        raise ConfigError("openadr.events", "at least one [[openadr.events]]")
    return DrSpec(poll, tuple(sorted(events, key=lambda e: (e.issue_at_s, e.id))))


def check_dr(budget: Mapping[str, Any]) -> None:
    """The scenario's [openadr] needs the gateway's [gateway.budget.openadr] (the VEN), without a vtn_url."""
    if not isinstance(budget.get("openadr"), Mapping):
        raise ConfigError("gateway.budget.openadr", "[openadr] events need the gateway's VEN: give "
                          "[gateway.budget.openadr] (without vtn_url: the rig fills it in)")
    if "vtn_url" in budget["openadr"]:
        raise ConfigError("gateway.budget.openadr.vtn_url", "the rig points the VEN at its own VTN: leave it out")


def dr_config(sc: Scenario) -> OpenADRConfig:
    """The gateway's [budget.openadr] as the scenario configures it (the VTN's URL aside)."""
    from gateway.config import site_from_dict

    raw = sc.gateway.budget.get("openadr")
    if not isinstance(raw, Mapping):
        raise ConfigError("gateway.budget.openadr", "missing")
    service = site_from_dict(sc.site).service
    cfg = parse_openadr(Table({**raw, "vtn_url": PLACEHOLDER_URL}, "budget.openadr"), service)
    assert cfg is not None
    return cfg


def without_dr(sc: Scenario) -> Scenario:
    """The same scenario without demand response: no VTN, no VEN."""
    budget = {k: v for k, v in sc.gateway.budget.items() if k != "openadr"}
    return dataclasses.replace(sc, dr=None, gateway=dataclasses.replace(sc.gateway, budget=budget))


def run_with_and_without(sc: Scenario, out: Path, *, parallel: bool = False, ideal: bool = True) -> dict[str, Any]:
    """Run the scenario with its events (OUT/with) and without demand response (OUT/without), one after the
    other (``parallel``: at the same time, two rigs in one event loop: half the wall time, twice the load);
    the scorecard of each, the energy lost to the events against the run without them and, with ``ideal``,
    against the ideal bounds without and with the events' levels as service caps. Writes OUT/dr.json."""
    import asyncio
    import json

    from gateway import logs
    from hil.ideal import ideal_energy
    from hil.report import write_report
    from hil.rig.runner import Recording, Rig
    from hil.scorecard import scorecard
    from hil.scorecard_dr import energy_lost, level_caps

    if sc.dr is None:
        raise ConfigError("openadr", f"scenario {sc.name!r} has no [openadr] events")
    out.mkdir(parents=True, exist_ok=True)
    runs = {"with": sc, "without": without_dr(sc)}

    async def go() -> dict[str, Recording]:
        if parallel:
            got = await asyncio.gather(*(Rig(s, out / name, "gateway").run() for name, s in runs.items()))
            return dict(zip(runs, got, strict=True))
        return {name: await Rig(s, out / name, "gateway").run() for name, s in runs.items()}

    with (out / "rig.log").open("a", buffering=1, encoding="utf-8") as stream, logs.configured(
        "warning", "json", stream
    ):
        recs = asyncio.run(go())
    plain = ideal_energy(sc) if ideal else None
    capped = ideal_energy(sc, service_caps=level_caps(sc)) if ideal else None
    cards = {name: scorecard(rec, plain) for name, rec in recs.items()}
    energy_lost(cards["with"], cards["without"], plain, capped)
    for name, rec in recs.items():
        write_report(rec, cards[name], out / name)
    result = {"scenario": sc.name, "time_scale": sc.time_scale, "parallel": parallel, **cards["with"]["dr"],
              "with": {k: cards["with"].get(k) for k in SUMMARY_KEYS},
              "without": {k: cards["without"].get(k) for k in SUMMARY_KEYS}}
    (out / "dr.json").write_text(json.dumps(result, indent=1, default=str))
    return {"result": result, "cards": cards}


SUMMARY_KEYS = ("energy_kwh", "self_inflicted_a_s", "external_a_s", "overload_episodes", "failsafe_other_wall_s",
                "messages_lost", "gateway_process", "rig_process", "duration_wall_s")


__all__ = ["DrEventSpec", "DrSpec", "check_dr", "dr_config", "parse_dr", "run_with_and_without", "without_dr"]
