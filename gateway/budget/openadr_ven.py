"""The OpenADR 2.0b VEN (openleadr): registration, polling, events into the `OpenADRStore`, usage reports.

`Ven2b.run()` is a supervised task of the daemon, off the control loop: it registers with the VTN (the VEN
id and registration id persisted by the store, so a restart re-registers as the same VEN), then polls at the
VTN's requested frequency (bounded by ``poll_interval_s``). openleadr's VEN implements the 2.0b HTTP *pull*
model only, so push is not offered to the VTN. Over https the session uses the client certificate and the
VTN's CA (the profile's TLS), and with ``vtn_fingerprint`` every message's XML signature is checked.

Events: the SIMPLE signal's levels, LOAD_DISPATCH (setpoint / delta in kW, multiplier, level) and
LOAD_CONTROL (x-loadControlCapacity, -LevelOffset, -PercentOffset, -Setpoint); other signals (prices) are
not followed, and an event with none that is followed is opted out. Cancellation (status ``cancelled``)
ends the event's cap at once. The report the VTN may request is the service's import (real power, kW).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog

from gateway.budget.openadr import DREvent, Interval, Kind, OpenADRStore
from gateway.budget.openadr_config import OpenADRConfig

log = structlog.get_logger(__name__)
logging.getLogger("openleadr").setLevel(logging.WARNING)

REGISTER_RETRY_S = 10.0


def _request_id() -> str:
    from openleadr.utils import generate_id

    return str(generate_id())


def _wall(d: object) -> float:
    if not isinstance(d, datetime):
        raise ValueError(f"not a datetime: {d!r}")
    return d.timestamp()


def _seconds(d: object) -> float:
    if d is None:
        return 0.0
    if isinstance(d, timedelta):
        return d.total_seconds()
    if isinstance(d, Mapping):  # {'duration': timedelta} in some openleadr versions
        return _seconds(d.get("duration"))
    raise ValueError(f"not a duration: {d!r}")


def _kw_factor(signal: Mapping[str, Any]) -> float:
    """kW per unit of a power signal's payload: by its measurement (W with scale k/M/none), kW by default."""
    m = signal.get("measurement")
    if not isinstance(m, Mapping) or m.get("unit") not in ("W", "w"):
        return 1.0
    return {"k": 1.0, "M": 1000.0, "none": 0.001, None: 0.001}.get(m.get("scale"), 1.0)


def signal_kind(name: str, stype: str) -> tuple[Kind, Callable[[float], float]] | None:
    """How a 2.0b signal maps to a cap (the kind, and its payload's transformation); None: not followed."""
    name = name.upper()
    if name == "SIMPLE":
        return "level", lambda v: v
    if name == "LOAD_DISPATCH":
        return {
            "setpoint": ("kw", lambda v: v), "delta": ("delta_kw", lambda v: v),
            "multiplier": ("baseline_fraction", lambda v: v), "level": ("level", lambda v: v),
        }.get(stype)  # type: ignore[return-value]
    if name == "LOAD_CONTROL":
        return {
            "x-loadControlCapacity": ("capacity_fraction", lambda v: v),
            "x-loadControlLevelOffset": ("level", lambda v: v),
            "x-loadControlPercentOffset": ("baseline_fraction", lambda v: 1.0 - v / 100.0),
            "x-loadControlSetpoint": ("kw", lambda v: v),
        }.get(stype)  # type: ignore[return-value]
    return None


def event_of(raw: Mapping[str, Any], now_wall: float, offset_s: float) -> tuple[DREvent, str]:
    """An openleadr event dict as a `DREvent` (and its status: far, near, active, completed, cancelled)."""
    desc, period = raw["event_descriptor"], raw["active_period"]
    start = _wall(period["dtstart"])
    dur = _seconds(period.get("duration"))
    end = math.inf if dur <= 0 else start + dur
    intervals: list[Interval] = []
    names: list[str] = []
    signals = raw.get("event_signals") or []
    for sig in signals if isinstance(signals, list) else [signals]:
        mapped = signal_kind(str(sig.get("signal_name", "")), str(sig.get("signal_type", "")))
        if mapped is None:
            continue
        kind, fn = mapped
        factor = _kw_factor(sig) if kind in ("kw", "delta_kw") else 1.0
        names.append(f"{sig.get('signal_name')}/{sig.get('signal_type')}")
        for iv in sig.get("intervals") or []:
            s = _wall(iv["dtstart"]) if iv.get("dtstart") is not None else start
            d = _seconds(iv.get("duration"))
            value = float(iv["signal_payload"])
            if not math.isfinite(value):
                raise ValueError(f"signal payload {value!r}")
            intervals.append(Interval(s, math.inf if d <= 0 else s + d, kind, fn(value) * factor))
    ev = DREvent(
        event_id=str(desc["event_id"]), source="oadr2", start=start, end=end, intervals=tuple(intervals),
        received_wall=now_wall, modification=int(desc.get("modification_number") or 0), offset_s=offset_s,
        ramp_up_s=max(_seconds(period.get("ramp_up", period.get("ramp_up_period"))), 0.0),  # parsed: "ramp_up"
        program=str(desc.get("market_context") or ""),
        signal=",".join(names),
    )
    return ev, str(desc.get("event_status") or "")


def start_after_s(raw: Mapping[str, Any]) -> float:
    """The event's start randomisation window (tolerance.tolerate.startafter), s."""
    tol = (raw.get("active_period") or {}).get("tolerance") or {}
    tol = tol.get("tolerate", tol) or {}  # as parsed: {"tolerate": {"startafter": ..}} (openleadr: either)
    return max(_seconds(tol.get("startafter")), 0.0)


