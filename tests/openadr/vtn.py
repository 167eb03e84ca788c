"""A real openleadr VTN (OpenADRServer) on loopback for the VEN tests, and the site they run against."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from openleadr import OpenADRServer
from openleadr.utils import find_by

from gateway.budget.service import BudgetService
from gateway.config import Site, site_from_dict
from hil.support import eventually
from hil.support import free_port as free_port
from tests.factories import ac, site_dict

until = eventually  # the name the OpenADR tests know

PREFIX = "/OpenADR2/Simple/2.0b"


def site(port: int, **openadr: Any) -> Site:
    """100 A three-phase 400 V service, two three-phase 32 A chargers; levels 40 / 20 / 10 kW."""
    d = site_dict(limit_a=100, margin_a=2, chargers=[ac("A", phases=3), ac("B", phases=3)])
    d["budget"] = {"openadr": {
        "vtn_url": f"http://127.0.0.1:{port}{PREFIX}", "ven_name": "depot-test", "poll_interval_s": 1,
        "level1_kw": 40, "level2_kw": 20, "level3_kw": 10, "confirm_s": 10, "lead_s": 15, **openadr,
    }}
    return site_from_dict(d)


class VTN:
    """The utility's side: accepts registrations, queues events, records the VEN's opt answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server = OpenADRServer(vtn_id="TEST-VTN", http_port=port, http_host="127.0.0.1",
                                    requested_poll_freq=timedelta(seconds=1), show_fingerprint=False)
        self.server.add_handler("on_create_party_registration", self._register)
        self.registrations: list[dict[str, Any]] = []
        self.opts: dict[str, str] = {}
        self.opt_log: list[tuple[str, str]] = []
        self.running = False

    async def _register(self, payload: dict[str, Any]) -> tuple[str, str]:
        self.registrations.append(payload)
        return payload.get("ven_id") or f"ven-{len(self.registrations)}", "reg-1"

    def _opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts[event_id] = opt_type
        self.opt_log.append((event_id, opt_type))
        # openleadr calls an event's callback for the first answer only: re-arm it for a later change of opt
        ev = find_by(self.server.events.get(ven_id, []), "event_descriptor.event_id", event_id)
        if ev is not None:
            self.server.services["event_service"].event_callbacks[event_id] = (ev, self._opt)

    async def start(self) -> None:
        await self.server.run()
        self.running = True

    async def stop(self) -> None:
        if self.running:
            await self.server.stop()
            self.running = False

    def event(self, ven_id: str, start_wall: float, minutes: float, *, signal: str = "SIMPLE",
              stype: str = "level", value: float = 2, **kw: Any) -> str:
        start = datetime.fromtimestamp(start_wall, UTC)
        eid: str = self.server.add_event(
            ven_id=ven_id, signal_name=signal, signal_type=stype, callback=self._opt,
            intervals=[{"dtstart": start, "duration": timedelta(minutes=minutes), "signal_payload": value}], **kw)
        return eid

    def cancel(self, ven_id: str, event_id: str) -> None:
        self.server.cancel_event(ven_id, event_id)


def service(s: Site, state_dir: Path, wall: Callable[[], float] = time.time) -> BudgetService:
    return BudgetService(s, clock=time.monotonic, wall_clock=wall, state_dir=state_dir)
