"""The local control socket: ``ems-gateway commission`` talks to the running daemon through it.

A unix socket (``ctl.sock`` in ``$RUNTIME_DIRECTORY`` when systemd gives one, else in the state
directory), mode 0660: whoever may read the state directory's group may commission. One JSON object
per line each way: ``{"cmd": "status"}`` -> ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

:class:`CtlHandler` answers the requests; it receives the parts it needs (the control loop, the OCPP
controller, the meter readings), never the daemon. The commissioning runner can call
:meth:`CtlHandler.handle` directly (in-process, without the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import structlog
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from gateway import __version__
from gateway.config import PHASES, Site
from gateway.control import ControlLoop
from gateway.model import ChargerSnapshot, MeterReading

log = structlog.get_logger(__name__)

SOCKET_NAME = "ctl.sock"
MAX_LINE = 1 << 20


def socket_path(state_dir: str) -> Path:
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    base = Path(runtime.split(":")[0]) if runtime else Path(state_dir)
    return base / SOCKET_NAME


def config_hash(site: Site, config_path: Path | None) -> str:
    """sha256 of the config file as read (or of the validated site when there is no file), 16 hex digits."""
    data: bytes
    if config_path is not None:
        try:
            data = config_path.read_bytes()
        except OSError:
            data = repr(site).encode()
    else:
        data = repr(site).encode()
    return hashlib.sha256(data).hexdigest()[:16]


class Readings(Protocol):
    def readings(self) -> Mapping[str, MeterReading | None]: ...


class Ocpp(Protocol):
    @property
    def boots(self) -> Mapping[str, Mapping[str, str]]: ...

    @property
    def sessions(self) -> Mapping[str, Any]: ...

    @property
    def store(self) -> Any: ...


def site_info(site: Site) -> dict[str, Any]:
    """The configuration a commissioning report needs, as JSON."""
    budget = site.failsafe_budget()
    return {
        "id": site.id,
        "name": site.name,
        "state_dir": site.state_dir,
        "phases": [PHASES[i] for i in range(site.n_phases())],
        "service": {
            "id": site.service.id,
            "voltage_ll_v": site.service.voltage_ll_v,
            "wiring": str(site.service.wiring),
            "limit_a": site.service.limit_a,
            "margin_a": site.service.margin_a,
        },
        "circuits": [
            {
                "id": c.id, "kind": c.kind, "parent": c.parent, "limit_a": c.limit_a, "margin_a": c.margin_a,
                "worst_case_non_ev_a": c.worst_case_non_ev_a, "can_export": c.can_export, "meter": c.meter,
                "chargers": list(site.chargers_under[c.id]), "failsafe_budget_a": list(budget[c.id]),
            }
            for c in site.circuits.values()
        ],
        "chargers": [
            {
                "id": ch.id, "ocpp_version": ch.ocpp_version, "kind": ch.kind, "unit": ch.unit, "circuit": ch.circuit,
                "connectors": ch.connectors, "phases": ch.phases, "phase_map": list(ch.phase_map),
                "line_phases": list(ch.line_phases), "min_limit": ch.min_limit, "max_limit": ch.max_limit,
                "failsafe_limit": ch.failsafe_limit, "failsafe_line_a": site.to_line_a(ch, ch.failsafe_limit),
                "max_line_a": site.to_line_a(ch, ch.max_limit), "security_profile": ch.ocpp.security_profile,
                "profile_purpose": ch.ocpp.profile_purpose,
            }
            for ch in site.chargers.values()
        ],
        "meters": [
            {
                "id": m.id, "circuit": m.circuit, "map": m.map, "transport": m.transport, "ct_ratio": m.ct_ratio,
                "invert": m.invert, "phase_map": [PHASES[p] for p in m.phase_map],
            }
            for m in site.meters.values()
        ],
        "control": asdict(site.control),
        "ocpp": {
            "lease_s": site.ocpp.lease_s,
            "failsafe_stack_level": site.ocpp.failsafe_stack_level,
            "limit_stack_level": site.ocpp.limit_stack_level,
            "failsafe_profile_id": site.ocpp.failsafe_profile_id,
            "limit_profile_id": site.ocpp.limit_profile_id,
        },
    }


def _charger_status(snap: ChargerSnapshot | None, now: float) -> dict[str, Any]:
    if snap is None:
        return {"online": False}
    act = snap.actuation
    out: dict[str, Any] = {
        "online": snap.online,
        "state": snap.state.value,
        "draw_a": list(snap.draw_a) if snap.draw_a is not None else None,
        "draw_w": snap.draw_w,
        "draw_at": snap.draw_at,
        "noncompliant": snap.noncompliant,
    }
    if act is not None:
        out["actuation"] = asdict(act)
    return out


def _meter_status(r: MeterReading | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "current_a": list(r.current_a), "at": r.at, "valid": r.valid, "reason": r.reason,
        "power_w": list(r.power_w) if r.power_w is not None else None, "total_power_w": r.total_power_w,
        "voltage_v": list(r.voltage_v) if r.voltage_v is not None else None,
    }


class CtlHandler:
    def __init__(
        self,
        control: ControlLoop,
        ocpp: Ocpp,
        meters: Readings,
        *,
        config_path: Path | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.control = control
        self.ocpp = ocpp
        self.meters = meters
        self.config_path = config_path
        self.clock = clock

    async def handle(self, req: Mapping[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        try:
            if cmd == "site":
                site = self.control.site
                return {"ok": True, "site": site_info(site), "version": __version__,
                        "config_hash": config_hash(site, self.config_path), "now": self.clock()}
            if cmd == "status":
                return {"ok": True, **self.status()}
            if cmd == "test_load":
                t = self.control.set_test_load(str(req["meter"]), float(req["load_a"]), float(req["duration_s"]))
                return {"ok": True, "until": t.until, "now": self.clock()}
            if cmd == "override":
                lim = req.get("limit")
                self.control.set_test_override(
                    str(req["charger"]), None if lim is None else float(lim), float(req.get("duration_s", 0.0))
                )
                return {"ok": True, "now": self.clock()}
            if cmd == "clear":
                self.control.clear_tests(str(req.get("reason", "cleared")))
                return {"ok": True, "now": self.clock()}
            if cmd == "failsafe_test":
                return await self._failsafe_test(str(req["charger"]), int(req.get("lease_s", 10)))
            if cmd == "event":  # a commissioning finding for the site's telemetry (and the log)
                fields = {str(k): v for k, v in dict(req.get("fields") or {}).items()}
                name = str(req["name"])
                log.warning("commission_event", event_name=name, **fields)
                if self.control.telemetry is not None:
                    self.control.telemetry.event(name, **fields)
                return {"ok": True}
            if cmd == "call":
                return await self._call(str(req["charger"]), str(req["action"]), dict(req.get("payload") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            return {"ok": False, "error": str(exc) if not isinstance(exc, KeyError) else f"missing {exc}"}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    _CALLS = frozenset({"GetCompositeSchedule", "GetChargingProfiles", "GetConfiguration", "GetVariables"})

    async def _call(self, charger: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A read-only CALL to a charger (nothing that changes it goes through here)."""
        if action not in self._CALLS:
            return {"ok": False, "error": f"{action} is not a read-back"}
        s = self.ocpp.sessions.get(charger)
        if s is None:
            return {"ok": False, "error": f"charger {charger} is not connected"}
        result = await s.call(action, payload)
        return {"ok": result is not None, "result": result, "error": None if result is not None else "no answer"}

    async def _failsafe_test(self, charger: str, lease_s: int) -> dict[str, Any]:
        """A short test lease on one charger: its limit profile lapses, the fail-safe profile governs (read back
        with GetCompositeSchedule), then the limit is sent again. Only where the fail-safe limit does not exceed
        the limit in force: the fall-back then never raises what the charger may draw."""
        site = self.control.site
        ch = site.chargers.get(charger)
        s = self.ocpp.sessions.get(charger)
        if ch is None or s is None:
            return {"ok": False, "error": f"charger {charger} is unknown or not connected"}
        if not 2 <= lease_s <= 120:
            return {"ok": False, "error": "lease_s must be within 2..120"}
        alloc = self.control.allocation
        limit = alloc.limit_of(charger) if alloc is not None else None
        if alloc is None or alloc.mode != "normal" or limit is None:
            return {"ok": False, "error": "refused: the site is not in normal operation"}
        if ch.failsafe_limit > limit + 1e-9:
            return {"ok": True, "tested": False, "limit": limit,
                    "reason": f"its fail-safe limit {ch.failsafe_limit:g} {ch.unit} is above the limit in force "
                    f"{limit:g} {ch.unit}: not tested now (it would raise what it may draw)"}
        log.warning("failsafe_test_started", charger=charger, lease_s=lease_s)
        t0 = self.clock()
        before = await self._composite(s, ch.unit)
        ok = await s.test_lease(lease_s)
        mark = s.limit.sent_at
        during = None
        reason = "" if ok else "the charger refused the test lease"
        try:
            if ok:
                await asyncio.sleep(lease_s + 1.5)
                if s.limit.sent_at != mark:  # the allocator sent a new limit meanwhile: it governs, not the fail-safe
                    ok, reason = False, "a new limit went out during the test lease: repeat the test"
                else:
                    during = await self._composite(s, ch.unit)
        finally:
            await s.resume_limit()
            log.warning("failsafe_test_ended", charger=charger)
        after = await self._composite(s, ch.unit)
        return {"ok": True, "tested": ok, "limit": limit, "failsafe_limit": ch.failsafe_limit, "before": before,
                "during": during, "after": after, "lease_s": lease_s, "took_s": self.clock() - t0, "reason": reason}

    @staticmethod
    async def _composite(s: Any, unit: str) -> float | None:
        if s.version == "1.6":
            req: Any = call16.GetCompositeSchedule(connector_id=0, duration=300, charging_rate_unit=unit)
        else:
            req = call201.GetCompositeSchedule(duration=300, evse_id=0, charging_rate_unit=unit)
        res = await s.ask(req)
        if not isinstance(res, dict) or res.get("status") != "Accepted":
            return None
        sched = res.get("chargingSchedule") or res.get("schedule") or {}
        if isinstance(sched, list):
            sched = sched[0] if sched else {}
        periods = sched.get("chargingSchedulePeriod") or []
        return float(periods[0]["limit"]) if periods and "limit" in periods[0] else None

    def status(self) -> dict[str, Any]:
        c = self.control
        now = self.clock()
        snap = c.snapshot
        alloc = c.allocation
        raw = self.meters.readings()
        chargers: dict[str, Any] = {}
        for cid in c.site.chargers:
            st = _charger_status(snap.chargers.get(cid) if snap is not None else None, now)
            lim = alloc.limits.get(cid) if alloc is not None else None
            st["limit"] = lim.limit if lim is not None else None
            st["limit_line_a"] = lim.line_a if lim is not None else None
            st["reason"] = lim.reason if lim is not None else None
            st["boot"] = self.ocpp.boots.get(cid)
            caps = self.ocpp.store.caps(cid)
            st["caps"] = {k: v for k, v in caps.items() if isinstance(v, str | int | float | bool)}
            sess = self.ocpp.sessions.get(cid)
            st["purpose_mode"] = getattr(sess, "mode", caps.get("mode"))
            chargers[cid] = st
        circuits = {}
        if alloc is not None:
            for k, cs in alloc.circuits.items():
                circuits[k] = {
                    "limit_a": cs.limit_a, "measured_a": list(cs.measured_a) if cs.measured_a else None,
                    "non_ev_a": list(cs.non_ev_a), "headroom_a": list(cs.headroom_a),
                    "allocated_a": list(cs.allocated_a), "state": cs.state,
                }
        tl = c.test_load
        return {
            "now": now,
            "mode": alloc.mode if alloc is not None else "starting",
            "chargers": chargers,
            "meters": {mid: _meter_status(r) for mid, r in raw.items()},
            "circuits": circuits,
            "test_load": None if tl is None else {"meter": tl.meter, "load_a": tl.load_a, "until": tl.until},
            "overrides": {k: {"limit": o.limit, "until": o.until} for k, o in c.test_overrides.items()},
        }


