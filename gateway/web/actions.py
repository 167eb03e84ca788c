"""Technician actions, each routed to the mechanism that owns it. One small adapter per action, so that when
a mechanism moves (the remote cap moves to gateway/budget/remote.py) only the adapter changes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

# (body, user) -> (ok, answer); body: {"limit_a": A, "duration_s": s} or {"clear": true}
CapSetter = Callable[[dict[str, Any], str], tuple[bool, dict[str, Any]]]


def remote_cap_setter(budget: Any) -> CapSetter:
    """A temporary site cap from the web page, through the budget's remote cap (gateway/budget/remote.py).

    The command goes the same way as one from the cloud over MQTT: the budget service validates it (a cap only
    lowers the limit, lasts 1 s..24 h), sets and persists it and tells its listeners (telemetry publishes the
    cap's state and the ``site_cap_set`` event). No MQTT needed.
    """

    def set_cap(body: dict[str, Any], user: str) -> tuple[bool, dict[str, Any]]:
        cmd = {k: v for k, v in body.items() if k in ("limit_a", "limit_kw", "duration_s", "until", "clear")}
        cmd["id"] = f"web:{user}:{int(time.time())}"[:64]
        reply = budget.command("site_limit", json.dumps(cmd).encode(), retained=False, require_ts=False)
        if not reply.get("ok"):
            return False, {"error": str(reply.get("reason", "refused"))}
        if cmd.get("clear"):
            return True, {"cleared": True, "request_id": cmd["id"]}
        return True, {"request_id": cmd["id"], "cap_a": reply.get("cap_a"), "duration_s": body.get("duration_s")}

    return set_cap


def commissioning_runner(ctl_handler: Any) -> Any:
    """Commissioning from the web page, in-process: the runner of ``ems-gateway commission`` (gateway/commission/)
    calls the control socket's handler (gateway/ctl.py) directly, as the CLI calls it over the socket. Returns a
    :class:`gateway.commission.background.Background` (one run at a time, a task of its own)."""
    from gateway.commission.background import Background

    return Background(ctl_handler)
