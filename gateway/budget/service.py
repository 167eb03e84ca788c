"""The budget's IO side: holds the state, persists it under state_dir, receives commands, runs `compute.budget`.

* The control loop calls :meth:`BudgetService.tick` once per tick (pure computation plus an in-memory hand-off
  of the state to the writer thread: nothing here blocks the loop).
* Telemetry hands it the commands it receives (``cmd/site_limit``: the remote cap; ``cmd/tariff``: replace the
  time-of-use schedule) and publishes what it reports: listeners get its events and a note when the remote
  cap or the tariff changed.
* State lives in ``<state_dir>/budget/``: ``remote_cap.json``, ``tariff.json`` (a schedule received over MQTT)
  and ``demand.json`` (the billing interval's energy and the month's peak), each written atomically (a
  temporary file, fsync, rename) by one writer thread. A restart in the same interval keeps its energy; one
  in a new interval starts it fresh (and keeps the month's peak).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from gateway.budget import Budget, BudgetState, DemandState
from gateway.budget.compute import BudgetInputs, EvPower, budget, measure
from gateway.budget.config import TariffConfig, tariff_from_json
from gateway.budget.openadr import OpenADRStore
from gateway.budget.remote import (
    MAX_COMMAND_AGE_S,
    CommandRejected,
    RemoteCap,
    cap_amps,
    cap_from_json,
    cap_name,
    cap_to_json,
    check_fresh,
    json_object,
    parse_cap_command,
    remote_cap_of,
)
from gateway.budget.solar import SolarState, with_solar
from gateway.budget.tariff import schedule
from gateway.config import Site
from gateway.errors import ConfigError
from gateway.model import ChargerSnapshot, MeterReading

log = structlog.get_logger(__name__)

# the demand window's state goes to disk at every interval's start and this often: with a register the start is
# what counts (its difference is exact across a restart); integrating, the time since the last write counts at
# the high-side estimate after a restart. Not more often: flash storage wears.
PERSIST_EVERY_S = 30.0
MAX_TARIFF_BYTES = 65_536
SCHEDULE_H = 48.0  # the tariff schedule published ahead
REMOTE_FILE, TARIFF_FILE, DEMAND_FILE = "remote_cap.json", "tariff.json", "demand.json"
COMMANDS = ("site_limit", "tariff")
_TARIFF_KEYS = {"id", "ts", "tariff", "clear"}
_WARN_EVENTS = frozenset({"demand_projected_over", "demand_interval_over", "clock_jump"})


class BudgetListener(Protocol):
    def event(self, name: str, **fields: object) -> None: ...

    def budget_changed(self, what: str) -> None: ...  # "remote" | "tariff"


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class StateWriter:
    """Writes small files atomically in a thread of its own; the latest content per file wins."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._pending: dict[str, str | None] = {}
        self._cv = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def put(self, name: str, text: str | None) -> None:
        """Queue ``text`` for ``name`` (None: remove the file). Never blocks on the disk."""
        with self._cv:
            self._pending[name] = text
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="budget-writer", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def read(self, name: str) -> str | None:
        try:
            return (self.dir / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.error("budget_state_unreadable", file=str(self.dir / name), error=str(exc))
            return None

    def flush(self, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return not self._pending and not self._busy
                self._cv.wait(left)
        return True

    def close(self) -> None:
        self.flush()
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending and self._closed:
                    self._thread = None
                    return
                batch, self._pending = self._pending, {}
                self._busy = True
            for name, text in batch.items():
                self._write(name, text)
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _write(self, name: str, text: str | None) -> None:
        path = self.dir / name
        try:
            if text is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                return
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.error("budget_state_not_persisted", file=str(path), error=str(exc))


class BudgetService:
    """The site budget: every tick's caps, the remote cap and the tariff commands, the persisted state."""

    def __init__(
        self,
        site: Site,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        state_dir: str | Path | None = None,
    ) -> None:
        self._site = site
        self._ev_power = EvPower(site)  # each charger's report -> W at the service
        self._clock = clock
        self._wall = wall_clock
        self._writer = StateWriter(Path(state_dir if state_dir is not None else site.state_dir) / "budget")
        self._listeners: list[BudgetListener] = []
        self._remote: RemoteCap | None = None
        self._tariff_override: TariffConfig | None = None
        self._state = BudgetState()
        self._solar = SolarState()  # the surplus modes' hysteresis (in memory: a restart starts it afresh)
        self._persisted_at = -math.inf
        self._binding: str | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.remote_restored = False  # a persisted cap was found at start (live or expired)
        self.last: Budget | None = None
        self._restore()
        self.openadr = OpenADRStore(self._writer, site.budget.openadr, emit=self._emit)  # gateway.budget.openadr

    # ------------------------------------------------------------------ the control loop
    def tick(
        self, readings: Mapping[str, MeterReading | None], chargers: Mapping[str, ChargerSnapshot], now: float
    ) -> Budget:
        site = self._site
        wall = self._wall()
        inputs = BudgetInputs(
            service=site.service, measure=measure(site, readings, chargers, now, self._ev_power),
            remote=self.remote_cap(now), tariff=self.tariff(), readings=readings, chargers=chargers,
        )
        before = self._state
        b, st = budget(inputs, site.budget, before, now, wall)
        if dr := self.openadr.caps(site.service, wall, inputs.measure.import_w):
            b = replace(b, caps=b.caps + dr)
        b, self._solar = with_solar(b, site, readings, chargers, self._solar, now)  # surplus modes' caps
        self._state = st
        self.last = b
        for name, fields in b.events:
            self._emit(name, **{k: (iso(v) if k == "interval_start" and isinstance(v, float) else v)
                                for k, v in fields.items()})
        new, old = st.tariff, before.tariff
        if new is not None and b.tariff is not None and (
            old is None or (old.source, old.season, old.index) != (new.source, new.season, new.index)
        ):
            log.info("tariff_period", season=b.tariff.season, period=b.tariff.period,
                     price_per_kwh=b.tariff.price_per_kwh, cap_kw=b.tariff.cap_kw, until=iso(b.tariff.until))
            self._changed("tariff")
        self._log_binding(b)
        self._persist_demand(before.demand, st.demand, now)
        return b

    def _log_binding(self, b: Budget) -> None:
        low = b.binding()
        name = None if low is None or min(low.limit_a) >= self._site.service.limit_a else low.name
        if name != self._binding:
            log.info("budget_binding", source=name, previous=self._binding,
                     limit_a=None if low is None else round(min(low.limit_a), 2),
                     caps={c.name: round(min(c.limit_a), 2) for c in b.caps})
            self._binding = name

    def _persist_demand(self, old: DemandState | None, new: DemandState | None, now: float) -> None:
        if new is None:
            return
        new_interval = old is None or old.interval_start != new.interval_start
        if new_interval or now - self._persisted_at >= PERSIST_EVERY_S or now < self._persisted_at:
            self._persisted_at = now
            d = asdict(new)
            d.pop("last_mono")
            d["interval_min"] = self._site.budget.demand.interval_min if self._site.budget.demand else None
            self._writer.put(DEMAND_FILE, json.dumps(d))

    # ------------------------------------------------------------------ listeners
    def listen(self, listener: BudgetListener) -> None:
        self._listeners.append(listener)

    def _emit(self, name: str, **fields: object) -> None:
        (log.warning if name in _WARN_EVENTS else log.info)(name, **fields)
        for li in self._listeners:
            try:
                li.event(name, **fields)
            except Exception:
                log.exception("budget_listener_failed", event_name=name)

    def _changed(self, what: str) -> None:
        for li in self._listeners:
            try:
                li.budget_changed(what)
            except Exception:
                log.exception("budget_listener_failed", changed=what)

    # ------------------------------------------------------------------ remote cap
    def remote_cap(self, now: float) -> RemoteCap | None:
        """The active remote cap (expired on the way, with its event)."""
        cap = self._remote
        if cap is not None and now >= cap.expires_at:
            self._set_remote(None)
            log.info("site_cap_expired", request_id=cap.request_id)
            self._emit_only("site_cap_expired", request_id=cap.request_id, cap_a=round(cap.limit_a, 2))
            self._changed("remote")
            return None
        return cap

    def remote_cap_a(self, now: float) -> float | None:
        """The active remote cap in A per line, or None; never above the service limit."""
        cap = self.remote_cap(now)
        return None if cap is None else min(cap.limit_a, self._site.service.limit_a)

    def _emit_only(self, name: str, **fields: object) -> None:
        for li in self._listeners:
            try:
                li.event(name, **fields)
            except Exception:
                log.exception("budget_listener_failed", event_name=name)

    def _set_remote(self, cap: RemoteCap | None) -> None:
        self._remote = cap
        self._writer.put(REMOTE_FILE, None if cap is None else cap_to_json(cap))
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if cap is not None:
            self._arm_expiry(cap)

    def _arm_expiry(self, cap: RemoteCap) -> None:
        """Expire the cap on time even if nobody ticks (no control loop, the cloud silent)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (a restored cap): the control loop's ticks expire it
        delay = max(cap.expires_at - self._clock(), 0.0) + 0.01
        self._expiry = loop.call_later(delay, self._expire_due, cap)

    def _expire_due(self, cap: RemoteCap) -> None:
        self._expiry = None
        if self._remote is not cap:
            return
        if self.remote_cap(self._clock()) is cap:  # a clock that runs slow: look again later
            self._arm_expiry(cap)

    def remote_state(self) -> dict[str, object]:
        """The body of the retained remote-cap state (without ts)."""
        cap = self._remote
        body: dict[str, object] = {"active": cap is not None}
        if cap is not None:
            body.update(cap_a=round(cap.limit_a, 2), limit_a=cap.requested_a, limit_kw=cap.requested_kw,
                        expires_at=_iso_ms(cap.expires_wall), request_id=cap.request_id, source=cap_name(cap))
        return body

    # ------------------------------------------------------------------ commands
    def command(self, name: str, payload: bytes, *, retained: bool, require_ts: bool) -> dict[str, object]:
        """A command telemetry received: the reply's body (``ok``, ``id``, and the outcome or ``reason``)."""
        wall = self._wall()
        try:
            if name not in COMMANDS:
                raise CommandRejected(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
            if retained:
                raise CommandRejected(
                    "retained commands are refused: publish commands with retain=false", _request_id(payload)
                )
            if name == "site_limit":
                return self._cap_command(payload, wall, require_ts)
            return self._tariff_command(payload, wall, require_ts)
        except CommandRejected as exc:
            log.warning("budget_command_rejected", command=name, reason=exc.reason, request_id=exc.request_id)
            return {"id": exc.request_id, "ok": False, "reason": exc.reason}

    def _cap_command(self, payload: bytes, wall: float, require_ts: bool) -> dict[str, object]:
        svc = self._site.service
        req = parse_cap_command(payload, service=svc, now_wall=wall, require_ts=require_ts)
        if req.clear:
            had = self._remote is not None
            self._set_remote(None)
            if had:
                self._emit("site_cap_cleared", request_id=req.request_id)
            self._changed("remote")
            return {"id": req.request_id, "ok": True, "cleared": had}
        cap = remote_cap_of(req, svc, self._clock(), wall)
        self._set_remote(cap)
        log.info("site_cap_set", limit_a=round(cap.limit_a, 1), duration_s=req.duration_s, request_id=req.request_id)
        self._emit_only("site_cap_set", request_id=req.request_id, cap_a=round(cap.limit_a, 2), limit_a=req.limit_a,
                        limit_kw=req.limit_kw, expires_at=_iso_ms(cap.expires_wall))
        self._changed("remote")
        return {"id": req.request_id, "ok": True, "cap_a": round(cap.limit_a, 2),
                "expires_at": _iso_ms(cap.expires_wall)}

    def _tariff_command(self, payload: bytes, wall: float, require_ts: bool) -> dict[str, object]:
        """``{"id": .., "ts": .., "tariff": {<the [budget.tariff] table>}}`` replaces the schedule (validated as
        the config is, refusals name the key path); ``{"id": .., "clear": true}`` returns to the config's."""
        obj = json_object(payload, MAX_TARIFF_BYTES)
        rid = obj.get("id")
        if rid is not None and (not isinstance(rid, str) or not 0 < len(rid) <= 64):
            raise CommandRejected("id must be a string of 1..64 characters")
        unknown = sorted(set(obj) - _TARIFF_KEYS)
        if unknown:
            raise CommandRejected(f"unknown key(s): {', '.join(unknown)}", rid)
        check_fresh(obj, rid, wall, require_ts)
        if "clear" in obj:
            if obj["clear"] is not True or "tariff" in obj:
                raise CommandRejected("clear must be true, and alone", rid)
            had = self._tariff_override is not None
            self._tariff_override = None
            self._writer.put(TARIFF_FILE, None)
            self._state = replace(self._state, tariff=None)
            if had:
                self._emit("tariff_cleared", request_id=rid)
            self._changed("tariff")
            return {"id": rid, "ok": True, "cleared": had}
        raw = obj.get("tariff")
        if not isinstance(raw, dict):
            raise CommandRejected("tariff must be an object: the [budget.tariff] table as JSON", rid)
        try:
            t = tariff_from_json(raw, self._site.budget.timezone, f"mqtt:{rid or iso(wall)}")
        except ConfigError as exc:
            raise CommandRejected(f"{exc.path}: {exc.reason}", rid) from None
        self._tariff_override = t
        self._state = replace(self._state, tariff=None)
        self._writer.put(TARIFF_FILE, json.dumps({"id": rid, "set_wall": wall, "tariff": raw}))
        self._emit("tariff_replaced", request_id=rid, seasons=len(t.seasons),
                   periods=sum(len(s.periods) for s in t.seasons))
        self._changed("tariff")
        return {"id": rid, "ok": True, "seasons": len(t.seasons), "periods": sum(len(s.periods) for s in t.seasons)}

    # ------------------------------------------------------------------ tariff
    def tariff(self) -> TariffConfig | None:
        """The schedule in force: one received over MQTT, else the config's."""
        return self._tariff_override if self._tariff_override is not None else self._site.budget.tariff

    def tariff_state(self, horizon_h: float = SCHEDULE_H) -> dict[str, object] | None:
        """The active period and price and the schedule ahead (for the cloud and the planner), without ts."""
        t = self.tariff()
        if t is None:
            return None
        wall = self._wall()
        slots = schedule(t, wall, horizon_h * 3600.0)
        now = slots[0]
        return {
            "source": t.source, "timezone": t.timezone, "season": now.season, "period": now.period,
            "price_per_kwh": now.price_per_kwh, "cap_kw": now.cap_kw, "until": iso(now.end),
            "schedule": [{"start": iso(s.start), "end": iso(s.end), "season": s.season, "period": s.period,
                          "price_per_kwh": s.price_per_kwh, "cap_kw": s.cap_kw} for s in slots],
        }

    # ------------------------------------------------------------------ lifecycle
    def update_site(self, site: Site) -> None:
        old = self._site
        self._site = site
        self._ev_power = EvPower(site)
        self.openadr.update_config(site.budget.openadr)
        cap = self._remote
        if cap is not None:
            self._remote = replace(cap, limit_a=cap_amps(cap.requested_a, cap.requested_kw, site.service))
            self._changed("remote")
        if old.budget.demand != site.budget.demand and (
            old.budget.demand is None or site.budget.demand is None
            or old.budget.demand.interval_min != site.budget.demand.interval_min
        ):
            self._state = replace(self._state, demand=None)
        if old.budget.tariff != site.budget.tariff or old.budget.timezone != site.budget.timezone:
            self._state = replace(self._state, tariff=None)
            self._changed("tariff")

    def adopt_legacy_remote(self, text: str) -> None:
        """A cap an older version kept in telemetry's store: taken over unless one is active here."""
        if self._remote is not None:
            return
        cap = cap_from_json(text, service=self._site.service, now=self._clock(), now_wall=self._wall())
        if cap is not None:
            self._set_remote(cap)
            self.remote_restored = True

    def flush(self) -> bool:
        return self._writer.flush()

    def close(self) -> None:
        """The demand window's latest state to disk, then the writer stopped."""
        self._persisted_at = -math.inf
        self._persist_demand(self._state.demand, self._state.demand, 0.0)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._writer.close()

    def _restore(self) -> None:
        now, wall = self._clock(), self._wall()
        text = self._writer.read(REMOTE_FILE)
        if text is not None:
            self.remote_restored = True
            cap = cap_from_json(text, service=self._site.service, now=now, now_wall=wall)
            if cap is None:
                self._writer.put(REMOTE_FILE, None)
            else:
                self._remote = cap
                log.info("site_cap_restored", cap_a=round(cap.limit_a, 1), expires_at=iso(cap.expires_wall))
        text = self._writer.read(TARIFF_FILE)
        if text is not None:
            try:
                d = json.loads(text)
                self._tariff_override = tariff_from_json(
                    d["tariff"], self._site.budget.timezone, f"mqtt:{d.get('id') or iso(float(d['set_wall']))}"
                )
                log.info("tariff_restored", source=self._tariff_override.source)
            except (ValueError, KeyError, TypeError, ConfigError) as exc:
                log.error("tariff_restore_failed", error=str(exc)[:200])
        self._state = BudgetState(demand=self._restore_demand(self._writer.read(DEMAND_FILE)))

    def _restore_demand(self, text: str | None) -> DemandState | None:
        cfg = self._site.budget.demand
        if text is None or cfg is None:
            return None
        try:
            d: dict[str, Any] = json.loads(text)
            if d.pop("interval_min", None) != cfg.interval_min:
                return None
            st = DemandState(**{**d, "last_mono": None})
            float(st.interval_start) + float(st.energy_wh) + float(st.last_wall) + float(st.month_peak_kw)
        except (ValueError, TypeError) as exc:
            log.error("demand_state_restore_failed", error=str(exc)[:200])
            return None
        if not all(math.isfinite(x) for x in (st.interval_start, st.energy_wh, st.last_wall, st.month_peak_kw)):
            return None
        log.info("demand_state_restored", interval_start=iso(st.interval_start), energy_wh=round(st.energy_wh, 1),
                 month_peak_kw=round(st.month_peak_kw, 3))
        return st


def _iso_ms(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _request_id(payload: bytes) -> str | None:
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and len(rid) <= 64 else None


__all__ = ["MAX_COMMAND_AGE_S", "BudgetListener", "BudgetService", "StateWriter"]
