"""Simulated peers of the gateway: EVs on chargers (``ev``), OCPP chargers (``charger``), cloud CMS (``cms``).

All of them take an injected wall clock (``clock: Callable[[], float] = time.time``, epoch seconds):
OCPP charging profiles are defined in absolute wall-clock time (``validFrom``, ``startSchedule``), so
the simulators reason in that time base. Tests inject a fake clock they advance by hand.
"""

from __future__ import annotations

from gateway.errors import GatewayError, OcppError


class SimError(GatewayError):
    """A simulator was misused or misconfigured (bad spec, unknown charger, ...)."""


class SimCallError(OcppError):
    """A CALL sent by a simulator got a CALLERROR, no answer in time, or its connection was lost."""


__all__ = ["SimCallError", "SimError"]