async def serve(handler: CtlHandler, path: Path) -> None:
    """Serve the socket until cancelled (then it is removed)."""
    _prepare(path)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    ans = await handler.handle(req) if isinstance(req, dict) else {"ok": False, "error": "no object"}
                except json.JSONDecodeError as exc:
                    ans = {"ok": False, "error": f"invalid JSON: {exc}"}
                except Exception as exc:  # a request never takes the socket down
                    log.exception("ctl_request_failed")
                    ans = {"ok": False, "error": repr(exc)}
                writer.write(json.dumps(ans).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):  # ValueError: a line beyond the limit
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(client, path=str(path), limit=MAX_LINE)
    os.chmod(path, 0o660)
    log.info("ctl_listening", path=str(path))
    try:
        async with server:
            await asyncio.Future()
    finally:
        _remove(path)


def _prepare(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove(path)  # a stale socket from a crash


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class CtlClient:
    """A connection to the daemon's socket; :meth:`request` sends one command and returns its answer."""

    def __init__(self, path: Path, timeout_s: float = 60.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._rw: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def handle(self, req: Mapping[str, Any]) -> dict[str, Any]:
        async with self._lock, asyncio.timeout(self.timeout_s):
            if self._rw is None:
                self._rw = await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE)
            reader, writer = self._rw
            writer.write(json.dumps(dict(req)).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
            if not line:
                self._rw = None
                raise ConnectionError("the daemon closed the control socket")
            ans = json.loads(line)
            return ans if isinstance(ans, dict) else {"ok": False, "error": "bad answer"}

    async def close(self) -> None:
        if self._rw is not None:
            self._rw[1].close()
            with contextlib.suppress(Exception):
                await self._rw[1].wait_closed()
            self._rw = None
