"""The gateway's own CALLs as the ``ocpp`` library's call dataclasses (``ocpp.v16.call``, ``ocpp.v201.call``).

A call is serialised as the library does it (``serialize_as_dict``, ``remove_nones``,
``snake_to_camel_case``) and framed by :func:`gateway.ocpp_proxy.frames.call_text`; its action is
the dataclass's name. Only for what the gateway builds itself: relayed frames stay raw text.
"""

from __future__ import annotations

from typing import Any, Protocol

from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case

from gateway.ocpp_proxy.relay import OutCall

# the library has no type hints: a call is any of its dataclasses
Call = Any


class OwnCall(Protocol):
    """Queue one of the gateway's own CALLs to the charger (``key``: a newer one replaces it while it waits)."""

    def __call__(self, call: Call, key: str | None = None) -> OutCall: ...


def action_of(call: Call) -> str:
    return type(call).__name__


def payload_of(call: Call) -> dict[str, Any]:
    """The JSON payload of a call dataclass (camelCase keys, optional fields left out)."""
    out: dict[str, Any] = snake_to_camel_case(remove_nones(serialize_as_dict(call)))
    return out
