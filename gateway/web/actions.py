"""Technician actions, each routed to the mechanism that owns it. One small adapter per action, so that when
a mechanism moves (the remote cap moves to gateway/budget/remote.py) only the adapter changes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

# (body, user) -> (ok, answer); body: {"limit_a": A, "duration_s": s} or {"clear": true}
CapSetter = Callable[[dict[str, Any], str], tuple[bool, dict[str, Any]]]


def remote_cap_setter(telemetry: Any) -> CapSetter:
    """A temporary site cap from the web page, through the MQTT remote cap (gateway/telemetry/cap.py + mqtt.py).

    The command goes the same way as one from the cloud: validated by ``parse_cap_command`` (a cap only lowers
    the limit, lasts 1 s..24 h), then handed to the telemetry's command handler, which sets and persists it,
    publishes its state and the ``site_cap_set`` event (and a reply on ``cmd/site_limit/reply``).
    """
    from gateway.telemetry.cap import CommandRejected, parse_cap_command

    def set_cap(body: dict[str, Any], user: str) -> tuple[bool, dict[str, Any]]:
        cmd = {k: v for k, v in body.items() if k in ("limit_a", "limit_kw", "duration_s", "until", "clear")}
        cmd["id"] = f"web:{user}:{int(time.time())}"[:64]
        payload = json.dumps(cmd).encode()
        try:
            req = parse_cap_command(payload, service=telemetry._site.service, now_wall=time.time())
        except CommandRejected as exc:
            return False, {"error": exc.reason}
        telemetry._command(telemetry.cmd_prefix + "site_limit", payload, False)
        cap = telemetry._cap
        if req.clear:
            return True, {"cleared": True, "request_id": req.request_id}
        if cap is None or cap.request_id != req.request_id:
            return False, {"error": "the cap was not taken"}
        return True, {"request_id": req.request_id, "cap_a": round(cap.limit_a, 2), "duration_s": req.duration_s}

    return set_cap