class Ven2b:
    """One VEN session with its VTN at a time; `run` returns only when cancelled (failures retry)."""

    def __init__(
        self, cfg: OpenADRConfig, store: OpenADRStore, *, wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self.client: Any = None

    # ---------------------------------------------------------------- openleadr's handlers
    async def on_event(self, raw: dict[str, Any]) -> str:
        eid = str(raw["event_descriptor"]["event_id"])
        held = self.store.events.get(eid)
        offset = held.offset_s if held is not None else (
            self._rng.uniform(0.0, start_after_s(raw)) if self.cfg.randomize_start else 0.0)
        try:
            ev, status = event_of(raw, self._wall(), offset)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("openadr_event_unreadable", event_id=eid, error=str(exc)[:200])
            return "optOut"
        if status == "cancelled":
            self.store.cancel(eid)
            return held.opt if held is not None else "optOut"
        if status == "completed":
            return held.opt if held is not None else "optOut"
        return self.store.offer(ev)

    async def _received(self, message_type: str, payload: Mapping[str, Any]) -> None:
        self.store.contact(self._wall())
        if message_type == "oadrCreatedPartyRegistration" and isinstance(payload, Mapping):
            vtn = payload.get("vtn_id")
            if vtn:
                self.store.ven.vtn_id = str(vtn)

    def usage_kw(self) -> float | None:
        """The service's import (kW) for the VTN's TELEMETRY_USAGE report."""
        w = self.store.last_import_w
        return None if w is None else round(w / 1000.0, 3)

    # ---------------------------------------------------------------- the session
    def _client(self) -> Any:
        from openleadr import OpenADRClient  # imported here: only a site with [budget.openadr] needs it

        cfg, ven = self.cfg, self.store.ven
        client = OpenADRClient(
            ven_name=cfg.ven_name, vtn_url=cfg.vtn_url, cert=cfg.cert_file, key=cfg.key_file,
            ca_file=cfg.ca_file, vtn_fingerprint=cfg.vtn_fingerprint, show_fingerprint=False,
            ven_id=ven.ven_id if ven.vtn_url == cfg.vtn_url else None, check_hostname=cfg.check_hostname,
            allow_jitter=False, disable_signature=cfg.cert_file is None,
        )
        client.add_handler("on_event", self.on_event)
        client.add_handler("on_update_event", self.on_event)
        client.add_hook("after_parse_xml", self._received)
        client.add_report(
            callback=self.usage_kw, resource_id="service", measurement="real_power", unit="W", scale="k",
            report_name="TELEMETRY_USAGE", sampling_rate=timedelta(seconds=cfg.poll_interval_s),
            report_duration=timedelta(hours=1), data_source="service-meter",
        )
        return client

    async def _register(self, client: Any) -> bool:
        ven = self.store.ven
        answer = await client.query_registration()  # openleadr: None for an empty HTTP body
        reply = answer[1] if isinstance(answer, tuple) and isinstance(answer[1], dict) else {}
        request_id = (reply.get("response") or {}).get("request_id")
        got = await client.create_party_registration(
            ven_id=client.ven_id, request_id=request_id,
            registration_id=ven.registration_id if ven.vtn_url == self.cfg.vtn_url else None,
        )
        if got is None or not client.registration_id:
            self.store.registration(registered=False, last_error="registration refused or no answer")
            return False
        poll = client.poll_frequency.total_seconds() if client.poll_frequency else self.cfg.poll_interval_s
        self.store.registration(
            registered=True, ven_id=client.ven_id, registration_id=client.registration_id,
            vtn_url=self.cfg.vtn_url, poll_interval_s=min(max(poll, 1.0), self.cfg.poll_interval_s),
        )
        log.info("openadr_registered", ven_id=client.ven_id, registration_id=client.registration_id,
                 vtn=self.cfg.vtn_url, poll_interval_s=self.store.ven.poll_interval_s)
        return True

    async def run(self) -> None:
        """Register, then poll until cancelled; a refused or failed registration is retried."""
        self.client = client = self._client()
        reports: asyncio.Task[None] | None = None
        client.scheduler.start()  # openleadr's report jobs
        try:
            while True:
                if not client.registration_id:
                    self.store.registration(registered=False)
                    if not await self._register(client):
                        await asyncio.sleep(min(REGISTER_RETRY_S, self.cfg.poll_interval_s))
                        continue
                    await client.register_reports(client.reports)
                    if reports is None and client.reports:
                        client.loop = asyncio.get_running_loop()
                        reports = asyncio.create_task(client._report_queue_worker(), name="openadr-reports")
                    await client.sync_events()
                before = self.store.ven.last_contact
                for ev in self.store.reconsider(self._wall()):  # opted out since: tell the VTN
                    # openleadr answers a re-distributed event with the opt it answered first: make that this one
                    client.responded_events[ev.event_id] = "optOut"
                    await client.created_event(request_id=_request_id(), event_id=ev.event_id, opt_type="optOut",
                                               modification_number=ev.modification)
                await client._poll()
                if self.store.ven.last_contact == before:
                    self.store.ven.last_error = "the VTN did not answer the poll"
                await asyncio.sleep(self.store.ven.poll_interval_s or self.cfg.poll_interval_s)
        finally:
            if reports is not None:
                reports.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reports
            if client.scheduler.running:
                client.scheduler.shutdown(wait=False)
            if client.client_session is not None:
                await client.client_session.close()
            self.store.registration(registered=False)


__all__ = ["Ven2b", "event_of", "signal_kind", "start_after_s"]
