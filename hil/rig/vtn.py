"""The rig's utility: a real openleadr VTN (OpenADR 2.0b) on loopback, issuing the scenario's events.

It runs in the rig's own process and event loop, beside the simulated CMS (one VEN polling it every second or
so is no load). The gateway's VEN registers with it at start-up; the scenario player then calls :meth:`issue`
and :meth:`cancel` at the events' scenario times (:meth:`RigVtn.actions`). What the VTN did, on the rig's clock
(wall s since scenario time 0), goes into :attr:`RigVtn.log`, one dict per event, for the scorecard
(:mod:`hil.scorecard_dr`): issued, its dtstart and end as sent, cancelled, the VEN's opt answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from openleadr import OpenADRServer

from hil.broker import free_port
from hil.dr import DrEventSpec, DrSpec

log = structlog.get_logger(__name__)
logging.getLogger("openleadr").setLevel(logging.ERROR)

PREFIX = "/OpenADR2/Simple/2.0b"
REGISTER_WAIT_S = 20.0  # an event due before the VEN registered waits this long for it


class RigVtn:
    def __init__(self, spec: DrSpec, time_scale: float) -> None:
        self.spec = spec
        self.k = time_scale
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{PREFIX}"
        self.server: Any = None
        self.ven_id: str | None = None
        self.registered_at: float | None = None  # epoch
        self.t0 = 0.0  # epoch of scenario time 0 (set by the rig before the player starts)
        self.log: dict[str, dict[str, Any]] = {}
        self.polls = 0

    # ---------------------------------------------------------------- the server
    async def start(self) -> None:
        self.server = OpenADRServer(vtn_id="HIL-VTN", http_port=self.port, http_host="127.0.0.1",
                                    requested_poll_freq=timedelta(seconds=self.spec.poll_s), show_fingerprint=False)
        self.server.add_handler("on_create_party_registration", self._register)
        with contextlib.redirect_stdout(io.StringIO()):  # openleadr prints a banner with the URL
            await self.server.run()

    async def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.stop()
            self.server = None

    async def _register(self, payload: dict[str, Any]) -> tuple[str, str]:
        self.ven_id = str(payload.get("ven_id") or "hil-ven")
        self.registered_at = time.time()
        return self.ven_id, "hil-reg-1"

    def _opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        rec = self.log.get(event_id)
        if rec is not None:
            rec.setdefault("opts", []).append({"wall_s": round(time.time() - self.t0, 3), "opt": opt_type})

    # ---------------------------------------------------------------- the scenario's actions
    def gateway_openadr(self, table: dict[str, Any]) -> dict[str, Any]:
        """The gateway's [budget.openadr], pointed at this VTN."""
        return {**table, "vtn_url": self.url}

    def actions(self) -> list[tuple[float, Callable[[], Any]]]:
        """(wall s since scenario time 0, what to do) for the player."""
        out: list[tuple[float, Callable[[], Any]]] = []
        for ev in self.spec.events:
            out.append((ev.issue_at_s / self.k, lambda ev=ev: self.issue(ev)))  # type: ignore[misc]
            if ev.cancel_at_s is not None:
                out.append((ev.cancel_at_s / self.k, lambda ev=ev: self.cancel(ev)))  # type: ignore[misc]
        return out

    async def issue(self, ev: DrEventSpec) -> None:
        deadline = time.monotonic() + REGISTER_WAIT_S
        while self.ven_id is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        issued = time.time() - self.t0
        if self.ven_id is None:
            log.error("hil_vtn_no_ven", event_id=ev.id)
            self.log[ev.id] = {"id": ev.id, "issued_wall_s": None, "error": "the VEN never registered"}
            return
        start = self.t0 + ev.start_s / self.k
        dur = round(ev.duration_s / self.k)
        self.log[ev.id] = {"id": ev.id, "signal": ev.signal, "value": ev.value, "issued_wall_s": round(issued, 3),
                           "start_wall_s": round(start - self.t0, 3), "end_wall_s": round(start + dur - self.t0, 3),
                           "duration_wall_s": dur, "cancelled_wall_s": None}
        self.server.add_event(
            ven_id=self.ven_id, signal_name=ev.signal, signal_type=ev.signal_type, event_id=ev.id,
            callback=self._opt, market_context="oadr://hil/dr",
            intervals=[{"dtstart": datetime.fromtimestamp(start, UTC), "duration": timedelta(seconds=dur),
                        "signal_payload": ev.value}])

    def cancel(self, ev: DrEventSpec) -> None:
        rec = self.log.get(ev.id)
        if self.ven_id is None or rec is None or rec.get("issued_wall_s") is None:
            return
        self.server.cancel_event(self.ven_id, ev.id)
        rec["cancelled_wall_s"] = round(time.time() - self.t0, 3)

    def summary(self) -> dict[str, Any]:
        return {"url": self.url, "ven_id": self.ven_id, "poll_s": self.spec.poll_s,
                "registered_wall_s": None if self.registered_at is None else round(self.registered_at - self.t0, 3),
                "events": [self.log[e.id] for e in self.spec.events if e.id in self.log]}


__all__ = ["RigVtn"]
