"""Departure-aware charging (issue 15): session needs, a planner over the horizon to the last departure, and
the worker that runs it off the control loop.

* ``needs``: energy wanted and departure time from every source (ISO 15118 via OCPP 2.0.1
  NotifyEVChargingNeeds, an MQTT command, the CMS's DataTransfer ``ems-gateway``/``SessionNeeds``, a fleet
  vehicle profile by idToken, per-charger and per-priority-class defaults); pure parsers and a book.
* ``solve.plan(sessions, site, budget_view, forecast, state, now) -> (Plan, PlannerState)``: pure, one LP
  (HiGHS through scipy): completions first, then the demand target, then energy cost, then fairness.
* ``runner.PlannerWorker``: runs ``plan`` in a worker thread every few ticks and on arrivals/departures; the
  loop takes the latest plan, a late or failed one is dropped (the allocator's max-min fairness).
* ``apply.targets_of(plan)``: the plan as ``Snapshot.targets`` (gateway.model.ChargerTarget) for the allocator,
  which applies them in gateway.allocation.targets inside the same safety rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.planner.model import (
    BudgetView,
    ChargerPlan,
    Forecast,
    Plan,
    PlannerConfig,
    PlannerState,
    PlanSession,
    PriceSlot,
    Projection,
    Taper,
)

if TYPE_CHECKING:
    from gateway.planner.solve import CHEAP, DEADLINE, plan


def __getattr__(name: str) -> Any:
    """``plan`` and the reasons load gateway.planner.solve (which reads gateway.config) on first use: gateway.config
    reads the [planner] table through gateway.planner.config, so this package must not import it eagerly."""
    if name in ("plan", "CHEAP", "DEADLINE"):
        from gateway.planner import solve

        return getattr(solve, name)
    raise AttributeError(name)

__all__ = [
    "CHEAP", "DEADLINE", "BudgetView", "ChargerPlan", "Forecast", "Plan", "PlanSession", "PlannerConfig",
    "PlannerState", "PriceSlot", "Projection", "Taper", "plan",
]
